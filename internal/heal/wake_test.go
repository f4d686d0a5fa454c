package heal

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/fake"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// uncounted is the fake kernel seen through a backend that cannot count
// set members cheaply (nftables): Verify checks only that sets exist, so a
// deleted member is invisible to it, as it is to the real one.
type uncounted struct{ *fake.Backend }

func (u uncounted) Limits() backend.Limits {
	l := u.Backend.Limits()
	l.CountsMembers = false
	return l
}

func (u uncounted) Verify(ctx context.Context, want map[backend.SetKey]int) (backend.Drift, error) {
	zero := make(map[backend.SetKey]int, len(want))
	for k := range want {
		zero[k] = 0
	}
	return u.Backend.Verify(ctx, zero)
}

// wakeRig is the rig with a wake channel and a hand-fired timer.
type wakeRig struct {
	*rig
	wake   chan backend.Change
	mu     sync.Mutex
	timers []time.Duration
	fire   chan time.Time
}

func newWakeRig(t *testing.T, cfg Config, counts bool) *wakeRig {
	t.Helper()
	w := &wakeRig{rig: &rig{t: t, clk: &clock{t: t0}, ticks: make(chan time.Time), done: make(chan error, 1)},
		wake: make(chan backend.Change), fire: make(chan time.Time, 1)}
	j, err := journal.Open(journal.Options{Path: filepath.Join(t.TempDir(), "journal.db"), Now: w.clk.Now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Close() })
	w.j = j
	w.be = fake.New(w.clk.Now)
	var be backend.Backend = w.be
	if !counts {
		be = uncounted{w.be}
	}
	w.enf = New(cfg, Deps{Journal: j, Backend: be, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now: w.clk.Now, Ticks: w.ticks, Wake: w.wake,
		Sleep: func(context.Context, time.Duration) error { return nil },
		After: func(d time.Duration) <-chan time.Time {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.timers = append(w.timers, d)
			return w.fire
		}})
	w.start()
	w.submit(journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour), ban("192.0.2.11/32", "crowdsec", time.Hour)}})
	return w
}

// send hands a change to the loop and waits until it has been handled.
func (w *wakeRig) send(c backend.Change) {
	w.t.Helper()
	select {
	case w.wake <- c:
	case err := <-w.done:
		w.t.Fatalf("loop ended: %v", err)
	}
	w.barrier()
}

func (w *wakeRig) fireTimer() {
	w.fire <- w.clk.Now()
	w.barrier()
}

func (w *wakeRig) armed() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.timers...)
}

var jumpDeleted = backend.Change{Objects: []string{"rule in hook chain ip filter INPUT"}}

func (w *wakeRig) eventRepairs() int { return w.enf.Health().RepairsByCause[CauseEvent] }

// A wake repairs at once: no tick is sent in this test.
func TestWakeRepairsAtOnce(t *testing.T) {
	w := newWakeRig(t, Config{}, true)
	w.be.Wipe()
	w.send(jumpDeleted)
	if !w.has("crowdsec", "192.0.2.10/32") || !w.has("crowdsec", "192.0.2.11/32") {
		t.Fatalf("not repaired after the wake:\n%s", w.be)
	}
	h := w.enf.Health()
	if h.Repairs != 1 || w.eventRepairs() != 1 {
		t.Fatalf("repairs %d, by cause %v; want 1 by event", h.Repairs, h.RepairsByCause)
	}
}

// A wake about a change that left nothing to repair (our own write, or
// one already undone) costs a verify and nothing else.
func TestWakeWithoutDriftRepairsNothing(t *testing.T) {
	w := newWakeRig(t, Config{}, true)
	verifies, replays := w.be.Calls("Verify"), w.be.Calls("Replay")
	w.send(jumpDeleted)
	if w.be.Calls("Verify") != verifies+1 {
		t.Fatalf("the wake ran %d verifies, want 1", w.be.Calls("Verify")-verifies)
	}
	if w.be.Calls("Replay") != replays || w.enf.Health().Repairs != 0 {
		t.Fatalf("a clean kernel was repaired: replays %d→%d", replays, w.be.Calls("Replay"))
	}
}

