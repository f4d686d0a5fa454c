package main

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// importCSV feeds rows (value,duration) to `cscli decisions import`: one
// LAPI batch of decisions with origin cscli-import.
func importCSV(t *testing.T, l *testenv.LAPI, rows [][2]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("value,duration,reason,scope,type\n")
	for _, r := range rows {
		scope := "ip"
		if strings.Contains(r[0], "/") {
			scope = "range"
		}
		fmt.Fprintf(&b, "%s,%s,e2e,%s,ban\n", r[0], r[1], scope)
	}
	path := filepath.Join(t.TempDir(), "decisions.csv")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	l.CSCLI(t, "decisions", "import", "-i", path)
}

// waitElems waits until the set holds exactly n elements and returns them.
func waitElems(t *testing.T, family, table, set string, n int) []nftElem {
	t.Helper()
	var got []nftElem
	eventually(t, within, fmt.Sprintf("%s %s %s does not hold exactly %d elements", family, table, set, n), func() bool {
		got = nftSet(t, family, table, set)
		return len(got) == n
	})
	return got
}

func hasElem(es []nftElem, p netip.Prefix) (nftElem, bool) {
	i := slices.IndexFunc(es, func(e nftElem) bool { return e.Prefix == p })
	if i < 0 {
		return nftElem{}, false
	}
	return es[i], true
}

// Upstream's nftables behaviours: its table, set and chain names and
// types, one element per address whatever the duplicates, within a batch
// and across batches, and the longest of many decisions on one address.
func TestE2ENFTablesObjectsAndDuplicates(t *testing.T) {
	t.Parallel()
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	b := startBouncer(t, writeConfig(t, l, nftMode(bouncerOpts{})))

	// 100 decisions per family, 23 of them on an address already listed.
	addr4 := func(i int) string { return benchAddr(i) }
	addr6 := func(i int) string { return fmt.Sprintf("2001:db8:1::%x", i+1) }
	var rows [][2]string
	for _, addr := range []func(int) string{addr4, addr6} {
		for i := range 77 {
			rows = append(rows, [2]string{addr(i), "4h"})
		}
		for i := range 23 {
			rows = append(rows, [2]string{addr(i * 3), "3h"})
		}
	}
	importCSV(t, l, rows)
	const set4, set6 = "crowdsec-blacklists-cscli-import", "crowdsec6-blacklists-cscli-import"
	waitElems(t, "ip", "crowdsec", set4, 77)
	waitElems(t, "ip6", "crowdsec6", set6, 77)
	requireUpstreamObjects(t, set4, set6)

	// A delete removes exactly that element.
	for _, a := range []string{addr4(10), addr6(10)} {
		l.CSCLI(t, "decisions", "delete", "--ip", a)
	}
	es4 := waitElems(t, "ip", "crowdsec", set4, 76)
	es6 := waitElems(t, "ip6", "crowdsec6", set6, 76)
	for _, p := range []netip.Prefix{netip.MustParsePrefix(addr4(10) + "/32"), netip.MustParsePrefix(addr6(10) + "/128")} {
		if _, ok := hasElem(append(es4, es6...), p); ok {
			t.Fatalf("%s still in the kernel after its delete", p)
		}
	}

	// Duplicates across stream batches: a later batch on listed addresses
	// adds nothing and lengthens their timeouts. And 200 decisions on one
	// address, durations 1h…200h in random order: one element, 200h.
	rows = rows[:0]
	for i := range 10 {
		rows = append(rows, [2]string{addr4(40 + i), "8h"}, [2]string{addr6(40 + i), "8h"})
	}
	hours := rand.Perm(200)
	for _, h := range hours {
		rows = append(rows, [2]string{"203.0.113.7", fmt.Sprintf("%dh", h+1)})
	}
	importCSV(t, l, rows)
	imported := time.Now()
	es4 = waitElems(t, "ip", "crowdsec", set4, 77)
	waitElems(t, "ip6", "crowdsec6", set6, 76)
	one, ok := hasElem(es4, netip.MustParsePrefix("203.0.113.7/32"))
	if !ok {
		t.Fatal("203.0.113.7 not in the kernel")
	}
	// It expires 200 h after the import, give or take 3 s (nft lists
	// whole seconds; the pull comes up to one update_frequency later).
	if d := time.Until(imported.Add(200*time.Hour)) - one.Expires; d < -3*time.Second || d > 3*time.Second {
		t.Fatalf("203.0.113.7 expires in %v (timeout %v), want 200h after the import ±3 s (off by %v)", one.Expires, one.Timeout, d)
	}
	eventually(t, within, "timeouts not lengthened by the later batch", func() bool {
		es := append(nftSet(t, "ip", "crowdsec", set4), nftSet(t, "ip6", "crowdsec6", set6)...)
		for i := range 10 {
			for _, a := range []string{addr4(40 + i), addr6(40 + i)} {
				e, ok := hasElem(es, netip.PrefixFrom(netip.MustParseAddr(a), netip.MustParseAddr(a).BitLen()))
				if !ok || e.Timeout < 7*time.Hour {
					return false
				}
			}
		}
		return true
	})
	b.stop(t)
	if out := sh(t, "nft", "list", "ruleset"); strings.Contains(out, "crowdsec") {
		t.Fatalf("on_shutdown: remove left objects:\n%s", out)
	}
}

