package heal

import (
	"context"
	"net/netip"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// expireSlice bounds the decisions one expiry step removes: a blocklist
// pull puts 100k decisions on one expiry, and the loop must still feed the
// watchdog and answer Do between steps. At ≈1 µs of bookkeeping and kernel
// work per entry a slice stays well under the 200 ms a stall may last.
const expireSlice = 10000

// expire drops expired decisions from the view and their entries from the
// kernel. The kernel's own timeouts usually beat us to it; this covers
// ipset_disable_timeouts and prefixes that fall back to a shorter decision.
// It asks the view for its next expiry instead of keeping its own, so no
// path that rebuilds the view (boot, full resync, repair) can leave it
// stale. A mass expiry goes in slices; between them the loop beats.
func (e *Enforcer) expire(ctx context.Context, now time.Time) error {
	v := e.j.View()
	if next := v.NextExpiry(); next.IsZero() || now.Before(next) {
		return nil
	}
	start := time.Now()
	decisions, deleted := 0, 0
	for {
		gone := v.ExpireN(now, expireSlice)
		if len(gone) == 0 {
			break
		}
		decisions += len(gone)
		d, shortened := e.expiredDelta(v, gone)
		if shortened {
			// A prefix fell back to a shorter decision: its expected
			// expiry changed. Plain removals need no recount: the
			// expected counts already leave out what has expired.
			e.countsDirty = true
		}
		deleted += len(d.Del)
		if !d.Empty() {
			if err := e.kernelErr(e.be.Apply(ctx, d)); err != nil {
				return e.repair(ctx, []string{"apply"}, []string{"expire: " + err.Error()})
			}
		}
		if len(gone) < expireSlice {
			break
		}
		e.beat(ctx)
	}
	if decisions > 0 {
		e.forgetRejections()
		active := v.Len()
		e.health.update(func(h *Health) { h.ActiveEntries = active })
		e.log.Debug("expired", "decisions", decisions, "deleted", deleted, "took", time.Since(start).Round(time.Microsecond))
	}
	return nil
}

// expiredDelta is what the kernel must lose (or have shortened) for the
// decisions of gone. When the view holds one scope and type (a blocklist),
// no other decision can share a gone decision's prefix: each one's entry
// simply goes, without snapshots or a diff.
func (e *Enforcer) expiredDelta(v *journal.View, gone []journal.Decision) (d backend.Delta, shortened bool) {
	if !v.OnePerPrefix() {
		d = diff(e.expiredSnapshot(v, gone), takeSnapshot(v, prefixesOf(gone), e.kidx))
		return d, len(d.Add) > 0
	}
	idx := memoIndex(e.kidx)
	d.Del = make([]backend.Entry, 0, len(gone))
	for _, g := range gone {
		if o, ok := idx(g.Origin); ok {
			d.Del = append(d.Del, backend.Entry{Prefix: g.Prefix, Origin: o, Until: g.Until})
		}
	}
	return d, false
}

// expiredSnapshot is what the kernel held for the prefixes of gone before
// they left the view: each prefix's remaining decisions plus its gone ones,
// grouped in one pass (a mass expiry shares few prefixes per decision).
func (e *Enforcer) expiredSnapshot(v *journal.View, gone []journal.Decision) snapshot {
	byPrefix := make(map[netip.Prefix][]journal.Decision, len(gone))
	for _, d := range gone {
		byPrefix[d.Prefix] = append(byPrefix[d.Prefix], d)
	}
	s := make(snapshot, len(byPrefix))
	for p, ds := range byPrefix {
		s[p] = entriesFor(append(v.ForPrefix(p), ds...), e.kidx)
	}
	return s
}

func prefixesOf(ds []journal.Decision) map[netip.Prefix]struct{} {
	ps := make(map[netip.Prefix]struct{}, len(ds))
	for _, d := range ds {
		ps[d.Prefix] = struct{}{}
	}
	return ps
}

// beat is the loop going round in the middle of long work: it feeds the
// watchdog and runs a waiting Do call (the admin socket, `check`).
func (e *Enforcer) beat(ctx context.Context) {
	e.heartbeat.Store(time.Now().UnixNano())
	select {
	case c := <-e.calls:
		c.run(ctx)
	default:
	}
}
