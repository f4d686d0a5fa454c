// Package backend defines what a firewall backend must do to enforce the
// journal's view in the kernel. The contract is declarative: every method may
// be called again with the same input and must converge, so a repair is just
// "call it again".
//
// A backend is one package under internal/backend/ that implements Backend;
// cmd builds it from the configured mode and nothing else in the daemon
// (heal, journal, lapi, metrics) knows which firewall it drives.
package backend

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"strings"
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
	// timeout (capped at Limits.MaxTimeout) unless timeouts are disabled.
	Until time.Time
}

// Delta is a change to apply: Del first, then Add. Both are idempotent:
// deleting an absent entry or adding a present one is not an error, and an
// Add of a present entry sets its timeout to the new Until (how — an update
// in place, or a delete and re-add — is the backend's business).
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
// words for metrics ("chain", "jump", "rule", "set", "count", "member",
// "table"); Details are for logs.
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

// StagedReplayer is implemented by backends that can prepare a replay
// without enforcing any of it (fill sets aside, encode a transaction), so
// that the preparation overlaps the journal write of a full LAPI pull:
// 1M bans spend about as long in each. ReplayWhen is Replay that calls
// ready after preparing and before it enforces anything it wrote — before
// a swap, a commit, or an add into a set rules may match. It may call
// ready more than once (only the first call waits). When ready fails it
// enforces nothing and returns ready's error.
type StagedReplayer interface {
	ReplayWhen(ctx context.Context, active iter.Seq[Entry], ready func() error) error
}

// Limits are properties of a backend that the enforcer plans around.
type Limits struct {
	// MaxTimeout is the longest kernel timeout the backend can set; longer
	// bans are re-added by the enforcer before it runs out. Zero: no cap.
	MaxTimeout time.Duration
	// CountsMembers is true when Verify compares member counts cheaply.
	// When false, a removed member is only noticed by the deep verify
	// (Members) or by the backend's own change events.
	CountsMembers bool
}

// Origins maps the journal's origin indices to origin names ("crowdsec",
// "cscli", "lists:NAME", ...): what sets and rules must exist, and what
// backends that name objects or label rules after origins call them.
type Origins map[int]string

// Backend enforces entries in the kernel. One goroutine (the enforcer) owns
// it; only Counters may be called concurrently.
type Backend interface {
	// SetOrigins declares the origins whose sets and rules must exist, with
	// their names. It does not touch the kernel: Ensure creates what is
	// missing, Verify checks it (an offline `check` calls SetOrigins and
	// Verify, never Ensure).
	SetOrigins(o Origins)
	// Ensure creates whatever of our tables, chains, jump rules, match rules
	// and sets is missing for the declared origins, and never touches
	// anything we don't own.
	Ensure(ctx context.Context) error
	// Apply adds and deletes entries, in batches. Entries the backend
	// refuses are skipped and reported as a *RejectedError after the rest
	// was applied.
	Apply(ctx context.Context, d Delta) error
	// Replay makes the kernel sets hold exactly active (entries whose Until
	// is past are skipped), without dropping enforcement to zero while it
	// works (fill a temporary set and swap, or one transaction). Refused
	// entries are reported as for Apply.
	//
	// active is read from the journal's view as it is walked, not held as
	// a slice (64 bytes an entry: 64 MB more at a million bans, and the time
	// to build it). A backend may walk it more than once; each walk yields
	// the same entries, not necessarily in the same order.
	Replay(ctx context.Context, active iter.Seq[Entry]) error
	// Verify checks cheaply — no full member listing — that the
	// infrastructure exists and, when Limits().CountsMembers, that each set
	// holds at least want[set] members.
	Verify(ctx context.Context, want map[SetKey]int) (Drift, error)
	// SetKeyOf names the kernel set an origin's entries go to: one per
	// origin and family, or one per family in single-set modes (ipset-only),
	// where two origins banning one prefix share one kernel entry.
	SetKeyOf(origin int, v6 bool) SetKey
	// SetName returns the kernel name of a set, for logs and the CLI.
	SetName(k SetKey) string
	// Members lists what each of our sets holds, for the slow deep verify.
	// It is a full dump: never call it on the fast path.
	Members(ctx context.Context) (map[SetKey][]netip.Prefix, error)
	// Counters reads member counts and rule counters for metrics. Unlike
	// the other methods it must be safe to call from another goroutine.
	Counters(ctx context.Context) (Counters, error)
	// Limits reports the backend's fixed properties.
	Limits() Limits
	// Close removes our rules and sets, or leaves them in place when keep is
	// true so enforcement continues across a restart.
	Close(ctx context.Context, keep bool) error
}

