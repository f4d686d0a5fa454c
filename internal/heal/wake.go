package heal

import (
	"context"
	"net/netip"
	"strings"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// Repair causes: what started the pass that repaired, for logs and the
// repairs_by_cause metric (the drift kinds say what was wrong).
const (
	CauseTick  = "tick"  // the periodic verify
	CauseEvent = "event" // a kernel change event (nf_tables)
	CauseApply = "apply" // applying a LAPI batch
	CauseBoot  = "boot"  // enforcing the journal at start
)

// defaultWakeGap spaces event-driven passes: a firewall reload announces
// its deletions in several commits within milliseconds, and one pass after
// the burst repairs them all.
const defaultWakeGap = 100 * time.Millisecond

// onWake takes a change hint from the monitor and runs a pass for it now,
// or as soon as the rate limit and the anti-fight backoff allow.
func (e *Enforcer) onWake(ctx context.Context, c backend.Change) error {
	e.wakePending.Merge(c)
	return e.wakePass(ctx)
}

// wakePass runs the event-driven pass when it is due, else arms the timer
// that brings it back. An event is a hint, not a verdict: the pass is the
// fast verify, then putting back deleted members one by one, then — when
// events were lost and the backend cannot count members — the deep verify.
// Sets another program emptied wholesale (Change.Refill) are replayed.
// Our own writes that slipped through the monitor's filter find a clean
// kernel and repair nothing.
func (e *Enforcer) wakePass(ctx context.Context) error {
	if e.wakePending.Empty() {
		return nil
	}
	now := e.now()
	due := e.lastWake.Add(e.cfg.WakeGap)
	if e.repairAfter.After(due) {
		due = e.repairAfter // backing off from a fight: events do not bypass it
	}
	if now.Before(due) {
		if e.wakeTimer == nil {
			e.wakeTimer = e.after(due.Sub(now))
		}
		return nil
	}
	c := e.wakePending
	e.wakePending = backend.Change{}
	e.lastWake = now
	e.cause = CauseEvent
	defer func() { e.cause = "" }()
	e.log.Debug("kernel change event", "objects", strings.Join(c.Objects, "; "), "sets", len(c.Elements), "deep", c.Deep, "refill", c.Refill)

	if e.countsDirty {
		e.rebuildCounts(now)
	}
	start := time.Now()
	drift, err := e.be.Verify(ctx, e.wantCounts(now))
	took := time.Since(start)
	e.health.update(func(h *Health) {
		h.LastVerify, h.LastVerifyOK, h.VerifyTook = now, err == nil && drift.None(), took
	})
	if err != nil {
		drift.Add("verify", err.Error())
	}
	if c.Refill {
		// Sets another program emptied wholesale: a replay refills them
		// faster than the deep verify's dump and 100k-entry Apply, and
		// the kind keeps the ladder from stopping at Ensure.
		drift.Add("member", "another program deleted our sets or most of their members")
	}
	if !drift.None() {
		details := append(drift.Details, "woken by: "+strings.Join(c.Objects, "; "))
		return e.repair(ctx, drift.Kinds, details)
	}
	if len(c.Elements) > 0 {
		if err := e.putBack(ctx, c.Elements, now); err != nil {
			return err
		}
	}
	if c.Deep && !e.be.Limits().CountsMembers {
		return e.deepVerify(ctx, now)
	}
	return nil
}

// wantCounts is the member count each set must hold at least, with every
// declared set present (0 when empty), as the periodic pass computes it.
func (e *Enforcer) wantCounts(now time.Time) map[backend.SetKey]int {
	want := e.counts.want(now, e.cfg.ExpireSlack)
	for _, o := range e.j.Origins() {
		for _, v6 := range []bool{false, true} {
			k := e.be.SetKeyOf(o, v6)
			if _, ok := want[k]; !ok {
				want[k] = 0
			}
		}
	}
	return want
}

// putBack re-adds members another program deleted from our sets, when the
// view still wants them: the fast verify cannot see a single missing member
// when the backend does not count them, and a full replay for one element
// would be out of all proportion.
func (e *Enforcer) putBack(ctx context.Context, deleted map[string][]netip.Prefix, now time.Time) (err error) {
	keys := map[string]backend.SetKey{}
	for _, o := range e.j.Origins() {
		for _, v6 := range []bool{false, true} {
			k := e.be.SetKeyOf(o, v6)
			keys[e.be.SetName(k)] = k
		}
	}
	var d backend.Delta
	cut := now.Add(e.cfg.ExpireSlack)
	v := e.j.View()
	unnamed := false
	for set, ps := range deleted {
		k, ours := keys[set]
		if !ours {
			// A set the backend keeps beside the one SetName names (an
			// nftables set of ranges), a temporary set of a replay, or one
			// we no longer use: only a member comparison can tell.
			unnamed = true
			continue
		}
		for _, p := range ps {
			for _, en := range entriesFor(v.ForPrefix(p), e.kidx) {
				if en.Origin == k.Origin && p.Addr().Is6() == k.V6 && en.Until.After(cut) {
					d.Add = append(d.Add, en)
				}
			}
		}
	}
	if unnamed && !e.be.Limits().CountsMembers {
		defer func() {
			if err == nil {
				err = e.deepVerify(ctx, now)
			}
		}()
	}
	if d.Empty() {
		return nil // deleted members we no longer want, or our own deletes
	}
	if err := e.kernelErr(e.be.Apply(ctx, d)); err != nil {
		return e.repair(ctx, []string{"member"}, []string{"put back deleted members: " + err.Error()})
	}
	e.log.Warn("repaired members another program deleted", "entries", len(d.Add), "first", d.Add[0].Prefix, "cause", CauseEvent)
	e.health.update(func(h *Health) {
		h.DeepRepairs += len(d.Add)
		if h.RepairsByKind == nil {
			h.RepairsByKind = map[string]int{}
		}
		h.RepairsByKind["member"]++
		if h.RepairsByCause == nil {
			h.RepairsByCause = map[string]int{}
		}
		h.RepairsByCause[CauseEvent]++
	})
	return nil
}
