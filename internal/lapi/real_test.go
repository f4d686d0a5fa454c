package lapi

import (
	"context"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// TestRealLAPI pulls from Debian's crowdsec LAPI inside a fresh network
// namespace with Pull+Normalize: see realLAPIScenario.
func TestRealLAPI(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.EnsureLAPIInstalled(t)
	if !testenv.InFreshNetns(t) {
		return
	}
	realLAPIScenario(t, func(ctx context.Context, c *Client, startup bool) (journal.Batch, []Rejection, error) {
		resp, err := c.Pull(ctx, startup)
		if err != nil {
			return journal.Batch{}, nil, err
		}
		b, rej := Normalize(resp, NormalizeOptions{}, time.Now())
		b = flat(b)
		return b, rej, nil
	})
}

// TestRealLAPIPullBatch is TestRealLAPI with the streaming PullBatch, and
// then checks that both paths give the same startup batch from one LAPI.
func TestRealLAPIPullBatch(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.EnsureLAPIInstalled(t)
	if !testenv.InFreshNetns(t) {
		return
	}
	c := realLAPIScenario(t, func(ctx context.Context, c *Client, startup bool) (journal.Batch, []Rejection, error) {
		b, rej, _, err := c.PullBatch(ctx, startup, NormalizeOptions{}, nil)
		b = flat(b)
		if err == nil && b.Full != startup {
			t.Errorf("PullBatch(startup=%v) Full = %v", startup, b.Full)
		}
		return b, rej, err
	})
	now := time.Now()
	resp, err := c.Pull(t.Context(), true)
	if err != nil {
		t.Fatal(err)
	}
	want, wantRej, wantStats := NormalizeWithStats(resp, NormalizeOptions{}, now)
	want = flat(want)
	want.Full = true
	got, gotRej, gotStats, err := c.PullBatch(t.Context(), true, NormalizeOptions{}, func() time.Time { return now })
	got = flat(got)
	if err != nil {
		t.Fatal(err)
	}
	// LAPI computes the remaining duration per request: the two pulls'
	// Until differ by the time between them, nothing else may.
	if len(got.New) != len(want.New) || len(got.New) != 2 {
		t.Fatalf("startup from real LAPI: PullBatch %d new, Pull %d, want 2", len(got.New), len(want.New))
	}
	for i := range got.New {
		if d := got.New[i].Until.Sub(want.New[i].Until); d < -time.Minute || d > time.Minute {
			t.Errorf("until differs by %v: %+v vs %+v", d, got.New[i], want.New[i])
		}
		got.New[i].Until, want.New[i].Until = time.Time{}, time.Time{}
	}
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotRej, wantRej) || gotStats != wantStats {
		t.Errorf("startup from real LAPI:\nPullBatch %+v %+v %+v\nPull      %+v %+v %+v", got, gotRej, gotStats, want, wantRej, wantStats)
	}
}

// realLAPIScenario: a cscli ban shows up on startup with ~4h left, its
// delete shows up in the next delta, decisions with other origins come
// through, and the pull state survives a LAPI restart. It returns the
// client, with the LAPI still running.
func realLAPIScenario(t *testing.T, pullWith func(context.Context, *Client, bool) (journal.Batch, []Rejection, error)) *Client {
	l := testenv.StartLAPI(t)
	c, err := NewClient(ClientConfig{APIURL: l.URL, APIKey: l.Key}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	pull := func(startup bool) journal.Batch {
		t.Helper()
		b, rej, err := pullWith(ctx, c, startup)
		if err != nil {
			t.Fatal(err)
		}
		if len(rej) != 0 {
			t.Fatalf("rejections from a real LAPI: %+v", rej)
		}
		return b
	}
	banned := netip.MustParsePrefix("192.0.2.10/32")

	l.CSCLI(t, "decisions", "add", "--ip", "192.0.2.10", "-d", "4h")
	now := time.Now()
	b := pull(true)
	if len(b.New) != 1 || b.New[0].Prefix != banned || b.New[0].Origin != "cscli" ||
		b.New[0].Scope != journal.ScopeIP || b.New[0].Type != "ban" {
		t.Fatalf("startup pull = %+v, want the cscli ban of %s", b.New, banned)
	}
	// LAPI sends the remaining time, a little under 4h.
	if left := b.New[0].Until.Sub(now); left > 4*time.Hour || left < 4*time.Hour-5*time.Minute {
		t.Errorf("until is %v ahead, want about 4h", left)
	}

	l.CSCLI(t, "decisions", "delete", "--ip", "192.0.2.10")
	b = pull(false)
	want := journal.Key{Scope: journal.ScopeIP, Prefix: banned, Type: "ban"}
	if len(b.New) != 0 || len(b.Deleted) != 1 || b.Deleted[0] != want {
		t.Fatalf("delta after delete = %+v, want only the delete of %+v", b, want)
	}

	l.AddDecision(t, "lists", "Range", "203.0.113.0/24", "2h")
	l.AddDecision(t, "crowdsec", "Ip", "2001:db8::10", "1h")
	b = pull(false)
	got := map[netip.Prefix]journal.Decision{}
	for _, d := range b.New {
		got[d.Prefix] = d
	}
	if d := got[netip.MustParsePrefix("203.0.113.0/24")]; d.Origin != "lists:test" || d.Scenario != "lists:test" || d.Scope != journal.ScopeRange {
		t.Errorf("lists range = %+v (all: %+v)", d, b.New)
	}
	if d := got[netip.MustParsePrefix("2001:db8::10/128")]; d.Origin != "crowdsec" || d.Scope != journal.ScopeIP {
		t.Errorf("crowdsec v6 = %+v (all: %+v)", d, b.New)
	}

	// Outage: a pull fails and counts; after the restart the same key
	// resumes its deltas (nothing new; LAPI may repeat the old delete) and a
	// startup pull has both bans.
	l.Stop(t)
	if _, _, err := pullWith(ctx, c, false); err == nil {
		t.Fatal("pull from a stopped LAPI succeeded")
	}
	if c.Failures() != 1 {
		t.Errorf("failures = %d, want 1", c.Failures())
	}
	l.Start(t)
	b = pull(false)
	for _, k := range b.Deleted {
		if k != want {
			t.Errorf("delta after restart deletes %+v, want at most a repeat of %+v", k, want)
		}
	}
	if len(b.New) != 0 {
		t.Errorf("delta after restart = %+v, want nothing new", b.New)
	}
	if b = pull(true); len(b.New) != 2 {
		t.Errorf("startup after restart: %d new, want 2: %+v", len(b.New), b.New)
	}
	if c.Requests() != 6 {
		t.Errorf("requests = %d, want 6", c.Requests())
	}
	return c
}
