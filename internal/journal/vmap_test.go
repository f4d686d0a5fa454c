package journal

import (
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestVmapPacking(t *testing.T) {
	for _, ms := range []int64{math.MinInt64, -62135596800000, -1, 0, 1, 1740830400000, math.MaxInt64} {
		if got := join(split(ms)); got != ms {
			t.Errorf("join(split(%d)) = %d", ms, got)
		}
	}
	for _, p := range []string{"0.0.0.0/0", "10.0.0.0/8", "255.255.255.255/32", "::/0", "2001:db8::/48", "::ffff:192.0.2.1/128"} {
		for _, combo := range []uint32{0, 7, maxMetaCombo, maxMetaCombo + 1, math.MaxUint32} {
			hi, lo, bits, v6 := packAddr(netip.MustParsePrefix(p))
			k := vkey{hi: hi, lo: lo, bits: bits, v6: v6, combo: combo}
			var m vmap
			want := vval{until: -1, since: math.MaxInt64, label: 3}
			m.set(k, want)
			if got, ok := m.get(k); !ok || got != want {
				t.Errorf("%s combo %d: get = %+v, %t; want %+v", p, combo, got, ok, want)
			}
			for gk, gv := range m.all {
				if gk != k || gv != want || gk.prefix() != netip.MustParsePrefix(p) {
					t.Errorf("%s combo %d: all yields %+v %+v", p, combo, gk, gv)
				}
			}
			if m.del(k); m.len() != 0 {
				t.Errorf("%s combo %d: %d entries after del", p, combo, m.len())
			}
		}
	}
}

// tk is the vkey of prefix p with pair index combo.
func tk(p string, combo uint32) vkey {
	hi, lo, bits, v6 := packAddr(netip.MustParsePrefix(p))
	return vkey{hi: hi, lo: lo, bits: bits, v6: v6, combo: combo}
}

// tv is a value told apart by n, never the zero vval. Its since is the
// same for all, as in a bulk load.
func tv(n int64) vval { return vval{until: 1e12 + n, since: tvSince, label: uint32(n % 1000)} }

const tvSince = 1740830400000

func bulkSet(m *vmap, k vkey, v vval) { m.bulkSet(k, v.until, v.label) }

// manyKeys is n distinct keys of family v6, in ascending order.
func manyKeys(n int, v6 bool) []vkey {
	ks := make([]vkey, n)
	for i := range ks {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if v6 {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 13: byte(i >> 16), byte(i >> 8), byte(i)})
		}
		ks[i] = tk(netip.PrefixFrom(a, a.BitLen()).String(), 1)
	}
	return ks
}

