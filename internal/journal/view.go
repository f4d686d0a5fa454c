package journal

import (
	"encoding/binary"
	"math"
	"net/netip"
	"sync"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/intern"
)

// View is the in-memory active set: one decision per Key, as LAPI publishes
// them. The journal rebuilds it at Open and updates it after every committed
// Append.
//
// It is owned by the enforcer goroutine: only that goroutine should call
// Expire or Journal.Append, which mutate it. Its methods are nonetheless safe
// for concurrent use, so that a metrics scrape (Journal.Stats) or a debug
// endpoint may read it while the enforcer works.
//
// Memory: entries are packed (see vmap; strings are interned indices):
// 100k IPv4 decisions take about 3 MB, a million 28 MB (IPv6: 40 MB).
type View struct {
	mu       sync.RWMutex
	m        vmap
	strs     *strtab
	combos   []uint32 // distinct (scope, type) pairs ever inserted, for ForPrefix
	minUntil int64    // lower bound of every until in m; lets Expire skip its scan
}

// vkey is the Key unpacked: the address as two words, plus the interned
// (scope, type) pair.
type vkey struct {
	hi, lo uint64
	bits   uint8
	v6     bool // 16-byte address (IPv6, including 4in6)
	combo  uint32
}

// vval is the rest of a Decision, plus when it was first received.
type vval struct {
	until int64  // unix ms
	since int64  // unix ms, 0 = unknown (journaled before since was kept)
	label uint32 // interned (origin, scenario) pair
	stale bool   // set before the full batch being applied (see replace)
}

// pair is two interned strings: (scope, type) or (origin, scenario).
type pair struct{ a, b uint32 }

// strtab interns the strings of origins, scenarios, types and scopes, and
// the pairs they come in. A view and the one a full batch builds aside
// share it, so indices mean the same in both.
type strtab struct {
	strs  intern.Table[string]
	pairs intern.Table[pair]
}

func newStrtab() *strtab { return &strtab{} }

func (s *strtab) str(i uint32) string { return s.strs.Values[i] }

func (s *strtab) pair(a, b string) uint32 {
	return s.pairs.ID(pair{s.strs.ID(a), s.strs.ID(b)})
}

// strings returns the two strings of pair i.
func (s *strtab) strings(i uint32) (string, string) {
	p := s.pairs.Values[i]
	return s.strs.Values[p.a], s.strs.Values[p.b]
}

func newView(strs *strtab) *View {
	return &View{strs: strs, minUntil: math.MaxInt64}
}

func packAddr(p netip.Prefix) (hi, lo uint64, bits uint8, v6 bool) {
	a := p.Addr()
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), uint8(p.Bits()), a.Is6()
}

func (k vkey) prefix() netip.Prefix {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	if k.v6 {
		return netip.PrefixFrom(netip.AddrFrom16(b), int(k.bits))
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte(b[12:])), int(k.bits))
}

// packKey converts k without interning; ok is false when k's strings were
// never seen together, so k cannot be in the view.
func (v *View) packKey(k Key) (vkey, bool) {
	s, ok1 := v.strs.strs.Lookup(k.Scope)
	t, ok2 := v.strs.strs.Lookup(k.Type)
	c, ok3 := v.strs.pairs.Lookup(pair{s, t})
	hi, lo, bits, v6 := packAddr(k.Prefix)
	return vkey{hi: hi, lo: lo, bits: bits, v6: v6, combo: c}, ok1 && ok2 && ok3
}

func (v *View) internKey(prefix netip.Prefix, scope, typ string) vkey {
	hi, lo, bits, v6 := packAddr(prefix)
	return vkey{hi: hi, lo: lo, bits: bits, v6: v6, combo: v.strs.pair(scope, typ)}
}

func (v *View) decision(k vkey, val vval) Decision {
	d := Decision{Prefix: k.prefix(), Until: msTime(val.until)}
	d.Scope, d.Type = v.strs.strings(k.combo)
	d.Origin, d.Scenario = v.strs.strings(val.label)
	return d
}

