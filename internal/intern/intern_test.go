package intern

import (
	"slices"
	"testing"
)

func TestTable(t *testing.T) {
	var tab Table[string]
	in := []string{"a", "a", "b", "a", "c", "c", "b"}
	var got []uint32
	for _, v := range in {
		got = append(got, tab.ID(v))
	}
	if want := []uint32{0, 0, 1, 0, 2, 2, 1}; !slices.Equal(got, want) {
		t.Errorf("ids %v, want %v", got, want)
	}
	if want := []string{"a", "b", "c"}; !slices.Equal(tab.Values, want) {
		t.Errorf("values %v, want %v", tab.Values, want)
	}
	for i, v := range tab.Values {
		if id := tab.ID(v); id != uint32(i) {
			t.Errorf("ID(%q) = %d, want %d", v, id, i)
		}
	}
}

func TestTableLookup(t *testing.T) {
	var tab Table[int]
	if _, ok := tab.Lookup(7); ok {
		t.Fatal("Lookup found a value never added")
	}
	for _, v := range []int{7, 8, 9, 10, 11, 7} { // 7 again, past the recent cache
		tab.ID(v)
	}
	if i, ok := tab.Lookup(7); !ok || i != 0 || len(tab.Values) != 5 {
		t.Fatalf("Lookup(7) = %d, %v with %d values, want 0, true, 5", i, ok, len(tab.Values))
	}
}
