package lapi

// Chunk sizes for lists of unknown length: small first so that a delta of a
// few decisions stays small, at most ~1 MB of journal.Decision per chunk.
const (
	firstChunk = 64
	maxChunk   = 8192
)

// chunks accumulates a list whose length is unknown until its end (the
// streaming decoder) without append's regrowth: growing one slice to 100k
// decisions allocates ~5x its final size and copies most of it several
// times, where chunks allocate it twice (the chunks, then one exact slice)
// and copy it once.
type chunks[T any] struct {
	full    [][]T
	cur     []T
	n       int
	started bool // the list had elements: slice() is non-nil even if empty
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

// slice returns the list as one slice; with a single chunk that chunk.
func (c *chunks[T]) slice() []T {
	if len(c.full) == 0 {
		if c.cur == nil && c.started {
			return []T{}
		}
		return c.cur
	}
	out := make([]T, 0, c.n)
	for _, ch := range c.full {
		out = append(out, ch...)
	}
	return append(out, c.cur...)
}
