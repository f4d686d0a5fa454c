package nftables

import (
	"cmp"
	"net/netip"
	"slices"
	"time"
)

// The kernel refuses overlapping elements in an interval set: a /24 inside
// a /16 already there fails the whole transaction. CIDR prefixes never
// overlap partially, only nest, so a mirror per interval set keeps every
// wanted prefix and puts only the outermost ones ("roots") in the kernel,
// each with the latest expiry of anything nested in it. When a root goes
// (deleted or expired by the enforcer) the prefixes it covered become
// roots in the same transaction. Nothing is ever refused for overlapping,
// and nothing nested is unenforced while its cover expires early.
//
// Range decisions are rare, so in our own table the mirror holds only an
// origin's ranges (single addresses live in the plain set); in set-only
// mode with an administrator's interval set it holds every entry.

// mirror is what one interval set should hold.
type mirror struct {
	want  map[netip.Prefix]time.Time // every wanted prefix; zero time = no expiry
	roots map[netip.Prefix]time.Time // what the kernel holds: root → expiry
}

func newMirror() *mirror {
	return &mirror{want: map[netip.Prefix]time.Time{}, roots: map[netip.Prefix]time.Time{}}
}

// later returns the later expiry; zero (none) wins.
func later(a, b time.Time) time.Time {
	if a.IsZero() || b.IsZero() {
		return time.Time{}
	}
	if a.After(b) {
		return a
	}
	return b
}

// computeRoots returns the outermost wanted prefixes, each with the latest
// expiry among the prefixes it contains. Expired wants are dropped.
func (m *mirror) computeRoots(now time.Time) map[netip.Prefix]time.Time {
	ps := make([]netip.Prefix, 0, len(m.want))
	for p, until := range m.want {
		if !until.IsZero() && !until.After(now) {
			delete(m.want, p)
			continue
		}
		ps = append(ps, p)
	}
	// by address, then shorter (wider) first: a prefix's nested ones follow it
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	roots := make(map[netip.Prefix]time.Time, len(ps))
	var cur netip.Prefix
	for _, p := range ps {
		if cur.IsValid() && cur.Contains(p.Addr()) {
			roots[cur] = later(roots[cur], m.want[p])
			continue
		}
		cur = p
		roots[p] = m.want[p]
	}
	return roots
}

// change is one root to delete or (re)add in the kernel.
type change struct {
	p     netip.Prefix
	until time.Time
	add   bool
	fresh bool // added, and not a root before
}

// update applies dels then adds to the wanted prefixes and returns the
// kernel changes that make the roots match, then records the new roots.
// Changes are sorted so that tests and messages are deterministic.
func (m *mirror) update(dels []netip.Prefix, adds map[netip.Prefix]time.Time, now time.Time) []change {
	for _, p := range dels {
		delete(m.want, p)
	}
	for p, until := range adds {
		m.want[p] = until
	}
	next := m.computeRoots(now)
	var out []change
	for p, until := range m.roots {
		if nu, ok := next[p]; !ok {
			out = append(out, change{p: p, until: until})
		} else if !nu.Equal(until) {
			out = append(out, change{p: p, until: nu, add: true})
		}
	}
	for p, until := range next {
		if _, ok := m.roots[p]; !ok {
			out = append(out, change{p: p, until: until, add: true, fresh: true})
		}
	}
	m.roots = next
	slices.SortFunc(out, func(a, b change) int {
		if a.add != b.add { // deletions first: a new root may contain an old one
			if a.add {
				return 1
			}
			return -1
		}
		return a.p.Addr().Compare(b.p.Addr())
	})
	return out
}

// covered lists the wanted prefixes inside the given kernel roots: what
// the set enforces, nested prefixes included.
func (m *mirror) covered(kernel []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for p := range m.want {
		for _, r := range kernel {
			if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// rangeToPrefixes splits [first, last] into CIDR prefixes.
func rangeToPrefixes(first, last netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for first.IsValid() && first.Compare(last) <= 0 {
		bits := first.BitLen()
		// widen while the prefix starts at first and ends at or before last
		for bits > 0 {
			p := netip.PrefixFrom(first, bits-1).Masked()
			if p.Addr() != first || lastAddr(p).Compare(last) > 0 {
				break
			}
			bits--
		}
		p := netip.PrefixFrom(first, bits)
		out = append(out, p)
		first = lastAddr(p).Next()
	}
	return out
}

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	if a.Is4() {
		b := a.As4()
		for i := p.Bits(); i < 32; i++ {
			b[i/8] |= 1 << (7 - i%8)
		}
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	for i := p.Bits(); i < 128; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom16(b)
}
