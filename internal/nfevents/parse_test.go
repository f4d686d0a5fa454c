package nfevents

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// The messages below are built the way the kernel lays them out
// (nf_tables_fill_*_info): nlmsghdr, nfgenmsg, then attributes, nested
// ones flagged NLA_F_NESTED and integers in network order. Each carries the
// `nft`/`iptables` command that makes the kernel send it.

type nla struct {
	typ    uint16
	data   []byte
	nested []nla
}

func (a nla) bytes() []byte {
	data := a.data
	typ := a.typ
	if a.nested != nil {
		data = nil
		for _, n := range a.nested {
			data = append(data, n.bytes()...)
		}
		typ |= 0x8000
	}
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b, uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func cstr(typ uint16, s string) nla { return nla{typ: typ, data: append([]byte(s), 0)} }

func be32(typ uint16, v uint32) nla {
	return nla{typ: typ, data: binary.BigEndian.AppendUint32(nil, v)}
}

func nlmsg(typ uint8, family uint8, attrs ...nla) []byte {
	payload := []byte{family, 0, 0, 0}
	for _, a := range attrs {
		payload = append(payload, a.bytes()...)
	}
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+len(payload))
	binary.NativeEndian.PutUint32(b, uint32(nlmsgHdrLen+len(payload)))
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysNF<<8|uint16(typ))
	return append(b, payload...)
}

func delTable(fam uint8, table string) []byte { return nlmsg(msgDelTable, fam, cstr(1, table)) }

func delChain(fam uint8, table, chain string) []byte {
	return nlmsg(msgDelChain, fam, cstr(1, table), cstr(attrChainName, chain))
}

func delRule(fam uint8, table, chain string) []byte {
	return nlmsg(msgDelRule, fam, cstr(1, table), cstr(attrRuleChain, chain), be32(3, 7) /* handle */)
}

func newRule(fam uint8, table, chain string) []byte {
	return nlmsg(6 /* NFT_MSG_NEWRULE */, fam, cstr(1, table), cstr(attrRuleChain, chain))
}

func delSet(fam uint8, table, set string) []byte {
	return nlmsg(msgDelSet, fam, cstr(1, table), cstr(attrSetName, set))
}

type el struct {
	key, end string
	flagEnd  bool
}

func delElems(fam uint8, table, set string, es ...el) []byte {
	var list []nla
	for _, e := range es {
		key := netip.MustParseAddr(e.key).AsSlice()
		attrs := []nla{{typ: attrElemKey, nested: []nla{{typ: attrDataValue, data: key}}}}
		if e.end != "" {
			attrs = append(attrs, nla{typ: attrElemEnd, nested: []nla{{typ: attrDataValue, data: netip.MustParseAddr(e.end).AsSlice()}}})
		}
		if e.flagEnd {
			attrs = append(attrs, be32(attrElemFlags, elemIntervalEnd))
		}
		list = append(list, nla{typ: attrListElem, nested: attrs})
	}
	return nlmsg(msgDelSetElem, fam, cstr(1, table), cstr(attrSetName, set), nla{typ: attrElemList, nested: list})
}

func newGen(id, pid uint32) []byte {
	return nlmsg(msgNewGen, 0, be32(1, id), be32(attrGenPID, pid), cstr(3, "iptables-nft"))
}

const (
	ourPID   = 100 // a thread of this process
	childPID = 200 // iptables-restore run by the backend
	otherPID = 300 // an administrator's nft
)

// watched is what an nftables backend (a table of its own) and an iptables
// backend on iptables-nft (a chain and hooks in filter) would name.
var watched = backend.NFTObjects{
	Tables: []backend.NFTTable{{Family: familyIPv4, Name: "crowdsec"}, {Family: familyIPv6, Name: "crowdsec6"}},
	Chains: []backend.NFTChain{{Family: familyIPv4, Table: "filter", Chain: "CROWDSEC_CHAIN"}},
	Hooks:  []backend.NFTChain{{Family: familyIPv4, Table: "filter", Chain: "INPUT"}},
	OwnWrite: func(pid uint32) bool {
		return pid == childPID
	},
}

