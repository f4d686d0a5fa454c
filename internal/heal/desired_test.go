package heal

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// The expected counts keep runs of entries sharing an expiry: counting,
// dropping refused entries and asking how many must be alive at an instant
// must give what a plain list of expiries would.
func TestExpectedCountsRuns(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ip := func(i int, v6 bool) netip.Prefix {
		if v6 {
			return netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}), 128)
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32)
	}
	// Set {0, v4}: 5 entries at +1h, 3 at +2h, 1 at +3h (interleaved with
	// the other sets, as a walk of the view meets them); {1, v4}: 2 at
	// +1h; {0, v6}: 4 at +2h. Entry 200 is skipped (refused earlier).
	var es []backend.Entry
	add := func(i, origin int, v6 bool, ttl time.Duration) {
		es = append(es, backend.Entry{Prefix: ip(i, v6), Origin: origin, Until: t0.Add(ttl)})
	}
	for i := range 5 {
		add(i, 0, false, time.Hour)
		add(100+i%2, 1, false, time.Hour)
		if i < 4 {
			add(i, 0, true, 2*time.Hour)
		}
	}
	for i := range 3 {
		add(10+i, 0, false, 2*time.Hour)
	}
	add(20, 0, false, 3*time.Hour)
	add(200, 0, false, 3*time.Hour)
	skip := func(e backend.Entry) bool { return e.Prefix == ip(200, false) }
	c := countEntries(slices.Values(es), skip)

	if got := c.total(); got != 5+3+1+5+4 {
		t.Errorf("total = %d, want 18", got)
	}
	if got, want := c.latest(), t0.Add(3*time.Hour); !got.Equal(want) {
		t.Errorf("latest = %v, want %v", got, want)
	}
	v4, o1, v6 := backend.SetKey{}, backend.SetKey{Origin: 1}, backend.SetKey{V6: true}
	if x := c[v4]; !slices.Equal(x.n, []int{5, 3, 1}) || len(x.until) != 3 {
		t.Errorf("runs of %v = %v × %v, want 3 runs of 5, 3, 1", v4, x.until, x.n)
	}
	for _, tc := range []struct {
		at    time.Duration
		slack time.Duration
		want  map[backend.SetKey]int
	}{
		{0, 0, map[backend.SetKey]int{v4: 9, o1: 5, v6: 4}},
		{time.Hour - time.Nanosecond, 0, map[backend.SetKey]int{v4: 9, o1: 5, v6: 4}},
		{time.Hour, 0, map[backend.SetKey]int{v4: 4, o1: 0, v6: 4}}, // expiring at now is gone
		{time.Hour, time.Hour, map[backend.SetKey]int{v4: 1, o1: 0, v6: 0}},
		{3 * time.Hour, 0, map[backend.SetKey]int{v4: 0, o1: 0, v6: 0}},
	} {
		got := c.want(t0.Add(tc.at), tc.slack)
		for k, n := range tc.want {
			if got[k] != n {
				t.Errorf("want(+%v, slack %v)[%v] = %d, want %d", tc.at, tc.slack, k, got[k], n)
			}
		}
	}

	// Refused: one +2h entry of {0, v4}, one of unknown expiry (one of the
	// latest goes), and the lone +3h run disappears.
	c.drop([]backend.Rejection{
		{Entry: backend.Entry{Prefix: ip(10, false), Until: t0.Add(2 * time.Hour)}},
		{Entry: backend.Entry{Prefix: ip(20, false)}},
	})
	if x := c[v4]; !slices.Equal(x.n, []int{5, 2}) || len(x.until) != 2 {
		t.Errorf("after drop, runs of %v = %v × %v, want 5, 2", v4, x.until, x.n)
	}
	if got := c.want(t0.Add(time.Hour), 0)[v4]; got != 2 {
		t.Errorf("after drop, want(+1h) = %d, want 2", got)
	}
}
