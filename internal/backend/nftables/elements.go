package nftables

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"time"

	gnft "github.com/google/nftables"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

const (
	// perMsg bounds the elements in one netlink message: its element list
	// is one attribute, whose length field is 16 bits (64 KiB); an IPv6
	// interval element with timeout takes under 50 bytes.
	perMsg = 1200
	// perTx bounds the entries of one Apply transaction; Replay is always
	// one transaction, whatever its size.
	perTx = 50000
)

// slot names the kernel set an entry goes to.
type slot struct {
	fam      *family
	name     string
	interval bool
}

// routeIn picks an entry's set, or says why the backend refuses it;
// names is the set name table of the operation at hand.
func (b *Backend) routeIn(names map[backend.SetKey]string, e backend.Entry) (slot, *backend.Rejection) {
	reject := func(reason, why string) (slot, *backend.Rejection) {
		return slot{}, &backend.Rejection{Entry: e, Reason: reason,
			Err: fmt.Errorf("%w: %s: %s", backend.ErrRejected, e.Prefix, why)}
	}
	p := e.Prefix
	switch {
	case !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "":
		return reject("invalid_prefix", "not a plain IPv4 or IPv6 prefix")
	case p.Masked() != p:
		return reject("invalid_prefix", "not masked")
	case p.Bits() == 0:
		return reject("invalid_prefix", "a /0 would ban everything")
	}
	v6 := p.Addr().Is6()
	f := b.fam(v6)
	if f == nil {
		return reject("family_disabled", familyName(v6)+" is disabled")
	}
	if f.cfg.SetOnly {
		if f.userSet == nil {
			return reject("set_missing", "set-only set not found (Ensure not run)")
		}
		if !p.IsSingleIP() && !f.userSet.Interval {
			return reject("set_type", "set "+f.cfg.SetName+" has no interval flag: it holds single addresses only")
		}
		return slot{fam: f, name: f.cfg.SetName, interval: f.userSet.Interval}, nil
	}
	name, declared := names[backend.SetKey{Origin: e.Origin, V6: v6}]
	if !declared {
		return reject("unknown_origin", fmt.Sprintf("origin %d not declared", e.Origin))
	}
	if p.IsSingleIP() {
		return slot{fam: f, name: name}, nil
	}
	return slot{fam: f, name: rangesName(name), interval: true}, nil
}

// setRef is the set object element messages address.
func (b *Backend) setRef(s slot) *gnft.Set {
	if s.fam.cfg.SetOnly {
		return s.fam.userSet
	}
	return b.setObj(s.fam, s.name, s.interval)
}

// timeout turns Until into an element timeout: zero for none, capped at
// MaxTimeout; ok is false when the entry already expired.
func (b *Backend) timeout(set *gnft.Set, until, now time.Time) (time.Duration, bool) {
	if until.IsZero() {
		return 0, true
	}
	d := until.Sub(now)
	if d <= 0 {
		return 0, false
	}
	if !set.HasTimeout || b.cfg.DisableTimeouts {
		return 0, true
	}
	d = (d + time.Millisecond - 1).Truncate(time.Millisecond)
	return min(d, MaxTimeout), true
}