func testMonitor(t *testing.T) *Monitor {
	t.Helper()
	m, err := New(watched, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	m.self = func(pid uint32) bool { return pid == ourPID }
	return m
}

// feed delivers datagrams as the socket would and returns what is pending.
func feed(t *testing.T, m *Monitor, datagrams ...[]byte) backend.Change {
	t.Helper()
	tx := newTxn(m.f)
	for _, d := range datagrams {
		if err := split(d, tx.full, func(msg message) { m.handle(tx, msg) }); err != nil {
			t.Fatal(err)
		}
	}
	return m.take()
}

func cat(bs ...[]byte) []byte { return slices.Concat(bs...) }

func TestMonitorFilter(t *testing.T) {
	pfx := netip.MustParsePrefix
	cases := []struct {
		name      string
		datagrams [][]byte
		objects   []string // substrings expected in Objects, in order; nil: no change
		elements  map[string][]netip.Prefix
		deep      bool
		refill    bool // a set of ours emptied wholesale
	}{
		{"iptables -D INPUT -j CROWDSEC_CHAIN (admin)",
			[][]byte{cat(delRule(familyIPv4, "filter", "INPUT"), newGen(5, otherPID))},
			[]string{"rule in hook chain ip filter INPUT"}, nil, false, false},
		{"iptables -F CROWDSEC_CHAIN: one message per rule, one change",
			[][]byte{cat(delRule(familyIPv4, "filter", "CROWDSEC_CHAIN"), delRule(familyIPv4, "filter", "CROWDSEC_CHAIN"), newGen(6, otherPID))},
			[]string{"rule in ip filter CROWDSEC_CHAIN"}, nil, false, false},
		{"iptables -X CROWDSEC_CHAIN",
			[][]byte{cat(delChain(familyIPv4, "filter", "CROWDSEC_CHAIN"), newGen(7, otherPID))},
			[]string{"chain ip filter CROWDSEC_CHAIN"}, nil, false, false},
		{"nft flush ruleset: tables, split over datagrams",
			[][]byte{delRule(familyIPv4, "filter", "INPUT"), cat(delTable(familyIPv4, "filter"), delTable(familyIPv4, "crowdsec"), newGen(8, otherPID))},
			[]string{"rule in hook chain ip filter INPUT", "table ip filter", "table ip crowdsec"}, nil, false, true},
		{"iptables-nft's filter table deleted: no set of ours in it",
			[][]byte{cat(delTable(familyIPv4, "filter"), newGen(19, otherPID))},
			[]string{"table ip filter"}, nil, false, false},
		{"nft delete set of ours",
			[][]byte{cat(delSet(familyIPv6, "crowdsec6", "crowdsec6-blacklists-0"), newGen(9, otherPID))},
			[]string{"set ip6 crowdsec6 crowdsec6-blacklists-0"}, nil, false, true},
		{"element of ours deleted: single addresses",
			[][]byte{cat(delElems(familyIPv4, "crowdsec", "crowdsec-blacklists-0", el{key: "192.0.2.10"}, el{key: "192.0.2.11"}), newGen(10, otherPID))},
			nil, map[string][]netip.Prefix{"crowdsec-blacklists-0": {pfx("192.0.2.10/32"), pfx("192.0.2.11/32")}}, false, false},
		{"element of ours deleted: interval set, start and exclusive end in separate messages",
			[][]byte{cat(delElems(familyIPv4, "crowdsec", "s", el{key: "198.18.0.0"}), delElems(familyIPv4, "crowdsec", "s", el{key: "198.20.0.0", flagEnd: true}), newGen(11, otherPID))},
			nil, map[string][]netip.Prefix{"s": {pfx("198.18.0.0/15")}}, false, false},
		{"element of ours deleted: key and inclusive key end",
			[][]byte{cat(delElems(familyIPv6, "crowdsec6", "s6", el{key: "2001:db8::", end: "2001:db8::ffff"}), newGen(12, otherPID))},
			nil, map[string][]netip.Prefix{"s6": {pfx("2001:db8::/112")}}, false, false},
		{"range that is no prefix: compare members",
			[][]byte{cat(delElems(familyIPv4, "crowdsec", "s", el{key: "192.0.2.1", end: "192.0.2.5"}), newGen(13, otherPID))},
			[]string{"not single prefixes"}, nil, true, false},
		{"our own thread's commit", [][]byte{cat(delTable(familyIPv4, "crowdsec"), newGen(14, ourPID))}, nil, nil, false, false},
		{"our child iptables-restore's commit", [][]byte{cat(delRule(familyIPv4, "filter", "CROWDSEC_CHAIN"), delRule(familyIPv4, "filter", "INPUT"), newGen(15, childPID))}, nil, nil, false, false},
		{"noise: another table, another chain, additions",
			[][]byte{cat(delTable(familyIPv4, "docker"), delRule(familyIPv4, "filter", "OUTPUT"), delChain(familyIPv4, "filter", "DOCKER"),
				delRule(familyIPv6, "filter", "INPUT") /* ip6 INPUT is not watched here */, newRule(familyIPv4, "filter", "INPUT"),
				delElems(familyIPv4, "other", "s", el{key: "192.0.2.1"}), newGen(16, otherPID))},
			nil, nil, false, false},
		{"ours then noise commit: only ours counts",
			[][]byte{cat(delRule(familyIPv4, "filter", "CROWDSEC_CHAIN"), newGen(17, childPID), delRule(familyIPv4, "filter", "INPUT"), newGen(18, otherPID))},
			[]string{"rule in hook chain ip filter INPUT"}, nil, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := testMonitor(t)
			got := feed(t, m, c.datagrams...)
			if c.objects == nil && c.elements == nil {
				if !got.Empty() {
					t.Fatalf("change %+v, want none", got)
				}
				return
			}
			for _, want := range c.objects {
				if !slices.ContainsFunc(got.Objects, func(s string) bool { return strings.Contains(s, want) }) {
					t.Errorf("objects %q lack %q", got.Objects, want)
				}
			}
			if len(got.Elements) != len(c.elements) {
				t.Errorf("elements %v, want %v", got.Elements, c.elements)
			}
			for set, want := range c.elements {
				if !slices.Equal(got.Elements[set], want) {
					t.Errorf("elements of %s: %v, want %v", set, got.Elements[set], want)
				}
			}
			if got.Deep != c.deep || got.Refill != c.refill {
				t.Errorf("deep = %v, refill = %v; want %v, %v", got.Deep, got.Refill, c.deep, c.refill)
			}
		})
	}
}