// upsert inserts or replaces; LAPI's latest value is authoritative, even
// when shorter (a delete + re-add with a shorter duration must shorten).
// A record already expired at now removes the key instead.
func (v *View) upsert(r record, now int64) {
	k := v.internKey(r.prefix, r.scope, r.typ)
	cur, ok := v.m.get(k)
	if r.until <= now {
		if ok {
			v.m.del(k)
		}
		return
	}
	if !ok {
		v.noteCombo(k)
	}
	v.put(k, r, v.strs.strs.ID(r.origin), cur, ok, now)
}

// put stores r, of origin, at k. prev is the entry k held (if any): held
// unexpired at now and with the same origin, r is an extension and keeps
// its since; otherwise the decision is new and gets r.since.
func (v *View) put(k vkey, r record, origin uint32, prev vval, hasPrev bool, now int64) {
	since := r.since
	if hasPrev && v.origin(prev) == origin && prev.until > now {
		since = prev.since
	}
	label := v.strs.pairs.ID(pair{origin, v.strs.strs.ID(r.scenario)})
	v.m.set(k, vval{until: r.until, since: since, label: label})
	v.minUntil = min(v.minUntil, r.until)
}

func (v *View) origin(val vval) uint32 { return v.strs.pairs.Values[val.label].a }

// replace makes v hold exactly the decisions of a full batch, each with the
// since it would get upserted into an empty view with the old entries as
// prev — but in place: a second view would double it at the peak (28 MB
// more at a million IPv4 keys).
//
// A first pass drops the entries the batch does not keep, so that their
// room takes its new keys rather than growing the view. The kept entries
// are then marked stale, which tells them from what the batch sets. A key
// the batch holds twice must still find the old entry as prev: one that an
// earlier duplicate overwrote or deleted is kept in displaced, unless what
// replaced it gives the same since (same origin, or the old one had
// expired anyway).
func (v *View) replace(b Batch, now int64) {
	if v.m.len() == 0 {
		v.fill(b, now)
		return
	}
	v.m.markStale()
	for _, d := range b.AllNew() {
		if untilMS(d.Until) > now {
			k := v.internKey(d.Prefix, d.Scope, d.Type)
			v.m.keep(k)
		}
	}
	for k, val := range v.m.all {
		if val.stale {
			v.m.del(k)
		}
	}
	// Every entry left has an unexpired decision in the batch, which
	// overwrites it below: none is left stale.
	v.m.markStale()
	v.combos, v.minUntil = nil, math.MaxInt64
	var displaced map[vkey]vval
	for _, d := range b.AllNew() {
		r := recordOf(d, now)
		k := v.internKey(r.prefix, r.scope, r.typ)
		cur, ok := v.m.get(k)
		fresh := ok && !cur.stale // set by an earlier duplicate
		prev, saved := displaced[k]
		if !saved {
			prev = cur
		}
		hasPrev := saved || ok
		expired := r.until <= now
		var origin uint32
		if !expired {
			origin = v.strs.strs.ID(r.origin)
		}
		if ok && !saved && cur.until > now && (expired && fresh || !expired && v.origin(cur) != origin) {
			if displaced == nil {
				displaced = make(map[vkey]vval)
			}
			displaced[k] = cur
		}
		if expired {
			if fresh {
				v.m.del(k)
			}
			continue
		}
		if !fresh {
			v.noteCombo(k)
		}
		v.put(k, r, origin, prev, hasPrev, now)
	}
	v.m.fit()
}

// fill is replace into an empty view (a cold start): no old entry can be
// a decision's prev, and a duplicate's since is the batch's either way, so
// the decisions are loaded in bulk and sorted once, the last of a key
// winning as in replace.
func (v *View) fill(b Batch, now int64) {
	// Sized once for each family: growing a base would copy it.
	n6 := 0
	for _, d := range b.AllNew() {
		if d.Prefix.Addr().Is6() {
			n6++
		}
	}
	v.m = newVmap(b.NewLen()-n6, n6)
	v.combos, v.minUntil = nil, math.MaxInt64
	for _, d := range b.AllNew() {
		r := recordOf(d, now)
		k := v.internKey(r.prefix, r.scope, r.typ)
		if r.until <= now {
			v.m.bulkDel(k) // drops an earlier duplicate, as replace does
			continue
		}
		v.noteCombo(k)
		v.m.bulkSet(k, r.until, v.strs.pair(r.origin, r.scenario))
		v.minUntil = min(v.minUntil, r.until)
	}
	v.m.bulkEnd(now)
}

