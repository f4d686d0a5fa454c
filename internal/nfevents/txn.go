package nfevents

import (
	"net/netip"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// txn gathers what one nf_tables transaction deleted of ours. The kernel
// announces a commit's changes one message per object, then a NEWGEN
// message naming the committing process: only then do we know whether the
// changes were ours.
type txn struct {
	f       *filter
	objects []string
	elems   map[string][]elem // set name → deleted elements
	n       int               // elements gathered, capped
	over    bool              // too many elements to keep
	gone    bool              // one of our sets, or its table, deleted
}

func newTxn(f *filter) *txn { return &txn{f: f} }

// add takes one message of the transaction in progress.
func (t *txn) add(m message) {
	if t.f.ownsElems(m) {
		if t.over || t.n+len(m.elems) > backend.MaxChangeElements {
			// The deep verify will compare every member: the list is moot.
			t.over, t.elems = true, nil
			return
		}
		if t.elems == nil {
			t.elems = map[string][]elem{}
		}
		t.elems[m.set] = append(t.elems[m.set], m.elems...)
		t.n += len(m.elems)
		return
	}
	o := t.f.object(m)
	if o == "" {
		return
	}
	if t.f.holdsSets(m) {
		t.gone = true
	}
	if len(t.objects) < backend.MaxChangeObjects {
		t.objects = append(t.objects, o)
	}
}

// full reports whether the transaction stopped listing elements: those
// that follow need not be decoded.
func (t *txn) full() bool { return t.over }

// relevant reports whether anything of ours was deleted so far.
func (t *txn) relevant() bool { return len(t.objects) > 0 || t.n > 0 || t.over || t.gone }

// change turns the transaction into a Change and starts a new one. Sets
// the transaction emptied wholesale (too many elements to list, or the set
// itself deleted) ask for a refill by replay rather than a member-by-member
// comparison; the caller publishes it only for another program's commit
// (handle drops ours, overrun clears it).
func (t *txn) change() backend.Change {
	c := backend.Change{Objects: t.objects, Refill: t.over || t.gone}
	if t.over {
		c.Objects = append(c.Objects, "more set elements than can be tracked one by one")
	}
	for set, es := range t.elems {
		ps, ok := prefixes(es)
		if !ok {
			c.Deep = true
			c.Objects = append(c.Objects, "set elements of "+set+" that are not single prefixes")
		}
		if len(ps) > 0 {
			if c.Elements == nil {
				c.Elements = map[string][]netip.Prefix{}
			}
			c.Elements[set] = append(c.Elements[set], ps...)
		}
	}
	t.reset()
	return c
}

func (t *txn) reset() {
	t.objects, t.elems, t.n, t.over, t.gone = nil, nil, 0, false, false
}
