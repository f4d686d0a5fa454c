package iptables

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// Backend enforces entries with ipset sets and, in iptables mode, an
// iptables chain. It is not safe for concurrent use: one goroutine (the
// enforcer loop) owns it.
type Backend struct {
	cfg    Config
	log    *slog.Logger
	runner commandRunner
	sock   *nlSocket
	kids   *backend.Children // commands we ran, for NFTObjects

	originNames map[int]string
	origins     map[int]bool         // origins ensured (iptables mode)
	sets        map[string]setInfo   // sets known to exist, for Apply
	revisions   map[setTypeKey]uint8 // kernel's newest revision per type
	clean       map[bool]bool        // per family: last rules check was clean
	gen         struct {
		ok bool
		id uint32
	} // nf_tables generation at the last clean rules check
	nft map[bool]bool // per family: iptables uses the nf_tables backend
	// mismatch holds our set names taken by a set of the wrong type that
	// could not be moved aside, with what is wrong: their entries are
	// refused until the set changes.
	mismatch map[string]string
}

type setTypeKey struct {
	typ    string
	family uint8
}

var (
	_ backend.Backend        = (*Backend)(nil)
	_ backend.StagedReplayer = (*Backend)(nil)
)

// New validates cfg and returns a backend. It does not touch the kernel:
// sets, chains and rules appear on Ensure.
func New(cfg Config) (*Backend, error) {
	c, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	kids := &backend.Children{}
	return &Backend{
		cfg:         c,
		log:         c.Logger.With("component", "backend", "mode", c.Mode),
		kids:        kids,
		runner:      execRunner{log: c.Logger.With("component", "backend"), kids: kids},
		originNames: map[int]string{},
		origins:     map[int]bool{},
		sets:        map[string]setInfo{},
		revisions:   map[setTypeKey]uint8{},
		clean:       map[bool]bool{},
		nft:         map[bool]bool{},
		mismatch:    map[string]string{},
	}, nil
}

// SetOrigins implements backend.Backend: the origins whose sets and rules
// Ensure creates and Verify checks, and their names for rule comments and
// logs. It does not touch the kernel; a change of names shows up as "rule"
// drift and the next Ensure rewrites the comments.
func (b *Backend) SetOrigins(o backend.Origins) {
	b.originNames = maps.Clone(o)
	b.origins = make(map[int]bool, len(o))
	for i := range o {
		b.origins[i] = true
	}
}

// Limits implements backend.Backend: ipset caps timeouts silently at
// MaxTimeout, and a set header carries its member count.
func (b *Backend) Limits() backend.Limits {
	return backend.Limits{MaxTimeout: MaxTimeout, CountsMembers: true}
}

// MaxTimeout is the longest timeout ipset keeps (2,147,483 s, about 24.8
// days); longer ones are capped by the kernel without an error.
const MaxTimeout = 2147483 * time.Second

// SetKeyOf maps an entry's origin and family to the set that holds it. In
// ipset mode every origin shares one set per family, reported as origin 0;
// callers computing Verify's want or comparing Members use this.
func (b *Backend) SetKeyOf(origin int, v6 bool) backend.SetKey {
	if b.cfg.Mode == ModeIPSet {
		return backend.SetKey{V6: v6}
	}
	return backend.SetKey{Origin: origin, V6: v6}
}

// SetName implements backend.Backend.
func (b *Backend) SetName(k backend.SetKey) string { return b.setName(k) }

func (b *Backend) setName(k backend.SetKey) string {
	base := b.cfg.SetName4
	if k.V6 {
		base = b.cfg.SetName6
	}
	if b.cfg.Mode == ModeIPSet {
		return base
	}
	return base + "-" + strconv.Itoa(k.Origin)
}

// families lists the enabled families (false = IPv4, true = IPv6).
func (b *Backend) families() []bool {
	var out []bool
	if !b.cfg.DisableIPv4 {
		out = append(out, false)
	}
	if !b.cfg.DisableIPv6 {
		out = append(out, true)
	}
	return out
}

func (b *Backend) familyEnabled(v6 bool) bool {
	if v6 {
		return !b.cfg.DisableIPv6
	}
	return !b.cfg.DisableIPv4
}

func (b *Backend) hooks(v6 bool) []string {
	if v6 {
		return b.cfg.Chains6
	}
	return b.cfg.Chains4
}

