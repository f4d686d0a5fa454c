package nftables

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

func TestKernelPackets(t *testing.T) {
	testenv.EnsureTools(t)
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	p := testenv.NewPeers(t)
	cfg := kernelConfig()
	cfg.DenyLog = true
	b := newKernel(t, cfg)
	// Neighbour advertisements from the banned v6 address would be dropped
	// like any of its packets, leaving replies to both peers unresolved:
	// pin the peer's addresses to its MAC.
	mac := regexp.MustCompile(`link/ether ([0-9a-f:]+)`).FindStringSubmatch(p.Exec(t, "ip", "-o", "link", "show", "dev", p.PeerLink))
	if mac == nil {
		t.Fatal("peer MAC not found")
	}
	for _, a := range []netip.Addr{p.Banned6, p.Clean6} {
		sh(t, "ip -6 neigh replace "+a.String()+" lladdr "+mac[1]+" dev "+p.Link+" nud permanent")
	}
	for _, a := range []netip.Addr{p.Banned4, p.Clean4} {
		if !p.Answers(t, a, p.Local4) {
			t.Fatalf("%s cannot reach us before any ban", a)
		}
	}
	err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{
		{Prefix: netip.PrefixFrom(p.Banned4, 32), Origin: 0, Until: t0.Add(time.Hour)},
		{Prefix: netip.PrefixFrom(p.Banned6, 128), Origin: 2, Until: t0.Add(time.Hour)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Ping(t, p.Banned4, p.Local4) || p.Ping(t, p.Banned6, p.Local6) {
		t.Error("a banned peer got an answer")
	}
	for _, w := range [][2]netip.Addr{{p.Clean4, p.Local4}, {p.Clean6, p.Local6}} {
		if !answered(t, p, w[0], w[1]) {
			t.Errorf("clean peer %s got no answer", w[0])
		}
	}
	// a Range holding the clean v4 peer bans it too
	if err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{{Prefix: netip.PrefixFrom(p.Clean4, 28).Masked(), Origin: 1, Until: t0.Add(time.Hour)}}}); err != nil {
		t.Fatal(err)
	}
	if p.Ping(t, p.Clean4, p.Local4) {
		t.Error("a peer inside a banned range got an answer")
	}
	c, err := b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]backend.SetCounters{}
	for _, s := range c.Sets {
		byName[s.Name] = s
	}
	if s := byName["crowdsec-blacklists-crowdsec"]; s.Packets == 0 || s.Members != 1 {
		t.Errorf("v4 crowdsec counters: %+v", s)
	}
	if s := byName["crowdsec6-blacklists-cscli"]; s.Packets == 0 {
		t.Errorf("v6 cscli counters: %+v", s)
	}
	if s := byName["crowdsec-blacklists-lists-firehol_l1"]; s.Packets == 0 {
		t.Errorf("range counters: %+v", s)
	}
	if c.Families[0].Packets == 0 || c.Families[1].Packets == 0 {
		t.Errorf("processed counters: %+v", c.Families)
	}
	// deny_log: LOG output from a namespace never reaches dmesg, so the
	// proof is the log statement in the rule whose counter counted
	if l := sh(t, "nft list chain ip crowdsec crowdsec-chain-input"); !strings.Contains(l, `ip saddr @crowdsec-blacklists-crowdsec counter name "crowdsec-blacklists-crowdsec" log prefix "crowdsec drop: " drop`) {
		t.Errorf("deny_log rule missing:\n%s", l)
	}

	// REJECT: the peer gets the ICMP error instead of silence
	cfg.DenyAction = "REJECT"
	newKernel(t, cfg)
	out4 := p.Exec(t, "sh", "-c", "ping -n -c1 -W1 -I "+p.Banned4.String()+" "+p.Local4.String()+" || true")
	if !strings.Contains(out4, "Packet filtered") {
		t.Errorf("v4 REJECT: ping said:\n%s", out4)
	}
	out6 := p.Exec(t, "sh", "-c", "ping -n -c1 -W1 -I "+p.Banned6.String()+" "+p.Local6.String()+" || true")
	if !strings.Contains(out6, "Administratively prohibited") {
		t.Errorf("v6 REJECT: ping said:\n%s", out6)
	}
}

// answered pings up to three times: one lost echo on a loaded machine is
// not a drop, a rule dropping the peer drops all three.
func answered(t *testing.T, p *testenv.Peers, from, to netip.Addr) bool {
	t.Helper()
	for range 3 {
		if p.Ping(t, from, to) {
			return true
		}
	}
	return false
}
