// Package chunks holds a list whose length is unknown until its end (a
// decisions list being decoded) without append's regrowth, which allocates
// ~3x the final size and copies most of it several times.
package chunks

import "iter"

// Chunk sizes for lists of unknown length: small first so that a delta of a
// few decisions stays small, at most 8192 elements per chunk.
const (
	firstChunk = 64
	maxChunk   = 8192
)

// List is a list built by Add; the zero List is empty.
type List[T any] struct {
	full [][]T
	cur  []T
	n    int
}

// Make returns an empty list; hint > 0 is the exact length, allocated at
// once.
func Make[T any](hint int) List[T] {
	var l List[T]
	if hint > 0 {
		l.cur = make([]T, 0, hint)
	}
	return l
}

func (l *List[T]) Add(v T) {
	if len(l.cur) == cap(l.cur) {
		size := firstChunk
		if l.cur != nil {
			l.full = append(l.full, l.cur)
			size = min(2*cap(l.cur), maxChunk)
		}
		l.cur = make([]T, 0, size)
	}
	l.cur = append(l.cur, v)
	l.n++
}

func (l *List[T]) Len() int { return l.n }

// All yields the list in order.
func (l *List[T]) All() iter.Seq[T] {
	return func(yield func(T) bool) {
		for _, part := range append(l.full[:len(l.full):len(l.full)], l.cur) {
			for _, v := range part {
				if !yield(v) {
					return
				}
			}
		}
	}
}
