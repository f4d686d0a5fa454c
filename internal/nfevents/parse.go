package nfevents

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// nf_tables netlink constants (include/uapi/linux/netfilter/nf_tables.h).
// Only what the monitor reads is named here.
const (
	nlmsgHdrLen  = 16
	nfgenHdrLen  = 4
	nfnlSubsysNF = 10 // NFNL_SUBSYS_NFTABLES

	msgDelTable   = 2  // NFT_MSG_DELTABLE
	msgDelChain   = 5  // NFT_MSG_DELCHAIN
	msgDelRule    = 8  // NFT_MSG_DELRULE
	msgDelSet     = 11 // NFT_MSG_DELSET
	msgDelSetElem = 14 // NFT_MSG_DELSETELEM
	msgNewGen     = 15 // NFT_MSG_NEWGEN

	// The table name is attribute 1 of every object message (NFTA_TABLE_NAME,
	// NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
	// NFTA_SET_ELEM_LIST_TABLE).
	attrTable     = 1
	attrChainName = 3 // NFTA_CHAIN_NAME
	attrRuleChain = 2 // NFTA_RULE_CHAIN
	attrSetName   = 2 // NFTA_SET_NAME, NFTA_SET_ELEM_LIST_SET
	attrElemList  = 3 // NFTA_SET_ELEM_LIST_ELEMENTS
	attrListElem  = 1 // NFTA_LIST_ELEM
	attrElemKey   = 1 // NFTA_SET_ELEM_KEY
	attrElemFlags = 3 // NFTA_SET_ELEM_FLAGS
	attrElemEnd   = 10
	attrDataValue = 1 // NFTA_DATA_VALUE
	attrGenPID    = 2 // NFTA_GEN_PROC_PID

	elemIntervalEnd = 1 // NFT_SET_ELEM_INTERVAL_END

	nlaTypeMask = 0x3fff // strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

	familyInet = 1  // NFPROTO_INET
	familyIPv4 = 2  // NFPROTO_IPV4
	familyIPv6 = 10 // NFPROTO_IPV6
)

var errMalformed = errors.New("malformed nf_tables message")

// attrs splits an attribute stream into type → value (first wins), or
// returns all values of one type with many.
type attr struct {
	typ  uint16
	data []byte
}

func parseAttrs(b []byte) ([]attr, error) {
	var out []attr
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			return out, fmt.Errorf("%w: attribute length %d, %d bytes left", errMalformed, l, len(b))
		}
		out = append(out, attr{typ: binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask, data: b[4:l]})
		l = (l + 3) &^ 3
		if l >= len(b) {
			break
		}
		b = b[l:]
	}
	return out, nil
}

func find(as []attr, typ uint16) []byte {
	for _, a := range as {
		if a.typ == typ {
			return a.data
		}
	}
	return nil
}

func str(as []attr, typ uint16) string {
	b := find(as, typ)
	if i := slices.Index(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// message is one nf_tables netlink message, reduced to what the filter
// needs.
type message struct {
	typ    uint8 // NFT_MSG_*
	family uint8
	table  string
	chain  string // DELCHAIN, DELRULE
	set    string // DELSET, DELSETELEM
	elems  []elem // DELSETELEM
	pid    uint32 // NEWGEN: the committing process (thread) id
}

// elem is one set element as the kernel announces it.
type elem struct {
	key, keyEnd []byte
	end         bool // NFT_SET_ELEM_INTERVAL_END: key is the exclusive end of a range
}

// split walks a datagram from the socket and calls fn for each nf_tables
// message of a type the monitor reads; other messages are skipped on their
// header alone, so a flood of additions (our own 100k replay) costs little.
// While skipElems reports true, deleted elements are not decoded: a 100k
// flush by another program is past the listing cap after a few thousand,
// and decoding the rest delayed its repair.
func split(b []byte, skipElems func() bool, fn func(message)) error {
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b))
		if l < nlmsgHdrLen || l > len(b) {
			return fmt.Errorf("%w: message length %d, %d bytes left", errMalformed, l, len(b))
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		if typ>>8 == nfnlSubsysNF && wanted(uint8(typ)) && l >= nlmsgHdrLen+nfgenHdrLen {
			m, err := decode(uint8(typ), b[nlmsgHdrLen:l], skipElems())
			if err != nil {
				return err
			}
			fn(m)
		}
		l = (l + 3) &^ 3
		if l >= len(b) {
			break
		}
		b = b[l:]
	}
	return nil
}

