// Package dryrun is the backend of `mode: dry-run`, like upstream's: it
// does everything but touch the kernel. It logs, at info level, what it
// would add and delete, and keeps an in-memory model of the sets it would
// hold so that Verify, Members and Counters agree with what was "written"
// and the enforcer never sees drift that only exists because nothing was
// written. It opens no netlink socket and runs no command.
package dryrun

import (
	"context"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// Config selects the families and names the sets in logs.
type Config struct {
	DisableIPv4, DisableIPv6 bool
	// SetName4 and SetName6 are the base names of the sets it pretends to
	// hold ("<base>-<origin>"); defaults crowdsec-blacklists and
	// crowdsec6-blacklists.
	SetName4, SetName6 string
	Logger             *slog.Logger
	// Now is the clock for expiries (default time.Now).
	Now func() time.Time
}

// Backend is the dry-run backend. Like every backend, one goroutine owns
// it; only Counters may be called concurrently, so the model is guarded.
type Backend struct {
	cfg     Config
	log     *slog.Logger
	origins backend.Origins
	ensured bool
	sets    map[backend.SetKey]map[netip.Prefix]time.Time
	mu      sync.Mutex // Counters may run on another goroutine
}

var _ backend.Backend = (*Backend)(nil)

// shown is how many entries a log line lists before summarizing.
const shown = 3

// New returns a dry-run backend.
func New(cfg Config) *Backend {
	if cfg.SetName4 == "" {
		cfg.SetName4 = "crowdsec-blacklists"
	}
	if cfg.SetName6 == "" {
		cfg.SetName6 = "crowdsec6-blacklists"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	b := &Backend{cfg: cfg, log: cfg.Logger.With("component", "backend", "mode", "dry-run"),
		sets: map[backend.SetKey]map[netip.Prefix]time.Time{}}
	return b
}

func (b *Backend) lock()   { b.mu.Lock() }
func (b *Backend) unlock() { b.mu.Unlock() }

// SetOrigins implements backend.Backend.
func (b *Backend) SetOrigins(o backend.Origins) { b.origins = maps.Clone(o) }

// Ensure implements backend.Backend: it "creates" a set per declared
// origin and enabled family, logging only the first time.
func (b *Backend) Ensure(context.Context) error {
	b.lock()
	defer b.unlock()
	var created []string
	for _, o := range slices.Sorted(maps.Keys(b.origins)) {
		for _, v6 := range []bool{false, true} {
			k := backend.SetKey{Origin: o, V6: v6}
			if b.disabled(v6) || b.sets[k] != nil {
				continue
			}
			b.sets[k] = map[netip.Prefix]time.Time{}
			created = append(created, b.SetName(k))
		}
	}
	if !b.ensured || len(created) > 0 {
		b.log.Info("dry-run: would create sets and rules", "sets", strings.Join(created, ","))
	}
	b.ensured = true
	return nil
}

func (b *Backend) disabled(v6 bool) bool {
	return (v6 && b.cfg.DisableIPv6) || (!v6 && b.cfg.DisableIPv4)
}

func key(e backend.Entry) backend.SetKey {
	return backend.SetKey{Origin: e.Origin, V6: e.Prefix.Addr().Is6()}
}

// check refuses what a real backend refuses whatever the kernel: invalid
// prefixes and disabled families.
func (b *Backend) check(e backend.Entry) *backend.Rejection {
	switch {
	case !e.Prefix.IsValid() || e.Prefix != e.Prefix.Masked():
		return &backend.Rejection{Entry: e, Reason: "invalid_prefix", Err: backend.ErrRejected}
	case b.disabled(e.Prefix.Addr().Is6()):
		return &backend.Rejection{Entry: e, Reason: "family_disabled", Err: backend.ErrRejected}
	}
	return nil
}

// Apply implements backend.Backend.
func (b *Backend) Apply(_ context.Context, d backend.Delta) error {
	b.lock()
	defer b.unlock()
	for _, e := range d.Del {
		delete(b.sets[key(e)], e.Prefix)
	}
	var rejected []backend.Rejection
	added := make([]backend.Entry, 0, len(d.Add))
	for _, e := range d.Add {
		if r := b.check(e); r != nil {
			rejected = append(rejected, *r)
			continue
		}
		b.set(key(e))[e.Prefix] = e.Until
		added = append(added, e)
	}
	if len(d.Del) > 0 {
		b.log.Info("dry-run: would delete", "entries", len(d.Del), "first", b.summary(d.Del))
	}
	if len(added) > 0 {
		b.log.Info("dry-run: would add", "entries", len(added), "first", b.summary(added))
	}
	return rejections(rejected)
}

func (b *Backend) set(k backend.SetKey) map[netip.Prefix]time.Time {
	s := b.sets[k]
	if s == nil {
		s = map[netip.Prefix]time.Time{}
		b.sets[k] = s
	}
	return s
}

func rejections(rs []backend.Rejection) error {
	if len(rs) == 0 {
		return nil
	}
	return &backend.RejectedError{Rejected: rs}
}

// summary lists the first entries of a batch for a log line.
func (b *Backend) summary(es []backend.Entry) string {
	var parts []string
	for _, e := range es[:min(len(es), shown)] {
		parts = append(parts, e.Prefix.String()+" in "+b.SetName(key(e)))
	}
	if len(es) > shown {
		parts = append(parts, fmt.Sprintf("and %d more", len(es)-shown))
	}
	return strings.Join(parts, ", ")
}

// Replay implements backend.Backend: the model holds exactly active.
func (b *Backend) Replay(_ context.Context, seq iter.Seq[backend.Entry]) error {
	active := slices.Collect(seq) // the model holds them all anyway
	b.lock()
	defer b.unlock()
	now := b.cfg.Now()
	for k := range b.sets {
		b.sets[k] = map[netip.Prefix]time.Time{}
	}
	var rejected []backend.Rejection
	n := 0
	for _, e := range active {
		if !e.Until.After(now) {
			continue
		}
		if r := b.check(e); r != nil {
			rejected = append(rejected, *r)
			continue
		}
		b.set(key(e))[e.Prefix] = e.Until
		n++
	}
	first := ""
	if len(active) > 0 {
		first = b.summary(active)
	}
	b.log.Info("dry-run: would replace the sets' contents", "entries", n, "first", first)
	return rejections(rejected)
}

// Verify implements backend.Backend against the model.
func (b *Backend) Verify(_ context.Context, want map[backend.SetKey]int) (backend.Drift, error) {
	b.lock()
	defer b.unlock()
	var d backend.Drift
	if !b.ensured {
		d.Add("chain", "dry-run: nothing created yet")
	}
	now := b.cfg.Now()
	for _, k := range slices.SortedFunc(maps.Keys(want), cmpKey) {
		if b.disabled(k.V6) {
			continue
		}
		s, ok := b.sets[k]
		if !ok {
			d.Add("set", "set "+b.SetName(k)+" missing")
			continue
		}
		n := 0
		for _, until := range s {
			if until.After(now) {
				n++
			}
		}
		if n < want[k] {
			d.Add("count", fmt.Sprintf("set %s holds %d members, want at least %d", b.SetName(k), n, want[k]))
		}
	}
	return d, nil
}

func cmpKey(x, y backend.SetKey) int {
	if x.Origin != y.Origin {
		return x.Origin - y.Origin
	}
	switch {
	case x.V6 == y.V6:
		return 0
	case y.V6:
		return -1
	}
	return 1
}

// SetKeyOf implements backend.Backend: one set per origin and family.
func (b *Backend) SetKeyOf(origin int, v6 bool) backend.SetKey {
	return backend.SetKey{Origin: origin, V6: v6}
}

// SetName implements backend.Backend.
func (b *Backend) SetName(k backend.SetKey) string {
	base := b.cfg.SetName4
	if k.V6 {
		base = b.cfg.SetName6
	}
	return base + "-" + strconv.Itoa(k.Origin)
}

// Members implements backend.Backend from the model (expired members are
// gone, as the kernel's timeouts would drop them).
func (b *Backend) Members(context.Context) (map[backend.SetKey][]netip.Prefix, error) {
	b.lock()
	defer b.unlock()
	now := b.cfg.Now()
	out := map[backend.SetKey][]netip.Prefix{}
	for k, s := range b.sets {
		ps := []netip.Prefix{}
		for p, until := range s {
			if until.After(now) {
				ps = append(ps, p)
			}
		}
		out[k] = ps
	}
	return out, nil
}

// Counters implements backend.Backend: member counts of the model; there
// are no rules, so no packet counters.
func (b *Backend) Counters(context.Context) (backend.Counters, error) {
	b.lock()
	defer b.unlock()
	var c backend.Counters
	for _, k := range slices.SortedFunc(maps.Keys(b.sets), cmpKey) {
		fam := "ipv4"
		if k.V6 {
			fam = "ipv6"
		}
		c.Sets = append(c.Sets, backend.SetCounters{Name: b.SetName(k), Key: k, Family: fam, Members: len(b.sets[k])})
	}
	return c, nil
}

// Limits implements backend.Backend: no timeout cap, counts are exact.
func (b *Backend) Limits() backend.Limits { return backend.Limits{CountsMembers: true} }

// Close implements backend.Backend.
func (b *Backend) Close(_ context.Context, keep bool) error {
	b.lock()
	defer b.unlock()
	if keep {
		b.log.Info("dry-run: would leave sets and rules in place")
		return nil
	}
	b.log.Info("dry-run: would remove sets and rules", "sets", len(b.sets))
	b.sets = map[backend.SetKey]map[netip.Prefix]time.Time{}
	b.ensured = false
	return nil
}
