package heal

import (
	"cmp"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// This file computes the desired kernel state from the journal's view and the
// delta between two states. It is pure: no kernel, no clock of its own.

// originIndex maps an origin name to its stable set index.
type originIndex func(origin string) (int, bool)

// entriesFor returns the kernel entries one prefix needs: one per origin set,
// with the longest expiry among the decisions of that origin on the prefix
// (an Ip and a Range decision, or two types, can share a prefix).
func entriesFor(ds []journal.Decision, idx originIndex) []backend.Entry {
	var out []backend.Entry
	for _, d := range ds {
		o, ok := idx(d.Origin)
		if !ok {
			continue // cannot happen after Append: it assigns every origin
		}
		found := false
		for i := range out {
			if out[i].Origin == o {
				found = true
				if d.Until.After(out[i].Until) {
					out[i].Until = d.Until
				}
			}
		}
		if !found {
			out = append(out, backend.Entry{Prefix: d.Prefix, Origin: o, Until: d.Until})
		}
	}
	return out
}

// snapshot is the desired entries of a set of prefixes at one moment.
type snapshot map[netip.Prefix][]backend.Entry

func takeSnapshot(v *journal.View, prefixes map[netip.Prefix]struct{}, idx originIndex) snapshot {
	s := make(snapshot, len(prefixes))
	for p := range prefixes {
		if es := entriesFor(v.ForPrefix(p), idx); len(es) > 0 {
			s[p] = es
		}
	}
	return s
}

// diff returns what turns the kernel from before into after: entries gone or
// moved to another origin are deleted, new or changed ones are added (an add
// of an existing entry updates its timeout).
func diff(before, after snapshot) backend.Delta {
	var d backend.Delta
	for p, olds := range before {
		news := after[p]
		for _, o := range olds {
			if !slices.ContainsFunc(news, func(n backend.Entry) bool { return n.Origin == o.Origin }) {
				d.Del = append(d.Del, o)
			}
		}
	}
	for p, news := range after {
		olds := before[p]
		for _, n := range news {
			i := slices.IndexFunc(olds, func(o backend.Entry) bool { return o.Origin == n.Origin })
			if i < 0 || !olds[i].Until.Equal(n.Until) {
				d.Add = append(d.Add, n)
			}
		}
	}
	sortEntries(d.Add)
	sortEntries(d.Del)
	return d
}

// affected returns the prefixes a batch can change.
func affected(v *journal.View, b journal.Batch) map[netip.Prefix]struct{} {
	n := b.Len()
	if b.Full {
		n += v.Len()
	}
	ps := make(map[netip.Prefix]struct{}, n)
	for _, d := range b.AllNew() {
		ps[d.Prefix] = struct{}{}
	}
	for _, k := range b.Deleted {
		ps[k.Prefix] = struct{}{}
	}
	if b.Full {
		v.Each(func(d journal.Decision) bool {
			ps[d.Prefix] = struct{}{}
			return true
		})
	}
	return ps
}

// activeEntries returns the whole desired kernel state, for Replay, as a
// walk over the view: a million entries are 64 MB as a slice. Each walk
// reads the view again, so it yields the same entries as long as the view
// does not change — the enforcer, its only writer, is the one walking.
//
// A prefix held by several decisions (an Ip and a Range, two types) is
// emitted once, when the walk meets the first of them in ForPrefix's
// order: no 1M-entry "seen" map. When the view holds a single scope and
// type (a blocklist), every decision is its own prefix and the walk skips
// ForPrefix altogether.
func activeEntries(v *journal.View, now time.Time, idx originIndex) iter.Seq[backend.Entry] {
	one := v.OnePerPrefix()
	return func(yield func(backend.Entry) bool) {
		idx := memoIndex(idx)
		v.Each(func(d journal.Decision) bool {
			if !d.Until.After(now) {
				return true
			}
			if one {
				o, ok := idx(d.Origin)
				return !ok || yield(backend.Entry{Prefix: d.Prefix, Origin: o, Until: d.Until})
			}
			ds := v.ForPrefix(d.Prefix)
			if len(ds) > 1 && ds[0].Key() != d.Key() {
				return true // emitted with the first decision on this prefix
			}
			for _, e := range entriesFor(ds, idx) {
				if e.Until.After(now) && !yield(e) {
					return false
				}
			}
			return true
		})
	}
}

// memoIndex caches idx for a walk over the view: a million decisions share
// a handful of origins, and each lookup otherwise takes the journal's lock.
func memoIndex(idx originIndex) originIndex {
	type res struct {
		o  int
		ok bool
	}
	m := map[string]res{}
	var lastName string
	var last res
	return func(origin string) (int, bool) {
		if origin == lastName && lastName != "" {
			return last.o, last.ok
		}
		r, seen := m[origin]
		if !seen {
			r.o, r.ok = idx(origin)
			m[origin] = r
		}
		lastName, last = origin, r
		return r.o, r.ok
	}
}

// expectedCounts is, per set, how many of its entries expire at each
// instant, so the number still alive at any instant is a binary search and
// a sum away: the verify pass runs every second and must not walk 100k
// entries. A blocklist's entries share few expiries (one pull, one
// receive time): a million of them are a few runs, not 8 MB of
// timestamps.
type expectedCounts map[backend.SetKey]*expiries

// expiries are one set's runs: n[i] entries expire at until[i] (unix ns,
// ascending, each n[i] > 0).
type expiries struct {
	until []int64
	n     []int
}

// countEntries counts es per set, leaving out the entries skip names (the
// ones the backend refused: they are not in the kernel and a count that
// expects them would be repaired forever).
func countEntries(es iter.Seq[backend.Entry], skip func(backend.Entry) bool) expectedCounts {
	runs := map[backend.SetKey]map[int64]int{}
	var lastKey backend.SetKey
	var last map[int64]int
	for e := range es {
		if skip(e) {
			continue
		}
		k := backend.SetKey{Origin: e.Origin, V6: e.Prefix.Addr().Is6()}
		if last == nil || k != lastKey {
			if last = runs[k]; last == nil {
				last = map[int64]int{}
				runs[k] = last
			}
			lastKey = k
		}
		last[e.Until.UnixNano()]++
	}
	c := make(expectedCounts, len(runs))
	for k, m := range runs {
		x := &expiries{until: slices.Sorted(maps.Keys(m))}
		x.n = make([]int, len(x.until))
		for i, u := range x.until {
			x.n[i] = m[u]
		}
		c[k] = x
	}
	return c
}

// total is the number of entries counted.
func (c expectedCounts) total() int {
	n := 0
	for _, x := range c {
		for _, k := range x.n {
			n += k
		}
	}
	return n
}

// latest is the furthest expiry counted (zero when none).
func (c expectedCounts) latest() time.Time {
	var ns int64
	for _, x := range c {
		if len(x.until) > 0 {
			ns = max(ns, x.until[len(x.until)-1])
		}
	}
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// latestUntil is the furthest expiry among es (zero when none).
func latestUntil(es []backend.Entry) time.Time {
	var t time.Time
	for _, e := range es {
		if e.Until.After(t) {
			t = e.Until
		}
	}
	return t
}

// drop removes refused entries: they are not in the kernel.
func (c expectedCounts) drop(rs []backend.Rejection) {
	for _, r := range rs {
		x := c[backend.SetKey{Origin: r.Entry.Origin, V6: r.Entry.Prefix.Addr().Is6()}]
		if x == nil || len(x.until) == 0 {
			continue
		}
		// A backend may not say the entry's expiry: then drop one of the
		// latest, which only ever makes the count expected earlier a
		// lower one.
		i, ok := slices.BinarySearch(x.until, r.Entry.Until.UnixNano())
		if !ok {
			i = len(x.until) - 1
		}
		if x.n[i]--; x.n[i] == 0 {
			x.until = slices.Delete(x.until, i, i+1)
			x.n = slices.Delete(x.n, i, i+1)
		}
	}
}

// want returns, per set, how many entries must still be in the kernel at
// now+slack: entries about to expire are not counted, as the kernel may drop
// them first.
func (c expectedCounts) want(now time.Time, slack time.Duration) map[backend.SetKey]int {
	cut := now.Add(slack).UnixNano()
	w := make(map[backend.SetKey]int, len(c))
	for k, x := range c {
		i, _ := slices.BinarySearch(x.until, cut+1)
		n := 0
		for _, k := range x.n[i:] {
			n += k
		}
		w[k] = n
	}
	return w
}

func sortEntries(es []backend.Entry) {
	slices.SortFunc(es, func(a, b backend.Entry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()); c != 0 {
			return c
		}
		return cmp.Compare(a.Origin, b.Origin)
	})
}
