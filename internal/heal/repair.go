package heal

import (
	"context"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// ensureAndReplay rebuilds missing infrastructure and makes the kernel sets
// hold exactly the view. It returns how many entries it replayed.
func (e *Enforcer) ensureAndReplay(ctx context.Context) (int, error) {
	return e.ensureAndReplayAfter(ctx, nil)
}

// ensureAndReplayAfter is ensureAndReplay while the journal is written:
// journaled (when not nil) returns once it is, and is called before
// anything is enforced; a backend that can prepare its replay meanwhile
// (backend.StagedReplayer) does.
func (e *Enforcer) ensureAndReplayAfter(ctx context.Context, journaled func() error) (int, error) {
	now := e.now()
	origins := e.declareOrigins()
	if err := e.be.Ensure(ctx); err != nil {
		return 0, fmt.Errorf("ensure infrastructure: %w", err)
	}
	for _, o := range origins {
		e.ensured[o] = true
	}
	e.forgetRejections()
	es := activeEntries(e.j.View(), now, e.kidx)
	counts := countEntries(es, func(backend.Entry) bool { return false })
	n := counts.total()
	e.refreshDue = time.Time{}
	e.noteLongBans(counts.latest())
	rejected, err := backend.Rejected(e.replay(ctx, es, journaled))
	e.reportRejections(rejected)
	if err != nil {
		return 0, fmt.Errorf("replay %d entries: %w", n, err)
	}
	counts.drop(rejected)
	e.counts = counts
	e.countsDirty = false
	return n, nil
}

// replay is Replay after journaled returns, prepared meanwhile when the
// backend can.
func (e *Enforcer) replay(ctx context.Context, es iter.Seq[backend.Entry], journaled func() error) error {
	if journaled == nil {
		return e.be.Replay(ctx, es)
	}
	if s, ok := e.be.(backend.StagedReplayer); ok {
		return s.ReplayWhen(ctx, es, journaled)
	}
	if err := journaled(); err != nil {
		return err
	}
	return e.be.Replay(ctx, es)
}

// infraKinds are the drift kinds whose repair leaves set members alone: a
// missing chain, rule or jump is rebuilt by Ensure and the sets it matches
// are intact. A missing table is not among them (nftables keeps our sets
// in it), nor "set", "count", "member" or a failed verify.
var infraKinds = []string{"chain", "rule", "jump"}

// infraOnly reports whether every drift kind is one Ensure repairs alone.
func infraOnly(kinds []string) bool {
	for _, k := range kinds {
		if !slices.Contains(infraKinds, k) {
			return false
		}
	}
	return len(kinds) > 0
}

// ensureOnly repairs infrastructure drift without a replay: Ensure, then
// Verify again. It reports whether the kernel is whole; when not (Ensure
// failed, or drift remains — a set Ensure had to create is empty and, with
// a backend that counts members, shows as a count), the caller replays.
// A backend that cannot count members does not see a set it recreated
// empty here: the deletion of a set is announced by its own event
// (backend.Change.Refill), which replays.
func (e *Enforcer) ensureOnly(ctx context.Context) bool {
	e.heartbeat.Store(time.Now().UnixNano())
	origins := e.declareOrigins()
	if err := e.be.Ensure(ctx); err != nil {
		e.log.Debug("ensure without replay failed, replaying", "err", err)
		return false
	}
	for _, o := range origins {
		e.ensured[o] = true
	}
	now := e.now()
	if e.countsDirty {
		e.rebuildCounts(now)
	}
	d, err := e.be.Verify(ctx, e.wantCounts(now))
	if err != nil || !d.None() {
		e.log.Debug("drift left after ensure, replaying", "drift", strings.Join(d.Kinds, ","), "err", err)
		return false
	}
	return true
}

// repair climbs the ladder: for drift of chains, rules and jumps only,
// Ensure and a second Verify first (no replay when the sets are intact);
// then Ensure + Replay, retried with backoff; then a full LAPI resync and
// one more replay; then ErrReplayFailed. It also keeps us
// from fighting another program: drift that returns within FightWindow
// delays the next repair, exponentially up to BackoffMax.
func (e *Enforcer) repair(ctx context.Context, kinds, details []string) error {
	start := e.now()
	if infraOnly(kinds) && e.ensureOnly(ctx) {
		e.repaired(start, kinds, details, 0, 1)
		return nil
	}
	var lastErr error
	for attempt := 1; attempt <= e.cfg.MaxReplayAttempts; attempt++ {
		// The ladder runs inside one loop iteration: beat at every rung so
		// the watchdog sees a loop at work, not a wedged one.
		e.heartbeat.Store(time.Now().UnixNano())
		n, err := e.ensureAndReplay(ctx)
		if err == nil {
			e.repaired(start, kinds, details, n, attempt)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err() // shutting down: not a failure to report
		}
		lastErr = err
		e.failed(err, attempt)
		if attempt == e.cfg.MaxReplayAttempts {
			break
		}
		if err := e.slp(ctx, e.backoff(attempt)); err != nil {
			return err
		}
	}
	if e.sync != nil {
		e.log.Warn("replays keep failing, asking LAPI for a full resync", "attempts", e.cfg.MaxReplayAttempts, "err", lastErr)
		e.heartbeat.Store(time.Now().UnixNano())
		// Stamped before the pull: a delta fetched while it runs is newer
		// than the full set and must not be dropped as stale.
		pulled := e.now()
		b, err := e.sync(ctx)
		e.heartbeat.Store(time.Now().UnixNano())
		if err == nil {
			b.Full = true
			if err := e.journalAppend(b); err != nil {
				return fmt.Errorf("journal append of full resync: %w", err)
			}
			e.lastFullPull = pulled
			e.SetLAPI(true, pulled, true)
			n, err := e.ensureAndReplay(ctx)
			if err == nil {
				e.repaired(start, kinds, details, n, e.cfg.MaxReplayAttempts+1)
				return nil
			}
			lastErr = err
			e.failed(err, e.cfg.MaxReplayAttempts+1)
		} else {
			e.SetLAPI(false, time.Time{}, false)
			e.log.Warn("full resync for repair failed", "err", err)
		}
	}
	return fmt.Errorf("%w: %w", ErrReplayFailed, lastErr)
}

func (e *Enforcer) backoff(attempt int) time.Duration {
	d := e.cfg.BackoffInitial << (attempt - 1)
	if d <= 0 || d > e.cfg.BackoffMax {
		d = e.cfg.BackoffMax
	}
	return d
}

func (e *Enforcer) failed(err error, attempt int) {
	e.log.Error("replay failed", "attempt", attempt, "of", e.cfg.MaxReplayAttempts, "err", err)
	e.health.update(func(h *Health) {
		h.ReplayFailures++
		h.ConsecutiveFailures++
	})
}

func (e *Enforcer) repaired(start time.Time, kinds, details []string, n, attempts int) {
	end := e.now()
	took := end.Sub(start)
	if !e.lastRepair.IsZero() && start.Sub(e.lastRepair) < e.cfg.FightWindow {
		e.fights++
	} else {
		e.fights = 0
	}
	e.lastRepair = end
	e.repairAfter = time.Time{}
	if e.fights >= e.cfg.FreeRepairs {
		delay := e.backoff(e.fights - e.cfg.FreeRepairs + 1)
		e.repairAfter = end.Add(delay)
		e.log.Warn("drift keeps coming back: another program is undoing our rules; backing off",
			"repairs_in_a_row", e.fights+1, "next_repair_in", delay)
	}
	e.log.Warn("repaired drift", "drift", strings.Join(kinds, ","), "details", strings.Join(details, "; "),
		"replayed", n, "attempts", attempts, "took", took.Round(time.Microsecond), "cause", e.cause)
	uniq := slices.Compact(slices.Sorted(slices.Values(kinds)))
	if e.onRepair != nil {
		e.onRepair(uniq, took, n)
	}
	e.health.update(func(h *Health) {
		h.LastRepair, h.LastRepairDrift, h.LastRepairTook, h.LastRepairEntries = end, uniq, took, n
		h.Repairs++
		if h.RepairsByKind == nil {
			h.RepairsByKind = map[string]int{}
		}
		for _, k := range uniq {
			h.RepairsByKind[k]++
		}
		if h.RepairsByCause == nil {
			h.RepairsByCause = map[string]int{}
		}
		h.RepairsByCause[e.cause]++
		h.ConsecutiveFailures = 0
		h.BackingOff = e.fights >= e.cfg.FreeRepairs
		h.Enforcing = true
	})
}

// deepVerify compares every set's members with the view and puts back single
// missing entries (and removes ones we no longer want) without a full replay.
func (e *Enforcer) deepVerify(ctx context.Context, now time.Time) error {
	got, err := e.be.Members(ctx)
	if err != nil {
		return e.repair(ctx, []string{"verify"}, []string{"deep verify: " + err.Error()})
	}
	d := e.memberDelta(got, now)
	if d.Empty() {
		return nil
	}
	if err := e.kernelErr(e.be.Apply(ctx, d)); err != nil {
		return e.repair(ctx, []string{"member"}, []string{"deep verify apply: " + err.Error()})
	}
	e.log.Warn("deep verify repaired members", "missing", len(d.Add), "unexpected", len(d.Del))
	e.health.update(func(h *Health) {
		h.DeepRepairs += len(d.Add) + len(d.Del)
		if h.RepairsByKind == nil {
			h.RepairsByKind = map[string]int{}
		}
		h.RepairsByKind["member"]++
	})
	return nil
}

// noteLongBans schedules a refresh when latest, the furthest expiry just
// written to the kernel, is beyond the backend's timeout cap: every entry
// written now past the cap has the same due time.
func (e *Enforcer) noteLongBans(latest time.Time) {
	maxT := e.be.Limits().MaxTimeout
	if maxT <= 0 {
		return // the backend keeps any timeout
	}
	now := e.now()
	if latest.Sub(now) <= maxT {
		return
	}
	due := now.Add(maxT - e.cfg.RefreshMargin)
	if e.refreshDue.IsZero() || due.Before(e.refreshDue) {
		e.refreshDue = due
	}
}

// refreshLongBans re-adds every entry that outlives the refresh margin, which
// resets their kernel timeouts (an add of a present entry updates it).
func (e *Enforcer) refreshLongBans(ctx context.Context, now time.Time) error {
	if e.refreshDue.IsZero() || now.Before(e.refreshDue) {
		return nil
	}
	e.refreshDue = time.Time{}
	var d backend.Delta
	for en := range activeEntries(e.j.View(), now, e.kidx) {
		if en.Until.Sub(now) > e.cfg.RefreshMargin {
			d.Add = append(d.Add, en)
		}
	}
	if d.Empty() {
		return nil
	}
	if err := e.kernelErr(e.be.Apply(ctx, d)); err != nil {
		return e.repair(ctx, []string{"apply"}, []string{"refresh long bans: " + err.Error()})
	}
	e.noteLongBans(latestUntil(d.Add))
	e.log.Info("refreshed long bans", "entries", len(d.Add))
	return nil
}

// Close shuts the backend down: keep leaves rules and sets in the kernel so
// enforcement survives a restart. Call after Run has returned.
func (e *Enforcer) Close(ctx context.Context, keep bool) error {
	if err := e.be.Close(ctx, keep); err != nil {
		return fmt.Errorf("close backend (keep=%v): %w", keep, err)
	}
	return nil
}

// memberDelta compares set members with the view: entries to put back (Add)
// and members we do not want (Del).
func (e *Enforcer) memberDelta(got map[backend.SetKey][]netip.Prefix, now time.Time) backend.Delta {
	have := make(map[backend.SetKey]map[netip.Prefix]struct{}, len(got))
	for k, ps := range got {
		m := make(map[netip.Prefix]struct{}, len(ps))
		for _, p := range ps {
			m[p] = struct{}{}
		}
		have[k] = m
	}
	var d backend.Delta
	cut := now.Add(e.cfg.ExpireSlack)
	for en := range activeEntries(e.j.View(), now, e.kidx) {
		k := backend.SetKey{Origin: en.Origin, V6: en.Prefix.Addr().Is6()}
		if _, ok := have[k][en.Prefix]; ok {
			delete(have[k], en.Prefix)
			continue
		}
		if en.Until.After(cut) && !e.isRejected(en) {
			d.Add = append(d.Add, en)
		}
	}
	for k, rest := range have {
		for p := range rest {
			d.Del = append(d.Del, backend.Entry{Prefix: p, Origin: k.Origin})
		}
	}
	return d
}

// check is Check inside the loop: Verify, then the member comparison.
func (e *Enforcer) check(ctx context.Context) (backend.Drift, error) {
	now := e.now()
	if e.countsDirty {
		e.rebuildCounts(now)
	}
	want := e.counts.want(now, e.cfg.ExpireSlack)
	d, err := e.be.Verify(ctx, want)
	if err != nil {
		return d, err
	}
	got, err := e.be.Members(ctx)
	if err != nil {
		return d, err
	}
	md := e.memberDelta(got, now)
	for _, en := range md.Add {
		d.Add("member", fmt.Sprintf("%s (origin set %d) missing from the kernel", en.Prefix, en.Origin))
	}
	for _, en := range md.Del {
		d.Add("member", fmt.Sprintf("%s (origin set %d) in the kernel but not in the journal", en.Prefix, en.Origin))
	}
	return d, nil
}