// A burst of commits while nobody takes the pending change becomes one
// change describing all of them.
func TestMonitorCoalesces(t *testing.T) {
	m := testMonitor(t)
	tx := newTxn(m.f)
	for _, d := range [][]byte{
		cat(delRule(familyIPv4, "filter", "INPUT"), newGen(1, otherPID)),
		cat(delChain(familyIPv4, "filter", "CROWDSEC_CHAIN"), newGen(2, otherPID)),
		cat(delElems(familyIPv4, "crowdsec", "s", el{key: "192.0.2.1"}), newGen(3, otherPID)),
	} {
		if err := split(d, tx.full, func(msg message) { m.handle(tx, msg) }); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(m.ready); n != 1 {
		t.Fatalf("%d wake tokens after a burst, want 1", n)
	}
	c := m.take()
	if len(c.Objects) != 2 || len(c.Elements["s"]) != 1 {
		t.Fatalf("coalesced change %+v, want 2 objects and 1 element", c)
	}
	if !m.take().Empty() {
		t.Fatal("the change was taken twice")
	}
}

// An overrun publishes a deep change, including what the partial
// transaction held, and the next transaction is read normally.
func TestMonitorOverrun(t *testing.T) {
	m := testMonitor(t)
	tx := newTxn(m.f)
	if err := split(delRule(familyIPv4, "filter", "INPUT"), tx.full, func(msg message) { m.handle(tx, msg) }); err != nil {
		t.Fatal(err)
	}
	m.overrun(tx)
	c := m.take()
	if !c.Deep || !slices.ContainsFunc(c.Objects, func(s string) bool { return strings.Contains(s, "hook chain") }) {
		t.Fatalf("overrun change %+v, want deep with the partial rule deletion", c)
	}
	if err := split(cat(delTable(familyIPv4, "crowdsec"), newGen(2, otherPID)), tx.full, func(msg message) { m.handle(tx, msg) }); err != nil {
		t.Fatal(err)
	}
	if c := m.take(); c.Deep || len(c.Objects) != 1 {
		t.Fatalf("change after the overrun %+v, want one object, not deep", c)
	}
}

// More elements deleted in one commit than a change lists: another
// program's commit asks for a refill (its sets were emptied wholesale); our
// own commit (a replay flushing the sets) asks for nothing; an overrun in
// the middle of such a commit, whoever made it, asks for the deep verify,
// never for a refill.
func TestMonitorElementCap(t *testing.T) {
	var elems [][]byte
	for i := range backend.MaxChangeElements + 1 {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		elems = append(elems, delElems(familyIPv4, "crowdsec", "s", el{key: a.String()}))
	}
	for _, tc := range []struct {
		name         string
		end          func(m *Monitor, tx *txn)
		deep, refill bool
	}{
		{"another program's commit", func(m *Monitor, tx *txn) { feedTo(t, m, tx, newGen(1, otherPID)) }, false, true},
		{"our own commit", func(m *Monitor, tx *txn) { feedTo(t, m, tx, newGen(1, ourPID)) }, false, false},
		{"events lost before the commit marker", func(m *Monitor, tx *txn) { m.overrun(tx) }, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testMonitor(t)
			tx := newTxn(m.f)
			feedTo(t, m, tx, cat(elems...))
			tc.end(m, tx)
			c := m.take()
			if c.Deep != tc.deep || c.Refill != tc.refill || len(c.Elements) != 0 {
				t.Fatalf("change %+v: deep=%v refill=%v, %d sets listed; want deep=%v refill=%v and none",
					c.Objects, c.Deep, c.Refill, len(c.Elements), tc.deep, tc.refill)
			}
			if !tc.deep && !tc.refill && !c.Empty() {
				t.Fatalf("our own commit published %+v", c)
			}
		})
	}
}

