// Package heal owns the kernel state: one goroutine applies LAPI batches
// (journal first, kernel second), verifies about once a second that our
// chains, rules and sets are intact, and repairs drift in-process by
// replaying the journal's view. It exits only when a replay itself keeps
// failing, for systemd to restart the service.
package heal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// ErrReplayFailed is returned by Run when the repair ladder is exhausted:
// replays failed, retries with backoff failed, and a full LAPI resync (when
// LAPI was reachable) did not help. The daemon exits with ExitReplayFailed.
var ErrReplayFailed = errors.New("replay failed after all retries")

// ExitReplayFailed is the process exit code for ErrReplayFailed, distinct
// from configuration (1) and usage (2) errors so that systemd's
// Restart=on-failure and alerting can tell them apart.
const ExitReplayFailed = 3

// Config tunes the loop. Zero values take the defaults below.
type Config struct {
	VerifyInterval    time.Duration // fast verify cadence (default 1s)
	DeepInterval      time.Duration // member-by-member verify cadence (default 5m)
	MaxReplayAttempts int           // replays before asking LAPI for a full resync (default 5)
	BackoffInitial    time.Duration // first retry / anti-fight delay (default 1s)
	BackoffMax        time.Duration // cap of both (default 1m)
	// FightWindow: a drift that comes back sooner than this after a repair
	// counts as another program undoing our work (default 10s).
	FightWindow time.Duration
	// FreeRepairs: how many such quick repeats are repaired at once before
	// backing off (default 3): a firewall reload often removes chains, rules
	// and sets in separate steps, each of which deserves an immediate repair.
	FreeRepairs int
	// ExpireSlack: entries expiring this soon are not counted as expected,
	// as the kernel's own timeout may already have dropped them (default 2s).
	ExpireSlack time.Duration
	// RefreshMargin: long bans (beyond the backend's Limits().MaxTimeout) are re-added this
	// long before their kernel timeout runs out (default 24h).
	RefreshMargin time.Duration
	// WakeGap: the least time between two event-driven passes; a burst of
	// events in between becomes one pass (default 100ms).
	WakeGap time.Duration
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.VerifyInterval, time.Second)
	def(&c.DeepInterval, 5*time.Minute)
	def(&c.BackoffInitial, time.Second)
	def(&c.BackoffMax, time.Minute)
	def(&c.FightWindow, 10*time.Second)
	def(&c.ExpireSlack, 2*time.Second)
	def(&c.RefreshMargin, 24*time.Hour)
	def(&c.WakeGap, defaultWakeGap)
	if c.FreeRepairs <= 0 {
		c.FreeRepairs = 3
	}
	if c.MaxReplayAttempts <= 0 {
		c.MaxReplayAttempts = 5
	}
	return c
}

// Deps are the enforcer's collaborators; Journal, Backend and Logger are required.
type Deps struct {
	Journal *journal.Journal
	Backend backend.Backend
	Logger  *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Sleep waits d or until ctx ends (default a timer); tests record instead.
	Sleep func(ctx context.Context, d time.Duration) error
	// Ticks drives the verify pass (default a ticker of VerifyInterval).
	Ticks <-chan time.Time
	// Resync pulls LAPI's full active set (startup=true), for the third rung
	// of the repair ladder. Nil when there is no LAPI.
	Resync func(ctx context.Context) (journal.Batch, error)
	// OnRepair, if set, is called after each successful repair (for the
	// repair-duration histogram); it runs in the loop and must not block.
	OnRepair func(kinds []string, took time.Duration, entries int)
	// Wake delivers hints that our kernel objects changed (the nf_tables
	// event monitor): a pass runs at once instead of at the next tick.
	// Nil: none, the tick alone finds drift.
	Wake <-chan backend.Change
	// After arms the timer of a deferred wake (default time.After).
	After func(d time.Duration) <-chan time.Time
	// OnReject, if set, is called with how many entries the backend newly
	// refused for one reason (decisions_rejected_total). Each entry is
	// reported once while it stays in the view. It runs in the loop and
	// must not block.
	OnReject func(reason string, entries int)
}

