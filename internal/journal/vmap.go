package journal

import (
	"cmp"
	"slices"
)

// vmap holds a view's entries as fixed-size, pointer-free records in a
// sorted slice per family, found by binary search: a record costs its
// bytes and nothing more (an IPv4 one 28, an IPv6 one 40), where a swiss
// map sized for a million entries holds two million slots, half empty.
//
// IPv4 keys (nearly all of a blocklist) go to v4, IPv6 keys to v6; keys
// whose pair index is too large for meta go to rare, which no real view
// reaches.
type vmap struct {
	v4   table[key4]
	v6   table[key6]
	rare map[vkey]slotVal
	// current is the label bit of entries set since the last markStale;
	// the other entries are stale (see View.replace).
	current uint32
}

const (
	staleBit = 1 << 31 // in slotVal.label; pair indices stay far below it
	// tomb is the label of a deleted record left in a table's base until
	// the next merge: removing it would move every record after it.
	tomb = staleBit - 1
)

// key4 is an IPv4 vkey: the address, and meta (the pair index << 8 | bits).
type key4 struct{ addr, meta uint32 }

// key6 is an IPv6 vkey: the address in 4-byte words, most significant
// first (8-byte words would pad the record from 40 to 48 bytes), and meta.
type key6 struct {
	addr [4]uint32
	meta uint32
}

const maxMetaCombo = 1<<24 - 1

// Both key types are what table[K] asks of its keys. Said once more as
// interface conversions, for staticcheck, which does not follow a type
// parameter's constraint and would call the methods unused.
var (
	_ interface {
		cmp(key4) int
		find([]entry[key4]) (int, bool)
	} = key4{}
	_ interface {
		cmp(key6) int
		find([]entry[key6]) (int, bool)
	} = key6{}
)

// The order of keys is that of ord: the address, then meta.
func (k key4) ord() uint64 { return uint64(k.addr)<<32 | uint64(k.meta) }

func (a key4) cmp(b key4) int { return cmp.Compare(a.ord(), b.ord()) }

func (a key6) less(b key6) bool {
	for i := range a.addr {
		if a.addr[i] != b.addr[i] {
			return a.addr[i] < b.addr[i]
		}
	}
	return a.meta < b.meta
}

func (a key6) cmp(b key6) int {
	if a == b {
		return 0
	}
	if a.less(b) {
		return -1
	}
	return 1
}

// find is the binary search of k in base: its index, or where it would
// go. It is written out for each key type because a lookup is mostly
// comparisons, which a type parameter's method would not inline.
func (k key4) find(base []entry[key4]) (int, bool) {
	x := k.ord()
	i, j := 0, len(base)
	for i < j {
		h := int(uint(i+j) >> 1)
		if base[h].k.ord() < x {
			i = h + 1
		} else {
			j = h
		}
	}
	return i, i < len(base) && base[i].k == k
}

func (k key6) find(base []entry[key6]) (int, bool) {
	i, j := 0, len(base)
	for i < j {
		h := int(uint(i+j) >> 1)
		if base[h].k.less(k) {
			i = h + 1
		} else {
			j = h
		}
	}
	return i, i < len(base) && base[i].k == k
}

// slotVal is vval in 4-byte words.
type slotVal struct {
	until, since [2]uint32
	label        uint32
}

func split(v int64) [2]uint32 { return [2]uint32{uint32(v), uint32(v >> 32)} }
func join(w [2]uint32) int64  { return int64(w[1])<<32 | int64(w[0]) }

func (m *vmap) pack(v vval) slotVal {
	return slotVal{until: split(v.until), since: split(v.since), label: v.label | m.current}
}

func (m *vmap) unpack(s slotVal) vval {
	return vval{
		until: join(s.until), since: join(s.since),
		label: s.label &^ staleBit, stale: s.label&staleBit != m.current,
	}
}

