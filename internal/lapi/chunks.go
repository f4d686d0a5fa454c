package lapi

import "iter"

// Chunk sizes for lists of unknown length: small first so that a delta of a
// few decisions stays small, at most 256 KiB of packed per chunk.
const (
	firstChunk = 64
	maxChunk   = 8192
)

// chunks accumulates a list whose length is unknown until its end (the
// streaming decoder) without append's regrowth, which allocates ~3x the
// final size and copies most of it several times.
type chunks[T any] struct {
	full    [][]T
	cur     []T
	n       int
	started bool // the list had elements: it is non-nil even if empty
}

// reset empties c; hint > 0 is the exact length, allocated at once.
func (c *chunks[T]) reset(hint int) {
	*c = chunks[T]{}
	if hint > 0 {
		c.cur = make([]T, 0, hint)
		c.started = true
	}
}

func (c *chunks[T]) add(v T) {
	if len(c.cur) == cap(c.cur) {
		size := firstChunk
		if c.cur != nil {
			c.full = append(c.full, c.cur)
			size = min(2*cap(c.cur), maxChunk)
		}
		c.cur = make([]T, 0, size)
	}
	c.cur = append(c.cur, v)
	c.n++
}

// isNil reports whether the list's slice is nil: Normalize's is nil only
// for a list that had no elements.
func (c *chunks[T]) isNil() bool { return c.n == 0 && !c.started }

// all yields the list in order.
func (c *chunks[T]) all() iter.Seq[T] {
	return func(yield func(T) bool) {
		for _, part := range append(c.full[:len(c.full):len(c.full)], c.cur) {
			for _, v := range part {
				if !yield(v) {
					return
				}
			}
		}
	}
}