func (b *Backend) socket() (*nlSocket, error) {
	if b.sock == nil {
		s, err := openSocket()
		if err != nil {
			return nil, err
		}
		b.sock = s
	}
	return b.sock, nil
}

// Validate reports whether the set for e can hold it: family enabled, a
// prefix length of 1..32/1..128 for hash:net, a full-length prefix for
// hash:ip. The kernel stops a whole batch at the first bad entry, so every
// entry is checked before sending. Errors wrap ErrInvalidEntry.
func (b *Backend) Validate(e backend.Entry) error {
	_, err := b.check(e)
	return err
}

// check is Validate with a short reason word for metrics.
func (b *Backend) check(e backend.Entry) (reason string, err error) {
	p := e.Prefix
	if !p.IsValid() {
		return "invalid_prefix", fmt.Errorf("%w: invalid prefix", ErrInvalidEntry)
	}
	if p.Addr().Is4In6() {
		return "invalid_prefix", fmt.Errorf("%w: %s is IPv4-mapped IPv6", ErrInvalidEntry, p)
	}
	v6 := p.Addr().Is6()
	if !b.familyEnabled(v6) {
		return "family_disabled", fmt.Errorf("%w: %s: %s is disabled", ErrInvalidEntry, p, familyName(v6))
	}
	if p.Masked() != p {
		return "invalid_prefix", fmt.Errorf("%w: %s is not masked", ErrInvalidEntry, p)
	}
	switch {
	case b.cfg.SetType == SetTypeIP && p.Bits() != p.Addr().BitLen():
		return "set_type", fmt.Errorf("%w: %s: a hash:ip set holds single addresses only", ErrInvalidEntry, p)
	case p.Bits() < 1:
		return "invalid_prefix", fmt.Errorf("%w: %s: prefix length 0 is not allowed in a hash:net set", ErrInvalidEntry, p)
	}
	if b.cfg.Mode == ModeIPTables && (e.Origin < 0 || e.Origin > maxOrigin) {
		return "origin_index", fmt.Errorf("%w: %s: origin index %d outside 0..%d", ErrInvalidEntry, p, e.Origin, maxOrigin)
	}
	return "", nil
}

// timeout turns Until into kernel seconds: at least 1, at most the
// kernel's cap; ok is false when the entry already expired. A zero Until
// means no expiry (timeout 0, permanent).
func timeoutFor(until, now time.Time) (secs uint32, ok bool) {
	if until.IsZero() {
		return 0, true
	}
	d := until.Sub(now)
	if d <= 0 {
		return 0, false
	}
	s := (d + time.Second - 1) / time.Second
	if s > maxTimeout {
		s = maxTimeout
	}
	return uint32(s), true
}

// hashSizeFor pre-sizes a set's hash table for n members so that filling
// it does not trigger repeated resizes (NOTES: 3× faster at 100k).
func hashSizeFor(n int) uint32 {
	want := max(1024, n/2)
	if want > 1<<26 {
		want = 1 << 26
	}
	return uint32(1) << bits.Len(uint(want-1))
}

func (b *Backend) specFor(ctx context.Context, v6 bool, members int) (setSpec, error) {
	fam := uint8(nfprotoIPv4)
	if v6 {
		fam = nfprotoIPv6
	}
	k := setTypeKey{b.cfg.SetType, fam}
	rev, ok := b.revisions[k]
	if !ok {
		s, err := b.socket()
		if err != nil {
			return setSpec{}, err
		}
		rev, err = s.maxRevision(ctx, b.cfg.SetType, fam)
		if err != nil {
			return setSpec{}, fmt.Errorf("query kernel support for %s %s: %w", b.cfg.SetType, familyName(v6), err)
		}
		b.revisions[k] = rev
	}
	return setSpec{
		typ: b.cfg.SetType, family: fam, revision: rev,
		hashSize: hashSizeFor(members), maxElem: uint32(b.cfg.MaxElem),
		timeout: !b.cfg.DisableTimeouts,
	}, nil
}