// newVmap is a vmap with room for n4 IPv4 and n6 IPv6 entries, so that
// loading them in order (bulk or sorted) allocates each base once.
func newVmap(n4, n6 int) vmap {
	return vmap{
		v4: table[key4]{base: make([]entry[key4], 0, n4)},
		v6: table[key6]{base: make([]entry[key6], 0, n6)},
	}
}

// markStale makes every entry stale until set again.
func (m *vmap) markStale() { m.current ^= staleBit }

// fit merges the overlays and drops the tombstones, and gives back the
// memory of a view that was much larger before a full batch.
func (m *vmap) fit() {
	m.v4.fit()
	m.v6.fit()
}

// split4 and split6 sort k into its table: ok is false for the other
// family's keys and for rare ones.
func split4(k vkey) (key4, bool) {
	if k.v6 || k.combo > maxMetaCombo {
		return key4{}, false
	}
	return key4{addr: uint32(k.lo), meta: k.combo<<8 | uint32(k.bits)}, true
}

func split6(k vkey) (key6, bool) {
	if !k.v6 || k.combo > maxMetaCombo {
		return key6{}, false
	}
	a := [4]uint32{uint32(k.hi >> 32), uint32(k.hi), uint32(k.lo >> 32), uint32(k.lo)}
	return key6{addr: a, meta: k.combo<<8 | uint32(k.bits)}, true
}

func (k key4) vkey() vkey {
	return vkey{lo: 0xffff<<32 | uint64(k.addr), bits: uint8(k.meta), combo: k.meta >> 8}
}

func (k key6) vkey() vkey {
	return vkey{
		hi: uint64(k.addr[0])<<32 | uint64(k.addr[1]), lo: uint64(k.addr[2])<<32 | uint64(k.addr[3]),
		bits: uint8(k.meta), v6: true, combo: k.meta >> 8,
	}
}

func (m *vmap) get(k vkey) (vval, bool) {
	var s slotVal
	var ok bool
	if k4, is := split4(k); is {
		s, ok = m.v4.get(k4)
	} else if k6, is := split6(k); is {
		s, ok = m.v6.get(k6)
	} else {
		s, ok = m.rare[k]
	}
	return m.unpack(s), ok
}

func (m *vmap) set(k vkey, v vval) {
	if k4, is := split4(k); is {
		m.v4.set(k4, m.pack(v))
	} else if k6, is := split6(k); is {
		m.v6.set(k6, m.pack(v))
	} else {
		if m.rare == nil {
			m.rare = make(map[vkey]slotVal)
		}
		m.rare[k] = m.pack(v)
	}
}

func (m *vmap) del(k vkey) {
	if k4, is := split4(k); is {
		m.v4.del(k4)
	} else if k6, is := split6(k); is {
		m.v6.del(k6)
	} else {
		delete(m.rare, k)
	}
}

// bulkSet and bulkDel load an empty vmap with one full batch: they append
// without looking anything up, and bulkEnd sorts once. The last of a key
// wins, and bulkDel deletes what came before it, as set and del would
// have. Every entry gets since at bulkEnd: until then the field holds the
// entry's position, which makes the order of equal keys that of the batch
// without a stable sort (several times slower).
func (m *vmap) bulkSet(k vkey, until int64, label uint32) {
	m.bulk(k, slotVal{until: split(until), label: label | m.current})
}

func (m *vmap) bulkDel(k vkey) { m.bulk(k, slotVal{label: tomb}) }

func (m *vmap) bulk(k vkey, s slotVal) {
	if k4, is := split4(k); is {
		s.since = split(int64(len(m.v4.base)))
		m.v4.base = append(m.v4.base, entry[key4]{k4, s})
	} else if k6, is := split6(k); is {
		s.since = split(int64(len(m.v6.base)))
		m.v6.base = append(m.v6.base, entry[key6]{k6, s})
	} else if s.label == tomb {
		delete(m.rare, k)
	} else {
		if m.rare == nil {
			m.rare = make(map[vkey]slotVal)
		}
		m.rare[k] = s
	}
}

