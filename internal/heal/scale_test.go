package heal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// hosts returns n /32 bans in 198.18.0.0/15, all expiring after d.
func hosts(n int, origin string, d time.Duration) []journal.Decision {
	out := make([]journal.Decision, n)
	for i := range out {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)})
		out[i] = ban(netip.PrefixFrom(a, 32).String(), origin, d)
	}
	return out
}

// Every path that rebuilds the view must leave the next expiry known: with
// kernel timeouts off, nothing but the enforcer lifts an expired ban.
func TestExpiryAfterEveryRebuild(t *testing.T) {
	short := hosts(50, "lists:x", 10*time.Second)
	cases := []struct {
		name string
		seed []journal.Batch
		// after runs between start and the expiry.
		after func(r *rig)
	}{
		{name: "boot", seed: []journal.Batch{{New: short}}},
		{name: "full resync", after: func(r *rig) {
			r.submit(journal.Batch{Full: true, New: short})
		}},
		{name: "repair", seed: []journal.Batch{{New: short}}, after: func(r *rig) {
			r.be.Wipe()
			r.tick()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, Config{}, c.seed...)
			r.be.NoTimeouts = true
			r.start()
			if c.after != nil {
				c.after(r)
			}
			if !r.has("lists:x", "198.18.0.1/32") {
				t.Fatalf("ban not enforced before expiry:\n%s", r.be)
			}
			r.clk.Advance(11 * time.Second)
			r.tick()
			o, _ := r.j.OriginIndex("lists:x")
			if n := r.be.Len(backend.SetKey{Origin: o}); n != 0 {
				t.Fatalf("%d expired bans still in the kernel", n)
			}
			if n := r.j.View().Len(); n != 0 {
				t.Fatalf("%d expired decisions still in the view", n)
			}
			if h := r.enf.Health(); h.ActiveEntries != 0 {
				t.Fatalf("health ActiveEntries = %d after expiry, want 0", h.ActiveEntries)
			}
		})
	}
}

// A mass expiry is deleted in slices, with the loop serving Do in between,
// and a prefix falling back to a longer decision keeps its entry.
func TestMassExpirySliced(t *testing.T) {
	n := 3*expireSlice + 7
	r := newRig(t, Config{}, journal.Batch{New: hosts(n, "lists:x", 10*time.Second)})
	r.be.NoTimeouts = true
	r.start()
	keep := ban("198.18.0.5/32", "lists:x", time.Hour)
	keep.Type = "captcha" // a second decision on one expiring prefix
	r.submit(journal.Batch{New: []journal.Decision{keep}})
	applies := r.be.Calls("Apply")
	r.clk.Advance(11 * time.Second)
	r.tick()
	if got := r.be.Calls("Apply") - applies; got != 4 {
		t.Errorf("expiry of %d decisions took %d kernel deletes, want 4 slices", n, got)
	}
	o, _ := r.j.OriginIndex("lists:x")
	if got := r.be.Len(backend.SetKey{Origin: o}); got != 1 || !r.has("lists:x", "198.18.0.5/32") {
		t.Fatalf("kernel holds %d members after expiry, want only the captcha-covered one", got)
	}
	if got := r.be.Calls("Replay"); got != 1 {
		t.Fatalf("expiry caused %d replays", got-1)
	}
}

// A beat during a mass expiry runs a waiting Do call.
func TestBeatServesDo(t *testing.T) {
	r := newRig(t, Config{})
	ran := make(chan struct{})
	go func() {
		_ = r.enf.Do(context.Background(), func(context.Context) { close(ran) })
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.enf.beat(context.Background())
		select {
		case <-ran:
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("beat never served the waiting call")
		}
		time.Sleep(time.Millisecond)
	}
}

