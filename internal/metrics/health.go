package metrics

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// Health statuses.
const (
	// StatusHealthy: enforcing, verifying, LAPI reachable.
	StatusHealthy = "healthy"
	// StatusDegraded: enforcement works but something needs attention
	// (LAPI unreachable and the journal carries enforcement; repairs held
	// back by another program undoing our rules; the journal cannot be
	// written and enforcement runs from memory). Served with 200.
	StatusDegraded = "degraded"
	// StatusUnhealthy: enforcement is broken or cannot be vouched for (not
	// enforcing yet, replays failing, a batch waiting too long, the loop
	// wedged). Served with 503.
	StatusUnhealthy = "unhealthy"
)

// Report is the /health JSON document. Times are RFC 3339, null when the
// event never happened.
type Report struct {
	Status              string         `json:"status"`
	Reasons             []string       `json:"reasons"`
	LastVerify          *time.Time     `json:"last_verify"`
	LastVerifyOK        bool           `json:"last_verify_ok"`
	LastRepair          *RepairReport  `json:"last_repair"`
	Repairs             int            `json:"repairs"`
	RepairsByKind       map[string]int `json:"repairs_by_kind,omitempty"`
	ConsecutiveFailures int            `json:"consecutive_failures"`
	BackingOff          bool           `json:"backing_off"`
	Enforcing           bool           `json:"enforcing"`
	LAPIReachable       bool           `json:"lapi_reachable"`
	LAPIUnauthorized    bool           `json:"lapi_unauthorized,omitempty"`
	LastPull            *time.Time     `json:"last_pull"`
	LastFullResync      *time.Time     `json:"last_full_resync"`
	Journal             *JournalReport `json:"journal,omitempty"`
	PendingBatchAgeMS   int64          `json:"pending_batch_age_ms"`
}

// RepairReport describes the last successful repair.
type RepairReport struct {
	At      time.Time `json:"at"`
	Drift   []string  `json:"drift"`
	TookMS  float64   `json:"took_ms"`
	Entries int       `json:"entries"`
}

// JournalReport is the journal part of the health report.
type JournalReport struct {
	ActiveEntries       int   `json:"active_entries"`
	EventsSinceSnapshot int   `json:"events_since_snapshot"`
	SizeBytes           int64 `json:"size_bytes"`
	// Durable is false while the file lags behind the enforced view
	// (WriteError says why, NotDurableSince since when).
	Durable         bool       `json:"durable"`
	WriteError      string     `json:"write_error,omitempty"`
	NotDurableSince *time.Time `json:"not_durable_since,omitempty"`
	WriteFailures   uint64     `json:"write_failures"`
	Rewrites        uint64     `json:"rewrites"`
}

// Healthy reports whether the status is served with 200 (healthy or
// degraded).
func (r Report) Healthy() bool { return r.Status != StatusUnhealthy }