// ensureSet makes sure a set exists with the right type and family and
// returns what the kernel reports about it.
func (b *Backend) ensureSet(ctx context.Context, name string, v6 bool) (setInfo, error) {
	s, err := b.socket()
	if err != nil {
		return setInfo{}, err
	}
	sp, err := b.specFor(ctx, v6, 0)
	if err != nil {
		return setInfo{}, err
	}
	info, err := s.header(ctx, name)
	switch {
	case errors.Is(err, ErrSetNotFound):
		if err := s.create(ctx, name, sp); err != nil {
			return setInfo{}, fmt.Errorf("create set: %w", err)
		}
		b.log.Info("set created", "set", name, "type", sp.typ, "family", familyName(v6))
		info = setInfo{typ: sp.typ, family: sp.family, revision: sp.revision, hashSize: sp.hashSize, maxElem: sp.maxElem, timeout: sp.timeout}
	case err != nil:
		return setInfo{}, fmt.Errorf("check set: %w", err)
	case info.typ != sp.typ || info.family != sp.family:
		if err := b.resolveMismatch(ctx, s, name, info, sp); err != nil {
			return setInfo{}, err
		}
		if err := s.create(ctx, name, sp); err != nil {
			return setInfo{}, fmt.Errorf("create set: %w", err)
		}
		info = setInfo{typ: sp.typ, family: sp.family, revision: sp.revision, hashSize: sp.hashSize, maxElem: sp.maxElem, timeout: sp.timeout}
	case info.timeout != sp.timeout:
		b.log.Warn("set timeout support differs from configuration; following the set", "set", name, "set_timeouts", info.timeout)
	}
	b.sets[name] = info
	return info, nil
}

