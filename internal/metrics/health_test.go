package metrics

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }

// goodHealth is an enforcer that verified a second ago and is fine.
func goodHealth() heal.Health {
	return heal.Health{
		LastVerify: t0.Add(-time.Second), LastVerifyOK: true, Enforcing: true, LAPIReachable: true,
		LastPull: t0.Add(-3 * time.Second), LastFullResync: t0.Add(-time.Hour),
		LastRepair: t0.Add(-time.Minute), LastRepairDrift: []string{"jump", "set"},
		LastRepairTook: 12500 * time.Microsecond, LastRepairEntries: 100000, Repairs: 2,
	}
}

func TestHealthEndpoint(t *testing.T) {
	tests := []struct {
		name      string
		health    func(h *heal.Health) // changes to goodHealth
		noHealth  bool
		journal   func(*journal.Stats)
		pending   time.Duration // age of a waiting batch (0: none)
		heartbeat time.Duration // age of the loop's heartbeat (-1: no Heartbeat source)
		startedAt time.Duration // New was called this long before t0
		code      int
		status    string
		reasons   []string // substrings, in order
	}{
		{name: "healthy", heartbeat: 300 * time.Millisecond, code: 200, status: StatusHealthy},
		{name: "healthy without heartbeat source", heartbeat: -1, code: 200, status: StatusHealthy},
		{name: "LAPI unreachable: degraded, enforcing from the journal", heartbeat: -1,
			health: func(h *heal.Health) { h.LAPIReachable = false },
			code:   200, status: StatusDegraded, reasons: []string{"LAPI unreachable"}},
		{name: "backing off: degraded", heartbeat: 0,
			health: func(h *heal.Health) { h.BackingOff = true },
			code:   200, status: StatusDegraded, reasons: []string{"another program"}},
		{name: "drift found, repair under way: degraded", heartbeat: 0,
			health: func(h *heal.Health) { h.LastVerifyOK = false },
			code:   200, status: StatusDegraded, reasons: []string{"found drift"}},
		{name: "not enforcing yet", heartbeat: 0,
			health: func(h *heal.Health) { h.Enforcing = false; h.LastVerify = time.Time{} },
			code:   503, status: StatusUnhealthy, reasons: []string{"not enforcing"}},
		{name: "replay failing", heartbeat: 0,
			health: func(h *heal.Health) { h.ConsecutiveFailures = 2; h.LAPIReachable = false },
			code:   503, status: StatusUnhealthy, reasons: []string{"2 consecutive failed", "LAPI unreachable"}},
		{name: "batch pending just under the limit", heartbeat: 0, pending: 29 * time.Second,
			code: 200, status: StatusHealthy},
		{name: "batch pending too long", heartbeat: 0, pending: 31 * time.Second,
			code: 503, status: StatusUnhealthy, reasons: []string{"waited 31s"}},
		{name: "loop wedged: heartbeat stale", heartbeat: 11 * time.Second,
			code: 503, status: StatusUnhealthy, reasons: []string{"wedged: last gone round 11s ago"}},
		{name: "loop alive but backing off (heartbeat fresh, verify old)", heartbeat: 0,
			health: func(h *heal.Health) { h.BackingOff = true; h.LastVerify = t0.Add(-50 * time.Second) },
			code:   200, status: StatusDegraded, reasons: []string{"another program"}},
		{name: "loop wedged: verify stale, no heartbeat source", heartbeat: -1,
			health: func(h *heal.Health) { h.LastVerify = t0.Add(-11 * time.Second) },
			code:   503, status: StatusUnhealthy, reasons: []string{"wedged: last verified 11s ago"}},
		{name: "never verified, shortly after start", heartbeat: -1, startedAt: 2 * time.Second,
			health: func(h *heal.Health) { h.LastVerify = time.Time{} },
			code:   200, status: StatusHealthy},
		{name: "never verified, long after start", heartbeat: -1, startedAt: 20 * time.Second,
			health: func(h *heal.Health) { h.LastVerify = time.Time{} },
			code:   503, status: StatusUnhealthy, reasons: []string{"never verified in 20s"}},
		{name: "journal cannot be written: degraded, enforcing from memory", heartbeat: 0,
			journal: func(s *journal.Stats) {
				s.WriteError, s.NotDurableSince, s.WriteFailures = "no space left on device", t0.Add(-time.Minute), 3
			},
			code: 200, status: StatusDegraded, reasons: []string{"journal cannot be written since 2026-03-01T11:59:00Z: enforcing from memory"}},
		{name: "journal rewritten after it changed under us: healthy", heartbeat: 0,
			journal: func(s *journal.Stats) { s.Rewrites, s.WriteFailures = 1, 1 },
			code:    200, status: StatusHealthy},
		{name: "no enforcer", noHealth: true, heartbeat: -1,
			code: 503, status: StatusUnhealthy, reasons: []string{"no enforcer"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := goodHealth()
			if tc.health != nil {
				tc.health(&h)
			}
			src := Sources{
				PendingSince: func() time.Time {
					if tc.pending == 0 {
						return time.Time{}
					}
					return t0.Add(-tc.pending)
				},
				JournalStats: func() journal.Stats {
					st := journal.Stats{FileSize: 4096, EventsSinceSnapshot: 3, Active: 100000}
					if tc.journal != nil {
						tc.journal(&st)
					}
					return st
				},
			}
			if !tc.noHealth {
				src.Health = func() heal.Health { return h }
			}
			if tc.heartbeat >= 0 {
				src.Heartbeat = func() time.Time { return t0.Add(-tc.heartbeat) }
			}
			clk := &clock{t: t0.Add(-tc.startedAt)}
			m := New(src, Options{Now: clk.now, UpdateFrequency: 10 * time.Second})
			clk.set(t0)
			rec := httptest.NewRecorder()
			NewHandler(m).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/health", nil))
			if rec.Code != tc.code {
				t.Errorf("code %d, want %d\n%s", rec.Code, tc.code, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q", ct)
			}
			var r Report
			if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
				t.Fatalf("decode: %v\n%s", err, rec.Body)
			}
			if r.Status != tc.status || len(r.Reasons) != len(tc.reasons) {
				t.Fatalf("status %q reasons %q, want %q with %d reasons %q", r.Status, r.Reasons, tc.status, len(tc.reasons), tc.reasons)
			}
			for i, want := range tc.reasons {
				if !strings.Contains(r.Reasons[i], want) {
					t.Errorf("reason %d = %q, want it to contain %q", i, r.Reasons[i], want)
				}
			}
		})
	}
}

