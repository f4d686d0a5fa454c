package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// logQueueLines bounds the log lines waiting for a slow reader (≈200 KB of
// typical lines).
const logQueueLines = 1024

// logWriter decouples the daemon from its stdout/stderr reader. slog
// handlers write under a lock, so one write blocked on a full pipe (a
// stalled journald, a paused `| less`) would stop every goroutine that logs,
// the enforcer loop included. Lines are queued and written by one goroutine;
// when the queue is full they are dropped and counted, and the count is
// written once the reader catches up. Write errors (EPIPE once the reader
// is gone) are ignored: the daemon's job is the firewall, not its log.
type logWriter struct {
	w       io.Writer
	q       chan []byte // a nil entry is Close's flush marker
	dropped atomic.Uint64
	closed  atomic.Bool
	done    chan struct{}
	once    sync.Once
}

func newLogWriter(w io.Writer) *logWriter {
	lw := &logWriter{w: w, q: make(chan []byte, logQueueLines), done: make(chan struct{})}
	go lw.drain()
	return lw
}

// Write queues a copy of p and never blocks; it always reports success.
// After Close, lines are dropped: a goroutine still logging while the
// process exits must not block or panic.
func (lw *logWriter) Write(p []byte) (int, error) {
	if lw.closed.Load() || len(p) == 0 {
		return len(p), nil
	}
	select {
	case lw.q <- append([]byte(nil), p...):
	default:
		lw.dropped.Add(1)
	}
	return len(p), nil
}

func (lw *logWriter) drain() {
	for p := range lw.q {
		if n := lw.dropped.Swap(0); n > 0 {
			_, _ = fmt.Fprintf(lw.w, "cs-journal-bouncer: %d log lines dropped: the log reader was not keeping up\n", n)
		}
		if p == nil {
			close(lw.done)
			return
		}
		_, _ = lw.w.Write(p)
	}
}

// Close writes out what is queued, waiting at most wait for a slow reader;
// later writes are dropped.
func (lw *logWriter) Close(wait time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	lw.once.Do(func() {
		lw.closed.Store(true)
		select {
		case lw.q <- nil:
		case <-ctx.Done():
		}
	})
	select {
	case <-lw.done:
	case <-ctx.Done():
	}
}
