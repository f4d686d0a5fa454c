package heal

import (
	"context"
	"errors"
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

// clock is a fake clock the tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// rig is an enforcer running on a fake backend, a real journal in a temp dir,
// a fake clock and hand-fed ticks.
type rig struct {
	t       *testing.T
	clk     *clock
	be      *fake.Backend
	j       *journal.Journal
	enf     *Enforcer
	ticks   chan time.Time
	done    chan error
	cancel  context.CancelFunc
	sleeps  []time.Duration
	resyncs int
	resync  func() (journal.Batch, error)
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func newRig(t *testing.T, cfg Config, seed ...journal.Batch) *rig {
	t.Helper()
	return newRigOn(t, cfg, nil, seed...)
}

// newRigOn is newRig with the enforcer's backend built around the fake by
// wrap (nil: the fake itself); r.be stays the fake.
func newRigOn(t *testing.T, cfg Config, wrap func(*fake.Backend) backend.Backend, seed ...journal.Batch) *rig {
	t.Helper()
	r := &rig{t: t, clk: &clock{t: t0}, ticks: make(chan time.Time), done: make(chan error, 1)}
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := journal.Open(journal.Options{Path: path, Now: r.clk.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Close() })
	for _, b := range seed {
		if err := j.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	r.j = j
	r.be = fake.New(r.clk.Now)
	var be backend.Backend = r.be
	if wrap != nil {
		be = wrap(r.be)
	}
	r.enf = New(cfg, Deps{
		Journal: j,
		Backend: be,
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:     r.clk.Now,
		Sleep: func(_ context.Context, d time.Duration) error {
			r.sleeps = append(r.sleeps, d) // only the Run goroutine calls it
			return nil
		},
		Ticks: r.ticks,
		Resync: func(context.Context) (journal.Batch, error) {
			r.resyncs++
			if r.resync == nil {
				return journal.Batch{}, errors.New("LAPI down")
			}
			return r.resync()
		},
	})
	return r
}

func (r *rig) start() {
	r.t.Helper()
	if err := r.enf.Boot(context.Background()); err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.enf.Run(ctx) }()
	r.t.Cleanup(func() {
		cancel()
		<-r.done
	})
}

// tick runs one verify pass and waits until it is finished (an empty batch
// goes through the same loop, so it returns only after the pass).
func (r *rig) tick() {
	r.t.Helper()
	select {
	case r.ticks <- r.clk.Now():
	case err := <-r.done:
		r.t.Fatalf("loop ended: %v", err)
	}
	r.barrier()
}

func (r *rig) barrier() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = r.enf.Submit(ctx, journal.Batch{}, r.clk.Now())
}

func (r *rig) submit(b journal.Batch) {
	r.t.Helper()
	if err := r.enf.Submit(context.Background(), b, r.clk.Now()); err != nil {
		r.t.Fatal(err)
	}
}

func ban(prefix, origin string, d time.Duration) journal.Decision {
	p := netip.MustParsePrefix(prefix)
	scope := journal.ScopeRange
	if p.IsSingleIP() {
		scope = journal.ScopeIP
	}
	return journal.Decision{Prefix: p, Until: t0.Add(d), Origin: origin, Scenario: "test/scenario", Type: "ban", Scope: scope}
}

func (r *rig) has(origin string, prefix string) bool {
	r.t.Helper()
	o, ok := r.j.OriginIndex(origin)
	if !ok {
		return false
	}
	return r.be.Has(o, netip.MustParsePrefix(prefix))
}

func TestBootEnforcesJournalBeforeLAPI(t *testing.T) {
	r := newRig(t, Config{}, journal.Batch{New: []journal.Decision{
		ban("192.0.2.10/32", "crowdsec", time.Hour),
		ban("2001:db8::10/128", "cscli", time.Hour),
		ban("198.18.0.0/15", "lists", time.Hour),
	}})
	if err := r.enf.Boot(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ origin, prefix string }{
		{"crowdsec", "192.0.2.10/32"}, {"cscli", "2001:db8::10/128"}, {"lists", "198.18.0.0/15"},
	} {
		if !r.has(c.origin, c.prefix) {
			t.Errorf("%s %s not enforced at boot:\n%s", c.origin, c.prefix, r.be)
		}
	}
	if r.resyncs != 0 {
		t.Errorf("boot contacted LAPI %d times", r.resyncs)
	}
}

func TestBatchesReachJournalThenKernel(t *testing.T) {
	r := newRig(t, Config{})
	r.start()
	r.submit(journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour), ban("192.0.2.8/29", "cscli", time.Hour)}})
	if !r.has("crowdsec", "192.0.2.10/32") || !r.has("cscli", "192.0.2.8/29") {
		t.Fatalf("bans not in kernel:\n%s", r.be)
	}
	if r.j.View().Len() != 2 {
		t.Fatalf("journal view has %d decisions, want 2", r.j.View().Len())
	}
	r.submit(journal.Batch{Deleted: []journal.Key{ban("192.0.2.10/32", "crowdsec", 0).Key()}})
	if r.has("crowdsec", "192.0.2.10/32") {
		t.Fatalf("deleted ban still in kernel:\n%s", r.be)
	}
	// A full resync that no longer lists the range removes it (LAPI hard delete).
	r.submit(journal.Batch{Full: true, New: []journal.Decision{ban("203.0.113.7/32", "crowdsec", time.Hour)}})
	if r.has("cscli", "192.0.2.8/29") || !r.has("crowdsec", "203.0.113.7/32") {
		t.Fatalf("full resync not reconciled:\n%s", r.be)
	}
}