// Enforcer is the single owner of the journal view and the backend.
type Enforcer struct {
	cfg  Config
	j    *journal.Journal
	be   backend.Backend
	log  *slog.Logger
	now  func() time.Time
	slp  func(ctx context.Context, d time.Duration) error
	tick <-chan time.Time
	sync func(ctx context.Context) (journal.Batch, error)

	wake  <-chan backend.Change
	after func(d time.Duration) <-chan time.Time

	reqs     chan *request
	calls    chan call
	health   healthBox
	onRepair func(kinds []string, took time.Duration, entries int)
	onReject func(reason string, entries int)
	// heartbeat is the wall time (UnixNano) of the loop's last iteration,
	// for the systemd watchdog; pending is when the batch now waiting for
	// the loop was handed over (0: none), for /health.
	heartbeat atomic.Int64
	pending   atomic.Int64

	// Owned by the Run goroutine.
	counts       expectedCounts
	countsDirty  bool
	refreshDue   time.Time // when long bans must be re-added; zero = none
	lastDeep     time.Time
	lastRepair   time.Time
	fights       int
	repairAfter  time.Time // anti-fight: no repair before this
	lastFullPull time.Time // pull time of the last applied full batch
	ensured      map[int]bool
	verifyEvery  int // ticks per verify (1 unless heal.interval > idleBeat)
	passes       int
	// reported holds the entries whose rejection was already reported, so
	// each is logged and counted once, not at every replay.
	reported map[rejKey]string
	// kidx maps an origin name to the origin index of its kernel set.
	kidx originIndex
	// persist schedules writing the journal again after a failed write.
	persist persistRetry
	// cause is what started the pass now running (Cause*), for repairs.
	cause string
	// Event-driven passes: the hints not yet acted on, the last pass, and
	// the timer of a deferred one (nil when none is armed).
	wakePending backend.Change
	lastWake    time.Time
	wakeTimer   <-chan time.Time
}

// call runs a function inside the loop, serialized with batches and repairs.
type call struct {
	fn     func(ctx context.Context)
	caller context.Context
	done   chan struct{}
}

type request struct {
	batch    journal.Batch
	pulledAt time.Time
	done     chan error
}

// New wires an enforcer; call Boot, then Run.
func New(cfg Config, d Deps) *Enforcer {
	e := &Enforcer{
		cfg:      cfg.withDefaults(),
		j:        d.Journal,
		be:       d.Backend,
		log:      d.Logger.With("component", "heal"),
		now:      d.Now,
		slp:      d.Sleep,
		tick:     d.Ticks,
		sync:     d.Resync,
		reqs:     make(chan *request),
		calls:    make(chan call),
		ensured:  map[int]bool{},
		onRepair: d.OnRepair,
		wake:     d.Wake,
		after:    d.After,
		onReject: d.OnReject,
		reported: map[rejKey]string{},
	}
	if e.after == nil {
		e.after = time.After
	}
	if e.now == nil {
		e.now = time.Now
	}
	e.kidx = func(origin string) (int, bool) {
		o, ok := e.j.OriginIndex(origin)
		if !ok {
			return 0, false
		}
		return e.be.SetKeyOf(o, false).Origin, true
	}
	if e.slp == nil {
		e.slp = func(ctx context.Context, d time.Duration) error {
			return sleepBeating(ctx, d, beatEvery, e.beat)
		}
	}
	return e
}

// idleBeat is the longest an idle loop goes without a pass (expiry and,
// every verifyEvery passes, a verify): well under the watchdog's 15 s.
const idleBeat = 5 * time.Second

// beatEvery is how often a long wait inside the loop (the repair ladder's
// backoff) feeds the watchdog and serves Do calls.
const beatEvery = time.Second

// sleepBeating waits d or until ctx ends, calling beat every step: a
// backoff of a minute must not look like a wedged loop to the watchdog.
func sleepBeating(ctx context.Context, d, step time.Duration, beat func(context.Context)) error {
	t := time.NewTimer(min(d, step))
	defer t.Stop()
	for left := d; ; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		left -= min(left, step)
		if left <= 0 {
			return nil
		}
		beat(ctx)
		t.Reset(min(left, step))
	}
}

