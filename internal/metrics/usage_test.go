package metrics

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/apiclient"
	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// item is a usage item flattened for comparison.
type item struct {
	name, unit, origin, ipType string
	value                      float64
}

func flatten(its []*models.MetricsDetailItem) map[item]bool {
	out := map[item]bool{}
	for _, it := range its {
		out[item{*it.Name, *it.Unit, it.Labels["origin"], it.Labels["ip_type"], *it.Value}] = true
	}
	return out
}

func TestUsageItemsDeltas(t *testing.T) {
	names := map[int]string{0: "crowdsec"}
	counters := func(members int, dropped, processed uint64) backend.Counters {
		return backend.Counters{
			Rules: true,
			Sets:  []backend.SetCounters{{Name: "s-0", Family: "ipv4", Members: members, Packets: dropped, Bytes: dropped * 100}},
			Families: []backend.FamilyCounters{
				{Family: "ipv4", Packets: processed, Bytes: processed * 100},
			},
		}
	}
	u := &usage{last: map[string]uint64{}}
	pushes := []struct {
		name      string
		c         backend.Counters
		dropped   float64 // packets in the window
		processed float64
	}{
		{"first push: everything counted so far", counters(5, 10, 50), 10, 50},
		{"second push: only the growth", counters(6, 14, 80), 4, 30},
		{"no traffic", counters(6, 14, 80), 0, 0},
		{"counters reset by a repair: all new", counters(6, 3, 7), 3, 7},
	}
	for _, p := range pushes {
		got := flatten(u.items(p.c, names))
		want := map[item]bool{
			{"active_decisions", "ip", "crowdsec", "ipv4", float64(p.c.Sets[0].Members)}: true,
			{"dropped", "packet", "crowdsec", "ipv4", p.dropped}:                         true,
			{"dropped", "byte", "crowdsec", "ipv4", p.dropped * 100}:                     true,
			{"processed", "packet", "", "ipv4", p.processed}:                             true,
			{"processed", "byte", "", "ipv4", p.processed * 100}:                         true,
		}
		if len(got) != len(want) {
			t.Fatalf("%s: items %v, want %v", p.name, got, want)
		}
		for w := range want {
			if !got[w] {
				t.Errorf("%s: missing %+v in %v", p.name, w, got)
			}
		}
	}
	ipset := backend.Counters{Sets: []backend.SetCounters{{Name: "mine4", Family: "ipv4", Shared: true, Members: 9}}}
	got := flatten(u.items(ipset, names))
	if len(got) != 1 || !got[item{"active_decisions", "ip", "ipset", "ipv4", 9}] {
		t.Errorf("ipset mode items = %v, want active decisions only", got)
	}
}

// recordLog keeps slog records for assertions.
type recordLog struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (r *recordLog) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return nil
}
func (r *recordLog) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recordLog) WithGroup(string) slog.Handler      { return r }

// count returns how many records at level or above were logged.
func (r *recordLog) count(level slog.Level) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if rec.Level >= level {
			n++
		}
	}
	return n
}

// fakeLAPIServer answers POST /v1/usage-metrics with the statuses given in
// turn (the last one repeats) and keeps the bodies.
type fakeLAPIServer struct {
	mu       sync.Mutex
	statuses []int
	bodies   [][]byte
	enough   chan struct{}
	want     int
}

func (f *fakeLAPIServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path != "/v1/usage-metrics" || r.Method != http.MethodPost {
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusTeapot)
		return
	}
	f.bodies = append(f.bodies, body)
	st := f.statuses[min(len(f.bodies), len(f.statuses))-1]
	if len(f.bodies) == f.want {
		close(f.enough)
	}
	w.WriteHeader(st)
	if st < 300 {
		_, _ = w.Write([]byte("{}"))
	}
}

func TestRunUsageMetrics(t *testing.T) {
	tests := []struct {
		name     string
		statuses []int
		pushes   int
		info     int // records at Info or above (Warn included)
		warn     int // records at Warn or above
	}{
		{"old LAPI without the endpoint: one info line", []int{404}, 5, 1, 0},
		{"LAPI failing: one warning per streak", []int{201, 500, 500, 500, 201, 500}, 7, 3, 2},
		{"LAPI accepting: silent", []int{201}, 3, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeLAPIServer{statuses: tc.statuses, enough: make(chan struct{}), want: tc.pushes}
			srv := httptest.NewServer(f)
			defer srv.Close()
			u, err := url.Parse(srv.URL + "/")
			if err != nil {
				t.Fatal(err)
			}
			api, err := apiclient.NewDefaultClient(u, "v1", "test", srv.Client())
			if err != nil {
				t.Fatal(err)
			}
			rl := &recordLog{}
			src := Sources{Kernel: &fakeKernel{c: iptablesCounters()}, Origins: func() map[string]int { return map[string]int{"crowdsec": 0} }}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- runUsage(ctx, api, src, slog.New(rl), time.Millisecond) }()
			select {
			case <-f.enough:
			case <-time.After(30 * time.Second):
				t.Fatal("LAPI never got the pushes")
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("runUsage = %v, want nil after cancel", err)
			}
			f.mu.Lock()
			body := f.bodies[0]
			f.mu.Unlock()
			var all models.AllMetrics
			if err := json.Unmarshal(body, &all); err != nil {
				t.Fatal(err)
			}
			if len(all.RemediationComponents) != 1 || all.RemediationComponents[0].Type != UsageBouncerType {
				t.Fatalf("payload %s", body)
			}
			items := all.RemediationComponents[0].Metrics[0].Items
			if got := flatten(items); !got[item{"active_decisions", "ip", "crowdsec", "ipv4", 10}] || !got[item{"processed", "packet", "", "ipv4", 1000}] {
				t.Errorf("first push items %v", got)
			}
			// Pushes past the wanted count may be under way: count the log
			// lines of the pushes the server saw, which the statuses fix.
			if got := rl.count(slog.LevelWarn); got != tc.warn {
				t.Errorf("%d warnings, want %d", got, tc.warn)
			}
			if got := rl.count(slog.LevelInfo); got != tc.info {
				t.Errorf("%d info-or-above lines, want %d", got, tc.info)
			}
		})
	}
}

func TestRunUsageMetricsNoClient(t *testing.T) {
	if err := RunUsageMetrics(t.Context(), nil, Sources{}, nil); err != ErrNoAPIClient {
		t.Fatalf("RunUsageMetrics(nil client) = %v, want ErrNoAPIClient", err)
	}
}