// checkVmap compares m with want through get, len and all.
func checkVmap(t *testing.T, m *vmap, want map[vkey]vval, absent ...vkey) {
	t.Helper()
	if m.len() != len(want) {
		t.Errorf("len = %d, want %d", m.len(), len(want))
	}
	for k, w := range want {
		if got, ok := m.get(k); !ok || got != w {
			t.Errorf("get(%v) = %+v, %t; want %+v", k.prefix(), got, ok, w)
		}
	}
	for _, k := range absent {
		if got, ok := m.get(k); ok {
			t.Errorf("get(%v) = %+v, want absent", k.prefix(), got)
		}
	}
	seen := make(map[vkey]bool)
	for k, v := range m.all {
		if seen[k] {
			t.Errorf("all yields %v twice", k.prefix())
		}
		seen[k] = true
		if w, ok := want[k]; !ok || v != w {
			t.Errorf("all yields %v %+v; want %+v (%t)", k.prefix(), v, w, ok)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("all yields %d entries, want %d", len(seen), len(want))
	}
}

func TestVmapOps(t *testing.T) {
	a4, b4, c4 := tk("192.0.2.1/32", 1), tk("192.0.2.2/32", 1), tk("192.0.2.3/32", 1)
	a6, b6 := tk("2001:db8::1/128", 1), tk("2001:db8::/48", 2)
	rare := tk("192.0.2.1/32", maxMetaCombo+1) // same address as a4, other pair
	stale := func(v vval) vval { v.stale = true; return v }
	many := func(ks []vkey, f func(int) vval) map[vkey]vval {
		w := make(map[vkey]vval)
		for i, k := range ks {
			if v := f(i); v != (vval{}) {
				w[k] = v
			}
		}
		return w
	}
	ks4, ks6 := manyKeys(3000, false), manyKeys(3000, true)
	for _, tc := range []struct {
		name   string
		ops    func(m *vmap)
		want   map[vkey]vval
		absent []vkey
	}{
		{"mixed families", func(m *vmap) {
			m.set(a6, tv(1))
			m.set(rare, tv(2))
			m.set(a4, tv(3))
			m.set(b6, tv(4))
		}, map[vkey]vval{a4: tv(3), a6: tv(1), b6: tv(4), rare: tv(2)}, []vkey{b4, tk("2001:db8::1/127", 1), tk("192.0.2.1/32", 2)}},
		{"update in place", func(m *vmap) {
			m.set(a4, tv(1))
			m.set(b4, tv(2))
			m.set(a4, tv(3))
		}, map[vkey]vval{a4: tv(3), b4: tv(2)}, nil},
		{"delete leaves a tombstone a set revives", func(m *vmap) {
			for i, k := range []vkey{a4, b4, c4, a6, b6, rare} {
				m.set(k, tv(int64(i)))
			}
			for _, k := range []vkey{b4, b6, rare, b4} {
				m.del(k)
			}
			m.set(b6, tv(9))
		}, map[vkey]vval{a4: tv(0), c4: tv(2), a6: tv(3), b6: tv(9)}, []vkey{b4, rare}},
		{"delete of an absent key", func(m *vmap) {
			m.set(a4, tv(1))
			m.del(b4)
			m.del(a6)
			m.del(rare)
		}, map[vkey]vval{a4: tv(1)}, []vkey{b4, a6, rare}},
		{"overlay merges, in reverse order", func(m *vmap) {
			for i := len(ks4) - 1; i >= 0; i-- {
				m.set(ks4[i], tv(int64(i)))
				m.set(ks6[i], tv(int64(i)))
			}
			for i := range ks4 {
				if i%3 == 0 {
					m.del(ks4[i])
					m.del(ks6[i])
				}
				if i%5 == 0 {
					m.set(ks4[i], tv(int64(i+5000)))
				}
			}
		}, func() map[vkey]vval {
			w := many(ks4, func(i int) vval {
				if i%5 == 0 {
					return tv(int64(i + 5000))
				}
				if i%3 == 0 {
					return vval{}
				}
				return tv(int64(i))
			})
			maps.Copy(w, many(ks6, func(i int) vval {
				if i%3 == 0 {
					return vval{}
				}
				return tv(int64(i))
			}))
			return w
		}(), []vkey{ks6[0], ks6[2997]}},
		{"bulk: the last of a key wins", func(m *vmap) {
			*m = newVmap(3, 2)
			bulkSet(m, b4, tv(1))
			bulkSet(m, a6, tv(2))
			bulkSet(m, a4, tv(3))
			bulkSet(m, b4, tv(4))
			bulkSet(m, a6, tv(5))
			m.bulkEnd(tvSince)
		}, map[vkey]vval{a4: tv(3), b4: tv(4), a6: tv(5)}, nil},
		{"bulk: a delete drops what came before, not after", func(m *vmap) {
			*m = newVmap(0, 0)
			bulkSet(m, a4, tv(1))
			bulkSet(m, rare, tv(1))
			m.bulkDel(a4)
			m.bulkDel(rare)
			m.bulkDel(c4)
			bulkSet(m, b4, tv(2))
			m.bulkDel(b4)
			bulkSet(m, b4, tv(3))
			m.bulkDel(a6)
			bulkSet(m, a6, tv(4))
			m.bulkEnd(tvSince)
		}, map[vkey]vval{b4: tv(3), a6: tv(4)}, []vkey{a4, c4, rare}},
		{"bulk, then sets and deletes", func(m *vmap) {
			*m = newVmap(len(ks4), 0)
			for i := len(ks4) - 1; i >= 0; i -= 2 {
				bulkSet(m, ks4[i], tv(int64(i)))
			}
			m.bulkEnd(tvSince)
			for i := range ks4 {
				if i%2 == 0 {
					m.set(ks4[i], tv(int64(i)))
				} else if i%7 == 0 {
					m.del(ks4[i])
				}
			}
		}, many(ks4, func(i int) vval {
			if i%2 == 1 && i%7 == 0 {
				return vval{}
			}
			return tv(int64(i))
		}), nil},
		{"markStale across a merge", func(m *vmap) {
			for i := 1999; i >= 0; i-- {
				m.set(ks4[i], tv(int64(i)))
			}
			m.markStale()
			for i := 1000; i < len(ks4); i++ { // 1000 kept, 1000 new: a merge
				m.set(ks4[i], tv(int64(i)))
			}
		}, many(ks4, func(i int) vval {
			if i < 1000 {
				return stale(tv(int64(i)))
			}
			return tv(int64(i))
		}), nil},
		{"markStale twice: what was set between is stale", func(m *vmap) {
			m.set(a4, tv(1))
			m.markStale()
			m.set(a6, tv(2))
			m.markStale()
			m.set(rare, tv(3))
		}, map[vkey]vval{a4: tv(1), a6: stale(tv(2)), rare: tv(3)}, nil},
		{"fit after most keys went", func(m *vmap) {
			for i, k := range ks6 {
				m.set(k, tv(int64(i)))
			}
			for _, k := range ks6[10:] {
				m.del(k)
			}
			m.set(a6, tv(1))
			m.fit()
			if m.v6.dead != 0 || len(m.v6.over) != 0 || cap(m.v6.base) > 2*len(m.v6.base) {
				t.Errorf("after fit: %d tombstones, overlay %d, base %d of %d", m.v6.dead, len(m.v6.over), len(m.v6.base), cap(m.v6.base))
			}
		}, func() map[vkey]vval {
			w := many(ks6[:10], func(i int) vval { return tv(int64(i)) })
			w[a6] = tv(1)
			return w
		}(), ks6[10:20]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m vmap
			tc.ops(&m)
			checkVmap(t, &m, tc.want, tc.absent...)
		})
	}
}