// Ensure creates whatever is missing of our sets (for the enabled families
// and the given origins, plus those ensured before), chain, match rules
// and jump rules. It never flushes a set, never touches rules it does not
// own, and writes nothing when everything is in place.
func (b *Backend) Ensure(ctx context.Context) error {
	if b.cfg.Mode == ModeIPSet {
		for _, v6 := range b.families() {
			name := b.setName(backend.SetKey{V6: v6})
			if _, err := b.ensureSet(ctx, name, v6); err != nil && !errors.Is(err, ErrSetMismatch) {
				return fmt.Errorf("ensure %s: %w", name, err)
			}
		}
		return nil
	}
	for o := range b.origins {
		if o < 0 || o > maxOrigin {
			return fmt.Errorf("ensure: origin index %d outside 0..%d", o, maxOrigin)
		}
	}
	all := slices.Sorted(maps.Keys(b.origins))
	for _, v6 := range b.families() {
		for _, o := range all {
			name := b.setName(backend.SetKey{Origin: o, V6: v6})
			if _, err := b.ensureSet(ctx, name, v6); err != nil && !errors.Is(err, ErrSetMismatch) {
				return fmt.Errorf("ensure %s: %w", name, err)
			}
		}
		if err := b.ensureRules(ctx, v6, all); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) ensureRules(ctx context.Context, v6 bool, origins []int) error {
	st, err := b.readTable(ctx, v6)
	if err != nil {
		return fmt.Errorf("ensure rules: %w", err)
	}
	script := planEnsure(st, b.cfg.Chain, b.rulesetFor(v6, origins), b.hooks(v6), b.jumpRule())
	if script == "" {
		return nil
	}
	b.clean[v6] = false
	if err := b.restore(ctx, v6, script); err != nil {
		return fmt.Errorf("ensure rules: %w", err)
	}
	b.log.Info("rules written", "family", familyName(v6), "chain", b.cfg.Chain, "origins", len(origins))
	return nil
}

// grouped holds validated entries per set name.
type grouped struct {
	order   []string
	keys    map[string]backend.SetKey
	entries map[string][]kEntry
	invalid []backend.Rejection
}

// group validates entries and sorts them into their sets. Expired entries
// are dropped when dropExpired (adds), kept for deletes.
func (b *Backend) group(entries iter.Seq[backend.Entry], now time.Time, dropExpired bool) *grouped {
	g := &grouped{keys: map[string]backend.SetKey{}, entries: map[string][]kEntry{}}
	// Each set's slice is sized by a counting walk first: growing it by
	// appends would allocate several times its final size.
	r := b.newRouter(now, dropExpired)
	for e := range entries {
		if to, _, _ := r.route(e); to != nil {
			to.n++
		}
	}
	for _, to := range r.sets {
		to.entries = make([]kEntry, 0, to.n)
	}
	for e := range entries {
		to, k, rej := r.route(e)
		if rej != nil {
			g.invalid = append(g.invalid, *rej)
			continue
		}
		if to == nil {
			continue
		}
		if len(to.entries) == 0 {
			g.order = append(g.order, to.name)
			g.keys[to.name] = to.key
		}
		to.entries = append(to.entries, k)
	}
	for _, to := range r.sets {
		g.entries[to.name] = to.entries
	}
	return g
}

// router validates entries and finds their sets. A million entries share a
// few sets: a set is looked up once per run of entries going to it, not
// once per entry.
type router struct {
	b           *Backend
	now         time.Time
	dropExpired bool
	sets        map[backend.SetKey]*routed
	last        *routed
}

// routed is one set entries are routed to.
type routed struct {
	name     string
	key      backend.SetKey
	mismatch string // why the set refuses every entry, when it does
	n        int
	entries  []kEntry
}

func (b *Backend) newRouter(now time.Time, dropExpired bool) *router {
	return &router{b: b, now: now, dropExpired: dropExpired, sets: map[backend.SetKey]*routed{}}
}

// route returns e's set and kernel entry; a nil set with no rejection is
// an expired entry left out.
func (r *router) route(e backend.Entry) (*routed, kEntry, *backend.Rejection) {
	if reason, err := r.b.check(e); err != nil {
		return nil, kEntry{}, &backend.Rejection{Entry: e, Reason: reason, Err: err}
	}
	t, live := timeoutFor(e.Until, r.now)
	if !live && r.dropExpired {
		return nil, kEntry{}, nil
	}
	k := r.b.SetKeyOf(e.Origin, e.Prefix.Addr().Is6())
	to := r.last
	if to == nil || to.key != k {
		if to = r.sets[k]; to == nil {
			to = &routed{name: r.b.setName(k), key: k}
			to.mismatch = r.b.mismatch[to.name]
			r.sets[k] = to
		}
		r.last = to
	}
	if to.mismatch != "" {
		return nil, kEntry{}, &backend.Rejection{Entry: e, Reason: "set_mismatch", Err: fmt.Errorf("%w: %s", ErrMismatchRejected, to.mismatch)}
	}
	return to, newKEntry(e.Prefix, t, e.Origin), nil
}

// invalidErr reports rejected entries in the contract's error class.
func invalidErr(rs []backend.Rejection) error {
	if len(rs) == 0 {
		return nil
	}
	return &backend.RejectedError{Rejected: rs}
}

// addOrigins declares origins an entry referenced before SetOrigins named
// them (an implicit Ensure keeps such entries enforced).
func (b *Backend) addOrigins(os []int) {
	for _, o := range os {
		b.origins[o] = true
	}
}

// missingOrigins returns origins of the sets named in keys that were never
// ensured.
func (b *Backend) missingOrigins(keys ...map[string]backend.SetKey) []int {
	if b.cfg.Mode == ModeIPSet {
		return nil
	}
	var out []int
	for _, ks := range keys {
		for _, k := range ks {
			if !b.origins[k.Origin] && !slices.Contains(out, k.Origin) {
				out = append(out, k.Origin)
			}
		}
	}
	return out
}

// Apply deletes then adds entries in batches of up to 1000 per netlink
// message. Entries of an origin not ensured yet get their set and rule
// first (an implicit Ensure). Entries of a disabled family or otherwise
// invalid are skipped and reported, joined, as ErrInvalidEntry after the
// rest was applied. A set destroyed behind our back yields ErrSetNotFound:
// run Ensure and Replay.
func (b *Backend) Apply(ctx context.Context, d backend.Delta) error {
	now := b.cfg.Now()
	dels := b.group(slices.Values(d.Del), now, false)
	adds := b.group(slices.Values(d.Add), now, true)
	if miss := b.missingOrigins(dels.keys, adds.keys); len(miss) > 0 || (b.cfg.Mode == ModeIPSet && len(b.sets) == 0) {
		b.addOrigins(miss)
		if err := b.Ensure(ctx); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
	}
	s, err := b.socket()
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	for _, name := range dels.order {
		if err := s.adt(ctx, ipsetCmdDel, name, dels.entries[name], b.cfg.SetType == SetTypeNet, false); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
	}
	for _, name := range adds.order {
		if err := b.growFor(ctx, s, name, adds.keys[name].V6, len(adds.entries[name])); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		info := b.sets[name]
		if err := s.adt(ctx, ipsetCmdAdd, name, adds.entries[name], b.cfg.SetType == SetTypeNet, info.timeout); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
	}
	if err := invalidErr(append(dels.invalid, adds.invalid...)); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	return nil
}

// ourSets lists the sets the backend currently owns, with their keys.
func (b *Backend) ourSets() map[string]backend.SetKey {
	out := map[string]backend.SetKey{}
	for _, v6 := range b.families() {
		if b.cfg.Mode == ModeIPSet {
			k := backend.SetKey{V6: v6}
			out[b.setName(k)] = k
			continue
		}
		for o := range b.origins {
			k := backend.SetKey{Origin: o, V6: v6}
			out[b.setName(k)] = k
		}
	}
	return out
}

// Verify checks, without listing members, that each of our sets exists
// with the right type and family and holds at least want[key] members, and
// in iptables mode that our chain, match rules and jumps are in place. The
// rules check is skipped while the nf_tables generation id is unchanged
// since the last clean check (any rule change anywhere bumps it). In ipset
// mode want is summed per family (see SetKeyOf).
func (b *Backend) Verify(ctx context.Context, want map[backend.SetKey]int) (backend.Drift, error) {
	var d backend.Drift
	s, err := b.socket()
	if err != nil {
		return d, fmt.Errorf("verify: %w", err)
	}
	sets := b.ourSets()
	perSet := map[string]int{}
	for k, n := range want {
		if !b.familyEnabled(k.V6) {
			continue
		}
		k = b.SetKeyOf(k.Origin, k.V6)
		name := b.setName(k)
		sets[name] = k
		perSet[name] += n
	}
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		v6 := sets[name].V6
		info, err := s.header(ctx, name)
		switch {
		case errors.Is(err, ErrSetNotFound):
			delete(b.mismatch, name)
			d.Add("set", fmt.Sprintf("set %s is missing", name))
			continue
		case err != nil:
			return d, fmt.Errorf("verify: %w", err)
		}
		fam := uint8(nfprotoIPv4)
		if v6 {
			fam = nfprotoIPv6
		}
		if what, ok := b.mismatch[name]; ok {
			if info.typ != b.cfg.SetType || info.family != fam {
				continue // reported once; its entries are refused until it changes
			}
			delete(b.mismatch, name)
			d.Add("set", fmt.Sprintf("set %s has the configured type again (%s before)", name, what))
			continue
		}
		if info.typ != b.cfg.SetType || info.family != fam {
			d.Add("set", fmt.Sprintf("set %s is %s family %d, want %s family %d", name, info.typ, info.family, b.cfg.SetType, fam))
			continue
		}
		if int(info.elements) < perSet[name] {
			d.Add("count", fmt.Sprintf("set %s holds %d members, want at least %d", name, info.elements, perSet[name]))
		}
	}
	if b.cfg.Mode == ModeIPTables {
		if err := b.verifyRules(ctx, s, &d); err != nil {
			return d, fmt.Errorf("verify: %w", err)
		}
	}
	return d, nil
}

