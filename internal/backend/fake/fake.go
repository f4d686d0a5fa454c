// Package fake is an in-memory backend.Backend that keeps state, can print it,
// and lets tests inject drift and failures. It stands in for the kernel in
// unit tests of the enforcer loop.
package fake

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// ErrInjected is returned by a method whose failure a test asked for.
var ErrInjected = errors.New("fake: injected failure")

// Backend is a fake kernel: per-set members with expiries, and a flag for
// "our chains and rules exist". Safe for concurrent use so tests can inject
// drift while the enforcer runs.
type Backend struct {
	// SingleSet makes every origin share one set per family, like the
	// ipset-only mode. Set it before use.
	SingleSet bool
	// NoTimeouts models ipset_disable_timeouts: members stay until deleted,
	// whatever their Until (the kernel does not expire them). Set it before
	// use.
	NoTimeouts bool
	// HostsOnly models a hash:ip set: a prefix shorter than a single
	// address is refused (ErrRejected, reason "set_type").
	HostsOnly bool
	// MaxElem is the most members one set can ever hold (0: no limit);
	// entries beyond are refused (ErrSetFull, reason "set_full"), as a real
	// set that cannot grow any further.
	MaxElem int

	mu       sync.Mutex
	now      func() time.Time
	origins  backend.Origins
	infra    bool
	sets     map[backend.SetKey]map[netip.Prefix]time.Time
	calls    map[string]int
	failNext map[string]int // method → how many next calls fail
	adds     []backend.Entry
	// beforeEnsure runs once, unlocked, at the start of the next Ensure.
	beforeEnsure func()
}

// New returns an empty fake whose expiry checks use now.
func New(now func() time.Time) *Backend {
	return &Backend{
		now:      now,
		sets:     map[backend.SetKey]map[netip.Prefix]time.Time{},
		calls:    map[string]int{},
		failNext: map[string]int{},
	}
}

var _ backend.Backend = (*Backend)(nil)

func key(e backend.Entry) backend.SetKey {
	return backend.SetKey{Origin: e.Origin, V6: e.Prefix.Addr().Is6()}
}

// fail counts the call and reports whether an injected failure is due.
func (b *Backend) fail(method string) error {
	b.calls[method]++
	if b.failNext[method] > 0 {
		b.failNext[method]--
		return fmt.Errorf("%s: %w", method, ErrInjected)
	}
	return nil
}

// SetOrigins implements backend.Backend.
func (b *Backend) SetOrigins(o backend.Origins) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.origins = maps.Clone(o)
}

// Limits implements backend.Backend: the ipset figures, which the enforcer's
// long-ban refresh is tested against.
func (b *Backend) Limits() backend.Limits {
	return backend.Limits{MaxTimeout: MaxTimeout, CountsMembers: true}
}

// MaxTimeout is the fake kernel's timeout cap, ipset's.
const MaxTimeout = 2147483 * time.Second

// SetName implements backend.Backend.
func (b *Backend) SetName(k backend.SetKey) string {
	return fmt.Sprintf("fake-%d-v6=%v", k.Origin, k.V6)
}

// Counters implements backend.Backend: member counts; the fake has no rules.
func (b *Backend) Counters(context.Context) (backend.Counters, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var c backend.Counters
	now := b.now()
	for _, k := range sortedSetKeys(b.sets) {
		n := 0
		for _, until := range b.sets[k] {
			if b.live(until, now) {
				n++
			}
		}
		fam := "ipv4"
		if k.V6 {
			fam = "ipv6"
		}
		c.Sets = append(c.Sets, backend.SetCounters{Name: b.SetName(k), Key: k, Family: fam, Shared: b.SingleSet, Members: n})
	}
	return c, nil
}

