package lapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// decision renders one LAPI decision of the given scope, value and type.
func decision(scope, value, typ string) string {
	return `{"duration":"1h","id":1,"origin":"crowdsec","scenario":"s","scope":"` + scope + `","type":"` + typ + `","value":"` + value + `"}`
}

// pullBody decodes body with PullBatch from a stand-in LAPI.
func pullBody(t *testing.T, body string, opts NormalizeOptions) (journal.Batch, []Rejection, error) {
	t.Helper()
	srv := httptest.NewServer(&bodyLAPI{body: body})
	defer srv.Close()
	c, err := NewClient(ClientConfig{APIURL: srv.URL, APIKey: testKey}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	b, rej, _, err := c.PullBatch(t.Context(), true, opts, func() time.Time { return testNow })
	b = flat(b)
	return b, rej, err
}

// TestProtectedNeverBanned: a ban on loopback or LAPI's address, whatever
// scope or form covers it, is rejected alone as ReasonProtected; bans next
// to them, and deletes of them, go through.
func TestProtectedNeverBanned(t *testing.T) {
	lapiAddrs := []netip.Prefix{netip.MustParsePrefix("192.0.2.100/32"), netip.MustParsePrefix("2001:db8::53/128")}
	tests := []struct {
		scope, value string
		protected    bool
	}{
		{"Ip", "127.0.0.1", true},
		{"Ip", "127.1.2.3", true},
		{"Ip", "::1", true},
		{"Ip", "::ffff:127.0.0.1", true},
		{"Ip", "127.0.0.1/32", true},
		{"Range", "127.0.0.0/8", true},
		{"Range", "126.0.0.0/7", true},
		{"Range", "0.0.0.0/1", true},
		{"Range", "::/127", true},
		{"Range", "::/64", true},
		{"Range", "::ffff:127.0.0.0/104", true},
		{"Range", "::ffff:0.0.0.0/95", true}, // kept as v6, holds v4-mapped loopback
		{"Ip", "192.0.2.100", true},
		{"Ip", "::ffff:192.0.2.100", true},
		{"Range", "192.0.2.0/24", true},
		{"Range", "128.0.0.0/1", true}, // holds the LAPI address 192.0.2.100
		{"Ip", "2001:db8::53", true},
		{"Range", "2001:db8::/32", true},
		{"Ip", "192.0.2.10", false},
		{"Range", "192.0.2.128/25", false},
		{"Range", "198.18.0.0/15", false},
		{"Ip", "2001:db8::10", false},
		{"Range", "2001:db8:1::/48", false},
		{"Ip", "128.0.0.1", false},
	}
	var news, dels []string
	for _, tc := range tests {
		news = append(news, decision(tc.scope, tc.value, "ban"))
		dels = append(dels, decision(tc.scope, tc.value, "ban"))
	}
	body := `{"new":[` + strings.Join(news, ",") + `],"deleted":null}`
	b, rej, err := pullBody(t, body, NormalizeOptions{Protected: lapiAddrs})
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	for _, d := range b.New {
		kept[d.Prefix.String()] = true
	}
	rejected := map[string]bool{}
	for _, r := range rej {
		if r.Reason != ReasonProtected {
			t.Errorf("%s rejected as %q", r.Value, r.Reason)
		}
		rejected[r.Value] = true
	}
	for _, tc := range tests {
		if rejected[tc.value] != tc.protected {
			t.Errorf("%s %s: rejected %v, want %v", tc.scope, tc.value, rejected[tc.value], tc.protected)
		}
	}
	if len(b.New)+len(rej) != len(tests) {
		t.Errorf("%d kept + %d rejected of %d", len(b.New), len(rej), len(tests))
	}

	// Loopback is protected with no Protected option at all; deletes of
	// protected addresses pass (they can only lift a ban).
	body = `{"new":[` + decision("Ip", "127.0.0.1", "ban") + `],"deleted":[` + strings.Join(dels, ",") + `]}`
	b, rej, err = pullBody(t, body, NormalizeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.New) != 0 || len(rej) != 1 || rej[0].Reason != ReasonProtected || len(b.Deleted) != len(tests) {
		t.Errorf("loopback without options: new %v, rejected %+v, %d deletes of %d", b.New, rej, len(b.Deleted), len(tests))
	}
}

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func TestLAPIPrefixes(t *testing.T) {
	r := fakeResolver{
		"lapi.example": {netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8::53")},
		"mapped":       {netip.MustParseAddr("::ffff:192.0.2.54")},
	}
	tests := []struct {
		url     string
		want    []string
		wantErr bool
	}{
		{url: "http://127.0.0.1:8080/", want: []string{"127.0.0.1/32", "::ffff:127.0.0.1/128"}},
		{url: "https://[2001:db8::1]:8080/", want: []string{"2001:db8::1/128"}},
		{url: "http://[fe80::1%25eth0]:8080/", want: []string{"fe80::1/128"}},
		{url: "http://lapi.example:8080/", want: []string{"192.0.2.53/32", "::ffff:192.0.2.53/128", "2001:db8::53/128"}},
		{url: "http://mapped/", want: []string{"192.0.2.54/32", "::ffff:192.0.2.54/128"}},
		{url: "http://unknown.example:8080/", wantErr: true},
		{url: "http:///nohost", wantErr: true},
		{url: "http://[::1", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			ps, err := LAPIPrefixes(t.Context(), tc.url, r)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			var got []string
			for _, p := range ps {
				got = append(got, p.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestTypeCaseInsensitive: types match supported_decisions_types whatever
// their case, as upstream lower-cases them, and a delete in another case
// removes the ban.
func TestTypeCaseInsensitive(t *testing.T) {
	body := `{"new":[` + decision("Ip", "192.0.2.1", "BAN") + `,` + decision("Ip", "192.0.2.2", "Captcha") + `,` +
		decision("Ip", "192.0.2.3", "Simulation:Ban") + `],"deleted":[` + decision("Ip", "192.0.2.4", "Ban") + `]}`
	tests := []struct {
		name      string
		types     map[string]bool
		wantNew   []string
		wantTypes []string
	}{
		{name: "default ban", wantNew: []string{"192.0.2.1/32"}, wantTypes: []string{"ban"}},
		{name: "config in upper case", types: map[string]bool{"Ban": true, "CAPTCHA": true},
			wantNew: []string{"192.0.2.1/32", "192.0.2.2/32"}, wantTypes: []string{"ban", "captcha"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, rej, err := pullBody(t, body, NormalizeOptions{Types: tc.types})
			if err != nil || len(rej) != 0 {
				t.Fatalf("err %v, rejections %+v", err, rej)
			}
			var got, types []string
			for _, d := range b.New {
				got = append(got, d.Prefix.String())
				types = append(types, d.Type)
			}
			if !reflect.DeepEqual(got, tc.wantNew) || !reflect.DeepEqual(types, tc.wantTypes) {
				t.Errorf("new %v types %v, want %v %v", got, types, tc.wantNew, tc.wantTypes)
			}
			want := journal.Key{Scope: journal.ScopeIP, Prefix: netip.MustParsePrefix("192.0.2.4/32"), Type: "ban"}
			if len(b.Deleted) != 1 || b.Deleted[0] != want {
				t.Errorf("deleted %+v, want %+v", b.Deleted, want)
			}
		})
	}
}

// TestDeletedBeforeNewStaysBanned: within one delta upstream applies deleted
// before new, so an address in both stays banned. The batch goes through a
// real journal, which applies New before Deleted.
func TestDeletedBeforeNewStaysBanned(t *testing.T) {
	j, err := journal.Open(journal.Options{Path: filepath.Join(t.TempDir(), "journal.db"), Logger: discardLogger(),
		Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	banned := decision("Ip", "192.0.2.1", "ban")
	other := decision("Ip", "192.0.2.2", "ban")
	steps := []struct {
		body       string
		wantBanned []string
	}{
		{body: `{"new":[` + banned + `,` + other + `],"deleted":null}`, wantBanned: []string{"192.0.2.1/32", "192.0.2.2/32"}},
		// LAPI's order: deleted first; the re-ban of .1 wins, .2 goes
		{body: `{"deleted":[` + banned + `,` + other + `],"new":[` + banned + `]}`, wantBanned: []string{"192.0.2.1/32"}},
		// and in the other key order too
		{body: `{"new":[` + banned + `],"deleted":[` + strings.Replace(banned, "ban", "BAN", 1) + `]}`, wantBanned: []string{"192.0.2.1/32"}},
		{body: `{"deleted":[` + banned + `],"new":null}`, wantBanned: nil},
	}
	for i, st := range steps {
		b, rej, err := pullBody(t, st.body, NormalizeOptions{})
		if err != nil || len(rej) != 0 {
			t.Fatalf("step %d: err %v, rejections %+v", i, err, rej)
		}
		b.Full = false // deltas: Full would replace the view whatever Deleted says
		if err := j.Append(b); err != nil {
			t.Fatal(err)
		}
		var got []string
		j.View().Each(func(d journal.Decision) bool {
			if d.Until.After(testNow) {
				got = append(got, d.Prefix.String())
			}
			return true
		})
		sort.Strings(got)
		if !reflect.DeepEqual(got, st.wantBanned) {
			t.Errorf("step %d: banned %v, want %v", i, got, st.wantBanned)
		}
	}
}

// TestBadDecisionRejectedAlone: a decision that is valid JSON but not a
// decision, or absurdly large, costs only itself; the others are kept.
func TestBadDecisionRejectedAlone(t *testing.T) {
	good := decision("Ip", "192.0.2.1", "ban")
	good2 := decision("Ip", "192.0.2.2", "ban")
	huge := strings.Repeat("a", 2*maxElement)
	long := strings.Repeat("x", maxFieldLen+1)
	tests := []struct {
		name, elem string
		reason     string
	}{
		{"id is a word", `{"id":"forty","duration":"1h","origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.9"}`, ReasonMalformed},
		{"value is a number", `{"value":5,"scope":"Ip","type":"ban"}`, ReasonMalformed},
		{"duration is an object", `{"duration":{"h":1},"value":"192.0.2.9","scope":"Ip","type":"ban"}`, ReasonMalformed},
		{"simulated is a string", `{"simulated":"no","value":"192.0.2.9","scope":"Ip","type":"ban"}`, ReasonMalformed},
		{"a number", `42`, ReasonMalformed},
		{"a string", `"192.0.2.9"`, ReasonMalformed},
		{"an array", `[` + good + `]`, ReasonMalformed},
		{"true", `true`, ReasonMalformed},
		{"scenario too long", strings.Replace(good, `"scenario":"s"`, `"scenario":"`+long+`"`, 1), ReasonTooLong},
		{"value too long", `{"duration":"1h","origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"` + long + `"}`, ReasonTooLong},
		{"oversized object", `{"x":"` + huge + `","value":"192.0.2.9"}`, ReasonOversized},
		{"oversized nested", `{"x":[` + strings.Repeat(`{"a":"]}\"[{"},`, 2*maxElement/16) + `1]}`, ReasonOversized},
		{"oversized string", `"` + huge + `"`, ReasonOversized},
		{"oversized number", strings.Repeat("9", 2*maxElement), ReasonOversized},
	}
	for _, tc := range tests {
		for _, list := range []string{"new", "deleted"} {
			t.Run(tc.name+"/"+list, func(t *testing.T) {
				other := map[string]string{"new": "deleted", "deleted": "new"}[list]
				body := `{"` + list + `":[` + good + `, ` + tc.elem + ` ,` + good2 + `],"` + other + `":null}`
				for rname, r := range map[string]io.Reader{"whole": strings.NewReader(body), "halves": iotest.HalfReader(strings.NewReader(body))} {
					n := newNormalizer(NormalizeOptions{})
					n.now = testNow
					if err := n.decodeStream(r); err != nil {
						t.Fatalf("%s: %v", rname, err)
					}
					b, rej, _ := n.result()
					if b.Len() != 2 || len(rej) != 1 || rej[0].Reason != tc.reason || rej[0].Deleted != (list == "deleted") {
						t.Fatalf("%s: kept %d, rejected %+.200v, want 2 kept and one %q", rname, b.Len(), rej, tc.reason)
					}
				}
				// the same element cut short is a broken stream, not a rejection
				cut := `{"` + list + `":[` + good + `, ` + tc.elem[:len(tc.elem)-1]
				n := newNormalizer(NormalizeOptions{})
				if err := n.decodeStream(strings.NewReader(cut)); err == nil {
					t.Fatalf("truncated inside the element: no error")
				}
			})
		}
	}
}

// TestPullBatchBounded: a LAPI that says nothing, one that trickles bytes
// forever, and a body over the size limit all fail the pull (ErrTimeout,
// ErrTooLarge), counted as LAPI failures, with no partial result.
func TestPullBatchBounded(t *testing.T) {
	good := `{"new":[` + decision("Ip", "192.0.2.1", "ban") + `],"deleted":null}`
	mux := http.NewServeMux()
	mux.HandleFunc("/silent/v1/decisions/stream", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // no header, no byte
	})
	mux.HandleFunc("/stalls/v1/decisions/stream", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"new":[`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("/trickles/v1/decisions/stream", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"new":[`)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
				_, _ = io.WriteString(w, " ") // valid JSON, forever
			}
		}
	})
	mux.Handle("/big/", http.StripPrefix("/big", &bodyLAPI{body: `{"x":"` + strings.Repeat("a", 4096) + `",` + good[1:]}))
	mux.Handle("/fits/", http.StripPrefix("/fits", &bodyLAPI{body: good}))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	tests := []struct {
		name, path string
		idle       time.Duration
		deadline   time.Duration // 0: none
		want       error
	}{
		{name: "silent", path: "/silent/", idle: 200 * time.Millisecond, want: ErrTimeout},
		{name: "stalls mid-body", path: "/stalls/", idle: 200 * time.Millisecond, want: ErrTimeout},
		{name: "trickles past the deadline", path: "/trickles/", idle: time.Minute, deadline: 300 * time.Millisecond, want: ErrTimeout},
		{name: "too large", path: "/big/", idle: time.Minute, want: ErrTooLarge},
		{name: "fits", path: "/fits/", idle: time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(ClientConfig{APIURL: srv.URL + tc.path, APIKey: testKey, IdleTimeout: tc.idle, MaxResponseBytes: 1024}, discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			b, rej, _, err := c.PullBatch(ctx, true, NormalizeOptions{}, nil)
			b = flat(b)
			if tc.want == nil {
				if err != nil || len(b.New) != 1 || c.Failures() != 0 {
					t.Fatalf("err %v, %d new, %d failures", err, len(b.New), c.Failures())
				}
				return
			}
			if !errors.Is(err, tc.want) || b.Len() != 0 || rej != nil {
				t.Fatalf("err = %v (%d decisions), want %v", err, b.Len(), tc.want)
			}
			if c.Failures() != 1 {
				t.Errorf("failures = %d, want 1", c.Failures())
			}
			if s := ourGoroutines(); s != "" {
				t.Errorf("goroutine left behind:\n%s", s)
			}
		})
	}
}

// OnNew sees each accepted new decision once, in stream order, with the
// Until and origin the batch holds: a backend's preload loads what the
// replay will enforce. Rejected, skipped and deleted decisions are not seen.
func TestOnNewSeesTheBatch(t *testing.T) {
	body := `{"deleted":[` + decision("Ip", "192.0.2.9", "ban") + `],"new":[` +
		decision("Ip", "192.0.2.1", "ban") + `,` +
		decision("Ip", "not-an-ip", "ban") + `,` +
		decision("Ip", "192.0.2.2", "captcha") + `,` +
		strings.Replace(decision("Range", "203.0.113.0/24", "ban"), `"origin":"crowdsec"`, `"origin":"lists","scenario":"lists:firehol"`, 1) + `,` +
		strings.Replace(decision("Ip", "2001:db8::1", "ban"), `"1h"`, `"2h30m"`, 1) + `]}`
	type seen struct {
		p      netip.Prefix
		until  time.Time
		origin string
	}
	var got []seen
	opts := NormalizeOptions{OnNew: func(p netip.Prefix, until time.Time, origin string) {
		got = append(got, seen{p, until, origin})
	}}
	b, rej, err := pullBody(t, body, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(rej) != 1 {
		t.Fatalf("rejections %v, want the bad ip alone", rej)
	}
	var want []seen
	for _, d := range b.AllNew() {
		want = append(want, seen{d.Prefix, d.Until, d.Origin})
	}
	if len(want) != 3 || !slices.Equal(got, want) {
		t.Fatalf("OnNew saw %v, the batch holds %v (want the 3 accepted bans)", got, want)
	}
}