func (m *vmap) bulkEnd(since int64) {
	m.v4.bulkEnd(since)
	m.v6.bulkEnd(since)
	for k, s := range m.rare {
		s.since = split(since)
		m.rare[k] = s
	}
}

// keep makes k's entry, if any, current: set without the value, which
// would cost a second lookup.
func (m *vmap) keep(k vkey) {
	if k4, is := split4(k); is {
		m.v4.keep(k4, m.current)
	} else if k6, is := split6(k); is {
		m.v6.keep(k6, m.current)
	} else if s, ok := m.rare[k]; ok {
		s.label = s.label&^staleBit | m.current
		m.rare[k] = s
	}
}

// sorted returns an iterator over m's entries in key order, IPv4 then
// IPv6 (rare keys last, in no order), for the snapshot, which writes each
// key as a delta from the one before. It leaves m as it is (its caller may
// hold only a read lock): the overlays are sorted aside, once for every
// pass the caller makes.
func (m *vmap) sorted() func(yield func(vkey, vval) bool) {
	o4, o6 := m.v4.overSorted(), m.v6.overSorted()
	return func(yield func(vkey, vval) bool) {
		if !m.v4.inOrder(o4, func(k key4, s slotVal) bool { return yield(k.vkey(), m.unpack(s)) }) ||
			!m.v6.inOrder(o6, func(k key6, s slotVal) bool { return yield(k.vkey(), m.unpack(s)) }) {
			return
		}
		for k, s := range m.rare {
			if !yield(k, m.unpack(s)) {
				return
			}
		}
	}
}

func (m *vmap) len() int { return m.v4.len() + m.v6.len() + len(m.rare) }

// all yields every entry; yield may delete the entry it is given, and
// nothing else.
func (m *vmap) all(yield func(vkey, vval) bool) {
	if !m.v4.all(func(k key4, s slotVal) bool { return yield(k.vkey(), m.unpack(s)) }) ||
		!m.v6.all(func(k key6, s slotVal) bool { return yield(k.vkey(), m.unpack(s)) }) {
		return
	}
	for k, s := range m.rare {
		if !yield(k, m.unpack(s)) {
			return
		}
	}
}

// table is one family's entries: a base sorted by key, updated and deleted
// in place, and an overlay map for the keys new to it. The overlay is
// merged into the base when it reaches a sixteenth of it, so an insert
// costs a lookup and a share of the merges: about sixteen record moves.
type table[K interface {
	comparable
	cmp(K) int
	find([]entry[K]) (int, bool)
}] struct {
	base []entry[K]    // sorted by key, with tombstones
	dead int           // tombstones in base
	over map[K]slotVal // keys not in base
}

type entry[K any] struct {
	k K
	s slotVal
}

// minOverlay keeps a small base from merging at every other insert.
const minOverlay = 1024

func (t *table[K]) find(k K) (int, bool) { return k.find(t.base) }

func (t *table[K]) len() int { return len(t.base) - t.dead + len(t.over) }

// get: a key in the base, even as a tombstone, is never in the overlay.
func (t *table[K]) get(k K) (slotVal, bool) {
	if i, ok := t.find(k); ok {
		s := t.base[i].s
		return s, s.label != tomb
	}
	s, ok := t.over[k]
	return s, ok
}

func (t *table[K]) set(k K, s slotVal) {
	i, ok := t.find(k)
	switch {
	case ok:
		if t.base[i].s.label == tomb {
			t.dead--
		}
		t.base[i].s = s
	case i == len(t.base) && len(t.over) == 0:
		// Past the last key, as when loading a snapshot written in
		// order: the base can take it as it is.
		t.base = append(t.base, entry[K]{k, s})
	default:
		if t.over == nil {
			t.over = make(map[K]slotVal)
		}
		t.over[k] = s
		if len(t.over) >= max(minOverlay, len(t.base)/16) {
			t.merge()
		}
	}
}

