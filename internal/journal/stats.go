package journal

import (
	"math"
	"os"
	"time"
)

// Stats describes the journal for metrics and logs; it is computed on call
// (a scan of the view: about a millisecond at 100k entries).
type Stats struct {
	// FileSize is the bbolt file's size in bytes, -1 if it could not be
	// stat'ed (a metric gap, not a journal failure: writes report theirs).
	FileSize int64
	// EventsSinceSnapshot counts events not yet folded into the snapshot.
	EventsSinceSnapshot int
	// Active is the number of view entries, including expired ones that
	// View.Expire has not removed yet.
	Active int
	// OldestUntil and NewestUntil bound the entries' expiry; zero when empty.
	OldestUntil, NewestUntil time.Time
	// PerOrigin counts entries by origin name.
	PerOrigin map[string]int
	// WriteError is why the file lags behind the view ("" while it holds
	// it: durable), and NotDurableSince since when (see Persist).
	WriteError      string
	NotDurableSince time.Time
	// WriteFailures counts failed writes since Open (appends, compactions,
	// Persist attempts).
	WriteFailures uint64
	// Rewrites counts files found changed under the daemon (overwritten,
	// truncated, replaced, removed), moved aside and rewritten from memory.
	Rewrites uint64
}

// Stats returns the journal's current figures.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	s := Stats{EventsSinceSnapshot: j.events, FileSize: -1, WriteFailures: j.failures, Rewrites: j.rewrites}
	if j.lag != nil {
		s.WriteError, s.NotDurableSince = j.lag.Error(), j.lagSince
	}
	j.mu.Unlock()
	if fi, err := os.Stat(j.path); err == nil {
		s.FileSize = fi.Size()
	}

	v := j.view
	v.mu.RLock()
	defer v.mu.RUnlock()
	s.Active = v.m.len()
	perIdx := make(map[uint32]int)
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for _, val := range v.m.all {
		lo, hi = min(lo, val.until), max(hi, val.until)
		perIdx[v.strs.pairs.Values[val.label].a]++
	}
	if s.Active > 0 {
		s.OldestUntil, s.NewestUntil = msTime(lo), msTime(hi)
	}
	s.PerOrigin = make(map[string]int, len(perIdx))
	for i, n := range perIdx {
		s.PerOrigin[v.strs.str(i)] += n
	}
	return s
}