// requireUpstreamObjects checks upstream's tables, sets (with their types)
// and base chains for nftables_hooks [input, forward], and our rules once
// each.
func requireUpstreamObjects(t *testing.T, set4, set6 string) {
	t.Helper()
	for _, w := range []struct{ fam, table, set, typ, chain string }{
		{"ip", "crowdsec", set4, "ipv4_addr", "crowdsec-chain"},
		{"ip6", "crowdsec6", set6, "ipv6_addr", "crowdsec6-chain"},
	} {
		objs := nftList(t, "table", w.fam, w.table)
		if len(objs) == 0 {
			t.Fatalf("no table %s %s", w.fam, w.table)
		}
		hooks := map[string]string{}
		var setOK bool
		for _, o := range objs {
			if o.Set != nil && o.Set.Name == w.set {
				setOK = o.Set.Type == w.typ && slices.Contains(o.Set.Flags, "timeout")
				if !setOK {
					t.Errorf("set %s: type %s flags %v, want %s with timeout", w.set, o.Set.Type, o.Set.Flags, w.typ)
				}
			}
			if o.Chain != nil {
				hooks[o.Chain.Name] = o.Chain.Hook + "/" + o.Chain.Type + "/" + o.Chain.Policy
			}
		}
		if !setOK {
			t.Errorf("table %s %s: no set %s", w.fam, w.table, w.set)
		}
		want := map[string]string{w.chain + "-input": "input/filter/accept", w.chain + "-forward": "forward/filter/accept"}
		for c, h := range want {
			if hooks[c] != h {
				t.Errorf("table %s %s: chain %s is %q, want %q (chains: %v)", w.fam, w.table, c, hooks[c], h, hooks)
			}
		}
	}
	requireRulesOnce(t)
}

func TestE2ENFTablesDropWithDenyLog(t *testing.T) {
	t.Parallel()
	if !e2eSetup(t) {
		return
	}
	testNFTPackets(t, "DROP")
}

func TestE2ENFTablesReject(t *testing.T) {
	t.Parallel()
	if !e2eSetup(t) {
		return
	}
	testNFTPackets(t, "REJECT")
}

