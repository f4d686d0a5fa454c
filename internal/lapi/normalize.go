// Package lapi adapts CrowdSec's Local API to the bouncer: it pulls the
// decisions stream through go-cs-bouncer's API client and turns LAPI's
// loosely typed models into the journal's Decision and Key values, rejecting
// bad decisions one by one so that one malformed entry never costs a batch.
package lapi

import (
	"net/netip"
	"strings"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/chunks"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/intern"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// Rejection reasons. They are short and stable so they can label metrics;
// the rejected decision's fields carry the detail for logs.
const (
	ReasonNil           = "nil decision"
	ReasonMissingValue  = "missing value"
	ReasonMissingScope  = "missing scope"
	ReasonMissingType   = "missing type"
	ReasonMissingOrigin = "missing origin"
	ReasonMissingScen   = "missing scenario"
	ReasonMissingDur    = "missing duration"
	ReasonBadScope      = "unsupported scope"
	ReasonBadIP         = "bad ip"
	ReasonBadRange      = "bad range"
	ReasonTooWide       = "range too wide"
	ReasonBadDuration   = "bad duration"
	ReasonExpired       = "already expired"
	ReasonIPv4Disabled  = "ipv4 disabled"
	ReasonIPv6Disabled  = "ipv6 disabled"
	// ReasonMalformed: the element is valid JSON but not a decision (not
	// an object, or a field of the wrong type, such as "id":"forty").
	ReasonMalformed = "malformed decision"
	// ReasonOversized: the element is larger than 1 MiB.
	ReasonOversized = "oversized decision"
	// ReasonTooLong: a string field is longer than maxFieldLen.
	ReasonTooLong = "field too long"
	// ReasonProtected: the ban covers loopback or LAPI's own address, which
	// would cut us off from LAPI for good (its delete could never arrive,
	// and the journal would restore the ban at every start).
	ReasonProtected      = "protected address"
	simulationTypePrefix = "simulation:"
)

// NormalizeOptions are the filters of the upstream configuration that act on
// single decisions.
type NormalizeOptions struct {
	// Types is supported_decisions_types. Nil or empty means {"ban"}, the
	// upstream default: a firewall must not enforce captcha decisions by
	// accident because a key was left out of the configuration.
	Types map[string]bool
	// DisableIPv4 and DisableIPv6 reject new decisions of that family.
	DisableIPv4, DisableIPv6 bool
	// Protected are addresses no ban may cover, in addition to loopback
	// (127.0.0.0/8, ::1), which is always protected: LAPI's addresses
	// (LAPIPrefixes). A new decision whose prefix overlaps one of them is
	// rejected with ReasonProtected.
	Protected []netip.Prefix
	// OnNew, when set, is called with each new decision as it is accepted
	// (the backend's preload), its Until as the batch will hold it.
	OnNew func(p netip.Prefix, until time.Time, origin string)
}

// maxFieldLen bounds each string field of a decision. LAPI's are short (an
// address, a scenario name, "manual 'ban' from '<machine id>'"); a longer
// one is not a decision we understand, and origin and scenario would be
// stored in the journal.
const maxFieldLen = 1024

// loopback is protected whatever the configuration: a ban on it cuts a
// local LAPI off and breaks the host. The v4-mapped form is listed for
// v6 ranges that are kept as v6 (shorter than /96).
var loopback = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("::ffff:127.0.0.0/104"),
}

// Rejection is one decision that could not be normalized, with the raw
// fields ("" where LAPI sent null) for the log line.
type Rejection struct {
	Value, Scope, Type, Origin string
	// Reason is one of the Reason* constants.
	Reason string
	// Deleted tells whether the decision came from the deleted list.
	Deleted bool
}

// Stats counts the decisions Normalize dropped on purpose, which are not
// errors and so are not Rejections.
type Stats struct {
	// SkippedSimulated counts simulated decisions (Simulated=true or a
	// "simulation:" type): upstream never enforces them.
	SkippedSimulated int
	// SkippedType counts decisions whose type is not in Types; upstream
	// ignores them silently.
	SkippedType int
	// SkippedFamily counts deletes of a disabled family: we never accepted
	// such a decision, so its delete cannot match anything.
	SkippedFamily int
}

