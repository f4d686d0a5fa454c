package heal

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// A journal that cannot be written: every batch still reaches the kernel,
// the loop keeps running, Persist is retried on the tick with backoff, and
// durability comes back with the space.
func TestJournalWriteFailureKeepsEnforcing(t *testing.T) {
	r := newRig(t, Config{BackoffInitial: time.Second, BackoffMax: 4 * time.Second})
	r.start()
	r.submit(journal.Batch{New: []journal.Decision{ban("192.0.2.1/32", "crowdsec", time.Hour)}})
	fi, err := os.Stat(r.j.Path())
	if err != nil {
		t.Fatal(err)
	}
	restore := testenv.LimitFileSize(t, uint64(fi.Size()))

	var big []journal.Decision
	for i := range 5000 {
		big = append(big, ban(fmt.Sprintf("198.18.%d.%d/32", i/256, i%256), "lists:x", time.Hour))
	}
	r.submit(journal.Batch{New: big})
	failures := func() uint64 { return r.j.Stats().WriteFailures }
	if r.j.PersistErr() == nil || failures() != 1 {
		t.Fatalf("journal after a failed write: lag %v, %d failures", r.j.PersistErr(), failures())
	}
	o, _ := r.j.OriginIndex("lists:x")
	k := r.be.SetKeyOf(o, false).Origin
	for _, d := range []journal.Decision{big[0], big[len(big)-1]} {
		if !r.be.Has(k, d.Prefix) {
			t.Fatalf("%s not enforced after the journal write failed", d.Prefix)
		}
	}

	// Attempts follow the backoff: 1s after the failure, then 2s, 4s, 4s.
	wantAttempts := []struct {
		advance time.Duration
		tried   bool
	}{{0, false}, {time.Second, true}, {time.Second, false}, {time.Second, true}, {3 * time.Second, false}, {time.Second, true}}
	for i, w := range wantAttempts {
		r.clk.Advance(w.advance)
		before := failures()
		r.tick()
		if tried := failures() > before; tried != w.tried {
			t.Fatalf("step %d (+%v): persist attempted %t, want %t", i, w.advance, tried, w.tried)
		}
	}

	restore()
	r.clk.Advance(4 * time.Second)
	r.tick()
	if err := r.j.PersistErr(); err != nil {
		t.Fatalf("journal still lags with space back: %v", err)
	}
	// Durable again: the next failure is reported afresh (1s backoff).
	r.submit(journal.Batch{New: []journal.Decision{ban("192.0.2.2/32", "crowdsec", time.Hour)}})
	if err := r.j.PersistErr(); err != nil {
		t.Fatalf("append after recovery: %v", err)
	}
	if err := r.enf.Do(context.Background(), func(context.Context) {}); err != nil {
		t.Fatalf("loop not running: %v", err)
	}
}
