package backend

import (
	"context"
	"net/netip"
	"time"
)

// Preloader is implemented by backends that can load a full pull's
// decisions into the kernel while the pull still downloads, so the
// kernel's share of a cold start overlaps the decoding instead of
// following it. They load only sets no rule matches (the sets of origins
// not yet declared), so nothing is enforced
// before the journal holds the batch: the replay that follows the journal
// write makes them live. It keeps a loaded set whose content is exactly
// what it would have put there, and refills it otherwise, so a preload
// can only save time, never change what is enforced.
type Preloader interface {
	// Preload starts the load of one full pull. It returns nil when there
	// is nothing it can load into (set-only mode, tables not yet made).
	Preload(ctx context.Context) Preload
}

// Preload takes one full pull's decisions as they are accepted, from the
// goroutine that decodes the pull. Add and Finish are not safe for
// concurrent use with each other.
type Preload interface {
	// Add is called once per accepted new decision, in stream order;
	// origin is the journal's origin name.
	Add(p netip.Prefix, until time.Time, origin string)
	// Finish waits for what Add sent to reach the kernel. With keep false
	// (the pull failed: no replay follows), the loaded sets are removed.
	Finish(keep bool)
}