func (b *Backend) verifyRules(ctx context.Context, s *nlSocket, d *backend.Drift) error {
	gen, genErr := s.ruleGen(ctx)
	fams := b.families()
	allNFT, allClean := true, true
	for _, v6 := range fams {
		allNFT = allNFT && b.nft[v6]
		allClean = allClean && b.clean[v6]
	}
	if genErr == nil && allNFT && allClean && b.gen.ok && b.gen.id == gen {
		return nil
	}
	origins := slices.Sorted(maps.Keys(b.origins))
	for _, v6 := range fams {
		out, err := b.runner.run(ctx, nil, saveCmd(v6), "-t", "filter")
		if err != nil {
			return fmt.Errorf("read %s filter table: %w", familyName(v6), err)
		}
		b.nft[v6] = strings.Contains(string(out), "(nf_tables)")
		before := len(d.Kinds)
		checkRules(d, familyName(v6), parseSave(string(out)), b.cfg.Chain, b.rulesetFor(v6, origins), b.hooks(v6), b.jumpRule())
		b.clean[v6] = len(d.Kinds) == before
	}
	// The generation was read before the tables: a change in between
	// leaves a newer generation in the kernel, so the next pass rechecks.
	b.gen.ok, b.gen.id = genErr == nil, gen
	return nil
}