// testNFTPackets bans a v4 and a v6 peer and a Range holding a third, and
// checks with real packets over veth that exactly those are denied: DROP
// is silence (with deny_log, a log statement whose counter counts),
// REJECT an ICMP error the peer sees. `-t` on the running daemon must
// change nothing.
func testNFTPackets(t *testing.T, action string) {
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	cfg := writeConfig(t, l, nftMode(bouncerOpts{DenyAction: action, Extra: "deny_log: " + fmt.Sprint(action == "DROP")}))
	b := startBouncer(t, cfg)
	for _, a := range []netip.Addr{p.Banned4, p.Clean4, p.Banned6, p.Clean6} {
		if !pings(t, p, a) {
			t.Fatalf("%s dropped before any ban", a)
		}
	}
	l.AddDecision(t, "crowdsec", "Ip", p.Banned4.String(), "4h")
	l.AddDecision(t, "crowdsec", "Ip", p.Banned6.String(), "4h")
	requireDropped(t, p, p.Banned4, within)
	requireDropped(t, p, p.Banned6, within)
	if action == "REJECT" {
		// A rejected echo fails fast with the ICMP error in ping's output.
		for _, w := range []struct {
			from, to netip.Addr
			says     string
		}{{p.Banned4, p.Local4, "Packet filtered"}, {p.Banned6, p.Local6, "Administratively prohibited"}} {
			out := p.Exec(t, "sh", "-c", "ping -n -c1 -W1 -I "+w.from.String()+" "+w.to.String()+" || true")
			if !strings.Contains(out, w.says) {
				t.Errorf("REJECT: %s got no %q:\n%s", w.from, w.says, out)
			}
		}
	}
	if action == "DROP" {
		// LOG output from a namespace never reaches the kernel log: the
		// proof is the log statement in the rule whose counter counted.
		rule := nftList(t, "chain", "ip", "crowdsec", "crowdsec-chain-input")
		var logged bool
		for _, o := range rule {
			if o.Rule != nil && strings.Contains(o.Rule.Comment, `@crowdsec-blacklists-crowdsec counter name crowdsec-blacklists-crowdsec log prefix "crowdsec drop: " drop`) {
				logged = true
			}
		}
		if !logged {
			t.Errorf("no deny_log rule:\n%s", sh(t, "nft", "list", "chain", "ip", "crowdsec", "crowdsec-chain-input"))
		}
		if c := nftCounter(t, "ip", "crowdsec", "crowdsec-blacklists-crowdsec"); c == 0 {
			t.Error("the counter of the deny rule counted no packet")
		}
	}
	requireConfigTestChangesNothing(t, b, cfg, p)

	// A peer inside a banned Range is denied; lifting the Range lets it
	// through again.
	l.AddDecision(t, "lists", "Range", "192.0.2.16/28", "4h")
	l.AddDecision(t, "lists", "Range", "2001:db8::20/126", "4h")
	for _, a := range []netip.Addr{p.Clean4, p.Clean6} {
		eventually(t, within, a.String()+" inside a banned Range is still answered", func() bool { return !pings(t, p, a) })
	}
	l.CSCLI(t, "decisions", "delete", "--range", "192.0.2.16/28")
	l.CSCLI(t, "decisions", "delete", "--range", "2001:db8::20/126")
	requirePasses(t, p, p.Clean4, within)
	requirePasses(t, p, p.Clean6, within)
	if pings(t, p, p.Banned4) || pings(t, p, p.Banned6) {
		t.Fatal("lifting a Range lifted an address ban too")
	}
}

// nftCounter reads a named counter's packets.
func nftCounter(t *testing.T, family, table, name string) uint64 {
	t.Helper()
	for _, o := range nftList(t, "counter", family, table, name) {
		if o.Counter != nil {
			return o.Counter.Packets
		}
	}
	t.Fatalf("no counter %s %s %s", family, table, name)
	return 0
}

// requireConfigTestChangesNothing runs `-t` beside the running daemon: the
// ruleset, the set members and the daemon itself stay as they were.
func requireConfigTestChangesNothing(t *testing.T, b *bouncer, cfg string, p *testenv.Peers) {
	t.Helper()
	rules, members := sh(t, "nft", "-s", "-t", "list", "ruleset"), nftMembers(t)
	repairs := b.count("repaired")
	code, out, errOut := cli(t, cfg, "-t")
	if code != 0 || !strings.Contains(out, "is valid") {
		t.Fatalf("-t: exit %d\n%s%s", code, out, errOut)
	}
	if after := sh(t, "nft", "-s", "-t", "list", "ruleset"); after != rules {
		t.Fatalf("-t changed the ruleset:\nbefore:\n%s\nafter:\n%s", rules, after)
	}
	requireSame(t, "-t: set members", nftMembers(t), members)
	if !b.running() || b.count("repaired") != repairs {
		t.Fatalf("-t disturbed the daemon:\n%s", tail(b.out.String(), 20))
	}
	requireDropped(t, p, p.Banned4, within)
}

