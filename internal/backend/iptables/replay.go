package iptables

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// Replay makes each of our sets hold exactly the live entries of active.
// Every set is refilled through a temporary set that is swapped in, so
// enforcement never drops to zero (a missing set is created empty first).
// Sets of ensured origins with no entry are emptied the same way. Entries
// beyond a set's maxelem are left out and reported as ErrSetFull after the
// swap.
func (b *Backend) Replay(ctx context.Context, active iter.Seq[backend.Entry]) error {
	return b.ReplayWhen(ctx, active, func() error { return nil })
}

// errNotReady wraps the error of ReplayWhen's ready: nothing was enforced.
var errNotReady = errors.New("replay not enforced")

// refill is one of our sets being replayed through its temporary set.
type refill struct {
	*routed
	v6   bool
	sp   setSpec
	info setInfo
	tmp  string // empty until created
	// cut: more entries than the set can ever hold. They are collected and
	// sorted so the same ones are left out at every replay (cutToFit);
	// otherwise they go to the kernel as the walk meets them.
	cut  bool
	full error
	err  error
}

// fillChunk is how many entries of one set wait before they are sent:
// large enough for full netlink batches, small beside the set.
const fillChunk = 8192

// ReplayWhen implements backend.StagedReplayer. A first walk over active
// validates and counts the entries of each set, so each temporary set is
// created at its final size; a second walk fills all of them at once, in
// chunks; once ready returns, each is swapped in. No []kEntry of the whole
// replay is held: at a million entries that is 28 MB.
func (b *Backend) ReplayWhen(ctx context.Context, active iter.Seq[backend.Entry], ready func() error) (err error) {
	r := b.newRouter(b.cfg.Now(), true)
	var invalid []backend.Rejection
	for e := range active {
		to, _, rej := r.route(e)
		if rej != nil {
			invalid = append(invalid, *rej)
		} else if to != nil {
			to.n++
		}
	}
	keys := map[string]backend.SetKey{}
	for k, to := range r.sets {
		if to.n > 0 {
			keys[to.name] = k
		}
	}
	if miss := b.missingOrigins(keys); len(miss) > 0 {
		b.addOrigins(miss)
		if err := b.Ensure(ctx); err != nil {
			return fmt.Errorf("replay: %w", err)
		}
	}
	s, err := b.socket()
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	sets := b.ourSets()
	var fills []*refill
	defer func() {
		// After a swap a temporary set holds the old members and no rule
		// references it; after a failure it is half filled. Either way it
		// goes, under a context that has not ended.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		for _, f := range fills {
			if f.tmp == "" {
				continue
			}
			if derr := s.destroy(cctx, f.tmp); derr != nil && !errors.Is(derr, ErrSetNotFound) {
				err = errors.Join(err, fmt.Errorf("replay %s: remove temporary set: %w", f.name, derr))
			}
		}
	}()
	byKey := map[backend.SetKey]*refill{}
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		if _, ok := b.mismatch[name]; ok {
			continue // its entries were refused by the router
		}
		k := sets[name]
		to := r.sets[k]
		if to == nil {
			to = &routed{name: name, key: k} // no entry: emptied
		}
		f := &refill{routed: to, v6: k.V6}
		f.err = b.prepareRefill(ctx, s, f)
		fills = append(fills, f)
		byKey[k] = f
	}
	// The second walk: routed again (the router is stateless but for its
	// lookup cache), so an entry's set is one map lookup per run.
	for e := range active {
		to, k, _ := r.route(e)
		if to == nil {
			continue
		}
		f := byKey[to.key]
		if f == nil || f.err != nil {
			continue
		}
		f.entries = append(f.entries, k)
		if !f.cut && len(f.entries) >= fillChunk {
			f.err = s.adt(ctx, ipsetCmdAdd, f.tmp, f.entries, f.sp.typ == SetTypeNet, f.sp.timeout)
			f.entries = f.entries[:0]
		}
	}
	for _, f := range fills {
		if f.err != nil {
			continue
		}
		if f.cut {
			f.entries, f.full = cutToFit(f.name, f.entries, f.sp.maxElem)
		}
		f.err = s.adt(ctx, ipsetCmdAdd, f.tmp, f.entries, f.sp.typ == SetTypeNet, f.sp.timeout)
		f.entries = nil
	}
	if err := ready(); err != nil {
		return fmt.Errorf("%w: %w", errNotReady, err)
	}
	var errs []error
	for _, f := range fills {
		if f.err == nil {
			f.err = s.swap(ctx, f.name, f.tmp)
		}
		if f.err != nil {
			errs = append(errs, fmt.Errorf("replay %s: %w", f.name, f.err))
			continue
		}
		f.info.maxElem, f.info.hashSize = f.sp.maxElem, f.sp.hashSize
		b.sets[f.name] = f.info
		if f.full != nil {
			errs = append(errs, fmt.Errorf("replay %s: %w", f.name, f.full))
		}
	}
	if err := invalidErr(invalid); err != nil {
		errs = append(errs, fmt.Errorf("replay: %w", err))
	}
	return errors.Join(errs...)
}

// prepareRefill sizes f's set for its entries, creates the set empty when
// it is missing (a rule may match it by name: it must hold nothing until
// the swap), and creates f's temporary set.
func (b *Backend) prepareRefill(ctx context.Context, s *nlSocket, f *refill) error {
	sp, err := b.specFor(ctx, f.v6, f.n)
	if err != nil {
		return err
	}
	info, err := s.header(ctx, f.name)
	exists := err == nil
	switch {
	case errors.Is(err, ErrSetNotFound):
	case err != nil:
		return err
	case info.typ != sp.typ || info.family != sp.family:
		return fmt.Errorf("%w: set %s is %s family %d", ErrSetMismatch, f.name, info.typ, info.family)
	default:
		// Follow the existing set so the swap is accepted and its
		// owner's choices (ipset mode) survive.
		sp.revision, sp.maxElem, sp.timeout = info.revision, info.maxElem, info.timeout
	}
	size, fits := b.sizeFor(f.name, f.n, sp.maxElem)
	sp.maxElem, f.cut = size, !fits
	if !exists {
		if err := s.create(ctx, f.name, sp); err != nil {
			return err
		}
		info = setInfo{typ: sp.typ, family: sp.family, revision: sp.revision, hashSize: sp.hashSize, maxElem: sp.maxElem, timeout: sp.timeout}
		b.sets[f.name] = info
	}
	f.sp, f.info = sp, info
	tmp := f.name + "-t"
	if err := s.destroy(ctx, tmp); err != nil && !errors.Is(err, ErrSetNotFound) {
		return fmt.Errorf("remove stale temporary set: %w", err)
	}
	// Named before the create: a create whose answer is abandoned (the
	// context ended while waiting) may still have made the set, and the
	// cleanup must find it.
	f.tmp = tmp
	if err := s.create(ctx, tmp, sp); err != nil {
		return err
	}
	f.entries = make([]kEntry, 0, min(f.n, fillChunk))
	if f.cut {
		f.entries = make([]kEntry, 0, f.n)
	}
	return nil
}