func wanted(t uint8) bool {
	switch t {
	case msgDelTable, msgDelChain, msgDelRule, msgDelSet, msgDelSetElem, msgNewGen:
		return true
	}
	return false
}

// decode reads one message's payload (nfgenmsg + attributes), without the
// deleted elements when skipElems is set.
func decode(typ uint8, p []byte, skipElems bool) (message, error) {
	m := message{typ: typ, family: p[0]}
	as, err := parseAttrs(p[nfgenHdrLen:])
	if err != nil {
		return m, err
	}
	switch typ {
	case msgNewGen:
		if v := find(as, attrGenPID); len(v) == 4 {
			m.pid = binary.BigEndian.Uint32(v)
		}
		return m, nil
	case msgDelChain:
		m.chain = str(as, attrChainName)
	case msgDelRule:
		m.chain = str(as, attrRuleChain)
	case msgDelSet:
		m.set = str(as, attrSetName)
	case msgDelSetElem:
		m.set = str(as, attrSetName)
		if skipElems {
			break
		}
		if m.elems, err = decodeElems(find(as, attrElemList)); err != nil {
			return m, err
		}
	}
	m.table = str(as, attrTable)
	return m, nil
}

func decodeElems(b []byte) ([]elem, error) {
	list, err := parseAttrs(b)
	if err != nil {
		return nil, err
	}
	var out []elem
	for _, le := range list {
		if le.typ != attrListElem {
			continue
		}
		as, err := parseAttrs(le.data)
		if err != nil {
			return nil, err
		}
		// Keys are copied: the receive buffer is reused for the next
		// datagram while a transaction's elements wait for its commit
		// marker, which the kernel sends in a datagram of its own.
		var e elem
		if k, err := dataValue(find(as, attrElemKey)); err == nil {
			e.key = bytes.Clone(k)
		} else {
			return nil, err
		}
		if k := find(as, attrElemEnd); k != nil {
			k, err := dataValue(k)
			if err != nil {
				return nil, err
			}
			e.keyEnd = bytes.Clone(k)
		}
		if f := find(as, attrElemFlags); len(f) == 4 {
			e.end = binary.BigEndian.Uint32(f)&elemIntervalEnd != 0
		}
		out = append(out, e)
	}
	return out, nil
}

func dataValue(b []byte) ([]byte, error) {
	as, err := parseAttrs(b)
	if err != nil {
		return nil, err
	}
	return find(as, attrDataValue), nil
}

// prefixes turns the elements deleted from one set in one transaction into
// prefixes. Three shapes exist: single addresses (a plain set), a start and
// an exclusive end element per range (an interval set), or a key and an
// inclusive key end in one element. ok is false when some element does not
// fit a prefix (a range that is not a CIDR block, a lone range start):
// the caller must then compare the set member by member.
func prefixes(es []elem) (out []netip.Prefix, ok bool) {
	ok = true
	type bound struct {
		a   netip.Addr
		end bool
	}
	var bounds []bound
	for _, e := range es {
		a, good := netip.AddrFromSlice(e.key)
		if !good {
			ok = false
			continue
		}
		switch {
		case e.keyEnd != nil:
			z, good := netip.AddrFromSlice(e.keyEnd)
			p, isPrefix := rangePrefix(a, z)
			if !good || !isPrefix {
				ok = false
				continue
			}
			out = append(out, p)
		default:
			bounds = append(bounds, bound{a, e.end})
		}
	}
	interval := slices.ContainsFunc(bounds, func(b bound) bool { return b.end })
	if !interval {
		for _, b := range bounds {
			out = append(out, netip.PrefixFrom(b.a, b.a.BitLen()))
		}
		return out, ok
	}
	slices.SortFunc(bounds, func(x, y bound) int { return x.a.Compare(y.a) })
	for i := 0; i < len(bounds); i++ {
		b := bounds[i]
		if b.end {
			if b.a.IsUnspecified() {
				continue // the kernel's placeholder end of the lowest gap
			}
			ok = false // an end without its start
			continue
		}
		var last netip.Addr
		if i+1 < len(bounds) && bounds[i+1].end {
			last = bounds[i+1].a.Prev()
			i++
		} else {
			// A range reaching the top of the address space has no end
			// element.
			last = maxAddr(b.a)
		}
		p, isPrefix := rangePrefix(b.a, last)
		if !isPrefix {
			ok = false
			continue
		}
		out = append(out, p)
	}
	return out, ok
}