func (v *View) noteCombo(k vkey) {
	for _, have := range v.combos {
		if have == k.combo {
			return
		}
	}
	v.combos = append(v.combos, k.combo)
}

// viewLoader applies a decoded record to a view (Open's rebuild path).
//
// It replays each value at the time it was written (when known), not at
// load time: an extension of a key that has expired since must still find
// the key and keep its since, as Append did. What expired by load time is
// swept afterwards (View.Expire), which leaves the same set of keys.
type viewLoader struct {
	v     *View
	now   int64 // load time
	atNow int64 // the current value's write time, capped at now
	// size is the snapshot's entry count until the first record says
	// which family to make room for: a blocklist is one family, and the
	// count by family is not stored.
	size int
}

func (l *viewLoader) full(n int) {
	l.v.m = vmap{}
	l.size = n
	l.v.minUntil = math.MaxInt64
}
func (l *viewLoader) at(ms int64) {
	l.atNow = l.now
	if ms != 0 && ms < l.now {
		l.atNow = ms
	}
}
func (l *viewLoader) add(r record) {
	if l.size > 0 {
		if r.prefix.Addr().Is6() {
			l.v.m = newVmap(0, l.size)
		} else {
			l.v.m = newVmap(l.size, 0)
		}
		l.size = 0
	}
	l.v.upsert(r, l.atNow)
}
func (l *viewLoader) del(k Key) {
	if pk, ok := l.v.packKey(k); ok {
		l.v.m.del(pk)
	}
}

// Len is the number of entries, including expired ones not yet removed by
// Expire.
func (v *View) Len() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.m.len()
}

// Get returns the decision held for k.
func (v *View) Get(k Key) (Decision, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	pk, ok := v.packKey(k)
	if !ok {
		return Decision{}, false
	}
	val, ok := v.m.get(pk)
	if !ok {
		return Decision{}, false
	}
	return v.decision(pk, val), true
}

// ForPrefix returns every decision (any scope and type) on exactly p. The
// enforcer needs it when one key goes: the kernel entry for p must stay if
// another decision still covers it. It probes the few (scope, type) pairs
// ever seen instead of keeping a second index.
func (v *View) ForPrefix(p netip.Prefix) []Decision {
	v.mu.RLock()
	defer v.mu.RUnlock()
	hi, lo, bits, v6 := packAddr(p)
	var out []Decision
	for _, c := range v.combos {
		k := vkey{hi: hi, lo: lo, bits: bits, v6: v6, combo: c}
		if val, ok := v.m.get(k); ok {
			out = append(out, v.decision(k, val))
		}
	}
	return out
}

// Since returns when the bouncer first received the decision held for k:
// the append time of the batch that brought k into the view or moved it to
// another origin; an extension keeps it. ok is false when k is not in the
// view; a zero time with ok true means unknown (journaled by an older
// version, which did not record it).
func (v *View) Since(k Key) (since time.Time, ok bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	pk, ok := v.packKey(k)
	if !ok {
		return time.Time{}, false
	}
	val, ok := v.m.get(pk)
	if !ok {
		return time.Time{}, false
	}
	return sinceTime(val.since), true
}

// EachSince is Each with each decision's since (zero = unknown), for
// inspection tools that list the whole view.
func (v *View) EachSince(fn func(d Decision, since time.Time) bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	for k, val := range v.m.all {
		if !fn(v.decision(k, val), sinceTime(val.since)) {
			return
		}
	}
}

func sinceTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return msTime(ms)
}