func TestSharedPrefixKeepsLongestAndFallsBack(t *testing.T) {
	r := newRig(t, Config{})
	r.start()
	ip := ban("192.0.2.10/32", "crowdsec", time.Hour)
	rng := ban("192.0.2.10/32", "crowdsec", 3*time.Hour)
	rng.Scope = journal.ScopeRange
	r.submit(journal.Batch{New: []journal.Decision{ip, rng}})
	r.submit(journal.Batch{Deleted: []journal.Key{rng.Key()}})
	if !r.has("crowdsec", "192.0.2.10/32") {
		t.Fatalf("deleting the range lifted the Ip ban on the same prefix:\n%s", r.be)
	}
	adds := r.be.Adds()
	if last := adds[len(adds)-1]; !last.Until.Equal(ip.Until) {
		t.Fatalf("kernel entry expiry %v, want fallback to %v", last.Until, ip.Until)
	}
}

func TestDriftRepairedOnce(t *testing.T) {
	r := newRig(t, Config{}, journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour), ban("2001:db8::10/128", "crowdsec", time.Hour)}})
	r.start()
	replays := r.be.Calls("Replay")
	r.tick()
	if got := r.be.Calls("Replay"); got != replays {
		t.Fatalf("clean verify replayed (%d → %d)", replays, got)
	}
	r.be.Wipe() // chains, rules and sets gone at once: several drift kinds
	r.clk.Advance(time.Second)
	r.tick()
	r.clk.Advance(time.Second)
	r.tick()
	r.tick()
	if got := r.be.Calls("Replay") - replays; got != 1 {
		t.Fatalf("burst of drift gave %d replays, want 1", got)
	}
	if !r.has("crowdsec", "192.0.2.10/32") || !r.has("crowdsec", "2001:db8::10/128") {
		t.Fatalf("not repaired:\n%s", r.be)
	}
	h := r.enf.Health()
	if h.Repairs != 1 || h.RepairsByKind["set"] != 1 || h.LastRepairEntries != 2 {
		t.Fatalf("health after repair: %+v", h)
	}
}

func TestRepeatedUndoingBacksOff(t *testing.T) {
	r := newRig(t, Config{BackoffInitial: time.Second, BackoffMax: 4 * time.Second, FightWindow: 30 * time.Second, FreeRepairs: 1},
		journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour)}})
	r.start()
	base := r.be.Calls("Replay")
	repairs := func() int { return r.be.Calls("Replay") - base }
	steps := []struct {
		advance time.Duration
		wipe    bool
		want    int // total repairs after this step
	}{
		{time.Second, true, 1},            // first repair: immediate
		{time.Second, true, 2},            // back within the window: repaired, next one delayed 1s
		{300 * time.Millisecond, true, 2}, // backing off: no repair yet
		{time.Second, false, 3},           // delay over: repaired, next delayed 2s
		{0, true, 3},
		{time.Second, false, 3},
		{1100 * time.Millisecond, false, 4},
		{40 * time.Second, true, 5}, // quiet for longer than the window: immediate again
	}
	for i, s := range steps {
		r.clk.Advance(s.advance)
		if s.wipe {
			r.be.Wipe()
		}
		r.tick()
		if got := repairs(); got != s.want {
			t.Fatalf("step %d: %d repairs, want %d", i, got, s.want)
		}
	}
	if h := r.enf.Health(); h.BackingOff {
		t.Fatalf("still backing off after a quiet period: %+v", h)
	}
}

