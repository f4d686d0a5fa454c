// Package admin answers the operator's questions about a running (or
// stopped) bouncer — what is in the journal, why is this address blocked,
// is the file sound, does the kernel match — without ever changing the
// journal or the kernel.
//
// The daemon serves a Service on a unix socket beside the journal (Serve);
// the CLI asks it through a Client, and when no daemon runs it builds the
// same Service on the journal file opened read-only (NewOfflineService).
// Both paths return the same structs, so output does not depend on where
// the answer came from.
package admin

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// Entry is one active decision as the CLI shows it.
type Entry struct {
	// Value is the decision's value as LAPI spells it: an address for scope
	// ip, a CIDR for a range.
	Value    string       `json:"value"`
	Prefix   netip.Prefix `json:"prefix"`
	Origin   string       `json:"origin"`
	Scenario string       `json:"scenario"`
	Type     string       `json:"type"`
	Scope    string       `json:"scope"`
	Until    time.Time    `json:"until"`
	// Since is when the bouncer first received the decision; absent when
	// unknown (journaled by a version that did not record it).
	Since time.Time `json:"since,omitzero"`
}

// OriginCount is how many active decisions one origin holds per family.
type OriginCount struct {
	Origin string `json:"origin"`
	// Index is the origin's stable index, which names its kernel sets.
	Index int `json:"index"`
	IPv4  int `json:"ipv4"`
	IPv6  int `json:"ipv6"`
}

// Stats summarizes the journal.
type Stats struct {
	Path string `json:"path"`
	// FileSize is the file's size in bytes, -1 when it could not be read.
	FileSize            int64 `json:"file_size"`
	EventsSinceSnapshot int   `json:"events_since_snapshot"`
	// Active counts decisions still in force at Now.
	Active      int       `json:"active"`
	OldestUntil time.Time `json:"oldest_until,omitzero"`
	NewestUntil time.Time `json:"newest_until,omitzero"`
	// ByOrigin is sorted by origin index.
	ByOrigin []OriginCount `json:"by_origin"`
	Now      time.Time     `json:"now"`
}

// Show answers "why is this blocked": every active decision whose prefix
// contains the target address, or overlaps the target range.
type Show struct {
	Target  netip.Prefix `json:"target"`
	Matches []Entry      `json:"matches"`
	Now     time.Time    `json:"now"`
}

// Blocked reports whether any active decision covers the target.
func (s Show) Blocked() bool { return len(s.Matches) > 0 }

// DriftItem is one finding of Check.
type DriftItem struct {
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

// Check is one comparison of the live kernel with the journal.
type Check struct {
	Clean bool        `json:"clean"`
	Drift []DriftItem `json:"drift"`
}

// entryOf converts a journal decision.
func entryOf(d journal.Decision, since time.Time) Entry {
	v := d.Prefix.String()
	if d.Scope == journal.ScopeIP && d.Prefix.IsSingleIP() {
		v = d.Prefix.Addr().String()
	}
	return Entry{
		Value: v, Prefix: d.Prefix, Origin: d.Origin, Scenario: d.Scenario,
		Type: d.Type, Scope: d.Scope, Until: d.Until, Since: since,
	}
}

// sortEntries orders by address family, address, prefix length, then
// scope, type and origin: a stable listing that diffs well.
func sortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int {
		return cmp.Or(
			a.Prefix.Addr().Compare(b.Prefix.Addr()),
			cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()),
			cmp.Compare(a.Scope, b.Scope),
			cmp.Compare(a.Type, b.Type),
			cmp.Compare(a.Origin, b.Origin),
		)
	})
}

// ListOf returns the decisions of j in force at now, sorted. The caller
// makes the read consistent (inside the enforcer loop, or with no daemon).
func ListOf(j *journal.Journal, now time.Time) []Entry {
	out := make([]Entry, 0, j.View().Len())
	j.View().EachSince(func(d journal.Decision, since time.Time) bool {
		if d.Until.After(now) {
			out = append(out, entryOf(d, since))
		}
		return true
	})
	sortEntries(out)
	return out
}

// ShowOf returns the decisions of j in force at now whose prefix overlaps
// target: for a single address, those containing it.
func ShowOf(j *journal.Journal, target netip.Prefix, now time.Time) Show {
	target = Normalize(target)
	s := Show{Target: target, Matches: []Entry{}, Now: now}
	j.View().EachSince(func(d journal.Decision, since time.Time) bool {
		if d.Until.After(now) && d.Prefix.Overlaps(target) {
			s.Matches = append(s.Matches, entryOf(d, since))
		}
		return true
	})
	sortEntries(s.Matches)
	return s
}

// Normalize masks p and unmaps an IPv4-mapped IPv6 address, the way the
// journal stores prefixes, so that ::ffff:192.0.2.10 finds 192.0.2.10.
func Normalize(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	if a.Is4In6() {
		bits := p.Bits() - 96
		if bits < 0 {
			bits = 0
		}
		p = netip.PrefixFrom(a.Unmap(), bits)
	}
	return p.Masked()
}

// ParseTarget parses an address or a CIDR as `journal show` takes it.
func ParseTarget(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			a = a.WithZone("")
		}
		return Normalize(netip.PrefixFrom(a, a.BitLen())), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return Normalize(p), nil
}

// StatsOf summarizes j at now.
func StatsOf(j *journal.Journal, now time.Time) Stats {
	js := j.Stats()
	st := Stats{
		Path: j.Path(), FileSize: js.FileSize, EventsSinceSnapshot: js.EventsSinceSnapshot,
		ByOrigin: []OriginCount{}, Now: now,
	}
	idx := j.Origins()
	per := map[string]*OriginCount{}
	j.View().Each(func(d journal.Decision) bool {
		if !d.Until.After(now) {
			return true
		}
		st.Active++
		if st.OldestUntil.IsZero() || d.Until.Before(st.OldestUntil) {
			st.OldestUntil = d.Until
		}
		if d.Until.After(st.NewestUntil) {
			st.NewestUntil = d.Until
		}
		c := per[d.Origin]
		if c == nil {
			c = &OriginCount{Origin: d.Origin, Index: idx[d.Origin]}
			per[d.Origin] = c
		}
		if d.Prefix.Addr().Is4() {
			c.IPv4++
		} else {
			c.IPv6++
		}
		return true
	})
	for _, c := range per {
		st.ByOrigin = append(st.ByOrigin, *c)
	}
	slices.SortFunc(st.ByOrigin, func(a, b OriginCount) int {
		return cmp.Or(cmp.Compare(a.Index, b.Index), cmp.Compare(a.Origin, b.Origin))
	})
	return st
}
