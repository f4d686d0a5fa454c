package iptables

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// Sets grow: ipset_size is a floor, not a cliff. A set about to hold more
// than its maxelem is rebuilt larger (filled aside, then swapped in, so
// enforcement never drops) instead of refusing entries. Only past
// hardMaxElem are entries left out, as ErrSetFull.

// hardMaxElem is the most members a set may grow to: 16M entries of a
// hash:net set take over a gigabyte of kernel memory, far beyond any
// blocklist; past it the entries are refused rather than the host starved.
const hardMaxElem = 1 << 24

// cleanupTimeout bounds the removal of a temporary set after a failure or
// a cancellation: it runs under a context of its own, because the caller's
// may be the one that just ended.
const cleanupTimeout = 5 * time.Second

// grownSize is the maxelem for a set that must hold n members: the
// configured size doubled until n fits with a quarter to spare, so a
// growing blocklist is rebuilt log₂ times, not at every pull. Zero when n
// is beyond hardMaxElem.
func grownSize(n, floor int) uint32 {
	size := max(floor, 1)
	for size < n+n/4 && size < hardMaxElem {
		size *= 2
	}
	if n > hardMaxElem {
		return 0
	}
	return uint32(min(size, hardMaxElem))
}

// sizeFor returns the maxelem a set holding n members must have, warning
// when it grows past ipset_size, and whether n fits at all.
func (b *Backend) sizeFor(name string, n int, cur uint32) (uint32, bool) {
	if cur > 0 && n <= int(cur) {
		return cur, true
	}
	size := grownSize(n, max(b.cfg.MaxElem, int(cur)))
	if size == 0 {
		return hardMaxElem, false
	}
	if int(size) > b.cfg.MaxElem {
		b.log.Warn("set grows past ipset_size to hold every entry; raise ipset_size to size it at start",
			"set", name, "entries", n, "ipset_size", b.cfg.MaxElem, "maxelem", size)
	}
	return size, true
}

// cutToFit leaves out the entries beyond size, reported as ErrSetFull. The
// entries are sorted first so the same ones are left out at every replay
// (each is reported once, not a different set every time).
func cutToFit(name string, entries []kEntry, size uint32) ([]kEntry, error) {
	if len(entries) <= int(size) {
		return entries, nil
	}
	slices.SortFunc(entries, func(x, y kEntry) int { return x.prefix().Addr().Compare(y.prefix().Addr()) })
	cause := fmt.Errorf("%w: set %s cannot grow past %d members", ErrSetFull, name, size)
	rs := make([]backend.Rejection, 0, len(entries)-int(size))
	for _, e := range entries[size:] {
		rs = append(rs, backend.Rejection{Entry: backend.Entry{Prefix: e.prefix(), Origin: int(e.origin)}, Reason: "set_full", Err: cause})
	}
	return entries[:size], &backend.RejectedError{Rejected: rs}
}

// growFor makes set name able to take adds more members: when the kernel's
// count plus adds exceeds its maxelem, the members (with their remaining
// timeouts) are copied into a larger set that is swapped in.
func (b *Backend) growFor(ctx context.Context, s *nlSocket, name string, v6 bool, adds int) error {
	info, err := s.header(ctx, name)
	if err != nil {
		return err
	}
	need := int(info.elements) + adds
	if info.maxElem == 0 || need <= int(info.maxElem) {
		return nil
	}
	size, ok := b.sizeFor(name, need, info.maxElem)
	if !ok || size <= info.maxElem {
		return nil // at the hard limit: the kernel refuses what does not fit
	}
	old, err := s.entries(ctx, name)
	if err != nil {
		return fmt.Errorf("grow: %w", err)
	}
	sp, err := b.specFor(ctx, v6, need)
	if err != nil {
		return err
	}
	sp.revision, sp.timeout, sp.maxElem = info.revision, info.timeout, size
	if err := b.fillAndSwap(ctx, s, name, sp, old); err != nil {
		return fmt.Errorf("grow: %w", err)
	}
	info.maxElem, info.hashSize = size, sp.hashSize
	b.sets[name] = info
	return nil
}

// fillAndSwap fills a temporary set built to sp with entries and swaps it
// with name: the rules never see an empty or partial set. The temporary
// set is removed on every path, cancellation included.
func (b *Backend) fillAndSwap(ctx context.Context, s *nlSocket, name string, sp setSpec, entries []kEntry) (err error) {
	tmp := name + "-t"
	defer func() {
		// After a successful swap tmp holds the old members and no rule
		// references it; after a failure it is half filled. Either way it
		// goes, under a context that has not ended.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if derr := s.destroy(cctx, tmp); derr != nil && !errors.Is(derr, ErrSetNotFound) {
			err = errors.Join(err, fmt.Errorf("remove temporary set: %w", derr))
		}
	}()
	if err := s.destroy(ctx, tmp); err != nil && !errors.Is(err, ErrSetNotFound) {
		return fmt.Errorf("remove stale temporary set: %w", err)
	}
	if err := s.create(ctx, tmp, sp); err != nil {
		return err
	}
	if err := s.adt(ctx, ipsetCmdAdd, tmp, entries, sp.typ == SetTypeNet, sp.timeout); err != nil {
		return err
	}
	return s.swap(ctx, name, tmp)
}