// fields is one decision as the rules see it, whichever decoder produced it:
// LAPI's model (addModel) or the streaming decoder's wire struct. Each
// string remembers whether it was present, because the model's nil *string
// (missing or null) and "" are rejected for different reasons. The json tags
// serve the streaming decoder.
type fields struct {
	Duration jsonString `json:"duration"`
	Origin   jsonString `json:"origin"`
	Scenario jsonString `json:"scenario"`
	Scope    jsonString `json:"scope"`
	Type     jsonString `json:"type"`
	Value    jsonString `json:"value"`
	// Simulated: the model's nil and false mean the same to the rules.
	Simulated jsonBool `json:"simulated"`
}

// normalizer carries the per-batch state: options with defaults applied, the
// receive time, the results of each list, and the string interning table (a
// blocklist sends 100k decisions with the same origin and scenario: keep one
// copy).
type normalizer struct {
	opts      NormalizeOptions
	now       time.Time
	strs      map[string]string
	protected []netip.Prefix // loopback and opts.Protected

	// Each list keeps its own rejections and counters so that the result
	// does not depend on the order of the keys in the response (Normalize
	// reports new before deleted; LAPI sends deleted first), and so that a
	// repeated key replaces the earlier list as encoding/json does.
	lists   [2]listResult
	deleted bool // the list being filled: lists[1] when true
	// news becomes the batch's Packed: nil while the new list had no
	// elements, so that a nil list and an empty one differ as in
	// encoding/json's decoding of LAPI's model.
	news *journal.DecisionList
	dels chunks.List[packed]
	// delsStarted: the deleted list had elements, so its slice is non-nil
	// even if all were dropped.
	delsStarted bool

	lastOrigin originMemo
	lastType   typeMemo
	metas      intern.Table[meta]
}

// packed is a deleted key as the list holds it until the response ends:
// 24 bytes without pointers, where journal.Key is 64 with two. The GC does
// not scan the list, and the batch's slice, allocated at its exact length
// once the list is complete, is the only full-size copy. (New decisions
// go to a journal.DecisionList, the batch's own compact form.)
type packed struct {
	addr [16]byte // the prefix's address, As16
	meta uint32   // index in normalizer.metas
	bits uint8
	is4  bool
}

// meta holds the strings a key shares with many others.
type meta struct{ typ, scope string }

func (n *normalizer) pack(p netip.Prefix, m meta) packed {
	id := n.metas.ID(m)
	a := p.Addr()
	return packed{addr: a.As16(), meta: id, bits: uint8(p.Bits()), is4: a.Is4()}
}

func (p packed) prefix() netip.Prefix {
	a := netip.AddrFrom16(p.addr)
	if p.is4 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(p.bits))
}

type listResult struct {
	rej   []Rejection
	stats Stats
}

func newNormalizer(opts NormalizeOptions) *normalizer {
	n := &normalizer{opts: opts, strs: make(map[string]string)}
	// Types match case-insensitively, as upstream lower-cases a decision's
	// type before looking it up.
	n.opts.Types = map[string]bool{}
	for t, ok := range opts.Types {
		if ok {
			n.opts.Types[strings.ToLower(t)] = true
		}
	}
	if len(n.opts.Types) == 0 {
		n.opts.Types["ban"] = true
	}
	n.protected = append(append(n.protected, loopback...), opts.Protected...)
	return n
}

// startList (re)starts the new or deleted list, dropping what an earlier
// list under the same key produced; sizeHint > 0 is the exact size when the
// caller knows it.
func (n *normalizer) startList(deleted bool, sizeHint int) {
	n.deleted = deleted
	if deleted {
		n.dels = chunks.Make[packed](sizeHint)
		n.delsStarted = sizeHint > 0
		n.lists[1] = listResult{}
	} else {
		n.news = nil
		if sizeHint > 0 {
			n.news = journal.NewDecisionList(n.now, sizeHint)
		}
		n.lists[0] = listResult{}
	}
}

// listStarted marks the current list as non-empty when the decoder does
// not know its size: Normalize returns a non-nil slice for a list that had
// elements, even if all were dropped.
func (n *normalizer) listStarted() {
	if n.deleted {
		n.delsStarted = true
	} else if n.news == nil {
		n.news = journal.NewDecisionList(n.now, 0)
	}
}