// elems appends the kernel elements of p: its address, or for an interval
// set its start and the end just past it (none when p reaches the end of
// the address space).
func elems(dst []gnft.SetElement, p netip.Prefix, interval bool, to time.Duration) []gnft.SetElement {
	dst = append(dst, gnft.SetElement{Key: p.Addr().AsSlice(), Timeout: to})
	if interval {
		if end := lastAddr(p).Next(); end.IsValid() {
			dst = append(dst, gnft.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return dst
}

// writer queues element messages of at most perMsg elements.
type writer struct {
	set *gnft.Set
	buf []gnft.SetElement
	op  func(*gnft.Set, []gnft.SetElement) error
	err error
}

func (w *writer) put(e ...gnft.SetElement) {
	w.buf = append(w.buf, e...)
	if len(w.buf) >= perMsg {
		w.flush()
	}
}

func (w *writer) flush() {
	if len(w.buf) > 0 && w.err == nil {
		w.err = w.op(w.set, w.buf)
	}
	w.buf = w.buf[:0]
}

// queueAdd queues the adds of items so that whether or not an element is
// present, it ends present with the new timeout: one add where the kernel
// updates a present element's timeout (6.10 on), else "add, delete, add"
// (an add of a present element is a no-op, a delete of an absent one an
// error, so neither step fails). Each step is its own run of messages.
func (b *Backend) queueAdd(set *gnft.Set, items []item) error {
	type step struct {
		op func(*gnft.Set, []gnft.SetElement) error
		to bool
	}
	steps := []step{{b.conn.SetAddElements, true}, {b.conn.SetDeleteElements, false}, {b.conn.SetAddElements, true}}
	if b.addSetsTimeout {
		steps = steps[:1]
	}
	for _, step := range steps {
		w := &writer{set: set, op: step.op}
		for _, it := range items {
			to := it.to
			if !step.to {
				to = 0
			}
			w.put(elems(nil, it.p, set.Interval, to)...)
		}
		w.flush()
		if w.err != nil {
			return w.err
		}
	}
	return nil
}

// queueDel queues "add, delete": the element ends absent, and the delete
// cannot fail for want of it.
func (b *Backend) queueDel(set *gnft.Set, items []item) error {
	for _, op := range []func(*gnft.Set, []gnft.SetElement) error{b.conn.SetAddElements, b.conn.SetDeleteElements} {
		w := &writer{set: set, op: op}
		for _, it := range items {
			w.put(elems(nil, it.p, set.Interval, 0)...)
		}
		w.flush()
		if w.err != nil {
			return w.err
		}
	}
	return nil
}

// item is a prefix with its element timeout.
type item struct {
	p  netip.Prefix
	to time.Duration
}

// Apply deletes then adds entries, in transactions of up to perTx
// entries. An added entry that is present gets the new timeout. Refused
// entries are reported as a *backend.RejectedError after the rest was
// applied.
func (b *Backend) Apply(ctx context.Context, d backend.Delta) error {
	var rej []backend.Rejection
	now := b.cfg.Now()
	for start := 0; start < len(d.Del)+len(d.Add); start += perTx {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := min(start+perTx, len(d.Del)+len(d.Add))
		r, err := b.applyTx(d, start, end, now)
		rej = append(rej, r...)
		if err != nil {
			return errors.Join(err, rejected(rej))
		}
	}
	return rejected(rej)
}

func rejected(rs []backend.Rejection) error {
	if len(rs) == 0 {
		return nil
	}
	return &backend.RejectedError{Rejected: rs}
}

// applyTx applies entries [start,end) of Del followed by Add in one
// transaction.
func (b *Backend) applyTx(d backend.Delta, start, end int, now time.Time) ([]backend.Rejection, error) {
	type group struct {
		set        *gnft.Set
		slot       slot
		dels, adds []item
		mdels      []netip.Prefix
		madds      map[netip.Prefix]time.Time
	}
	groups := map[string]*group{}
	var order []string
	var rej []backend.Rejection
	names := b.setNames()
	for i := start; i < end; i++ {
		isDel := i < len(d.Del)
		var e backend.Entry
		if isDel {
			e = d.Del[i]
		} else {
			e = d.Add[i-len(d.Del)]
		}
		s, r := b.routeIn(names, e)
		if r != nil {
			if !isDel {
				rej = append(rej, *r)
			}
			continue
		}
		g := groups[s.name]
		if g == nil {
			g = &group{set: b.setRef(s), slot: s, madds: map[netip.Prefix]time.Time{}}
			groups[s.name] = g
			order = append(order, s.name)
		}
		switch {
		case s.interval && isDel:
			g.mdels = append(g.mdels, e.Prefix)
			delete(g.madds, e.Prefix)
		case s.interval:
			if _, ok := b.timeout(g.set, e.Until, now); ok {
				g.madds[e.Prefix] = e.Until
			}
		case isDel:
			g.dels = append(g.dels, item{p: e.Prefix})
		default:
			if to, ok := b.timeout(g.set, e.Until, now); ok {
				g.adds = append(g.adds, item{p: e.Prefix, to: to})
			}
		}
	}
	for _, name := range order {
		g := groups[name]
		if g.slot.interval {
			if err := b.queueMirror(g.set, g.mdels, g.madds, now); err != nil {
				return rej, err
			}
			continue
		}
		if err := b.queueDel(g.set, g.dels); err != nil {
			return rej, err
		}
		if err := b.queueAdd(g.set, g.adds); err != nil {
			return rej, err
		}
	}
	resume := b.quiet(end - start)
	err := b.conn.Flush()
	resume(committed(err))
	if err != nil {
		b.forgetMirrors()
		return rej, fmt.Errorf("nftables apply: %w", err)
	}
	return rej, nil
}

// replaySlot is one of our sets being refilled by a replay. A
// single-address set gets its elements queued as the walk meets them; an
// interval set collects its prefixes in a mirror first, whose roots are
// queued after the walk (overlapping prefixes merge).
type replaySlot struct {
	slot
	w *writer  // names the set; queues the elements of an interval set
	a *addrMsg // queues the elements of a single-address set
	m *mirror
	// kept: a preload filled the set with exactly its entries; it is
	// neither flushed nor refilled.
	kept bool
}

// queueReplay encodes the replay transaction in one walk over active:
// every set of ours but those in keep is flushed, then refilled, the
// element messages of different sets interleaved as the entries come. It
// returns the transaction, the number of entries it adds and the refused
// ones. (A transaction that adds none may change nothing, and the kernel
// does not count a transaction that changed nothing as a generation: that
// number decides whether the change monitor is paused, see
// backend.EventPauser.)
func (b *Backend) queueReplay(active iter.Seq[backend.Entry], now time.Time, keep map[setID]bool) (*rawTx, int, []backend.Rejection, error) {
	tx := &rawTx{}
	slots := map[string]*replaySlot{}
	var order []*replaySlot
	names := b.setNames()
	add := func(s slot) {
		set := b.setRef(s)
		rs := &replaySlot{slot: s, w: &writer{set: set, op: tx.addElements}}
		if s.interval {
			rs.m = newMirror()
		} else {
			rs.a = newAddrMsg(set)
		}
		slots[s.name] = rs
		order = append(order, rs)
		if rs.kept = keep[setID{s.fam.v6, s.name}]; !rs.kept {
			tx.flushSet(rs.w.set)
		}
	}
	for _, f := range b.fams {
		if f.cfg.SetOnly {
			if f.userSet != nil {
				add(slot{fam: f, name: f.cfg.SetName, interval: f.userSet.Interval})
			}
			continue
		}
		for _, o := range b.originList() {
			name := names[backend.SetKey{Origin: o, V6: f.v6}]
			add(slot{fam: f, name: name})
			add(slot{fam: f, name: rangesName(name), interval: true})
		}
	}
	n := 0
	var rej []backend.Rejection
	var last *replaySlot
	for e := range active {
		s, r := b.routeIn(names, e)
		if r != nil {
			rej = append(rej, *r)
			continue
		}
		if last == nil || last.name != s.name {
			if last = slots[s.name]; last == nil {
				rej = append(rej, backend.Rejection{Entry: e, Reason: "unknown_origin",
					Err: fmt.Errorf("%w: %s: set %s is not declared", backend.ErrRejected, e.Prefix, s.name)})
				continue
			}
		}
		if last.kept {
			continue
		}
		to, ok := b.timeout(last.w.set, e.Until, now)
		if !ok {
			continue
		}
		n++
		if last.a != nil {
			if last.a.put(e.Prefix.Addr(), to); last.a.n >= perMsg {
				last.a.done(tx)
			}
			continue
		}
		// later() reads a zero time as "no expiry": only merge with an
		// expiry that is there.
		if old, dup := last.m.want[e.Prefix]; dup {
			last.m.want[e.Prefix] = later(old, e.Until)
		} else {
			last.m.want[e.Prefix] = e.Until
		}
	}
	for _, rs := range order {
		if rs.a != nil {
			rs.a.done(tx)
		}
		if rs.m != nil {
			b.mirrors[rs.name] = rs.m
			for _, c := range rs.m.update(nil, nil, now) {
				to, _ := b.timeout(rs.w.set, c.until, now)
				rs.w.put(elems(nil, c.p, true, to)...)
			}
		}
		rs.w.flush()
		if rs.w.err != nil {
			return nil, n, rej, rs.w.err
		}
	}
	return tx, n, rej, nil
}

// keptPreloads returns the preloaded sets to keep as they are: those
// whose preload succeeded and put in as many elements as the replay routes
// live entries to them. The preload added each decision of
// the pull once and the replay's entries are distinct addresses of the
// same pull, so equal counts mean no address came twice (whose element
// would hold the last add's timeout, not the latest) and the set holds
// exactly the replay's entries. Any other difference refills the set.
func (b *Backend) keptPreloads(active iter.Seq[backend.Entry], names map[backend.SetKey]string, now time.Time, pending map[setID]*loaded) map[setID]bool {
	count := map[setID]int{}
	for key, l := range pending {
		if l.ok {
			count[key] = 0
		}
	}
	if len(count) == 0 {
		return nil
	}
	for e := range active {
		s, r := b.routeIn(names, e)
		if r != nil || s.interval || !e.Until.IsZero() && !e.Until.After(now) {
			continue
		}
		if n, ok := count[setID{s.fam.v6, s.name}]; ok {
			count[setID{s.fam.v6, s.name}] = n + 1
		}
	}
	keep := map[setID]bool{}
	for key, n := range count {
		keep[key] = n == pending[key].n
	}
	return keep
}

// queueMirror updates an interval set's mirror and queues the root changes.
func (b *Backend) queueMirror(set *gnft.Set, dels []netip.Prefix, adds map[netip.Prefix]time.Time, now time.Time) error {
	m, err := b.mirrorOf(set, now)
	if err != nil {
		return err
	}
	var del, refresh, fresh []item
	for _, c := range m.update(dels, adds, now) {
		to, _ := b.timeout(set, c.until, now)
		switch {
		case !c.add:
			del = append(del, item{p: c.p})
		case c.fresh:
			fresh = append(fresh, item{p: c.p, to: to})
		default:
			refresh = append(refresh, item{p: c.p, to: to})
		}
	}
	if err := b.queueDel(set, del); err != nil {
		return err
	}
	if err := b.queueAdd(set, refresh); err != nil {
		return err
	}
	// A new root may cover roots deleted just before in this transaction:
	// the kernel then cannot find it again to delete it (ENOENT, kernel
	// 6.18), so it is only added. It was not a root: nothing to refresh.
	return b.queueOps(set, fresh, b.conn.SetAddElements)
}

// queueOps queues one operation over items.
func (b *Backend) queueOps(set *gnft.Set, items []item, op func(*gnft.Set, []gnft.SetElement) error) error {
	w := &writer{set: set, op: op}
	for _, it := range items {
		w.put(elems(nil, it.p, set.Interval, it.to)...)
	}
	w.flush()
	return w.err
}

// mirrorOf returns an interval set's mirror, reading the set from the
// kernel when it is unknown (at start, after a failed transaction).
func (b *Backend) mirrorOf(set *gnft.Set, now time.Time) (*mirror, error) {
	if m := b.mirrors[set.Name]; m != nil {
		return m, nil
	}
	m := newMirror()
	els, err := b.conn.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("read interval set %s: %w", set.Name, err)
	}
	for _, iv := range intervals(els) {
		until := time.Time{}
		if iv.expires > 0 {
			until = now.Add(iv.expires)
		}
		for _, p := range rangeToPrefixes(iv.first, iv.last) {
			m.want[p], m.roots[p] = until, until
		}
	}
	b.mirrors[set.Name] = m
	return m, nil
}

// forgetMirrors marks every mirror unknown: after a failed transaction
// the kernel holds what it held before, which the mirrors no longer say.
func (b *Backend) forgetMirrors() {
	for k := range b.mirrors {
		b.mirrors[k] = nil
	}
}

// interval is one [first, last] range of an interval set dump.
type interval struct {
	first, last netip.Addr
	expires     time.Duration
}

// intervals pairs the start and end elements of an interval set dump. A
// start without an end runs to the end of the address space.
func intervals(els []gnft.SetElement) []interval {
	var starts, ends []gnft.SetElement
	for _, e := range els {
		if e.IntervalEnd {
			ends = append(ends, e)
		} else {
			starts = append(starts, e)
		}
	}
	endAt := map[netip.Addr]bool{}
	for _, e := range ends {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			endAt[a] = true
		}
	}
	var out []interval
	for _, s := range starts {
		first, ok := netip.AddrFromSlice(s.Key)
		if !ok {
			continue
		}
		// the end is the lowest end element above first
		last := netip.Addr{}
		for _, e := range ends {
			a, _ := netip.AddrFromSlice(e.Key)
			if a.Compare(first) > 0 && (!last.IsValid() || a.Compare(last) < 0) {
				last = a
			}
		}
		if last.IsValid() {
			last = last.Prev()
		} else {
			last = lastAddr(netip.PrefixFrom(first, 0))
		}
		out = append(out, interval{first: first, last: last, expires: s.Expires})
	}
	return out
}

// Replay makes our sets hold exactly active in one transaction: each set
// is flushed and refilled, so no packet sees a half-filled set. Expired
// entries are skipped; refused ones are reported as for Apply.
func (b *Backend) Replay(ctx context.Context, active iter.Seq[backend.Entry]) error {
	return b.ReplayWhen(ctx, active, func() error { return nil })
}

// ReplayWhen implements backend.StagedReplayer: the transaction is encoded
// first and committed once ready returns.
func (b *Backend) ReplayWhen(ctx context.Context, active iter.Seq[backend.Entry], ready func() error) error {
	// Taken whatever happens: from here on the next Ensure gives the
	// preloaded sets their rules.
	pending := b.takePending()
	if err := ctx.Err(); err != nil {
		return err
	}
	now := b.cfg.Now()
	keep := b.keptPreloads(active, b.setNames(), now, pending)
	tx, n, rej, err := b.queueReplay(active, now, keep)
	if err != nil {
		b.forgetMirrors()
		return errors.Join(err, rejected(rej))
	}
	if err := ready(); err != nil {
		b.forgetMirrors()
		return err
	}
	resume := b.quiet(n)
	err = tx.commit()
	resume(committed(err))
	if err != nil {
		b.forgetMirrors()
		return errors.Join(fmt.Errorf("nftables replay: %w", err), rejected(rej))
	}
	if len(pending) > 0 {
		kept := 0
		for _, k := range keep {
			if k {
				kept++
			}
		}
		b.log.Debug("preloaded sets made live", "kept", kept, "refilled", len(pending)-kept)
		// The journal has the batch and the sets hold it: now their rules.
		if err := b.Ensure(ctx); err != nil {
			return errors.Join(fmt.Errorf("nftables replay: rules of preloaded sets: %w", err), rejected(rej))
		}
	}
	return rejected(rej)
}
