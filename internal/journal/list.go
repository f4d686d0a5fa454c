package journal

import (
	"iter"
	"net/netip"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/chunks"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/intern"
)

// DecisionList holds new decisions in compact form: a record of 32 bytes
// without pointers each, where a Decision is 120 with five, and the strings
// once per distinct (origin, scenario, type, scope), which a blocklist's
// million decisions share. LAPI's pull builds one so that a startup batch
// reaches the view without ever being a []Decision (120 MB at a million,
// the peak of a cold start); the GC does not scan the records.
//
// The zero DecisionList is not usable: see NewDecisionList.
type DecisionList struct {
	at    time.Time // each record's Until is at + its ttl
	recs  chunks.List[listRec]
	metas intern.Table[listMeta]
}

// listRec keeps a prefix exactly, even an invalid one: validation is the
// journal's, and must fail on the list as on the same []Decision.
type listRec struct {
	addr [16]byte
	ttl  time.Duration
	meta uint32
	bits uint8 // 255: Bits() == -1, an invalid prefix
	fam  uint8 // 0: zero Addr, 4 or 6
}

type listMeta struct{ origin, scenario, typ, scope string }

// NewDecisionList returns an empty list of decisions received at at;
// sizeHint > 0 is the exact number that will be added.
func NewDecisionList(at time.Time, sizeHint int) *DecisionList {
	return &DecisionList{at: at, recs: chunks.Make[listRec](sizeHint)}
}

// Add appends the decision on p that expires ttl after the list's receive
// time.
func (l *DecisionList) Add(p netip.Prefix, ttl time.Duration, origin, scenario, typ, scope string) {
	id := l.metas.ID(listMeta{origin, scenario, typ, scope})
	a := p.Addr()
	var fam uint8
	switch {
	case a.Is4():
		fam = 4
	case a.Is6():
		fam = 6
	}
	l.recs.Add(listRec{addr: a.As16(), ttl: ttl, meta: id, bits: uint8(p.Bits()), fam: fam})
}

// Len is the number of decisions in l; a nil list is empty.
func (l *DecisionList) Len() int {
	if l == nil {
		return 0
	}
	return l.recs.Len()
}

// All yields l's decisions in order; a nil list yields none. Their strings
// are the list's shared copies.
func (l *DecisionList) All() iter.Seq[Decision] {
	return func(yield func(Decision) bool) {
		if l == nil {
			return
		}
		for r := range l.recs.All() {
			m := &l.metas.Values[r.meta]
			d := Decision{
				Prefix: r.prefix(), Until: l.at.Add(r.ttl),
				Origin: m.origin, Scenario: m.scenario, Type: m.typ, Scope: m.scope,
			}
			if !yield(d) {
				return
			}
		}
	}
}

func (r *listRec) prefix() netip.Prefix {
	var a netip.Addr
	switch r.fam {
	case 4:
		a = netip.AddrFrom4([4]byte(r.addr[12:]))
	case 6:
		a = netip.AddrFrom16(r.addr)
	}
	return netip.PrefixFrom(a, int(r.bits))
}