// Entries the kernel cannot hold are reported once (log, OnReject), stay
// in the journal, and neither stop the rest of their batch nor start the
// repair ladder, however many replays follow.
func TestRejectionsReportedOnceNeverRepaired(t *testing.T) {
	rng := ban("203.0.113.0/24", "crowdsec", time.Hour)
	cases := []struct {
		name       string
		setup      func(r *rig)
		batch      []journal.Decision
		wantReason string
		wantCount  int
	}{
		{name: "range in a hash:ip set", setup: func(r *rig) { r.be.HostsOnly = true },
			batch: append(hosts(20, "crowdsec", time.Hour), rng), wantReason: "set_type", wantCount: 1},
		{name: "more entries than the set holds", setup: func(r *rig) { r.be.MaxElem = 1000 },
			batch: hosts(1500, "crowdsec", time.Hour), wantReason: "set_full", wantCount: 500},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, Config{}, journal.Batch{New: c.batch})
			c.setup(r)
			var mu sync.Mutex
			got := map[string]int{}
			r.enf.onReject = func(reason string, n int) { mu.Lock(); got[reason] += n; mu.Unlock() }
			r.start()
			for range 3 { // hourly full resyncs of the same set
				r.submit(journal.Batch{Full: true, New: c.batch})
				r.tick()
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 1 || got[c.wantReason] != c.wantCount {
				t.Fatalf("rejections counted %v, want %s:%d once", got, c.wantReason, c.wantCount)
			}
			if h := r.enf.Health(); h.ConsecutiveFailures != 0 || h.RejectedEntries != c.wantCount || r.be.Calls("Replay") != 4 {
				t.Fatalf("health %+v, %d replays: a rejection was treated as a failure", h, r.be.Calls("Replay"))
			}
			if !r.has("crowdsec", "198.18.0.1/32") {
				t.Fatalf("rest of the batch not enforced")
			}
			if r.j.View().Len() != len(c.batch) {
				t.Fatalf("view holds %d, want %d: rejected entries must stay journaled", r.j.View().Len(), len(c.batch))
			}
		})
	}
}

// A rejected entry that leaves the view is forgotten: if it comes back it
// is reported again.
func TestRejectionForgottenWhenEntryLeaves(t *testing.T) {
	rng := ban("203.0.113.0/24", "crowdsec", time.Hour)
	r := newRig(t, Config{})
	r.be.HostsOnly = true
	n := 0
	r.enf.onReject = func(string, int) { n++ }
	r.start()
	r.submit(journal.Batch{New: []journal.Decision{rng}})
	r.submit(journal.Batch{Deleted: []journal.Key{rng.Key()}})
	r.tick()
	if h := r.enf.Health(); h.RejectedEntries != 0 {
		t.Fatalf("RejectedEntries = %d after the entry left", h.RejectedEntries)
	}
	r.submit(journal.Batch{New: []journal.Decision{rng}})
	if n != 2 {
		t.Fatalf("reported %d times, want 2 (once per stay in the view)", n)
	}
}

// A delta pulled while the ladder's full resync runs is newer than it and
// must be applied, not dropped as stale.
func TestDeltaDuringLadderResyncKept(t *testing.T) {
	seed := journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour)}}
	r := newRig(t, Config{MaxReplayAttempts: 1}, seed)
	var during time.Time
	r.resync = func() (journal.Batch, error) {
		r.clk.Advance(500 * time.Millisecond)
		during = r.clk.Now() // a delta pull starts now, while LAPI streams the full set
		r.clk.Advance(500 * time.Millisecond)
		return seed, nil
	}
	r.start()
	r.be.Wipe()
	r.be.FailNext("Replay", 1)
	r.tick()
	if r.resyncs != 1 {
		t.Fatalf("ladder resyncs = %d, want 1", r.resyncs)
	}
	if err := r.enf.Submit(context.Background(), journal.Batch{New: []journal.Decision{ban("192.0.2.20/32", "crowdsec", time.Hour)}}, during); err != nil {
		t.Fatal(err)
	}
	if !r.has("crowdsec", "192.0.2.20/32") {
		t.Fatalf("delta pulled during the ladder resync was dropped:\n%s", r.be)
	}
}

