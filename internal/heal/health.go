package heal

import (
	"maps"
	"sync"
	"time"
)

// Health is a snapshot of the enforcer's state, for logs, /health and
// metrics. Zero times mean "never".
type Health struct {
	LastVerify          time.Time
	LastVerifyOK        bool
	VerifyTook          time.Duration
	LastRepair          time.Time
	LastRepairDrift     []string // drift kinds the last repair fixed
	LastRepairTook      time.Duration
	LastRepairEntries   int
	Repairs             int            // successful repairs since start
	RepairsByKind       map[string]int // drift kind → repairs that fixed it
	RepairsByCause      map[string]int // Cause* → repairs it started (members put back included)
	ReplayFailures      int            // failed replay attempts since start
	ConsecutiveFailures int            // failed replay attempts since the last success
	BackingOff          bool           // drift keeps coming back: repairs are being delayed
	DeepRepairs         int            // single entries put back by the deep verify
	LAPIReachable       bool
	LAPIUnauthorized    bool // the last pull failed because LAPI refused our API key (401/403)
	LastPull            time.Time
	LastFullResync      time.Time
	ActiveEntries       int
	RejectedEntries     int  // entries in the view the backend refuses (reported once each)
	Enforcing           bool // the journal or LAPI state has reached the kernel at least once
}

// healthBox guards a Health shared between the enforcer goroutine (writer)
// and HTTP/metrics readers.
type healthBox struct {
	mu sync.Mutex
	h  Health
}

func (b *healthBox) update(f func(*Health)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(&b.h)
}

func (b *healthBox) get() Health {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.h
	h.LastRepairDrift = append([]string(nil), b.h.LastRepairDrift...)
	h.RepairsByKind = make(map[string]int, len(b.h.RepairsByKind))
	for k, v := range b.h.RepairsByKind {
		h.RepairsByKind[k] = v
	}
	h.RepairsByCause = maps.Clone(b.h.RepairsByCause)
	return h
}