// feedTo delivers one datagram to the transaction in progress.
func feedTo(t *testing.T, m *Monitor, tx *txn, d []byte) {
	t.Helper()
	if err := split(d, tx.full, func(msg message) { m.handle(tx, msg) }); err != nil {
		t.Fatal(err)
	}
}

func TestMalformedMessageIsAnError(t *testing.T) {
	b := delRule(familyIPv4, "filter", "INPUT")
	binary.NativeEndian.PutUint16(b[nlmsgHdrLen+nfgenHdrLen:], 200) // attribute longer than the message
	if err := split(b, func() bool { return false }, func(message) {}); err == nil {
		t.Fatal("a malformed message was accepted")
	}
}

func TestNothingToWatch(t *testing.T) {
	if _, err := New(backend.NFTObjects{}, slog.New(slog.NewTextHandler(io.Discard, nil))); err != ErrNothingToWatch {
		t.Fatalf("New with no objects: %v, want ErrNothingToWatch", err)
	}
}

// The monitor reads every datagram into one buffer; a transaction's
// deleted elements wait there for its commit marker, which comes in a
// datagram of its own. What was read earlier must survive the reuse.
func TestElementsSurviveBufferReuse(t *testing.T) {
	m := testMonitor(t)
	tx := newTxn(m.f)
	buf := make([]byte, 64<<10)
	feed := func(d []byte) {
		t.Helper()
		n := copy(buf, d)
		if err := split(buf[:n], tx.full, func(msg message) { m.handle(tx, msg) }); err != nil {
			t.Fatal(err)
		}
	}
	feed(delElems(familyIPv4, "crowdsec", "s", el{key: "192.0.2.10"}, el{key: "192.0.2.11"}))
	feed(delElems(familyIPv4, "crowdsec", "s", el{key: "203.0.113.7"}, el{key: "203.0.113.8"}, el{key: "203.0.113.9"}))
	feed(newGen(1, otherPID))
	c := m.take()
	var got []string
	for _, p := range c.Elements["s"] {
		got = append(got, p.String())
	}
	slices.Sort(got)
	want := []string{"192.0.2.10/32", "192.0.2.11/32", "203.0.113.7/32", "203.0.113.8/32", "203.0.113.9/32"}
	if !slices.Equal(got, want) {
		t.Fatalf("deleted elements %v, want %v", got, want)
	}
}
