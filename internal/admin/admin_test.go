package admin

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// testJournal opens a journal in t.TempDir() holding ds, appended at t0.
func testJournal(t *testing.T, ds ...journal.Decision) *journal.Journal {
	t.Helper()
	j, err := journal.Open(journal.Options{
		Path: filepath.Join(t.TempDir(), "journal.db"), Now: func() time.Time { return t0 },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := j.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := j.Append(journal.Batch{New: ds}); err != nil {
		t.Fatal(err)
	}
	return j
}

func dec(prefix, origin string, ttl time.Duration) journal.Decision {
	p := netip.MustParsePrefix(prefix)
	scope := journal.ScopeRange
	if p.IsSingleIP() {
		scope = journal.ScopeIP
	}
	return journal.Decision{Prefix: p, Until: t0.Add(ttl), Origin: origin, Scenario: "crowdsecurity/ssh-bf", Type: "ban", Scope: scope}
}

func values(es []Entry) []string {
	out := []string{}
	for _, e := range es {
		out = append(out, e.Value+" "+e.Origin)
	}
	return out
}

func TestShowOf(t *testing.T) {
	j := testJournal(t,
		dec("192.0.2.10/32", "cscli", 4*time.Hour),
		dec("192.0.2.8/29", "lists", time.Hour),
		dec("198.51.100.0/24", "CAPI", time.Hour),
		dec("2001:db8::/64", "crowdsec", time.Hour),
		dec("2001:db8:1::1/128", "cscli", time.Hour),
		dec("203.0.113.7/32", "cscli", time.Minute), // expired at the query time below
	)
	now := t0.Add(2 * time.Minute)
	tests := []struct {
		target string
		want   []string
	}{
		{"192.0.2.10", []string{"192.0.2.8/29 lists", "192.0.2.10 cscli"}},
		{"192.0.2.9", []string{"192.0.2.8/29 lists"}},
		{"192.0.2.99", []string{}},
		{"::ffff:192.0.2.10", []string{"192.0.2.8/29 lists", "192.0.2.10 cscli"}},
		{"198.51.100.200", []string{"198.51.100.0/24 CAPI"}},
		{"198.51.0.0/16", []string{"198.51.100.0/24 CAPI"}}, // range containing a decision
		{"192.0.2.0/30", []string{}},                        // next to, not overlapping, 192.0.2.8/29
		{"192.0.2.12/30", []string{"192.0.2.8/29 lists"}},   // inside the range only
		{"2001:db8::5", []string{"2001:db8::/64 crowdsec"}}, // v6 in a range
		{"2001:db8::/32", []string{"2001:db8::/64 crowdsec", "2001:db8:1::1 cscli"}},
		{"2001:db8:2::1", []string{}},
		{"203.0.113.7", []string{}}, // expired decisions do not block
		{"0.0.0.0/0", []string{"192.0.2.8/29 lists", "192.0.2.10 cscli", "198.51.100.0/24 CAPI"}},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			p, err := ParseTarget(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			s := ShowOf(j, p, now)
			if got := values(s.Matches); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ShowOf(%s) = %q, want %q", tt.target, got, tt.want)
			}
			if s.Blocked() != (len(tt.want) > 0) {
				t.Fatalf("Blocked = %v", s.Blocked())
			}
		})
	}
}

func TestParseTargetRejects(t *testing.T) {
	for _, s := range []string{"", "192.0.2", "192.0.2.1/33", "example.com", "2001:db8::/129"} {
		if _, err := ParseTarget(s); err == nil {
			t.Errorf("ParseTarget(%q) succeeded", s)
		}
	}
}

func TestStatsAndList(t *testing.T) {
	j := testJournal(t,
		dec("192.0.2.10/32", "cscli", 4*time.Hour),
		dec("2001:db8::1/128", "cscli", time.Hour),
		dec("198.51.100.0/24", "lists", 2*time.Hour),
		dec("203.0.113.7/32", "lists", time.Minute),
	)
	now := t0.Add(2 * time.Minute)
	st := StatsOf(j, now)
	want := []OriginCount{{Origin: "cscli", Index: 0, IPv4: 1, IPv6: 1}, {Origin: "lists", Index: 1, IPv4: 1}}
	if st.Active != 3 || !reflect.DeepEqual(st.ByOrigin, want) || st.EventsSinceSnapshot != 1 || st.FileSize <= 0 {
		t.Fatalf("StatsOf = %+v", st)
	}
	if !st.OldestUntil.Equal(t0.Add(time.Hour)) || !st.NewestUntil.Equal(t0.Add(4*time.Hour)) {
		t.Fatalf("expiry bounds %v .. %v", st.OldestUntil, st.NewestUntil)
	}
	es := ListOf(j, now)
	if got := values(es); !reflect.DeepEqual(got, []string{"192.0.2.10 cscli", "198.51.100.0/24 lists", "2001:db8::1 cscli"}) {
		t.Fatalf("ListOf = %q", got)
	}
	if !es[0].Since.Equal(t0) {
		t.Fatalf("since = %v, want %v", es[0].Since, t0)
	}
}

// fakeService returns canned answers and records the show target.
type fakeService struct {
	target netip.Prefix
	err    error
}

var (
	fakeEntry = Entry{Value: "192.0.2.10", Prefix: netip.MustParsePrefix("192.0.2.10/32"), Origin: "cscli",
		Scenario: "manual", Type: "ban", Scope: "ip", Until: t0.Add(4 * time.Hour), Since: t0}
	fakeStats  = Stats{Path: "/j", FileSize: 32768, Active: 1, ByOrigin: []OriginCount{{Origin: "cscli", IPv4: 1}}, Now: t0}
	fakeVerify = journal.VerifyReport{Path: "/j", Events: 2, Problems: []string{"event 2: bad"}}
	fakeCheck  = Check{Drift: []DriftItem{{Kind: "member", Detail: "192.0.2.10/32 missing"}}}
)