// Set-only mode fills the administrator's own sets, in their own ip and
// ip6 tables, and touches nothing else of theirs: their rules do the
// dropping, and a stop empties our sets and leaves their tables.
func TestE2ENFTablesSetOnly(t *testing.T) {
	t.Parallel()
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	for _, f := range []struct{ fam, set, match string }{{"ip", "crowdsec-blacklists", "ip"}, {"ip6", "crowdsec6-blacklists", "ip6"}} {
		sh(t, "nft", "add table "+f.fam+" filter")
		sh(t, "nft", "add set "+f.fam+" filter "+f.set+" { type "+map[string]string{"ip": "ipv4_addr", "ip6": "ipv6_addr"}[f.fam]+" ; flags timeout ; }")
		sh(t, "nft", "add chain "+f.fam+" filter input { type filter hook input priority 0 ; policy accept ; }")
		sh(t, "nft", "add rule "+f.fam+" filter input tcp dport 9 accept")
		sh(t, "nft", "add rule "+f.fam+" filter input "+f.match+" saddr @"+f.set+" drop")
	}
	theirs := sh(t, "nft", "-s", "-t", "list", "ruleset")
	cfg := writeConfig(t, l, bouncerOpts{Mode: "nftables", OnShutdown: "remove",
		Extra: "nftables:\n  ipv4:\n    set-only: true\n    table: filter\n  ipv6:\n    set-only: true\n    table: filter"})
	b := startBouncer(t, cfg)
	l.AddDecision(t, "crowdsec", "Ip", p.Banned4.String(), "4h")
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned6.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)
	requireDropped(t, p, p.Banned6, within)
	if got := sh(t, "nft", "-s", "-t", "list", "ruleset"); got != theirs {
		t.Fatalf("set-only mode changed more than set elements:\nbefore:\n%s\nafter:\n%s", theirs, got)
	}
	for _, w := range []struct {
		fam, set string
		addr     netip.Addr
	}{{"ip", "crowdsec-blacklists", p.Banned4}, {"ip6", "crowdsec6-blacklists", p.Banned6}} {
		es := nftSet(t, w.fam, "filter", w.set)
		if len(es) != 1 || es[0].Prefix.Addr() != w.addr {
			t.Fatalf("%s filter %s holds %v, want only %s", w.fam, w.set, es, w.addr)
		}
	}
	b.stop(t)
	if got := sh(t, "nft", "-s", "-t", "list", "ruleset"); got != theirs {
		t.Fatalf("stop changed their ruleset:\nbefore:\n%s\nafter:\n%s", theirs, got)
	}
	if es := append(nftSet(t, "ip", "filter", "crowdsec-blacklists"), nftSet(t, "ip6", "filter", "crowdsec6-blacklists")...); len(es) != 0 {
		t.Fatalf("on_shutdown: remove left %v in the sets", es)
	}
	requirePasses(t, p, p.Banned4, within)
}

// A cold start on a LAPI that already holds bans: the pull is preloaded
// into new sets while it downloads, the sets are kept as loaded (LAPI
// sends one decision per address), and real packets from the banned peers
// are dropped while clean ones pass.
func TestE2ENFTablesColdStartPreload(t *testing.T) {
	t.Parallel()
	if !e2eSetup(t) {
		return
	}
	const n = 5000
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	importBans(t, l, n, "4h")
	l.AddDecision(t, "crowdsec", "Ip", p.Banned4.String(), "4h")
	l.AddDecision(t, "crowdsec", "Ip", p.Banned6.String(), "4h")
	cfg := writeConfig(t, l, nftMode(bouncerOpts{OnShutdown: "keep"}))
	b := startBouncer(t, cfg)
	b.waitLog(t, "pulled decisions", 30*time.Second)
	// cscli-import (v4) and crowdsec (v4 and v6): three sets, all kept.
	b.waitLog(t, "msg=preloaded component=backend mode=nftables sets=3 entries=5002 ok=true", 5*time.Second)
	b.waitLog(t, `msg="preloaded sets made live" component=backend mode=nftables kept=3 refilled=0`, 5*time.Second)
	requireDropped(t, p, p.Banned4, within)
	requireDropped(t, p, p.Banned6, within)
	for _, a := range []netip.Addr{p.Clean4, p.Clean6} {
		if !pings(t, p, a) {
			t.Errorf("clean peer %s dropped", a)
		}
	}
	if got := len(nftSet(t, "ip", "crowdsec", "crowdsec-blacklists-cscli-import")); got != n {
		t.Errorf("the imported set holds %d elements, want %d", got, n)
	}
	requireRulesOnce(t)
	if out := b.out.String(); strings.Contains(out, "repaired drift") || strings.Contains(out, "kernel change event") {
		t.Errorf("the preload woke the repair loop:\n%s", tail(out, 20))
	}
	// A restart names each origin's set as nft lists it.
	b.stop(t)
	b = startBouncer(t, cfg)
	b.waitLog(t, `msg="set for origin" set=crowdsec-blacklists-cscli-import origin=cscli-import`, 10*time.Second)
}