// all's yield may delete the entry it is given, wherever it is: base,
// overlay or rare map; and nothing is yielded after it returns false.
func TestVmapAllDelete(t *testing.T) {
	var m vmap
	want := make(map[vkey]vval)
	ks := append(manyKeys(1500, false), manyKeys(1500, true)...)
	for i := range ks {
		k := ks[(i*7)%len(ks)] // out of order: some merged, some in the overlay
		m.set(k, tv(int64(i)))
		want[k] = tv(int64(i))
	}
	for i := range 5 {
		k := tk("192.0.2.1/32", maxMetaCombo+1+uint32(i))
		m.set(k, tv(int64(i)))
		want[k] = tv(int64(i))
	}
	for _, k := range ks[:100] {
		m.del(k)
		delete(want, k)
	}
	if len(m.v4.over) == 0 || len(m.v6.over) == 0 || m.v4.dead == 0 {
		t.Fatalf("setup: overlays %d and %d, %d tombstones: the test needs all", len(m.v4.over), len(m.v6.over), m.v4.dead)
	}
	n := 0
	for k, v := range m.all {
		if n++; n%2 == 0 || k.combo > maxMetaCombo {
			m.del(k)
			delete(want, k)
		} else if want[k] != v {
			t.Fatalf("all yields %v %+v, want %+v", k.prefix(), v, want[k])
		}
	}
	checkVmap(t, &m, want)
	n = 0
	for range m.all {
		if n++; n == 10 {
			break
		}
	}
	if n != 10 {
		t.Errorf("all went on after yield returned false: %d", n)
	}
}