// Health computes the health report now. Unhealthy reasons come first,
// then degraded ones.
func (m *Metrics) Health() Report {
	now := m.opts.Now()
	r := Report{Reasons: []string{}}
	var bad, warn []string
	if m.src.Health == nil {
		bad = append(bad, "no enforcer state available")
	} else {
		h := m.src.Health()
		r.LastVerify, r.LastVerifyOK = timePtr(h.LastVerify), h.LastVerifyOK
		if !h.LastRepair.IsZero() {
			r.LastRepair = &RepairReport{
				At: h.LastRepair, Drift: append([]string{}, h.LastRepairDrift...),
				TookMS: float64(h.LastRepairTook.Microseconds()) / 1000, Entries: h.LastRepairEntries,
			}
		}
		r.Repairs, r.RepairsByKind = h.Repairs, h.RepairsByKind
		r.ConsecutiveFailures, r.BackingOff, r.Enforcing = h.ConsecutiveFailures, h.BackingOff, h.Enforcing
		r.LAPIReachable, r.LastPull, r.LastFullResync = h.LAPIReachable, timePtr(h.LastPull), timePtr(h.LastFullResync)

		if !h.Enforcing {
			bad = append(bad, "not enforcing yet: the journal has not reached the kernel")
		}
		if h.ConsecutiveFailures > 0 {
			bad = append(bad, fmt.Sprintf("replay failing: %d consecutive failed attempts", h.ConsecutiveFailures))
		}
		if reason := m.wedged(h.LastVerify, h.BackingOff, now); reason != "" {
			bad = append(bad, reason)
		}
		if h.BackingOff {
			warn = append(warn, "another program keeps undoing our rules: repairs are delayed")
		} else if !h.LastVerify.IsZero() && !h.LastVerifyOK {
			warn = append(warn, "the last verify found drift: repair under way")
		}
		r.LAPIUnauthorized = h.LAPIUnauthorized
		if h.LAPIUnauthorized {
			warn = append(warn, "LAPI rejects our API key (HTTP 401/403): fix api_key; enforcing from the journal")
		} else if !h.LAPIReachable {
			warn = append(warn, "LAPI unreachable: enforcing from the journal")
		}
	}
	if m.src.PendingSince != nil {
		age := pendingAge(m.src.PendingSince(), now)
		r.PendingBatchAgeMS = age.Milliseconds()
		if age > m.opts.MaxPendingAge {
			bad = append(bad, fmt.Sprintf("a received batch has waited %s to be applied (limit %s)",
				age.Round(time.Millisecond), m.opts.MaxPendingAge))
		}
	}
	if m.src.JournalStats != nil {
		st := m.src.JournalStats()
		r.Journal = &JournalReport{
			ActiveEntries: st.Active, EventsSinceSnapshot: st.EventsSinceSnapshot, SizeBytes: st.FileSize,
			Durable: st.WriteError == "", WriteError: st.WriteError, NotDurableSince: timePtr(st.NotDurableSince),
			WriteFailures: st.WriteFailures, Rewrites: st.Rewrites,
		}
		if st.WriteError != "" {
			warn = append(warn, fmt.Sprintf("journal cannot be written since %s: enforcing from memory, decisions received since are lost on a restart (%s)",
				st.NotDurableSince.UTC().Format(time.RFC3339), st.WriteError))
		}
	}
	switch {
	case len(bad) > 0:
		r.Status = StatusUnhealthy
	case len(warn) > 0:
		r.Status = StatusDegraded
	default:
		r.Status = StatusHealthy
	}
	r.Reasons = append(append(r.Reasons, bad...), warn...)
	return r
}

// wedged explains why the enforcer loop looks stuck, or returns "". With a
// heartbeat, a loop that goes round is alive even while it holds verifies
// back (backing off); without one, the last verify's age is the signal and
// backing off excuses it. Before the first sign of life, the time since
// New counts.
func (m *Metrics) wedged(lastVerify time.Time, backingOff bool, now time.Time) string {
	what, last := "verified", lastVerify
	if m.src.Heartbeat != nil {
		what, last = "gone round", m.src.Heartbeat()
	} else if backingOff {
		return ""
	}
	since := last
	if since.IsZero() {
		since = m.started
	}
	if age := now.Sub(since); age > m.opts.MaxLoopAge {
		if last.IsZero() {
			return fmt.Sprintf("enforcer loop wedged: never %s in %s (limit %s)", what, age.Round(time.Millisecond), m.opts.MaxLoopAge)
		}
		return fmt.Sprintf("enforcer loop wedged: last %s %s ago (limit %s)", what, age.Round(time.Millisecond), m.opts.MaxLoopAge)
	}
	return ""
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// unixSeconds is a timestamp gauge's value: 0 for "never".
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// pendingAge is how long a batch has waited; 0 when none waits (or the
// clocks disagree).
func pendingAge(since, now time.Time) time.Duration {
	if since.IsZero() {
		return 0
	}
	return max(0, now.Sub(since))
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