func (n *normalizer) list() *listResult {
	if n.deleted {
		return &n.lists[1]
	}
	return &n.lists[0]
}

// add normalizes one decision of the current list into the batch; f == nil
// is a null list element.
func (n *normalizer) add(f *fields) {
	if !n.deleted {
		if reason := n.addNew(f); reason != "" {
			n.reject(f, reason)
		}
		return
	}
	key, reason, keep := n.deletedKey(f)
	if reason != "" {
		n.reject(f, reason)
	} else if keep {
		n.dels.Add(key)
	}
}

func (n *normalizer) reject(f *fields, reason string) {
	l := n.list()
	l.rej = append(l.rej, rejection(f, reason, n.deleted))
}

// result returns the batch, new-list rejections before deleted-list ones,
// and the summed counters.
func (n *normalizer) result() (journal.Batch, []Rejection, Stats) {
	rej := append(n.lists[0].rej, n.lists[1].rej...)
	s0, s1 := n.lists[0].stats, n.lists[1].stats
	b := journal.Batch{Packed: n.news, Deleted: n.deletedSlice()}
	b.Deleted = deletedBeforeNew(b, b.Deleted)
	return b, rej, Stats{
		SkippedSimulated: s0.SkippedSimulated + s1.SkippedSimulated,
		SkippedType:      s0.SkippedType + s1.SkippedType,
		SkippedFamily:    s0.SkippedFamily + s1.SkippedFamily,
	}
}

// deletedSlice unpacks the deleted list.
func (n *normalizer) deletedSlice() []journal.Key {
	if !n.delsStarted && n.dels.Len() == 0 {
		return nil
	}
	out := make([]journal.Key, 0, n.dels.Len())
	for p := range n.dels.All() {
		m := &n.metas.Values[p.meta]
		out = append(out, journal.Key{Scope: m.scope, Prefix: p.prefix(), Type: m.typ})
	}
	return out
}

// deletedBeforeNew drops from del the keys that b's new decisions add back:
// upstream applies a delta's deleted list before its new list, so a
// decision in both stays banned, while the journal applies a batch's new
// decisions first.
func deletedBeforeNew(b journal.Batch, del []journal.Key) []journal.Key {
	if b.NewLen() == 0 || len(del) == 0 {
		return del
	}
	dels := make(map[journal.Key]bool, len(del))
	for _, k := range del {
		dels[k] = false
	}
	readded := 0
	for _, d := range b.AllNew() {
		if seen, ok := dels[d.Key()]; ok && !seen {
			dels[d.Key()] = true
			readded++
		}
	}
	if readded == 0 {
		return del
	}
	out := make([]journal.Key, 0, len(del))
	for _, k := range del {
		if !dels[k] {
			out = append(out, k)
		}
	}
	return out
}

func (n *normalizer) intern(s string) string {
	if v, ok := n.strs[s]; ok {
		return v
	}
	n.strs[s] = s
	return s
}

// common validates what new and deleted decisions share: identity fields and
// the type filters. keep=false with reason "" means skipped on purpose.
func (n *normalizer) common(d *fields) (key journal.Key, reason string, keep bool) {
	switch {
	case d == nil:
		return key, ReasonNil, false
	case !d.Value.ok:
		return key, ReasonMissingValue, false
	case !d.Scope.ok:
		return key, ReasonMissingScope, false
	case !d.Type.ok:
		return key, ReasonMissingType, false
	case tooLong(d):
		return key, ReasonTooLong, false
	}
	t := n.typeOf(d.Type.s)
	if bool(d.Simulated) || strings.HasPrefix(t.typ, simulationTypePrefix) {
		n.list().stats.SkippedSimulated++
		return key, "", false
	}
	if !t.supported {
		n.list().stats.SkippedType++
		return key, "", false
	}
	var p netip.Prefix
	switch {
	case strings.EqualFold(d.Scope.s, journal.ScopeIP):
		key.Scope = journal.ScopeIP
		if p, reason = parseIP(&d.Value); reason != "" {
			return key, reason, false
		}
	case strings.EqualFold(d.Scope.s, journal.ScopeRange):
		key.Scope = journal.ScopeRange
		if p, reason = parseRange(d.Value.view()); reason != "" {
			return key, reason, false
		}
	default:
		return key, ReasonBadScope, false
	}
	key.Prefix = p
	key.Type = t.typ
	return key, "", true
}