func TestReplayFailureLadder(t *testing.T) {
	seed := journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour)}}
	cases := []struct {
		name        string
		failReplays int
		resync      func() (journal.Batch, error)
		wantErr     bool
		wantResyncs int
		wantSleeps  []time.Duration
	}{
		{name: "retry succeeds", failReplays: 2, wantResyncs: 0, wantSleeps: []time.Duration{time.Second, 2 * time.Second}},
		{name: "resync succeeds", failReplays: 4, wantResyncs: 1,
			resync:     func() (journal.Batch, error) { return seed, nil },
			wantSleeps: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}},
		{name: "LAPI down: exit", failReplays: 100, wantErr: true, wantResyncs: 1,
			wantSleeps: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}},
		{name: "LAPI up, replay still fails: exit", failReplays: 100, wantErr: true, wantResyncs: 1,
			resync:     func() (journal.Batch, error) { return seed, nil },
			wantSleeps: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, Config{MaxReplayAttempts: 4, BackoffInitial: time.Second, BackoffMax: time.Minute}, seed)
			r.resync = c.resync
			if err := r.enf.Boot(context.Background()); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { r.done <- r.enf.Run(ctx) }()
			r.be.Wipe()
			r.be.FailNext("Replay", c.failReplays)
			r.ticks <- r.clk.Now()
			var err error
			if c.wantErr {
				err = <-r.done
			} else {
				r.barrier()
				cancel()
				<-r.done
			}
			if c.wantErr != errors.Is(err, ErrReplayFailed) {
				t.Fatalf("Run error = %v, want ErrReplayFailed: %v", err, c.wantErr)
			}
			if r.resyncs != c.wantResyncs {
				t.Errorf("resyncs = %d, want %d", r.resyncs, c.wantResyncs)
			}
			if len(r.sleeps) != len(c.wantSleeps) {
				t.Fatalf("sleeps = %v, want %v", r.sleeps, c.wantSleeps)
			}
			for i := range r.sleeps {
				if r.sleeps[i] != c.wantSleeps[i] {
					t.Fatalf("sleeps = %v, want %v", r.sleeps, c.wantSleeps)
				}
			}
			if !c.wantErr && !r.has("crowdsec", "192.0.2.10/32") {
				t.Fatalf("not repaired:\n%s", r.be)
			}
		})
	}
}

func TestLongBansRefreshedBeforeKernelDropsThem(t *testing.T) {
	r := newRig(t, Config{RefreshMargin: 24 * time.Hour})
	r.start()
	r.submit(journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", 60*24*time.Hour), ban("192.0.2.20/32", "crowdsec", time.Hour)}})
	count := func() int {
		n := 0
		for _, e := range r.be.Adds() {
			if e.Prefix == netip.MustParsePrefix("192.0.2.10/32") {
				n++
			}
		}
		return n
	}
	before := count()
	r.clk.Advance(fake.MaxTimeout - 25*time.Hour)
	r.tick()
	if count() != before {
		t.Fatalf("refreshed too early")
	}
	r.clk.Advance(2 * time.Hour)
	r.tick()
	if count() != before+1 {
		t.Fatalf("long ban not refreshed before the kernel timeout (adds %d → %d)", before, count())
	}
	// And again one kernel timeout later.
	r.clk.Advance(fake.MaxTimeout - 23*time.Hour)
	r.tick()
	if count() != before+2 {
		t.Fatalf("long ban not refreshed a second time (adds %d)", count())
	}
}

func TestExpiryLiftsBan(t *testing.T) {
	r := newRig(t, Config{})
	r.start()
	r.submit(journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", 10*time.Second), ban("192.0.2.20/32", "crowdsec", time.Hour)}})
	r.clk.Advance(11 * time.Second)
	r.tick()
	if _, ok := r.j.View().Get(ban("192.0.2.10/32", "crowdsec", 0).Key()); ok {
		t.Fatal("expired decision still in the view")
	}
	if got := r.be.Calls("Replay"); got != 1 {
		t.Fatalf("expiry caused a repair (%d replays)", got)
	}
	if !r.has("crowdsec", "192.0.2.20/32") {
		t.Fatalf("live ban lost:\n%s", r.be)
	}
}

func TestDeepVerifyRepairsSingleMembers(t *testing.T) {
	r := newRig(t, Config{DeepInterval: time.Minute}, journal.Batch{New: []journal.Decision{
		ban("192.0.2.10/32", "crowdsec", time.Hour), ban("192.0.2.11/32", "crowdsec", time.Hour),
	}})
	r.start()
	o, _ := r.j.OriginIndex("crowdsec")
	k := backend.SetKey{Origin: o}
	// Same count, different members: only the deep verify can see it.
	r.be.RemoveMember(k, netip.MustParsePrefix("192.0.2.11/32"))
	r.be.AddMember(k, netip.MustParsePrefix("203.0.113.99/32"), t0.Add(time.Hour))
	r.tick()
	if r.has("crowdsec", "192.0.2.11/32") {
		t.Fatal("fast verify should not list members")
	}
	r.clk.Advance(time.Minute)
	r.tick()
	if !r.has("crowdsec", "192.0.2.11/32") || r.be.Has(o, netip.MustParsePrefix("203.0.113.99/32")) {
		t.Fatalf("deep verify did not repair members:\n%s", r.be)
	}
	if got := r.be.Calls("Replay"); got != 1 {
		t.Fatalf("deep verify used a full replay (%d replays)", got)
	}
	if h := r.enf.Health(); h.DeepRepairs != 2 {
		t.Fatalf("DeepRepairs = %d, want 2", h.DeepRepairs)
	}
}

func TestStaleDeltaAfterFullResyncDropped(t *testing.T) {
	r := newRig(t, Config{})
	r.start()
	pulledEarly := r.clk.Now()
	r.clk.Advance(time.Second)
	if err := r.enf.Submit(context.Background(), journal.Batch{Full: true, New: []journal.Decision{ban("192.0.2.20/32", "crowdsec", time.Hour)}}, r.clk.Now()); err != nil {
		t.Fatal(err)
	}
	if err := r.enf.Submit(context.Background(), journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour)}}, pulledEarly); err != nil {
		t.Fatal(err)
	}
	if r.has("crowdsec", "192.0.2.10/32") {
		t.Fatal("a delta pulled before the full resync was applied after it")
	}
}

