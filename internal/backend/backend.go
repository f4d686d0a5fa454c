// Package backend defines what a firewall backend must do to enforce the
// journal's view in the kernel. The contract is declarative: every method may
// be called again with the same input and must converge, so a repair is just
// "call it again".
package backend

import (
	"context"
	"net/netip"
	"time"
)

// Entry is one member of one kernel set.
type Entry struct {
	// Prefix is masked; its family picks the v4 or v6 set.
	Prefix netip.Prefix
	// Origin is the stable index of the decision's origin (see
	// journal.Journal.OriginIndex); it picks the per-origin set. Backends in
	// a single-set mode (ipset-only) ignore it.
	Origin int
	// Until is the absolute expiry; the backend turns it into a kernel
	// timeout (capped at the kernel maximum) unless timeouts are disabled.
	Until time.Time
}

// Delta is a change to apply: Del first, then Add (an Add of an existing
// entry updates its timeout). Both are idempotent: deleting an absent entry
// or adding a present one is not an error.
type Delta struct {
	Add []Entry
	Del []Entry
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool { return len(d.Add) == 0 && len(d.Del) == 0 }

// SetKey names one logical set: an origin index and a family.
type SetKey struct {
	Origin int
	V6     bool
}

// Drift describes what Verify found missing or wrong. Kinds are short stable
// words for metrics ("chain", "jump", "rule", "set", "count", "member");
// Details are for logs.
type Drift struct {
	Kinds   []string
	Details []string
}

// None reports whether nothing drifted.
func (d Drift) None() bool { return len(d.Kinds) == 0 }

// Add records one drift finding.
func (d *Drift) Add(kind, detail string) {
	d.Kinds = append(d.Kinds, kind)
	d.Details = append(d.Details, detail)
}

// Backend enforces entries in the kernel.
type Backend interface {
	// Ensure creates whatever of our chains, jump rules, match rules and sets
	// is missing for the given origins, and never touches anything we don't own.
	Ensure(ctx context.Context, origins []int) error
	// Apply adds and deletes entries, in batches.
	Apply(ctx context.Context, d Delta) error
	// Replay makes the kernel sets hold exactly active (entries whose Until
	// is past are skipped), without dropping enforcement to zero while it
	// works (e.g. fill a temporary set and swap it in).
	Replay(ctx context.Context, active []Entry) error
	// Verify checks cheaply — no full member listing — that the
	// infrastructure exists and each set holds at least want[set] members.
	Verify(ctx context.Context, want map[SetKey]int) (Drift, error)
	// SetKeyOf names the kernel set an origin's entries go to: one per
	// origin and family, or one per family in single-set modes (ipset-only),
	// where two origins banning one prefix share one kernel entry.
	SetKeyOf(origin int, v6 bool) SetKey
	// Members lists what each of our sets holds, for the slow deep verify.
	// It is a full dump: never call it on the fast path.
	Members(ctx context.Context) (map[SetKey][]netip.Prefix, error)
	// Close removes our rules and sets, or leaves them in place when keep is
	// true so enforcement continues across a restart.
	Close(ctx context.Context, keep bool) error
}

// MaxTimeout is the longest ipset timeout the kernel keeps: longer ones are
// capped silently (NOTES.md), so entries that must live longer are refreshed
// by the enforcer before the kernel drops them.
const MaxTimeout = 2147483 * time.Second
