package journal

import (
	"math"
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