// Ensure implements backend.Backend. Like the kernel backends it creates
// a missing set empty: the members a destroyed set held are gone until a
// replay or an Apply puts them back.
func (b *Backend) Ensure(_ context.Context) error {
	b.mu.Lock()
	hook := b.beforeEnsure
	b.beforeEnsure = nil
	b.mu.Unlock()
	if hook != nil {
		hook()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.fail("Ensure"); err != nil {
		return err
	}
	b.infra = true
	for o := range b.origins {
		for _, v6 := range []bool{false, true} {
			k := backend.SetKey{Origin: o, V6: v6}
			if b.sets[k] == nil {
				b.sets[k] = map[netip.Prefix]time.Time{}
			}
		}
	}
	return nil
}

// Apply implements backend.Backend.
func (b *Backend) Apply(_ context.Context, d backend.Delta) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.fail("Apply"); err != nil {
		return err
	}
	for _, e := range d.Del {
		delete(b.sets[key(e)], e.Prefix)
	}
	var rs []backend.Rejection
	for _, e := range d.Add {
		s := b.sets[key(e)]
		if s == nil {
			return fmt.Errorf("fake: add %v: set %v does not exist", e.Prefix, key(e))
		}
		if r, ok := b.refuse(s, e); ok {
			rs = append(rs, r)
			continue
		}
		s[e.Prefix] = e.Until
		b.adds = append(b.adds, e)
	}
	return rejected(rs)
}

// refuse reports whether set s cannot take e, and why, as the kernel would.
func (b *Backend) refuse(s map[netip.Prefix]time.Time, e backend.Entry) (backend.Rejection, bool) {
	if b.HostsOnly && !e.Prefix.IsSingleIP() {
		return backend.Rejection{Entry: e, Reason: "set_type",
			Err: fmt.Errorf("fake: %s: a hash:ip set holds single addresses only: %w", e.Prefix, backend.ErrRejected)}, true
	}
	if _, present := s[e.Prefix]; !present && b.MaxElem > 0 && len(s) >= b.MaxElem {
		return backend.Rejection{Entry: e, Reason: "set_full",
			Err: fmt.Errorf("fake: set holds %d members: %w", b.MaxElem, backend.ErrSetFull)}, true
	}
	return backend.Rejection{}, false
}

func rejected(rs []backend.Rejection) error {
	if len(rs) == 0 {
		return nil
	}
	return &backend.RejectedError{Rejected: rs}
}

// live reports whether a member with this expiry is still in the kernel:
// with timeouts off the kernel never drops it.
func (b *Backend) live(until, now time.Time) bool {
	return b.NoTimeouts || until.After(now)
}

// Replay implements backend.Backend.
func (b *Backend) Replay(_ context.Context, seq iter.Seq[backend.Entry]) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.fail("Replay"); err != nil {
		return err
	}
	// Real backends walk active more than once (count, then fill): an input
	// that cannot be walked twice alike would fail them, so it fails here.
	active := slices.Collect(seq)
	if again := slices.Collect(seq); len(again) != len(active) {
		return fmt.Errorf("fake replay: active yielded %d entries, then %d on a second walk", len(active), len(again))
	}
	for k := range b.sets {
		b.sets[k] = map[netip.Prefix]time.Time{}
	}
	now := b.now()
	if b.MaxElem > 0 {
		// Fill in address order, so the entries left out of a full set
		// are the same at every replay (as the iptables backend does).
		slices.SortFunc(active, func(x, y backend.Entry) int { return x.Prefix.Addr().Compare(y.Prefix.Addr()) })
	}
	var rs []backend.Rejection
	for _, e := range active {
		if !e.Until.After(now) {
			continue
		}
		s := b.sets[key(e)]
		if s == nil {
			s = map[netip.Prefix]time.Time{}
			b.sets[key(e)] = s
		}
		if r, ok := b.refuse(s, e); ok {
			rs = append(rs, r)
			continue
		}
		s[e.Prefix] = e.Until
		b.adds = append(b.adds, e)
	}
	return rejected(rs)
}

// Verify implements backend.Backend. Members past their expiry count as gone,
// as the kernel's timeouts would have removed them (unless NoTimeouts).
func (b *Backend) Verify(_ context.Context, want map[backend.SetKey]int) (backend.Drift, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var d backend.Drift
	if err := b.fail("Verify"); err != nil {
		return d, err
	}
	if !b.infra {
		d.Add("chain", "infrastructure missing")
	}
	now := b.now()
	for _, k := range sortedKeys(want) {
		s, ok := b.sets[k]
		if !ok {
			d.Add("set", fmt.Sprintf("set %v missing", k))
			continue
		}
		n := 0
		for _, until := range s {
			if b.live(until, now) {
				n++
			}
		}
		if n < want[k] {
			d.Add("count", fmt.Sprintf("set %v holds %d, want %d", k, n, want[k]))
		}
	}
	return d, nil
}