// The JSON document carries the fields operators and scripts rely on.
func TestHealthDocument(t *testing.T) {
	h := goodHealth()
	m := New(Sources{
		Health:       func() heal.Health { return h },
		PendingSince: func() time.Time { return t0.Add(-1500 * time.Millisecond) },
		JournalStats: func() journal.Stats { return journal.Stats{FileSize: 4096, EventsSinceSnapshot: 3, Active: 100000} },
	}, Options{Now: func() time.Time { return t0 }})
	rec := httptest.NewRecorder()
	NewHandler(m).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/health", nil))
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"status": "healthy", "reasons": []any{}, "last_verify": "2026-03-01T11:59:59Z", "last_verify_ok": true,
		"last_repair": map[string]any{"at": "2026-03-01T11:59:00Z", "drift": []any{"jump", "set"}, "took_ms": 12.5, "entries": 100000.0},
		"repairs":     2.0, "consecutive_failures": 0.0, "lapi_reachable": true, "backing_off": false, "enforcing": true,
		"last_pull": "2026-03-01T11:59:57Z", "last_full_resync": "2026-03-01T11:00:00Z",
		"journal": map[string]any{"active_entries": 100000.0, "events_since_snapshot": 3.0, "size_bytes": 4096.0,
			"durable": true, "write_failures": 0.0, "rewrites": 0.0},
		"pending_batch_age_ms": 1500.0,
	}
	for k, v := range want {
		got, _ := json.Marshal(doc[k])
		exp, _ := json.Marshal(v)
		if string(got) != string(exp) {
			t.Errorf("%s = %s, want %s", k, got, exp)
		}
	}
	var extra []string
	for k := range doc {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	if slices.Sort(extra); len(extra) > 0 {
		t.Errorf("unexpected fields %v", extra)
	}
}
