package iptables

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// A set with one of our names but the wrong type or family (another program
// created it, or ipset_type changed since it was made) must not stop the
// daemon: the other sets are enforced either way. It is moved aside under a
// free name and ours is created in its place; when the kernel refuses
// (a rule references it), the set is left alone, its entries are refused
// as rejections (reason "set_mismatch") and the log says what to do.

// ErrMismatchRejected classifies the entries of a set left in a stranger's
// hands: they are reported once, never retried in a loop.
var ErrMismatchRejected = fmt.Errorf("%w: the set with our name has another type or family", ErrInvalidEntry)

// asideName returns a free name for a foreign set moved out of our way.
func asideName(name string, taken func(string) bool) string {
	const maxName = 31 // IPSET_MAXNAMELEN - 1
	for i := 1; ; i++ {
		suffix := "-moved"
		if i > 1 {
			suffix += strconv.Itoa(i)
		}
		base := name
		if len(base)+len(suffix) > maxName {
			base = base[:maxName-len(suffix)]
		}
		if n := base + suffix; !taken(n) {
			return n
		}
	}
}

// resolveMismatch deals with a set named like ours but of the wrong kind.
// It returns nil when the set was moved aside (the caller creates ours),
// or ErrSetMismatch when it stays: then its entries are refused until the
// set changes, and the error is logged once.
func (b *Backend) resolveMismatch(ctx context.Context, s *nlSocket, name string, info setInfo, sp setSpec) error {
	what := fmt.Sprintf("set %s is %s %s, configuration wants %s %s", name, info.typ, nfFamilyName(info.family), sp.typ, nfFamilyName(sp.family))
	names, err := s.listNames(ctx)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, n := range names {
		have[n] = true
	}
	aside := asideName(name, func(n string) bool { return have[n] })
	rerr := s.rename(ctx, name, aside)
	if rerr == nil {
		delete(b.mismatch, name)
		b.log.Warn("moved a set of the wrong type out of our way; ours takes its name", "detail", what, "moved_to", aside)
		return nil
	}
	var ke *KernelError
	if !errors.As(rerr, &ke) || ke.Errno != ipsetErrPrivate+12 {
		return fmt.Errorf("move mismatched set aside: %w", rerr)
	}
	if _, seen := b.mismatch[name]; !seen {
		b.log.Error("a set with our name has the wrong type and a rule uses it, so it cannot be moved aside; its entries are not enforced, the other sets are",
			"detail", what,
			"fix", b.mismatchFix(name, info.typ))
	}
	b.mismatch[name] = what
	return fmt.Errorf("%w: %s", ErrSetMismatch, what)
}

func nfFamilyName(f uint8) string {
	switch f {
	case nfprotoIPv4:
		return "inet"
	case nfprotoIPv6:
		return "inet6"
	}
	return "family " + strconv.Itoa(int(f))
}

// mismatchFix says what an admin runs to hand the name back to us.
func (b *Backend) mismatchFix(name, typ string) string {
	if b.cfg.Mode == ModeIPSet {
		return fmt.Sprintf("remove the rules that match %s, then `ipset destroy %s` (or set ipset_type to %s); the daemon recreates it within a second", name, name, typ)
	}
	return fmt.Sprintf("remove any rule of yours that matches %s, then `iptables -F %s; ipset destroy %s` (or set ipset_type to %s); the daemon recreates its chain and the set within a second", name, b.cfg.Chain, name, typ)
}