// TestVmapModel runs random operations (set, del, get, keep, markStale,
// all, fit, a bulk load) on a vmap and on a plain map that does the same,
// and compares them after each. The keys are few, so that operations hit
// each other, and many, so that overlays merge.
func TestVmapModel(t *testing.T) {
	type mval struct {
		v      vval
		parity bool // markStale's count when set, mod 2
	}
	rng := rand.New(rand.NewPCG(1, 2))
	keys := append(manyKeys(2500, false), manyKeys(2500, true)...)
	for i := range 20 {
		keys = append(keys, tk("198.51.100.7/32", maxMetaCombo+1+uint32(i)), tk("2001:db8::/32", uint32(i)))
	}
	var m vmap
	model := make(map[vkey]mval)
	parity := false
	val := func() vval {
		return vval{until: rng.Int64() - rng.Int64(), since: rng.Int64() - rng.Int64(), label: rng.Uint32N(100)}
	}
	want := func(e mval) vval { e.v.stale = e.parity != parity; return e.v }
	key := func() vkey {
		if rng.IntN(10) == 0 { // the rare ones are few
			return keys[len(keys)-40+rng.IntN(40)]
		}
		return keys[rng.IntN(len(keys))]
	}
	for op := range 60_000 {
		k := key()
		switch r := rng.IntN(1000); {
		case r < 450:
			v := val()
			m.set(k, v)
			model[k] = mval{v, parity}
		case r < 700:
			m.del(k)
			delete(model, k)
		case r < 985:
			got, ok := m.get(k)
			e, wok := model[k]
			if ok != wok || ok && got != want(e) {
				t.Fatalf("op %d: get(%v) = %+v, %t; want %+v, %t", op, k.prefix(), got, ok, want(e), wok)
			}
		case r < 988:
			m.markStale()
			parity = !parity
		case r < 993:
			// keep a run of keys, as replace does after markStale.
			for range 300 {
				k := key()
				m.keep(k)
				if e, ok := model[k]; ok {
					model[k] = mval{e.v, parity}
				}
			}
		case r < 996:
			// Delete some of what all yields, as Expire does, and stop
			// early now and then.
			cut := rng.IntN(len(keys))
			for k, v := range m.all {
				e, ok := model[k]
				if !ok || v != want(e) {
					t.Fatalf("op %d: all yields %v %+v; want %+v, %t", op, k.prefix(), v, want(e), ok)
				}
				if rng.IntN(3) == 0 {
					m.del(k)
					delete(model, k)
				}
				if rng.IntN(cut+1) == 0 {
					break
				}
			}
		case r < 998:
			m.fit()
		default:
			// A bulk load of random sets and deletes, the last of a key
			// winning; all entries are then current.
			m, model = newVmap(rng.IntN(100), rng.IntN(100)), make(map[vkey]mval)
			since := rng.Int64() - rng.Int64()
			for range rng.IntN(3000) {
				k := key()
				if rng.IntN(4) == 0 {
					m.bulkDel(k)
					delete(model, k)
				} else {
					v := val()
					bulkSet(&m, k, v)
					v.since = since
					model[k] = mval{v, parity}
				}
			}
			m.bulkEnd(since)
		}
		if m.len() != len(model) {
			t.Fatalf("op %d: len = %d, want %d", op, m.len(), len(model))
		}
		if op%5000 == 0 || op == 59_999 {
			w := make(map[vkey]vval, len(model))
			for k, e := range model {
				w[k] = want(e)
			}
			checkVmap(t, &m, w)
		}
	}
}