func (f *fakeService) Stats(context.Context) (Stats, error) { return fakeStats, f.err }
func (f *fakeService) Show(_ context.Context, p netip.Prefix) (Show, error) {
	f.target = p
	return Show{Target: p, Matches: []Entry{fakeEntry}, Now: t0}, f.err
}
func (f *fakeService) List(context.Context) ([]Entry, error) { return []Entry{fakeEntry}, f.err }
func (f *fakeService) Verify(context.Context) (journal.VerifyReport, error) {
	return fakeVerify, f.err
}
func (f *fakeService) Check(context.Context) (Check, error) { return fakeCheck, f.err }

// serve runs Serve on a socket in t.TempDir() and returns its path and a
// stop function that waits for Serve to return.
func serve(t *testing.T, svc Service) (string, func() error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), SocketName)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, path, svc, slog.New(slog.DiscardHandler)) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-errc:
			t.Fatalf("Serve: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("admin socket never came up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-errc
	}
	t.Cleanup(func() { _ = stop() })
	return path, stop
}

func TestAdminRoundTrip(t *testing.T) {
	f := &fakeService{}
	path, stop := serve(t, f)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	c := NewClient(path)
	ctx := t.Context()
	st, err := c.Stats(ctx)
	if err != nil || !reflect.DeepEqual(st, fakeStats) {
		t.Fatalf("Stats = %+v, %v", st, err)
	}
	sh, err := c.Show(ctx, netip.MustParsePrefix("2001:db8::/48"))
	if err != nil || len(sh.Matches) != 1 || sh.Matches[0] != fakeEntry || f.target != netip.MustParsePrefix("2001:db8::/48") {
		t.Fatalf("Show = %+v, %v (target seen %v)", sh, err, f.target)
	}
	es, err := c.List(ctx)
	if err != nil || !reflect.DeepEqual(es, []Entry{fakeEntry}) {
		t.Fatalf("List = %+v, %v", es, err)
	}
	rep, err := c.Verify(ctx)
	if err != nil || !reflect.DeepEqual(rep, fakeVerify) {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
	ch, err := c.Check(ctx)
	if err != nil || !reflect.DeepEqual(ch, fakeCheck) {
		t.Fatalf("Check = %+v, %v", ch, err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after shutdown: %v", err)
	}
	if _, err := c.Stats(ctx); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("Stats after shutdown = %v, want ErrNoDaemon", err)
	}
}

func TestAdminErrors(t *testing.T) {
	f := &fakeService{err: errors.New("kernel unreadable")}
	path, _ := serve(t, f)
	c := NewClient(path)
	if _, err := c.Check(t.Context()); err == nil || !strings.Contains(err.Error(), "kernel unreadable") || errors.Is(err, ErrNoDaemon) {
		t.Fatalf("Check = %v, want the service's error", err)
	}
	// A bad target is the caller's fault: 400 with a message.
	resp, err := c.hc.Get("http://admin/v1/journal/show?target=nonsense")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("bad target: status %d", resp.StatusCode)
	}
}

func TestServeStaleAndInUse(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, SocketName)
	// A stale socket: bound, then its listener gone without unlinking.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := NewClient(path).Stats(t.Context()); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("client on a stale socket = %v, want ErrNoDaemon", err)
	}
	if _, err := NewClient(filepath.Join(dir, "absent.sock")).Stats(t.Context()); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("client on a missing socket = %v, want ErrNoDaemon", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, path, &fakeService{}, slog.New(slog.DiscardHandler)) }()
	c := NewClient(path)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Stats(t.Context()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Serve did not replace the stale socket")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A second server on a live socket is refused and leaves it alone.
	err = Serve(t.Context(), path, &fakeService{}, slog.New(slog.DiscardHandler))
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second Serve = %v, want ErrInUse", err)
	}
	if _, err := c.Stats(t.Context()); err != nil {
		t.Fatalf("first server broken by the second: %v", err)
	}
	// A regular file in the way is not ours to remove.
	other := filepath.Join(dir, "file")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Serve(t.Context(), other, &fakeService{}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("Serve over a regular file succeeded")
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestOfflineService(t *testing.T) {
	j := testJournal(t, dec("192.0.2.10/32", "cscli", time.Hour))
	now := func() time.Time { return t0.Add(time.Minute) }
	svc := NewOfflineService(j, nil, now)
	if _, err := svc.Check(t.Context()); !errors.Is(err, ErrNoCheck) {
		t.Fatalf("Check without a checker = %v", err)
	}
	var d backend.Drift
	d.Add("set", "set x is missing")
	svc = NewOfflineService(j, func(context.Context) (backend.Drift, error) { return d, nil }, now)
	ch, err := svc.Check(t.Context())
	if err != nil || ch.Clean || !reflect.DeepEqual(ch.Drift, []DriftItem{{"set", "set x is missing"}}) {
		t.Fatalf("Check = %+v, %v", ch, err)
	}
	rep, err := svc.Verify(t.Context())
	if err != nil || !rep.OK() || rep.Events != 1 {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
	sh, err := svc.Show(t.Context(), netip.MustParsePrefix("192.0.2.10/32"))
	if err != nil || !sh.Blocked() {
		t.Fatalf("Show = %+v, %v", sh, err)
	}
}