// Members dumps every one of our sets. It is a full listing (≈0.25 s at
// 100k): for the slow deep verify only. In iptables mode it also finds
// per-origin sets left by an earlier run.
func (b *Backend) Members(ctx context.Context) (map[backend.SetKey][]netip.Prefix, error) {
	s, err := b.socket()
	if err != nil {
		return nil, fmt.Errorf("members: %w", err)
	}
	sets := b.ourSets()
	if b.cfg.Mode == ModeIPTables {
		found, err := b.discover(ctx, false)
		if err != nil {
			return nil, fmt.Errorf("members: %w", err)
		}
		maps.Copy(sets, found)
	}
	out := map[backend.SetKey][]netip.Prefix{}
	for name, k := range sets {
		if _, foreign := b.mismatch[name]; foreign {
			continue // not ours: its members are none of our business
		}
		ps, err := s.members(ctx, name)
		if errors.Is(err, ErrSetNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("members: %w", err)
		}
		out[k] = ps
	}
	return out, nil
}

// discover finds per-origin sets of ours in the kernel by name
// (<SetName>-<origin>, and with temps also <SetName>-<origin>-t).
func (b *Backend) discover(ctx context.Context, temps bool) (map[string]backend.SetKey, error) {
	s, err := b.socket()
	if err != nil {
		return nil, err
	}
	names, err := s.listNames(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]backend.SetKey{}
	for _, v6 := range b.families() {
		base := b.cfg.SetName4
		if v6 {
			base = b.cfg.SetName6
		}
		for _, n := range names {
			rest, ok := strings.CutPrefix(n, base+"-")
			if !ok {
				continue
			}
			if r, isTemp := strings.CutSuffix(rest, "-t"); isTemp {
				if !temps {
					continue
				}
				rest = r
			}
			o, err := strconv.Atoi(rest)
			if err != nil || o < 0 || strconv.Itoa(o) != rest {
				continue
			}
			out[n] = backend.SetKey{Origin: o, V6: v6}
		}
	}
	return out, nil
}

// Close leaves everything in place when keep is true (enforcement goes on
// across a restart). Otherwise, in iptables mode it deletes our exact jump
// rules, flushes and deletes our chain, then destroys our sets (rules
// first: a referenced set cannot be destroyed). In ipset mode it flushes
// the sets but leaves them, like the upstream bouncer: the user's rules
// reference them. Errors are joined; the netlink socket is closed either way.
func (b *Backend) Close(ctx context.Context, keep bool) error {
	var errs []error
	if !keep {
		errs = append(errs, b.remove(ctx))
	}
	if b.sock != nil {
		if err := b.sock.close(); err != nil {
			errs = append(errs, fmt.Errorf("close netlink socket: %w", err))
		}
		b.sock = nil
	}
	b.sets = map[string]setInfo{}
	b.clean = map[bool]bool{}
	return errors.Join(errs...)
}

func (b *Backend) remove(ctx context.Context) error {
	s, err := b.socket()
	if err != nil {
		return fmt.Errorf("close: %w", err)
	}
	var errs []error
	if b.cfg.Mode == ModeIPSet {
		for name := range b.ourSets() {
			if _, foreign := b.mismatch[name]; foreign {
				continue
			}
			if err := s.flush(ctx, name); err != nil && !errors.Is(err, ErrSetNotFound) {
				errs = append(errs, fmt.Errorf("close: %w", err))
			}
		}
		return errors.Join(errs...)
	}
	for _, v6 := range b.families() {
		st, err := b.readTable(ctx, v6)
		if err != nil {
			errs = append(errs, fmt.Errorf("close: %w", err))
			continue
		}
		if script := planRemove(st, b.cfg.Chain, b.hooks(v6), b.jumpRule()); script != "" {
			if err := b.restore(ctx, v6, script); err != nil {
				errs = append(errs, fmt.Errorf("close: remove rules: %w", err))
			}
		}
	}
	sets, err := b.discover(ctx, true)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("close: %w", err))...)
	}
	maps.Copy(sets, b.ourSets())
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		if _, foreign := b.mismatch[name]; foreign {
			continue // not ours: left as found
		}
		if err := s.destroy(ctx, name); err != nil && !errors.Is(err, ErrSetNotFound) {
			errs = append(errs, fmt.Errorf("close: %w", err))
		}
	}
	b.origins = map[int]bool{}
	return errors.Join(errs...)
}