// Wakes closer than WakeGap are deferred to one pass when the gap ends.
func TestWakeRateLimited(t *testing.T) {
	w := newWakeRig(t, Config{WakeGap: 100 * time.Millisecond}, true)
	w.send(jumpDeleted) // clean: sets lastWake
	w.clk.Advance(30 * time.Millisecond)
	w.be.Wipe()
	w.send(jumpDeleted)
	w.send(backend.Change{Objects: []string{"chain ip filter CROWDSEC_CHAIN"}})
	if w.has("crowdsec", "192.0.2.10/32") {
		t.Fatal("repaired within the wake gap")
	}
	if got := w.armed(); len(got) != 1 || got[0] != 70*time.Millisecond {
		t.Fatalf("timers armed %v, want one of 70ms", got)
	}
	w.clk.Advance(70 * time.Millisecond)
	w.fireTimer()
	if !w.has("crowdsec", "192.0.2.10/32") || w.eventRepairs() != 1 {
		t.Fatalf("deferred wake did not repair once (event repairs %d):\n%s", w.eventRepairs(), w.be)
	}
}

// Events do not bypass the anti-fight backoff: once repairs back off, a
// wake waits for the backoff to end.
func TestWakeRespectsBackoff(t *testing.T) {
	w := newWakeRig(t, Config{FreeRepairs: 1, FightWindow: 10 * time.Second, BackoffInitial: time.Second}, true)
	for i := range 2 {
		w.clk.Advance(200 * time.Millisecond)
		w.be.Wipe()
		w.send(jumpDeleted)
		if !w.has("crowdsec", "192.0.2.10/32") {
			t.Fatalf("wake %d not repaired", i)
		}
	}
	if !w.enf.Health().BackingOff {
		t.Fatal("two quick repairs with free_repairs 1 did not back off")
	}
	w.clk.Advance(200 * time.Millisecond)
	w.be.Wipe()
	w.send(jumpDeleted)
	if w.has("crowdsec", "192.0.2.10/32") {
		t.Fatal("a wake repaired during the backoff")
	}
	if got := w.armed(); len(got) != 1 || got[0] != 800*time.Millisecond {
		t.Fatalf("timers armed %v, want one until the backoff ends (800ms)", got)
	}
	w.clk.Advance(800 * time.Millisecond)
	w.fireTimer()
	if !w.has("crowdsec", "192.0.2.10/32") || w.eventRepairs() != 3 {
		t.Fatalf("not repaired once the backoff ended (event repairs %d)", w.eventRepairs())
	}
}

// With a backend that cannot count members, a deleted member named by the
// event is put back alone — no replay — if the view still wants it.
func TestWakePutsBackDeletedMembers(t *testing.T) {
	w := newWakeRig(t, Config{}, false)
	o, _ := w.j.OriginIndex("crowdsec")
	k := backend.SetKey{Origin: o}
	set := w.be.SetName(k)
	gone, unwanted := netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("192.0.2.99/32")
	w.be.RemoveMember(k, gone)
	replays := w.be.Calls("Replay")
	w.tick()
	if w.has("crowdsec", "192.0.2.10/32") {
		t.Fatal("the fast verify saw a missing member: the uncounted backend is not modelled")
	}
	w.send(backend.Change{Elements: map[string][]netip.Prefix{set: {gone, unwanted}, "not-ours": {gone}}})
	if !w.has("crowdsec", "192.0.2.10/32") {
		t.Fatalf("deleted member not put back:\n%s", w.be)
	}
	if w.has("crowdsec", "192.0.2.99/32") {
		t.Fatal("a member the view does not want was added")
	}
	if w.be.Calls("Replay") != replays {
		t.Fatal("putting back one member replayed everything")
	}
	if h := w.enf.Health(); h.DeepRepairs != 1 || w.eventRepairs() != 1 {
		t.Fatalf("deep repairs %d, event repairs %d; want 1 and 1", h.DeepRepairs, w.eventRepairs())
	}
}

// Lost events with a backend that cannot count members: the deep verify
// compares every member.
func TestWakeDeepComparesMembers(t *testing.T) {
	w := newWakeRig(t, Config{}, false)
	o, _ := w.j.OriginIndex("crowdsec")
	w.be.RemoveMember(backend.SetKey{Origin: o}, netip.MustParsePrefix("192.0.2.11/32"))
	members := w.be.Calls("Members")
	w.send(backend.Change{Deep: true, Objects: []string{"nf_tables events lost (socket overrun)"}})
	if w.be.Calls("Members") != members+1 || !w.has("crowdsec", "192.0.2.11/32") {
		t.Fatalf("deep wake: %d member listings, member back: %v", w.be.Calls("Members")-members, w.has("crowdsec", "192.0.2.11/32"))
	}
}