// SetKeyOf implements backend.Backend: one set per origin and family.
func (b *Backend) SetKeyOf(origin int, v6 bool) backend.SetKey {
	if b.SingleSet {
		return backend.SetKey{V6: v6}
	}
	return backend.SetKey{Origin: origin, V6: v6}
}

// Members implements backend.Backend.
func (b *Backend) Members(_ context.Context) (map[backend.SetKey][]netip.Prefix, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.fail("Members"); err != nil {
		return nil, err
	}
	now := b.now()
	out := map[backend.SetKey][]netip.Prefix{}
	for k, s := range b.sets {
		for p, until := range s {
			if b.live(until, now) {
				out[k] = append(out[k], p)
			}
		}
	}
	return out, nil
}

// Close implements backend.Backend.
func (b *Backend) Close(_ context.Context, keep bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.fail("Close"); err != nil {
		return err
	}
	if !keep {
		b.infra = false
		b.sets = map[backend.SetKey]map[netip.Prefix]time.Time{}
	}
	return nil
}

// Wipe simulates `iptables -F; iptables -X; ipset destroy`.
func (b *Backend) Wipe() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.infra = false
	b.sets = map[backend.SetKey]map[netip.Prefix]time.Time{}
}

// DropRules simulates a deleted jump, rule or chain of ours (`iptables -F
// CROWDSEC_CHAIN`, `nft delete rule`): the sets and their members stay.
func (b *Backend) DropRules() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.infra = false
}

// BeforeNextEnsure runs fn once, at the start of the next Ensure call: a
// change another program makes between a Verify and our repair.
func (b *Backend) BeforeNextEnsure(fn func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.beforeEnsure = fn
}

// RemoveMember simulates an admin deleting one entry by hand.
func (b *Backend) RemoveMember(k backend.SetKey, p netip.Prefix) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.sets[k], p)
}

// AddMember simulates a foreign entry added to one of our sets.
func (b *Backend) AddMember(k backend.SetKey, p netip.Prefix, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sets[k] == nil {
		b.sets[k] = map[netip.Prefix]time.Time{}
	}
	b.sets[k][p] = until
}

// FailNext makes the next n calls of method ("Replay", "Apply", ...) fail.
func (b *Backend) FailNext(method string, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failNext[method] = n
}

// Calls reports how many times method was called.
func (b *Backend) Calls(method string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[method]
}

// Adds returns every entry written by Apply or Replay, in order.
func (b *Backend) Adds() []backend.Entry {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.adds)
}

// Has reports whether prefix is in the set of origin and not yet dropped by
// a kernel timeout (with NoTimeouts: whether it is there at all).
func (b *Backend) Has(origin int, p netip.Prefix) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	until, ok := b.sets[backend.SetKey{Origin: origin, V6: p.Addr().Is6()}][p]
	return ok && b.live(until, b.now())
}

// Len returns how many members of set k the kernel still holds.
func (b *Backend) Len(k backend.SetKey) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	now, n := b.now(), 0
	for _, until := range b.sets[k] {
		if b.live(until, now) {
			n++
		}
	}
	return n
}

// String prints the state, one line per member, sorted, for golden tests
// and failure messages.
func (b *Backend) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var lines []string
	lines = append(lines, fmt.Sprintf("infra=%v", b.infra))
	for k, s := range b.sets {
		for p, until := range s {
			lines = append(lines, fmt.Sprintf("set origin=%d v6=%v %s until=%s", k.Origin, k.V6, p, until.UTC().Format(time.RFC3339)))
		}
	}
	sort.Strings(lines[1:])
	return strings.Join(lines, "\n")
}

func sortedKeys(m map[backend.SetKey]int) []backend.SetKey {
	return sortKeys(slices.Collect(maps.Keys(m)))
}

func sortedSetKeys(m map[backend.SetKey]map[netip.Prefix]time.Time) []backend.SetKey {
	return sortKeys(slices.Collect(maps.Keys(m)))
}

func sortKeys(ks []backend.SetKey) []backend.SetKey {
	sort.Slice(ks, func(i, j int) bool {
		if ks[i].Origin != ks[j].Origin {
			return ks[i].Origin < ks[j].Origin
		}
		return !ks[i].V6 && ks[j].V6
	})
	return ks
}