// Heartbeat returns when the loop last went round (zero before Run): the
// systemd watchdog is only fed while this stays fresh. Safe from any goroutine.
func (e *Enforcer) Heartbeat() time.Time {
	if n := e.heartbeat.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// PendingSince returns when the batch now waiting for the loop was handed
// over, or zero when none waits. Safe from any goroutine.
func (e *Enforcer) PendingSince() time.Time {
	if n := e.pending.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Do runs fn inside the loop, serialized with batches and repairs, and waits
// for it: the way for other goroutines (the admin socket, `check`) to read
// the journal view and the kernel consistently. fn's context ends when
// either ctx or the loop's context does; once fn has started, Do waits for
// it to return, so fn may write the caller's variables without a race.
func (e *Enforcer) Do(ctx context.Context, fn func(ctx context.Context)) error {
	c := call{fn: fn, caller: ctx, done: make(chan struct{})}
	select {
	case e.calls <- c:
	case <-ctx.Done():
		return ctx.Err()
	}
	<-c.done
	return ctx.Err()
}

// run calls c.fn under a context that ends with the loop's or the caller's.
func (c call) run(loop context.Context) {
	defer close(c.done)
	ctx, cancel := context.WithCancel(loop)
	defer cancel()
	stop := context.AfterFunc(c.caller, cancel)
	defer stop()
	c.fn(ctx)
}

// Check compares the kernel with the journal view once, fast and deep
// checks together, without repairing: the drift report of `check`. It must
// be called while Run is running.
func (e *Enforcer) Check(ctx context.Context) (backend.Drift, error) {
	var (
		d   backend.Drift
		err error
	)
	if derr := e.Do(ctx, func(ctx context.Context) { d, err = e.check(ctx) }); derr != nil {
		return d, derr
	}
	return d, err
}

// CheckOffline is Check for a process that does not run the loop (the
// `check` command when no daemon is running): it reads the kernel and the
// journal directly. Never call it while Run is running.
func (e *Enforcer) CheckOffline(ctx context.Context) (backend.Drift, error) {
	// Without Ensure (it would repair), the backend must still learn which
	// origins' sets and rules to expect, and their names.
	e.declareOrigins()
	return e.check(ctx)
}

// Health returns a snapshot of the loop's state; safe from any goroutine.
func (e *Enforcer) Health() Health { return e.health.get() }

// SetLAPIUnauthorized records a pull LAPI refused because of our
// credentials (HTTP 401/403): LAPI answers, but not to us. Safe from any
// goroutine; the next successful pull clears it.
func (e *Enforcer) SetLAPIUnauthorized() {
	e.health.update(func(h *Health) { h.LAPIReachable, h.LAPIUnauthorized = false, true })
}

// SetLAPI records the outcome of a LAPI pull; safe from any goroutine.
func (e *Enforcer) SetLAPI(reachable bool, at time.Time, full bool) {
	e.health.update(func(h *Health) {
		h.LAPIReachable = reachable
		h.LAPIUnauthorized = false
		if reachable {
			h.LastPull = at
			if full {
				h.LastFullResync = at
			}
		}
	})
}

// Boot enforces the journal before LAPI is contacted: it ensures our
// infrastructure and replays the view, so a host whose LAPI is down stays
// protected from the first second. It runs in the caller's goroutine, before
// Run.
func (e *Enforcer) Boot(ctx context.Context) error {
	start := e.now()
	e.cause = CauseBoot
	defer func() { e.cause = "" }()
	n, err := e.ensureAndReplay(ctx)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		// Same ladder as any repair: retries with backoff, then LAPI, then exit.
		e.log.Error("enforcing the journal at boot failed, retrying", "err", err)
		if err := e.repair(ctx, []string{"boot"}, []string{err.Error()}); err != nil {
			return fmt.Errorf("enforce journal at boot: %w", err)
		}
		n = e.Health().LastRepairEntries
	}
	e.log.Info("journal enforced", "entries", n, "took", e.now().Sub(start).Round(time.Microsecond))
	e.health.update(func(h *Health) { h.Enforcing = true })
	return nil
}

// Submit hands one normalized LAPI batch to the loop and waits until it is in
// the journal and the kernel. pulledAt is when the pull started; a delta
// pulled before the last applied full resync is stale and dropped.
func (e *Enforcer) Submit(ctx context.Context, b journal.Batch, pulledAt time.Time) error {
	r := &request{batch: b, pulledAt: pulledAt, done: make(chan error, 1)}
	e.pending.CompareAndSwap(0, time.Now().UnixNano())
	select {
	case e.reqs <- r:
	case <-ctx.Done():
		e.pending.Store(0)
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run is the loop. It returns ctx's error on shutdown, or a fatal error
// (ErrReplayFailed, a batch the journal refused). A journal that cannot be
// written is not fatal: see journalAppend.
func (e *Enforcer) Run(ctx context.Context) error {
	if e.tick == nil {
		// The loop beats once per tick: a long verify interval must not
		// leave an idle loop looking wedged to the watchdog, so it ticks
		// at least every idleBeat and verifies every verifyEvery ticks.
		period := min(e.cfg.VerifyInterval, idleBeat)
		e.verifyEvery = int((e.cfg.VerifyInterval + period - 1) / period)
		t := time.NewTicker(period)
		defer t.Stop()
		e.tick = t.C
	}
	e.lastDeep = e.now()
	for {
		e.heartbeat.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-e.reqs:
			e.cause = CauseApply
			err := e.apply(ctx, r)
			e.pending.Store(0)
			r.done <- err
			if err != nil {
				return err
			}
		case c := <-e.calls:
			c.run(ctx)
		case <-e.tick:
			e.cause = CauseTick
			if err := e.pass(ctx); err != nil {
				return err
			}
		case c := <-e.wake:
			if err := e.onWake(ctx, c); err != nil {
				return err
			}
		case <-e.wakeTimer:
			e.wakeTimer = nil
			if err := e.wakePass(ctx); err != nil {
				return err
			}
		}
	}
}

// apply writes a batch to the journal, then to the kernel. A kernel failure
// is repaired through the ladder; a journal write failure is reported and
// the batch enforced from memory (journalAppend).
func (e *Enforcer) apply(ctx context.Context, r *request) error {
	b := r.batch
	// Once journaled, the batch is only needed through the view: drop the
	// request's reference so a 100k batch can be collected during the replay.
	r.batch = journal.Batch{}
	if !b.Full && b.Len() == 0 {
		return nil // an empty delta pull: nothing to journal every update_frequency
	}
	if !b.Full && r.pulledAt.Before(e.lastFullPull) {
		e.log.Warn("dropping delta pulled before the last full resync", "decisions", b.Len())
		return nil
	}
	if b.Full {
		return e.applyFull(ctx, b, r.pulledAt)
	}
	v := e.j.View()
	ps := affected(v, b)
	before := takeSnapshot(v, ps, e.kidx)
	if err := e.journalAppend(b); err != nil {
		return fmt.Errorf("journal append of %d decisions: %w", b.Len(), err)
	}
	after := takeSnapshot(v, ps, e.kidx)
	e.countsDirty = true
	d := diff(before, after)
	if d.Empty() {
		return nil
	}
	err := e.ensureOrigins(ctx)
	if err == nil {
		err = e.kernelErr(e.be.Apply(ctx, d))
	}
	if err != nil && ctx.Err() != nil {
		return ctx.Err() // shutting down mid-write: the journal has the batch
	}
	if err != nil {
		// The kernel state is now unknown: only a full replay is safe.
		e.log.Error("apply batch failed, replaying", "err", err)
		return e.repair(ctx, []string{"apply"}, []string{err.Error()})
	}
	e.noteLongBans(latestUntil(d.Add))
	e.log.Debug("batch applied", "full", b.Full, "added", len(d.Add), "deleted", len(d.Del))
	e.health.update(func(h *Health) { h.Enforcing = true; h.ActiveEntries = v.Len() })
	return nil
}

// applyFull journals LAPI's whole active set and makes the kernel hold
// exactly it. A replay (fill aside, swap) is cheaper in time and memory than
// diffing 100k entries, and never drops enforcement while it runs.
func (e *Enforcer) applyFull(ctx context.Context, b journal.Batch, pulledAt time.Time) error {
	n := b.Len() // b is not used past journalAppendFull: see journalAppend
	start := time.Now()
	w, err := e.journalAppendFull(b)
	if err != nil {
		return fmt.Errorf("journal append of full set (%d decisions): %w", n, err)
	}
	var journaled time.Time
	n, err = e.ensureAndReplayAfter(ctx, func() error {
		err := w.wait()
		journaled = time.Now()
		return err
	})
	// Whatever the replay did, the snapshot's outcome is known before the
	// loop goes on.
	if werr := w.wait(); werr != nil {
		return fmt.Errorf("journal append of full set (%d decisions): %w", n, werr)
	}
	if journaled.IsZero() {
		journaled = time.Now() // the backend had nothing to wait for it with
	}
	e.lastFullPull = pulledAt
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		e.log.Error("replay of full set failed", "err", err)
		return e.repair(ctx, []string{"apply"}, []string{err.Error()})
	}
	e.log.Debug("full set applied", "entries", n, "journal_written_after", journaled.Sub(start).Round(time.Millisecond),
		"took", time.Since(start).Round(time.Millisecond))
	e.health.update(func(h *Health) { h.Enforcing = true; h.ActiveEntries = e.j.View().Len() })
	return nil
}

// ensureOrigins creates the sets and rules of origins seen for the first time.
func (e *Enforcer) ensureOrigins(ctx context.Context) error {
	if len(e.j.Origins()) == len(e.ensured) {
		return nil
	}
	idx := e.declareOrigins()
	if err := e.be.Ensure(ctx); err != nil {
		return err
	}
	for _, i := range idx {
		e.ensured[i] = true
	}
	return nil
}

// declareOrigins tells the backend every origin the journal knows, and
// returns their indices.
func (e *Enforcer) declareOrigins() []int {
	all := e.j.Origins()
	o := make(backend.Origins, len(all))
	for name, i := range all {
		o[i] = name
	}
	e.be.SetOrigins(o)
	return slices.Sorted(maps.Keys(o))
}

// pass is one tick: expire, refresh long bans, fast verify, and now and then
// the deep verify.
func (e *Enforcer) pass(ctx context.Context) error {
	now := e.now()
	e.retryPersist(now)
	if err := e.expire(ctx, now); err != nil {
		return err
	}
	if err := e.refreshLongBans(ctx, now); err != nil {
		return err
	}
	if e.passes++; e.verifyEvery > 1 && e.passes%e.verifyEvery != 0 {
		return nil // a beat only: heal.interval is longer than idleBeat
	}
	if now.Before(e.repairAfter) {
		return nil // backing off from a fight; verify again once allowed
	}
	if e.countsDirty {
		e.rebuildCounts(now)
	}
	want := e.counts.want(now, e.cfg.ExpireSlack)
	for _, o := range e.j.Origins() {
		for _, v6 := range []bool{false, true} {
			k := e.be.SetKeyOf(o, v6)
			if _, ok := want[k]; !ok {
				want[k] = 0
			}
		}
	}
	start := time.Now()
	drift, err := e.be.Verify(ctx, want)
	took := time.Since(start)
	e.health.update(func(h *Health) {
		h.LastVerify, h.LastVerifyOK, h.VerifyTook = now, err == nil && drift.None(), took
		h.BackingOff = false
	})
	if err != nil {
		// A verify that cannot read the kernel is itself drift: repair.
		drift.Add("verify", err.Error())
	}
	if !drift.None() {
		return e.repair(ctx, drift.Kinds, drift.Details)
	}
	if now.Sub(e.lastDeep) >= e.cfg.DeepInterval {
		e.lastDeep = now
		return e.deepVerify(ctx, now)
	}
	return nil
}

// rebuildCounts recomputes the expected member counts.
func (e *Enforcer) rebuildCounts(now time.Time) {
	e.forgetRejections()
	e.counts = countEntries(activeEntries(e.j.View(), now, e.kidx), e.isRejected)
	e.countsDirty = false
	e.health.update(func(h *Health) { h.ActiveEntries = e.j.View().Len() })
}
