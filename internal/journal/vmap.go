package journal

import "math/bits"

// vmap holds a view's entries packed for the swiss map's layout. A slot is
// key and value side by side, padded to their alignment, and a table of
// 1024 slots is allocated whole: an IPv4 entry here is an 8-byte key and a
// 20-byte value, both 4-byte aligned, so a slot is 28 bytes and a table
// fits a 32 KiB size class. (An int64 anywhere would pad the slot to 32 and
// the table to 40 KiB; the unpacked 56-byte slot needs 64 KiB.)
//
// IPv4 keys (nearly all of a blocklist) go to narrow; IPv6 keys, and IPv4
// keys of a (scope, type) pair index too large for narrow, to wide.
type vmap struct {
	narrow map[key4]slotVal
	wide   map[vkey]slotVal
	// current is the label bit of entries set since the last markStale;
	// the other entries are stale (see View.replace).
	current uint32
	// high is the most entries the maps have held or been sized for: a
	// swiss map never shrinks, and fit compares what it holds with it.
	high int
}

const staleBit = 1 << 31 // in slotVal.label; pair indices stay far below it

// key4 is an IPv4 vkey: the address, and the pair index << 8 | bits.
type key4 struct{ addr, meta uint32 }

const maxNarrowCombo = 1<<24 - 1

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

// newVmap is a vmap sized for n4 IPv4 and n6 IPv6 entries. A map sized
// for the wrong family costs its full size for nothing: a 1M IPv6
// blocklist once had 56 MB of empty IPv4 slots.
func newVmap(n4, n6 int) vmap {
	m := vmap{narrow: make(map[key4]slotVal, n4), high: n4 + n6}
	if n6 > 0 {
		m.wide = make(map[vkey]slotVal, n6)
	}
	return m
}

// markStale makes every entry stale until set again.
func (m *vmap) markStale() { m.current ^= staleBit }

// fit copies the entries into maps of their size when the maps have twice
// the slots or more (the view was much larger before a full batch).
func (m *vmap) fit() {
	if slots(m.high) <= slots(m.len()) {
		return
	}
	c := newVmap(len(m.narrow), len(m.wide))
	c.current = m.current
	for k, s := range m.narrow {
		c.narrow[k] = s
	}
	for k, s := range m.wide {
		c.wide[k] = s
	}
	c.high = c.len()
	*m = c
}

// slots approximates the slots of a swiss map that held n entries: its
// tables double as they fill, and keep the load under 7/8.
func slots(n int) int { return 1 << bits.Len(uint(n*8/7)) }

func narrowKey(k vkey) (key4, bool) {
	if k.v6 || k.combo > maxNarrowCombo {
		return key4{}, false
	}
	return key4{addr: uint32(k.lo), meta: k.combo<<8 | uint32(k.bits)}, true
}

func (k key4) vkey() vkey {
	return vkey{lo: 0xffff<<32 | uint64(k.addr), bits: uint8(k.meta), combo: k.meta >> 8}
}

func (m *vmap) get(k vkey) (vval, bool) {
	var s slotVal
	var ok bool
	if nk, narrow := narrowKey(k); narrow {
		s, ok = m.narrow[nk]
	} else {
		s, ok = m.wide[k]
	}
	return m.unpack(s), ok
}

func (m *vmap) set(k vkey, v vval) {
	if nk, narrow := narrowKey(k); narrow {
		if m.narrow == nil {
			m.narrow = make(map[key4]slotVal)
		}
		m.narrow[nk] = m.pack(v)
	} else {
		if m.wide == nil {
			m.wide = make(map[vkey]slotVal)
		}
		m.wide[k] = m.pack(v)
	}
	m.high = max(m.high, m.len())
}

func (m *vmap) del(k vkey) {
	if nk, narrow := narrowKey(k); narrow {
		delete(m.narrow, nk)
	} else {
		delete(m.wide, k)
	}
}

func (m *vmap) len() int { return len(m.narrow) + len(m.wide) }

// all yields every entry; yield may delete the entry it is given.
func (m *vmap) all(yield func(vkey, vval) bool) {
	for k, s := range m.narrow {
		if !yield(k.vkey(), m.unpack(s)) {
			return
		}
	}
	for k, s := range m.wide {
		if !yield(k, m.unpack(s)) {
			return
		}
	}
}