// Expire removes the decisions whose Until <= now and returns them, so the
// caller can delete them from the kernel where timeouts are off. It only
// changes memory: the journal drops them on its own at the next compaction
// or Open. It does not scan when nothing can have expired yet.
func (v *View) Expire(now time.Time) []Decision {
	return v.ExpireN(now, 0)
}

// ExpireN is Expire removing at most limit decisions (0: no limit), so a
// caller can delete a mass expiry from the kernel in slices and stay
// responsive in between. The cost of all the slices of one expiry together
// is about one scan of the view.
func (v *View) ExpireN(now time.Time, limit int) []Decision {
	v.mu.Lock()
	defer v.mu.Unlock()
	t := untilMS(now)
	if t < v.minUntil {
		return nil
	}
	var out []Decision
	next := int64(math.MaxInt64)
	for k, val := range v.m.all {
		if val.until <= t {
			if limit > 0 && len(out) == limit {
				// minUntil stays a valid lower bound: what is left
				// includes expired decisions for the next slice.
				return out
			}
			out = append(out, v.decision(k, val))
			v.m.del(k)
		} else if val.until < next {
			next = val.until
		}
	}
	v.minUntil = next
	return out
}

// NextExpiry returns a time at or before the earliest Until in the view
// (zero when the view is empty): nothing expires before it, so a caller can
// skip Expire until then. It may be early, never late.
func (v *View) NextExpiry() time.Time {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.m.len() == 0 || v.minUntil == math.MaxInt64 {
		return time.Time{}
	}
	return msTime(v.minUntil)
}

// OnePerPrefix reports whether no prefix can hold more than one decision
// (a single scope and type was ever seen): a caller building the kernel
// state can then skip ForPrefix for each decision.
func (v *View) OnePerPrefix() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.combos) <= 1
}

// Each calls fn for every decision, expired or not, in no particular order,
// until fn returns false. fn must not call Expire or Journal.Append.
func (v *View) Each(fn func(Decision) bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	for k, val := range v.m.all {
		if !fn(v.decision(k, val)) {
			return
		}
	}
}

// encode writes the view's entries still in force at now as a full value
// (the snapshot, format version 3). The caller holds at least a read lock
// or owns v.
//
// A first pass finds the strings in use, a second the exact size, so that
// the value is written straight into one buffer of its size: building it
// aside and copying it would hold the snapshot twice at the peak. The
// second and the writing go in key order, where neighbours are close and
// alike.
func (v *View) encode(now int64) []byte {
	n := 0
	used := make([]bool, len(v.strs.pairs.Values))
	for k, val := range v.m.all {
		if val.until > now {
			n++
			used[k.combo], used[val.label] = true, true
		}
	}
	// The string table holds the strings of the pairs in use; wire maps a
	// pair to its two indices in it.
	var strs []string
	strIdx := make(map[uint32]uint64)
	wire := make([][2]uint64, len(used))
	for i, u := range used {
		if !u {
			continue
		}
		p := v.strs.pairs.Values[i]
		for j, s := range [2]uint32{p.a, p.b} {
			w, ok := strIdx[s]
			if !ok {
				w = uint64(len(strs))
				strIdx[s] = w
				strs = append(strs, v.strs.str(s))
			}
			wire[i][j] = w
		}
	}
	// Every until kept is after now, so now serves as the base.
	all := v.m.sorted()
	w := &snapWriter{base: now, at: now, wire: wire}
	size, scratch := 0, make([]byte, 0, 64)
	for k, val := range all {
		if val.until > now {
			size += len(w.append(scratch[:0], k, val))
		}
	}
	out := make([]byte, 0, headerSize(strs)+binary.MaxVarintLen64+size+4)
	out = appendHeader(out, snapshotVersion, flagFull, now, now, strs)
	out = binary.AppendUvarint(out, uint64(n))
	w = &snapWriter{base: now, at: now, wire: wire}
	for k, val := range all {
		if val.until > now {
			out = w.append(out, k, val)
		}
	}
	return appendCRC(out)
}
