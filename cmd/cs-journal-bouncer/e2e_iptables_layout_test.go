package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// logPackets returns the packet counter of CROWDSEC_LOG's LOG rule.
func logPackets(t *testing.T) int {
	t.Helper()
	for line := range strings.Lines(sh(t, "iptables-save", "-c", "-t", "filter")) {
		if !strings.Contains(line, "-A CROWDSEC_LOG -j LOG ") {
			continue
		}
		c, _, _ := strings.Cut(strings.TrimPrefix(line, "["), ":")
		n, err := strconv.Atoi(c)
		if err != nil {
			t.Fatalf("counter in %q: %v", line, err)
		}
		return n
	}
	t.Fatal("no LOG rule in CROWDSEC_LOG")
	return 0
}

// Upstream's drop-in details, on the real daemon: with deny_log the kernel
// holds upstream's layout (a rule per set with the comment "CrowdSec:
// <origin>" jumping to CROWDSEC_LOG, which logs then drops); a banned
// peer's packet goes through the LOG rule; a flushed CROWDSEC_LOG is
// repaired in-process; a clean stop removes it; the start-up log says
// what is in force.
func TestE2EDenyLogUpstreamLayout(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	b := startBouncer(t, writeConfig(t, l, bouncerOpts{Extra: "deny_log: true"}))
	for _, line := range []string{
		`msg=LAPI url=` + l.URL + ` auth="api key"`,
		`deny_action=DROP deny_log=true log_chain=CROWDSEC_LOG deny_log_prefix="crowdsec drop: " ipv4_chains=[INPUT] ipv6_chains=[INPUT] rule_comments=true`,
		`ipv4=crowdsec-blacklists-<origin> ipv6=crowdsec6-blacklists-<origin> type=hash:net maxelem=131072 timeouts=true`,
	} {
		if !strings.Contains(b.out.String(), line) {
			t.Errorf("start-up log lacks %q:\n%s", line, tail(b.out.String(), 30))
		}
	}

	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)
	wantLog := "-N CROWDSEC_LOG\n-A CROWDSEC_LOG -j LOG --log-prefix \"crowdsec drop: \"\n-A CROWDSEC_LOG -j DROP\n"
	if got := sh(t, "iptables", "-S", "CROWDSEC_LOG"); got != wantLog {
		t.Fatalf("iptables -S CROWDSEC_LOG:\n%s\nwant\n%s", got, wantLog)
	}
	if got := sh(t, "iptables", "-S", "CROWDSEC_CHAIN"); !strings.Contains(got,
		"-A CROWDSEC_CHAIN -m set --match-set crowdsec-blacklists-0 src -m comment --comment \"CrowdSec: cscli\" -j CROWDSEC_LOG\n") {
		t.Fatalf("iptables -S CROWDSEC_CHAIN:\n%s", got)
	}
	before := logPackets(t)
	if pings(t, p, p.Banned4) {
		t.Fatal("banned peer answered")
	}
	if after := logPackets(t); after <= before {
		t.Fatalf("LOG rule counter %d -> %d", before, after)
	}

	sh(t, "iptables", "-F", "CROWDSEC_LOG")
	b.waitLog(t, "repaired drift", 10*time.Second)
	if got := sh(t, "iptables", "-S", "CROWDSEC_LOG"); got != wantLog {
		t.Fatalf("after repair:\n%s", got)
	}
	requireDropped(t, p, p.Banned4, within)

	b.stop(t)
	if out := sh(t, "iptables-save"); strings.Contains(out, "CROWDSEC") {
		t.Fatalf("rules left after stop:\n%s", out)
	}
}