func maxAddr(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	var b [16]byte
	for i := range b {
		b[i] = 0xff
	}
	return netip.AddrFrom16(b)
}

// rangePrefix returns the prefix covering exactly first..last, if any.
func rangePrefix(first, last netip.Addr) (netip.Prefix, bool) {
	if first.BitLen() != last.BitLen() || last.Less(first) {
		return netip.Prefix{}, false
	}
	for bits := 0; bits <= first.BitLen(); bits++ {
		p := netip.PrefixFrom(first, bits)
		if p.Masked().Addr() != first {
			continue
		}
		if lastOf(p) == last {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func lastOf(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// filter decides which deletions touch our objects.
type filter struct {
	tables map[backend.NFTTable]bool // ours entirely
	chains map[backend.NFTChain]bool // ours, in shared tables
	hooks  map[backend.NFTChain]bool // hold our jumps
	shared map[backend.NFTTable]bool // tables holding our chains or hooks
}

func newFilter(o backend.NFTObjects) *filter {
	f := &filter{tables: map[backend.NFTTable]bool{}, chains: map[backend.NFTChain]bool{},
		hooks: map[backend.NFTChain]bool{}, shared: map[backend.NFTTable]bool{}}
	for _, t := range o.Tables {
		f.tables[t] = true
	}
	for _, c := range o.Chains {
		f.chains[c] = true
		f.shared[backend.NFTTable{Family: c.Family, Name: c.Table}] = true
	}
	for _, c := range o.Hooks {
		f.hooks[c] = true
		f.shared[backend.NFTTable{Family: c.Family, Name: c.Table}] = true
	}
	return f
}

// empty reports whether there is nothing to watch.
func (f *filter) empty() bool { return len(f.tables) == 0 && len(f.shared) == 0 }

// object returns a description of the deleted object when it is ours (or,
// for a rule in a hook chain, may have been), "" for noise.
func (f *filter) object(m message) string {
	t := backend.NFTTable{Family: m.family, Name: m.table}
	c := backend.NFTChain{Family: m.family, Table: m.table, Chain: m.chain}
	fam := familyName(m.family)
	switch m.typ {
	case msgDelTable:
		if f.tables[t] || f.shared[t] {
			return fmt.Sprintf("table %s %s", fam, m.table)
		}
	case msgDelChain:
		if f.tables[t] || f.chains[c] || f.hooks[c] {
			return fmt.Sprintf("chain %s %s %s", fam, m.table, m.chain)
		}
	case msgDelRule:
		if f.tables[t] || f.chains[c] {
			return fmt.Sprintf("rule in %s %s %s", fam, m.table, m.chain)
		}
		if f.hooks[c] {
			return fmt.Sprintf("rule in hook chain %s %s %s", fam, m.table, m.chain)
		}
	case msgDelSet:
		if f.tables[t] {
			return fmt.Sprintf("set %s %s %s", fam, m.table, m.set)
		}
	}
	return ""
}

// holdsSets reports whether a deletion ours (object non-empty) took set
// members with it: one of our sets, or a table holding them. A table we
// only share (iptables-nft's filter) holds no set of ours.
func (f *filter) holdsSets(m message) bool {
	t := backend.NFTTable{Family: m.family, Name: m.table}
	return (m.typ == msgDelSet || m.typ == msgDelTable) && f.tables[t]
}

// ownsElems reports whether a DELSETELEM message is about one of our sets.
func (f *filter) ownsElems(m message) bool {
	return m.typ == msgDelSetElem && f.tables[backend.NFTTable{Family: m.family, Name: m.table}]
}

func familyName(f uint8) string {
	switch f {
	case familyIPv4:
		return "ip"
	case familyIPv6:
		return "ip6"
	case familyInet:
		return "inet"
	}
	return fmt.Sprintf("family-%d", f)
}
