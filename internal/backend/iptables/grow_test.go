package iptables

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

func TestGrownSize(t *testing.T) {
	for _, c := range []struct {
		n, floor int
		want     uint32
	}{
		{n: 1000, floor: 131072, want: 131072},
		{n: 1_000_000, floor: 131072, want: 131072 << 4}, // 2M: a quarter to spare
		{n: 1500, floor: 1000, want: 2000},
		{n: hardMaxElem, floor: 131072, want: hardMaxElem},
		{n: hardMaxElem + 1, floor: 131072, want: 0},
	} {
		if got := grownSize(c.n, c.floor); got != c.want {
			t.Errorf("grownSize(%d, %d) = %d, want %d", c.n, c.floor, got, c.want)
		}
	}
}

// Past the hard limit the same entries are left out whatever the input
// order, each reported as ErrSetFull with its origin.
func TestCutToFitStable(t *testing.T) {
	mk := func(order []int) []kEntry {
		var out []kEntry
		for _, i := range order {
			out = append(out, newKEntry(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 32), 0, 3))
		}
		return out
	}
	a, errA := cutToFit("s", mk([]int{4, 1, 3, 2}), 2)
	b, _ := cutToFit("s", mk([]int{2, 3, 1, 4}), 2)
	if len(a) != 2 || a[0] != b[0] || a[1] != b[1] {
		t.Fatalf("kept %v and %v: not stable", a, b)
	}
	rs, rest := backend.Rejected(errA)
	if rest != nil || len(rs) != 2 || rs[0].Entry.Origin != 3 || !errors.Is(rs[0].Err, backend.ErrSetFull) {
		t.Fatalf("rejections %+v, rest %v", rs, rest)
	}
}