// Error classes. The enforcer acts on the class, never on a message:
// infrastructure failures (anything not classified below) are repaired by
// replaying; a rejected entry is reported once and never retried in a loop
// (it stays in the journal: a later configuration may accept it).
var (
	// ErrRejected classifies an entry the backend will not hold with the
	// current configuration: a family that is disabled, a range bound for a
	// set of single addresses, an invalid or unmasked prefix.
	ErrRejected = errors.New("entry rejected by the backend")
	// ErrSetFull classifies an entry left out because its set cannot grow
	// any further. Sets normally grow on their own; this is the hard limit.
	ErrSetFull = errors.New("set is full")
)

// Rejection is one entry a backend did not enforce, and why.
type Rejection struct {
	Entry Entry
	// Reason is a short stable word for metrics ("family_disabled",
	// "set_type", "invalid_prefix", "set_full", ...).
	Reason string
	// Err is the classified cause: it wraps ErrRejected or ErrSetFull.
	Err error
}

// RejectedError is returned by Apply and Replay when some entries were not
// enforced while all the others were. errors.Is matches the class of each
// rejection's cause (ErrRejected, ErrSetFull).
type RejectedError struct {
	Rejected []Rejection
}

func (e *RejectedError) Error() string {
	const show = 3
	var b strings.Builder
	fmt.Fprintf(&b, "%d entries not enforced", len(e.Rejected))
	for i, r := range e.Rejected {
		if i == show {
			fmt.Fprintf(&b, "; and %d more", len(e.Rejected)-show)
			break
		}
		fmt.Fprintf(&b, "; %s: %v", r.Entry.Prefix, r.Err)
	}
	return b.String()
}

// Unwrap returns the distinct causes, so errors.Is finds the classes
// (ErrRejected, ErrSetFull) and a backend's own sentinels.
func (e *RejectedError) Unwrap() []error {
	var out []error
	seen := map[error]bool{}
	for _, r := range e.Rejected {
		if r.Err != nil && !seen[r.Err] {
			seen[r.Err] = true
			out = append(out, r.Err)
		}
	}
	return out
}

// Rejected collects the entries a backend refused from err (however
// wrapped or joined) and returns the rest of the failure: nil when err
// reports only rejections (the call otherwise succeeded), err itself when
// something else failed too — the caller must then repair as for any
// infrastructure failure.
func Rejected(err error) (rejected []Rejection, rest error) {
	if err == nil {
		return nil, nil
	}
	if collect(err, &rejected) {
		return rejected, nil
	}
	return rejected, err
}

// collect appends the rejections in err's tree and reports whether every
// leaf of the tree is a rejection.
func collect(err error, rs *[]Rejection) bool {
	if re, ok := err.(*RejectedError); ok {
		*rs = append(*rs, re.Rejected...)
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		only := true
		for _, e := range u.Unwrap() {
			if !collect(e, rs) {
				only = false
			}
		}
		return only
	case interface{ Unwrap() error }:
		if in := u.Unwrap(); in != nil {
			return collect(in, rs)
		}
	}
	return false
}

// Counters is one reading of what our kernel objects hold and have seen,
// for metrics: member counts of our sets and the packet/byte counters of our
// rules.
type Counters struct {
	// Sets lists our sets that exist, sorted by name.
	Sets []SetCounters
	// Families holds, per enabled family (IPv4 first), the counters of the
	// traffic that entered our chains ("processed").
	Families []FamilyCounters
	// Rules is false in set-only modes, where we own no rules: every packet
	// and byte counter is then zero and means nothing.
	Rules bool
}

// SetCounters describes one of our sets.
type SetCounters struct {
	Name   string
	Key    SetKey
	Family string // "ipv4" or "ipv6"
	// Shared is true in single-set modes, where one set holds every
	// origin's entries (Key.Origin is then 0 and names no origin).
	Shared bool
	// Members is the kernel's member count.
	Members int
	// Packets and Bytes are the counters of our deny rule matching this
	// set: the traffic it dropped (or rejected). Zero when no such rule
	// exists.
	Packets, Bytes uint64
}

// FamilyCounters are the summed counters of the traffic one family sent
// through our chains.
type FamilyCounters struct {
	Family         string // "ipv4" or "ipv6"
	V6             bool
	Packets, Bytes uint64
}
