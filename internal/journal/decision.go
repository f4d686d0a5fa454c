package journal

import (
	"iter"
	"net/netip"
	"time"
)

// Scope values as the journal stores them. LAPI spells them "Ip" and "Range"
// (case varies between versions); normalization maps them to these.
const (
	ScopeIP    = "ip"
	ScopeRange = "range"
)

// Decision is one active ban as the bouncer understands it: a masked prefix
// with an absolute expiry. It is the project's own type so that neither the
// journal nor the backends depend on LAPI's API models.
type Decision struct {
	// Prefix is masked (Addr is the network address). Scope "ip" is always
	// a full-length prefix (/32 or /128). IPv4-mapped IPv6 is unmapped.
	Prefix netip.Prefix
	// Until is the absolute expiry: receive time + LAPI's remaining duration.
	Until    time.Time
	Origin   string // crowdsec, cscli, lists, CAPI, ...
	Scenario string
	Type     string // ban, captcha, ... (only supported_decisions_types reach the journal)
	Scope    string // ScopeIP or ScopeRange
}

// Key returns the decision's identity. LAPI publishes one decision per
// (scope, value, type) — the longest — and deletes per value, so that is the
// identity here too; LAPI's ids are not reliable.
func (d Decision) Key() Key { return Key{Scope: d.Scope, Prefix: d.Prefix, Type: d.Type} }

// Key identifies a decision the way LAPI does.
type Key struct {
	Scope  string
	Prefix netip.Prefix
	Type   string
}

// Batch is one unit written to the journal and then to the kernel: what one
// LAPI stream pull returned, after normalization.
type Batch struct {
	// Full marks a startup=true pull: the new decisions are LAPI's whole
	// active set, and anything the view holds that is not among them must
	// go (LAPI hard-deletes some decisions without ever listing them as
	// deleted).
	Full bool
	// New decisions, added or extended; with Packed's, the complete set
	// when Full.
	New []Decision
	// Packed holds more new decisions, after New's, in compact form: LAPI's
	// pull fills it instead of New (see DecisionList). Use NewLen and
	// AllNew to see both.
	Packed *DecisionList
	// Deleted keys. Deleting a key that is not in the view is a no-op
	// (LAPI repeats deletes, and lists long-expired ones at startup).
	Deleted []Key
}

// Len is the number of decisions the batch carries.
func (b Batch) Len() int { return b.NewLen() + len(b.Deleted) }

// NewLen is the number of new decisions, New's and Packed's.
func (b Batch) NewLen() int { return len(b.New) + b.Packed.Len() }

// AllNew yields the new decisions in order, New's then Packed's, each with
// its index among them.
func (b Batch) AllNew() iter.Seq2[int, Decision] {
	return func(yield func(int, Decision) bool) {
		for i, d := range b.New {
			if !yield(i, d) {
				return
			}
		}
		i := len(b.New)
		for d := range b.Packed.All() {
			if !yield(i, d) {
				return
			}
			i++
		}
	}
}