func (t *table[K]) del(k K) {
	if i, ok := t.find(k); ok {
		if t.base[i].s.label != tomb {
			t.base[i].s.label = tomb
			t.dead++
		}
		return
	}
	delete(t.over, k)
}

func (t *table[K]) all(yield func(K, slotVal) bool) bool {
	for _, e := range t.base {
		if e.s.label != tomb && !yield(e.k, e.s) {
			return false
		}
	}
	for k, s := range t.over {
		if !yield(k, s) {
			return false
		}
	}
	return true
}

// inOrder is all in key order: the base merged with ov, the overlay as
// overSorted gives it. Base and overlay never share a key.
func (t *table[K]) inOrder(ov []entry[K], yield func(K, slotVal) bool) bool {
	j := 0
	for _, e := range t.base {
		if e.s.label == tomb {
			continue
		}
		for ; j < len(ov) && ov[j].k.cmp(e.k) < 0; j++ {
			if !yield(ov[j].k, ov[j].s) {
				return false
			}
		}
		if !yield(e.k, e.s) {
			return false
		}
	}
	for _, e := range ov[j:] {
		if !yield(e.k, e.s) {
			return false
		}
	}
	return true
}

func cmpEntry[K interface{ cmp(K) int }](a, b entry[K]) int { return a.k.cmp(b.k) }

// overSorted is the overlay as a slice sorted by key.
func (t *table[K]) overSorted() []entry[K] {
	ov := make([]entry[K], 0, len(t.over))
	for k, s := range t.over {
		ov = append(ov, entry[K]{k, s})
	}
	slices.SortFunc(ov, cmpEntry)
	return ov
}

// merge moves the overlay into the base and drops the tombstones, in
// place when the base has the room: from the end down, so that no record
// is overwritten before it is moved.
func (t *table[K]) merge() {
	ov := t.overSorted()
	t.over = nil // a map never shrinks: the next overlay starts small
	t.compact()
	n := len(t.base)
	t.base = slices.Grow(t.base, len(ov))[:n+len(ov)]
	for i, j, w := n-1, len(ov)-1, len(t.base)-1; j >= 0; w-- {
		if i >= 0 && t.base[i].k.cmp(ov[j].k) > 0 {
			t.base[w] = t.base[i]
			i--
		} else {
			t.base[w] = ov[j]
			j--
		}
	}
}

// compact drops the tombstones.
func (t *table[K]) compact() {
	if t.dead > 0 {
		t.base = slices.DeleteFunc(t.base, func(e entry[K]) bool { return e.s.label == tomb })
		t.dead = 0
	}
}

// fit merges, and copies the base to an array of its size when it holds
// less than half of its capacity.
func (t *table[K]) fit() {
	if len(t.over) > 0 {
		t.merge()
	}
	t.compact()
	if len(t.base) < cap(t.base)/2 {
		t.base = append([]entry[K](nil), t.base...)
	}
}

func (t *table[K]) keep(k K, current uint32) {
	if i, ok := t.find(k); ok {
		if s := &t.base[i].s; s.label != tomb {
			s.label = s.label&^staleBit | current
		}
	} else if s, ok := t.over[k]; ok {
		s.label = s.label&^staleBit | current
		t.over[k] = s
	}
}

// bulkEnd sorts what bulk appended to the base by key and position, and
// keeps the last record of each key unless it is a delete.
func (t *table[K]) bulkEnd(since int64) {
	slices.SortFunc(t.base, func(a, b entry[K]) int {
		return cmp.Or(a.k.cmp(b.k), cmp.Compare(join(a.s.since), join(b.s.since)))
	})
	out := t.base[:0]
	for i, e := range t.base {
		if (i+1 == len(t.base) || t.base[i+1].k != e.k) && e.s.label != tomb {
			e.s.since = split(since)
			out = append(out, e)
		}
	}
	t.base = out
}