// Do's function sees the caller's cancellation, and Check never returns
// while the loop still writes its results (run with -race).
func TestDoFollowsCallerContext(t *testing.T) {
	r := newRig(t, Config{}, journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour)}})
	r.start()
	ctx, cancel := context.WithCancel(context.Background())
	saw := make(chan bool, 1)
	err := r.enf.Do(ctx, func(fctx context.Context) {
		cancel()
		select {
		case <-fctx.Done():
			saw <- true
		case <-time.After(10 * time.Second):
			saw <- false
		}
	})
	if !<-saw {
		t.Fatal("the function never saw the caller's cancellation")
	}
	if err == nil {
		t.Fatal("Do after the caller's cancellation returned nil")
	}
	for i := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		if i%2 == 0 {
			cancel()
		}
		_, _ = r.enf.Check(ctx)
		cancel()
	}
}

// A long backoff inside the loop keeps beating.
func TestSleepBeating(t *testing.T) {
	for _, c := range []struct {
		d, step time.Duration
		beats   int
	}{
		{d: 50 * time.Millisecond, step: 10 * time.Millisecond, beats: 4},
		{d: 5 * time.Millisecond, step: 10 * time.Millisecond, beats: 0},
		{d: 25 * time.Millisecond, step: 10 * time.Millisecond, beats: 2},
	} {
		t.Run(fmt.Sprint(c.d), func(t *testing.T) {
			n := 0
			if err := sleepBeating(context.Background(), c.d, c.step, func(context.Context) { n++ }); err != nil {
				t.Fatal(err)
			}
			if n != c.beats {
				t.Fatalf("beats = %d, want %d", n, c.beats)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sleepBeating(ctx, time.Hour, time.Second, func(context.Context) {}); err == nil {
		t.Fatal("a cancelled sleep returned nil")
	}
}

// A stop during a replay is a shutdown, not a replay failure: no ERROR,
// no ladder, and Run returns the context's error.
func TestCancelDuringReplayIsNotAFailure(t *testing.T) {
	r := newRig(t, Config{MaxReplayAttempts: 3}, journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour)}})
	var logs strings.Builder
	r.enf.log = slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r.be.FailNext("Replay", 1)
	err := r.enf.Boot(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Boot under a cancelled context = %v, want context.Canceled", err)
	}
	if strings.Contains(logs.String(), "level=ERROR") || r.enf.Health().ReplayFailures != 0 || len(r.sleeps) != 0 {
		t.Fatalf("cancellation reported as a failure:\n%s", logs.String())
	}
}

// With heal.interval longer than idleBeat the loop still goes round every
// tick (watchdog, expiry) but verifies every verifyEvery ticks only.
// (Every tick is a loop iteration, which stores the heartbeat.)
func TestLongIntervalBeatsButVerifiesLess(t *testing.T) {
	r := newRig(t, Config{}, journal.Batch{New: []journal.Decision{
		ban("192.0.2.10/32", "crowdsec", time.Hour), ban("192.0.2.11/32", "crowdsec", 5*time.Second),
	}})
	r.be.NoTimeouts = true
	r.enf.verifyEvery = 3 // as Run sets it for heal.interval 15s
	r.start()
	r.be.Wipe()
	r.clk.Advance(6 * time.Second)
	r.tick()
	if _, ok := r.j.View().Get(ban("192.0.2.11/32", "crowdsec", 0).Key()); ok {
		t.Fatal("a beat-only pass skipped the expiry")
	}
	r.tick()
	if r.has("crowdsec", "192.0.2.10/32") {
		t.Fatal("verified on a beat-only pass")
	}
	r.tick()
	if !r.has("crowdsec", "192.0.2.10/32") {
		t.Fatalf("the third pass did not verify and repair:\n%s", r.be)
	}
}
