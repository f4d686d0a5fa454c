package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// Go's default GC lets the heap grow to twice the live data before it
// collects: a 100k-ban full pull peaks above 70 MB RSS that way, for data
// that is ~30 MB live. A soft memory limit makes the GC work a little harder
// during such bursts instead. The limit follows the live heap and is retuned
// after every GC cycle: a limit computed from an older, smaller live heap
// sits below the heap a million-ban pull needs, and the GC then runs back to
// back (measured: half the CPU of a 1M start-up spent in the GC with a limit
// retuned every 30 s). GOMEMLIMIT, when set, wins.
const (
	memLimitFloor    = 40 << 20
	memLimitHeadroom = 16 << 20
)

// memLimitFor is the soft limit for a live heap: the live data plus a
// quarter of it plus room for one burst, never below the floor.
func memLimitFor(live uint64) int64 {
	return max(int64(memLimitFloor), int64(live+live/memLimitGrowthDiv)+memLimitHeadroom)
}

// memLimitGrowthDiv sets how far the heap may grow past the live data
// before a collection: by live/memLimitGrowthDiv. A quarter, not a half:
// the bulk of a large pull's live data (the view's records, the decision
// list) holds no pointers, so a collection marks little of it, and a 1M
// start peaked at 116-117 MB RSS instead of 131-133 MB.
const memLimitGrowthDiv = 4

// tuneMemoryLimit sets the soft limit now and again after every GC cycle,
// until ctx ends. It does nothing when GOMEMLIMIT is set.
func tuneMemoryLimit(ctx context.Context, log *slog.Logger) error {
	if os.Getenv("GOMEMLIMIT") != "" {
		return nil
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	set := func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		lim := memLimitFor(sample[0].Value.Uint64())
		if old := debug.SetMemoryLimit(lim); old != lim {
			log.Debug("memory limit", "limit_mib", lim>>20, "live_mib", sample[0].Value.Uint64()>>20)
		}
	}
	set()
	cycles := make(chan struct{}, 1)
	onEveryGC(ctx, cycles)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-cycles:
			set()
		}
	}
}

// onEveryGC signals c (without blocking) after each GC cycle until ctx
// ends: a sentinel object's cleanup runs once a cycle has found it
// unreachable, and arms the next sentinel.
func onEveryGC(ctx context.Context, c chan<- struct{}) {
	// Large enough not to share a tiny-allocator block with other objects,
	// which would delay its cleanup.
	sentinel := new([32]byte)
	runtime.AddCleanup(sentinel, func(struct{}) {
		if ctx.Err() != nil {
			return
		}
		select {
		case c <- struct{}{}:
		default:
		}
		onEveryGC(ctx, c)
	}, struct{}{})
}
