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
	es6 = waitElems(t, "ip6", "crowdsec6", set6, 76)
	one, ok := hasElem(es4, netip.MustParsePrefix("203.0.113.7/32"))
	if !ok {
		t.Fatal("203.0.113.7 not in the kernel")
	}
	// It expires 200 h after the import, give or take 3 s (nft lists
	// whole seconds; the pull comes up to one update_frequency later).
	if d := time.Until(imported.Add(200 * time.Hour)) - one.Expires; d < -3*time.Second || d > 3*time.Second {
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
