// Package intern numbers repeated values: a million decisions share a
// handful of origins, scenarios, types and scopes, each kept once and
// referred to by a small index.
package intern

// Table holds each distinct value once, at an index given in order of
// first sight. It only grows. The zero Table is empty and ready to use.
type Table[T comparable] struct {
	// Values holds each distinct value at its index.
	Values []T
	ids    map[T]uint32
	// recent holds the indices last returned, checked before the map: a
	// blocklist's million decisions intern the same few values over and
	// over, and comparing them costs less than hashing them.
	recent [4]uint32
	next   int
}

// ID returns v's index, adding v when it is new.
func (t *Table[T]) ID(v T) uint32 {
	for _, i := range t.recent {
		if int(i) < len(t.Values) && t.Values[i] == v {
			return i
		}
	}
	i, ok := t.ids[v]
	if !ok {
		if t.ids == nil {
			t.ids = make(map[T]uint32)
		}
		i = uint32(len(t.Values))
		t.Values = append(t.Values, v)
		t.ids[v] = i
	}
	t.recent[t.next] = i
	t.next = (t.next + 1) % len(t.recent)
	return i
}

// Lookup returns v's index without adding it; ok is false when v was
// never seen.
func (t *Table[T]) Lookup(v T) (i uint32, ok bool) {
	i, ok = t.ids[v]
	return i, ok
}
