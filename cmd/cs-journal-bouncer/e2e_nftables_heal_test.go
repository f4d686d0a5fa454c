package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// nftBoth runs an nft command on our table of each family: the words
// TABLE, SET, CHAIN and ADDR are replaced by that family's.
func nftBoth(cmd string) func(t *testing.T, _, _ string) {
	return func(t *testing.T, _, _ string) {
		for _, f := range []struct{ fam, table, set, chain, addr string }{
			{"ip", "crowdsec", "crowdsec-blacklists-crowdsec", "crowdsec-chain-input", "192.0.2.10"},
			{"ip6", "crowdsec6", "crowdsec6-blacklists-crowdsec", "crowdsec6-chain-input", "2001:db8::10"},
		} {
			c := strings.NewReplacer("TABLE", f.fam+" "+f.table, "SET", f.set, "CHAIN", f.chain, "ADDR", f.addr).Replace(cmd)
			sh(t, append([]string{"nft"}, strings.Fields(c)...)...)
		}
	}
}

// deleteDenyRules deletes, by handle, our rule matching the banned peers'
// set in each family's input chain.
func deleteDenyRules(t *testing.T, _, _ string) {
	for _, ft := range nftTables {
		for _, o := range nftList(t, "table", ft[0], ft[1]) {
			if r := o.Rule; r != nil && strings.HasSuffix(r.Chain, "-input") && strings.Contains(r.Comment, "-blacklists-crowdsec counter") {
				sh(t, "nft", "delete", "rule", ft[0], ft[1], r.Chain, "handle", strconv.Itoa(r.Handle))
			}
		}
	}
}

// nftFaults are the nftables-mode faults. A flushed set and a deleted
// element leave every object in place and Verify cannot see them (nf_tables
// keeps no element count): the kernel's deletion events bring them back,
// so the fault matrix runs with the default deep verify interval.
var nftFaults = []fault{
	{"nft flush ruleset", func(t *testing.T, _, _ string) { sh(t, "nft", "flush", "ruleset") }},
	{"nft delete table ip crowdsec", func(t *testing.T, _, _ string) { sh(t, "nft", "delete", "table", "ip", "crowdsec") }},
	{"set flushed", nftBoth("flush set TABLE SET")},
	{"chain flushed", nftBoth("flush chain TABLE CHAIN")},
	{"one element deleted", nftBoth("delete element TABLE SET { ADDR }")},
	{"our rule deleted", deleteDenyRules},
	// What a reload of nftables.service does: its file starts with
	// "flush ruleset".
	{"nft -f of the ruleset saved before start", func(t *testing.T, saved, _ string) { sh(t, "nft", "-f", saved) }},
}

var nftE2E = e2eMode{
	opts: nftMode,
	save: func(t *testing.T) (string, string) {
		sh(t, "nft", "add table inet filter")
		sh(t, "nft", "add chain inet filter input { type filter hook input priority 0 ; policy accept ; }")
		sh(t, "nft", "add rule inet filter input tcp dport 9 accept")
		saved := filepath.Join(t.TempDir(), "nftables.conf")
		if err := os.WriteFile(saved, []byte("flush ruleset\n"+sh(t, "nft", "list", "ruleset")), 0o600); err != nil {
			t.Fatal(err)
		}
		return saved, ""
	},
	faults:  nftFaults,
	events:  nftFaults,
	once:    requireRulesOnce,
	members: nftMembers,
}

func TestE2ENFTablesHealWithLAPIUp(t *testing.T) {
	t.Parallel()
	if !e2eSetup(t) {
		return
	}
	testHeal(t, true, nftE2E)
}

func TestE2ENFTablesHealWithLAPIDown(t *testing.T) {
	t.Parallel()
	if !e2eSetup(t) {
		return
	}
	testHeal(t, false, nftE2E)
}

// kill -9 at random moments during a 100k sync, 20 times, as for iptables;
// the rules of the 22 starts must be there once.
func TestE2ENFTablesKill9During100kSync(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	testKill9During100kSync(t, nftE2E)
}
