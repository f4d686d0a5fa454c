package heal

import (
	"errors"
	"sync"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// A journal that cannot be written (disk full, read-only, the file damaged
// under us) must not stop enforcement: the batch is in the journal's view
// all the same, so the kernel is brought to it and the loop goes on, with
// an ERROR and /health degraded (the journal reports the lag). The tick
// retries to persist the whole view, backing off from BackoffInitial to
// BackoffMax; one success makes the journal durable again.

// persistRetry is the retry state, owned by the Run goroutine.
type persistRetry struct {
	tries int
	after time.Time // no attempt before this
}

// journalAppend appends b to the journal. A write failure that left b in
// the view (journal.ErrNotDurable) is reported and enforcement goes on from
// memory; any other error (the batch was refused) is returned.
func (e *Enforcer) journalAppend(b journal.Batch) error {
	// Read before Append: b must not outlive it, so that a million-decision
	// batch can be collected while the journal encodes and writes its view.
	n, full := b.Len(), b.Full
	return e.written(e.j.Append(b), n, full)
}

// journalWrite is a full batch's snapshot being written while the kernel
// is prepared (journal.AppendFull).
type journalWrite struct {
	done   chan error
	result func(error) error
	once   sync.Once
	err    error
}

// wait returns once the snapshot is written, with journalAppend's verdict;
// later calls return the same.
func (w *journalWrite) wait() error {
	w.once.Do(func() { w.err = w.result(<-w.done) })
	return w.err
}

// journalAppendFull is journalAppend of a full batch in two steps: when it
// returns, the view holds b and the snapshot is being written; wait must
// be called, and return, before anything of b is enforced.
func (e *Enforcer) journalAppendFull(b journal.Batch) (*journalWrite, error) {
	n := b.Len()
	persist, err := e.j.AppendFull(b)
	if err != nil {
		return nil, err
	}
	w := &journalWrite{done: make(chan error, 1), result: func(err error) error { return e.written(err, n, true) }}
	go func() { w.done <- persist() }()
	return w, nil
}

// written is what an append's error means for the caller: nil when the
// batch is durable or only in memory (reported here), else the error.
func (e *Enforcer) written(err error, n int, full bool) error {
	if err == nil || !errors.Is(err, journal.ErrNotDurable) {
		return err
	}
	if e.persist.after.IsZero() {
		// First failure of this outage: say it loudly once, then let the
		// retries speak.
		e.log.Error("journal write failed: enforcing from memory; decisions received until it is written are lost on a restart",
			"decisions", n, "full", full, "err", err)
		e.persist.after = e.now().Add(e.cfg.BackoffInitial)
	} else {
		e.log.Debug("journal still lagging: batch kept in memory", "decisions", n, "full", full)
	}
	return nil
}

// retryPersist runs on the tick: while the journal lags behind its view, it
// tries to write the view, with backoff.
func (e *Enforcer) retryPersist(now time.Time) {
	if e.j.PersistErr() == nil {
		e.persist = persistRetry{}
		return
	}
	if now.Before(e.persist.after) {
		return
	}
	if err := e.j.Persist(); err != nil {
		e.persist.tries++
		d := e.backoff(e.persist.tries + 1)
		e.persist.after = now.Add(d)
		e.log.Error("journal still cannot be written; enforcing from memory", "retry_in", d, "err", err)
		return
	}
	e.persist = persistRetry{}
}