// In a single-set mode two origins banning one prefix share one kernel
// entry: lifting one origin's ban must not lift the other's, and the expected
// count must not count the prefix twice.
func TestSingleSetSharedPrefix(t *testing.T) {
	r := newRig(t, Config{})
	r.be.SingleSet = true
	r.start()
	r.submit(journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour), ban("192.0.2.10/32", "lists", 2*time.Hour)}})
	// Identity is (scope, value, type): the second replaces the first in LAPI
	// terms, so use two types to keep both.
	capt := ban("192.0.2.10/32", "cscli", 3*time.Hour)
	capt.Type = "captcha"
	r.submit(journal.Batch{New: []journal.Decision{capt}})
	r.submit(journal.Batch{Deleted: []journal.Key{capt.Key()}})
	if !r.be.Has(0, netip.MustParsePrefix("192.0.2.10/32")) {
		t.Fatalf("deleting one origin's decision lifted the shared entry:\n%s", r.be)
	}
	replays := r.be.Calls("Replay")
	r.tick()
	r.tick()
	if got := r.be.Calls("Replay"); got != replays {
		t.Fatalf("shared prefix counted twice: verify keeps repairing (%d replays)", got-replays)
	}
}

func TestBootRetriesFailedReplay(t *testing.T) {
	r := newRig(t, Config{MaxReplayAttempts: 3}, journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour)}})
	r.be.FailNext("Replay", 2)
	if err := r.enf.Boot(context.Background()); err != nil {
		t.Fatalf("boot gave up on a replay that succeeds on retry: %v", err)
	}
	if !r.has("crowdsec", "192.0.2.10/32") || len(r.sleeps) != 1 {
		t.Fatalf("boot retry: sleeps %v\n%s", r.sleeps, r.be)
	}
	r2 := newRig(t, Config{MaxReplayAttempts: 2}, journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour)}})
	r2.be.FailNext("Replay", 100)
	if err := r2.enf.Boot(context.Background()); !errors.Is(err, ErrReplayFailed) {
		t.Fatalf("boot with a replay that never succeeds = %v, want ErrReplayFailed", err)
	}
}

func TestCheckReportsWithoutRepairing(t *testing.T) {
	var repaired []string
	r := newRig(t, Config{}, journal.Batch{New: []journal.Decision{ban("192.0.2.10/32", "crowdsec", time.Hour), ban("192.0.2.11/32", "crowdsec", time.Hour)}})
	r.enf.onRepair = func(kinds []string, _ time.Duration, _ int) { repaired = append(repaired, kinds...) }
	r.start()
	if d, err := r.enf.Check(context.Background()); err != nil || !d.None() {
		t.Fatalf("clean Check = %+v, %v", d, err)
	}
	o, _ := r.j.OriginIndex("crowdsec")
	r.be.RemoveMember(backend.SetKey{Origin: o}, netip.MustParsePrefix("192.0.2.11/32"))
	r.be.AddMember(backend.SetKey{Origin: o}, netip.MustParsePrefix("203.0.113.99/32"), t0.Add(time.Hour))
	d, err := r.enf.Check(context.Background())
	if err != nil || len(d.Kinds) != 2 || d.Kinds[0] != "member" {
		t.Fatalf("Check after a swapped member = %+v, %v", d, err)
	}
	if r.has("crowdsec", "192.0.2.11/32") {
		t.Fatal("Check repaired")
	}
	if hb := r.enf.Heartbeat(); hb.IsZero() {
		t.Fatal("no heartbeat from a running loop")
	}
	if !r.enf.PendingSince().IsZero() {
		t.Fatal("a batch reported pending while none waits")
	}
	r.be.Wipe()
	r.tick()
	if len(repaired) == 0 {
		t.Fatal("OnRepair not called")
	}
}