// typeMemo is typeOf's last answer.
type typeMemo struct {
	raw, typ       string
	supported, set bool
}

// typeOf returns the interned lower-case type and whether it is in Types,
// remembering the last answer: a blocklist's decisions all have one type.
func (n *normalizer) typeOf(raw string) typeMemo {
	if l := n.lastType; l.set && l.raw == raw {
		return l
	}
	typ := n.intern(strings.ToLower(raw)) // no copy unless it has upper case
	n.lastType = typeMemo{raw: raw, typ: typ, supported: n.opts.Types[typ], set: true}
	return n.lastType
}

func tooLong(d *fields) bool {
	for _, s := range [...]*jsonString{&d.Value, &d.Scope, &d.Type, &d.Origin, &d.Scenario, &d.Duration} {
		if len(s.s)+len(s.b) > maxFieldLen {
			return true
		}
	}
	return false
}

// covers reports whether p overlaps a protected prefix: a range that holds
// a protected address, or an address inside a protected range.
func (n *normalizer) covers(p netip.Prefix) bool {
	for _, q := range n.protected {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

// addNew adds d to the new list, or returns why it is rejected ("" also
// when it is skipped on purpose). Its Until is the receive time + its
// duration: now is set before the first byte is decoded.
func (n *normalizer) addNew(d *fields) string {
	key, reason, keep := n.common(d)
	if reason != "" || !keep {
		return reason
	}
	if reason := n.familyReason(key.Prefix); reason != "" {
		return reason
	}
	if n.covers(key.Prefix) {
		return ReasonProtected
	}
	switch {
	case !d.Origin.ok || d.Origin.s == "":
		// the origin picks the kernel set: without it there is nowhere to put the ban
		return ReasonMissingOrigin
	case !d.Scenario.ok:
		return ReasonMissingScen
	case !d.Duration.ok:
		return ReasonMissingDur
	}
	dur, err := parseDuration(&d.Duration)
	if err != nil {
		return ReasonBadDuration
	}
	if dur <= 0 {
		return ReasonExpired
	}
	origin, scenario := n.originOf(d.Origin.s, d.Scenario.s)
	n.news.Add(key.Prefix, dur, origin, scenario, key.Type, key.Scope)
	if n.opts.OnNew != nil {
		n.opts.OnNew(key.Prefix, n.now.Add(dur), origin)
	}
	return ""
}

// originOf returns the interned originKey and scenario, remembering the
// last pair: a blocklist sends its whole list with one origin and
// scenario, and building "lists:NAME" anew for each of a million decisions
// is most of their cost.
func (n *normalizer) originOf(origin, scenario string) (key, interned string) {
	if l := &n.lastOrigin; l.key != "" && l.origin == origin && l.scenario == scenario {
		return l.key, l.scenario
	}
	scenario = n.intern(scenario)
	k := n.intern(originKey(origin, scenario))
	n.lastOrigin = originMemo{origin, scenario, k}
	return k, scenario
}

// originMemo is originOf's last answer.
type originMemo struct{ origin, scenario, key string }

// originKey names the kernel set a decision goes to. Blocklists all share
// the origin "lists"; like upstream, each list gets a set of its own
// ("lists:NAME"), so one list's size, counters and metrics stand apart.
func originKey(origin, scenario string) string {
	if origin != "lists" || scenario == "" {
		return origin
	}
	return "lists:" + strings.TrimPrefix(scenario, "lists:")
}

// deletedKey ignores duration (negative for deletes), origin and scenario:
// deletes are per (scope, value, type).
func (n *normalizer) deletedKey(d *fields) (packed, string, bool) {
	key, reason, keep := n.common(d)
	if reason != "" || !keep {
		return packed{}, reason, false
	}
	if n.familyReason(key.Prefix) != "" {
		n.list().stats.SkippedFamily++
		return packed{}, "", false
	}
	return n.pack(key.Prefix, meta{typ: key.Type, scope: key.Scope}), "", true
}

func (n *normalizer) familyReason(p netip.Prefix) string {
	switch {
	case p.Addr().Is4() && n.opts.DisableIPv4:
		return ReasonIPv4Disabled
	case p.Addr().Is6() && n.opts.DisableIPv6:
		return ReasonIPv6Disabled
	}
	return ""
}

// parseIP accepts an address (v4-mapped v6 is unmapped, zones are refused)
// or a full-length prefix such as "192.0.2.1/32", which some tools send for
// the Ip scope.
func parseIP(v *jsonString) (netip.Prefix, string) {
	if a, ok := dottedQuad(v.b); ok {
		return netip.PrefixFrom(a, 32), ""
	}
	s := v.view()
	a, err := netip.ParseAddr(s)
	if err != nil {
		p, perr := netip.ParsePrefix(s)
		if perr != nil || p.Bits() != p.Addr().BitLen() {
			return netip.Prefix{}, ReasonBadIP
		}
		a = p.Addr()
	}
	if a.Zone() != "" {
		return netip.Prefix{}, ReasonBadIP
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), ""
}

// parseRange accepts a CIDR, masks it, and unmaps a v4-mapped v6 range that
// lies inside ::ffff:0:0/96. A /0 would ban a whole family: refused.
func parseRange(s string) (netip.Prefix, string) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, ReasonBadRange
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	if p.Bits() == 0 {
		return netip.Prefix{}, ReasonTooWide
	}
	return p.Masked(), ""
}

// dottedQuad parses b, a value the element parser left in the window, if
// it is an IPv4 address in the form netip.ParseAddr accepts (four decimal
// fields of at most 255 without leading zeros), without making a string.
// Anything else is left to netip.
func dottedQuad(b []byte) (netip.Addr, bool) {
	var ip [4]byte
	i := 0
	for f := range ip {
		if f > 0 {
			if i >= len(b) || b[i] != '.' {
				return netip.Addr{}, false
			}
			i++
		}
		v, j, ok := decimal(b, i, 3)
		if !ok || v > 255 || b[i] == '0' && j-i > 1 {
			return netip.Addr{}, false
		}
		ip[f], i = byte(v), j
	}
	return netip.AddrFrom4(ip), i == len(b)
}

// parseDuration parses a duration left in the window (b) in the form
// time.Duration.String gives a decision's remaining time without making a
// string, and anything else with time.ParseDuration.
func parseDuration(v *jsonString) (time.Duration, error) {
	if d, ok := durationFast(v.b); ok {
		return d, nil
	}
	return time.ParseDuration(v.text())
}

// durationFast parses [D{1,6}h][D{1,2}m]D{1,2}[.D{1,9}]s. Within these
// bounds the sum cannot overflow and the fraction is whole nanoseconds,
// so the value is exactly time.ParseDuration's, without its unit-table
// lookups.
func durationFast(b []byte) (time.Duration, bool) {
	var d time.Duration
	i := 0
	if v, j, ok := decimal(b, i, 6); ok && j < len(b) && b[j] == 'h' {
		d, i = time.Duration(v)*time.Hour, j+1
	}
	if v, j, ok := decimal(b, i, 2); ok && j < len(b) && b[j] == 'm' {
		d, i = d+time.Duration(v)*time.Minute, j+1
	}
	v, i, ok := decimal(b, i, 2)
	if !ok {
		return 0, false
	}
	d += time.Duration(v) * time.Second
	if i < len(b) && b[i] == '.' {
		f, j, ok := decimal(b, i+1, 9)
		if !ok {
			return 0, false
		}
		for k := j - (i + 1); k < 9; k++ {
			f *= 10
		}
		d, i = d+time.Duration(f), j
	}
	return d, i == len(b)-1 && b[i] == 's'
}

// decimal reads the digits at b[i], which must be 1 to most, and returns
// their value and the index after them.
func decimal(b []byte, i, most int) (int64, int, bool) {
	var v int64
	j := i
	for ; j < len(b) && isDigit(b[j]); j++ {
		v = v*10 + int64(b[j]-'0')
	}
	return v, j, j > i && j-i <= most
}

func rejection(d *fields, reason string, deleted bool) Rejection {
	r := Rejection{Reason: reason, Deleted: deleted}
	if d == nil {
		return r
	}
	r.Value = d.Value.text()
	r.Scope = d.Scope.s
	r.Type = d.Type.s
	r.Origin = d.Origin.s
	return r
}
