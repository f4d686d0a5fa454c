package iptables

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// logRuleCounter returns the packet counter of CROWDSEC_LOG's LOG rule
// from iptables-save -c.
func logRuleCounter(t *testing.T, save string) uint64 {
	t.Helper()
	for line := range strings.Lines(save) {
		c, rest, ok := parseRuleCounter(strings.TrimSpace(line))
		if ok && strings.HasPrefix(rest, "-A "+LogChain+" -j LOG ") {
			return c.packets
		}
	}
	t.Fatalf("no LOG rule in %s:\n%s", LogChain, save)
	return 0
}

// TestKernelDenyLogLayout: with deny_log the kernel holds upstream's
// layout (one rule per set jumping to CROWDSEC_LOG, which logs then
// denies); a banned peer's real packet goes through the LOG rule and is
// dropped; a flushed or deleted CROWDSEC_LOG is drift that Ensure repairs;
// Close removes it, and keeps (flushed) one a user's rule still jumps to.
func TestKernelDenyLogLayout(t *testing.T) {
	testenv.EnsureTools(t)
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	p := testenv.NewPeers(t)
	b, _ := newKernelBackend(t, Config{
		Chains4: []string{"INPUT"}, Chains6: []string{"INPUT"},
		DenyLog: true, DenyLogPrefix: "crowdsec drop: ", RuleComments: true,
	})
	b.cfg.Now = time.Now // pings happen now
	b.SetOrigins(backend.Origins{0: "crowdsec", 1: "cscli"})
	active := []backend.Entry{
		{Prefix: netip.PrefixFrom(p.Banned4, 32), Origin: 1, Until: time.Now().Add(time.Hour)},
		{Prefix: netip.PrefixFrom(p.Banned6, 128), Origin: 1, Until: time.Now().Add(time.Hour)},
	}
	heal := func(t *testing.T) {
		t.Helper()
		if err := b.Ensure(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Replay(ctx, slices.Values(active)); err != nil {
			t.Fatal(err)
		}
	}
	heal(t)

	wantChain := `-N CROWDSEC_CHAIN
-A CROWDSEC_CHAIN -m set --match-set crowdsec-blacklists-0 src -m comment --comment "CrowdSec: crowdsec" -j CROWDSEC_LOG
-A CROWDSEC_CHAIN -m set --match-set crowdsec-blacklists-1 src -m comment --comment "CrowdSec: cscli" -j CROWDSEC_LOG
`
	wantLog := `-N CROWDSEC_LOG
-A CROWDSEC_LOG -j LOG --log-prefix "crowdsec drop: "
-A CROWDSEC_LOG -j DROP
`
	if got := sh(t, "iptables -S CROWDSEC_CHAIN"); got != wantChain {
		t.Errorf("iptables -S CROWDSEC_CHAIN:\n%s\nwant\n%s", got, wantChain)
	}
	if got := sh(t, "iptables -S CROWDSEC_LOG"); got != wantLog {
		t.Errorf("iptables -S CROWDSEC_LOG:\n%s\nwant\n%s", got, wantLog)
	}
	if got := sh(t, "ip6tables -S CROWDSEC_LOG"); got != wantLog {
		t.Errorf("ip6tables -S CROWDSEC_LOG:\n%s\nwant\n%s", got, wantLog)
	}

	before := logRuleCounter(t, sh(t, "iptables-save -c -t filter"))
	if p.Ping(t, p.Banned4, p.Local4) {
		t.Fatal("banned IPv4 peer got an answer")
	}
	if !p.Ping(t, p.Clean4, p.Local4) {
		t.Fatal("clean IPv4 peer got no answer")
	}
	if after := logRuleCounter(t, sh(t, "iptables-save -c -t filter")); after <= before {
		t.Fatalf("LOG rule counter %d -> %d: the banned packet was not logged", before, after)
	}
	if p.Ping(t, p.Banned6, p.Local6) {
		t.Fatal("banned IPv6 peer got an answer")
	}

	damage := []struct {
		name, cmd string
		kinds     []string
	}{
		{"log chain flushed", "iptables -F CROWDSEC_LOG", []string{"rule"}},
		{"log chain deleted", "iptables -F CROWDSEC_CHAIN && iptables -F CROWDSEC_LOG && iptables -X CROWDSEC_LOG", []string{"rule", "chain"}},
		{"v6 log chain rule replaced", "ip6tables -R CROWDSEC_LOG 2 -j ACCEPT", []string{"rule"}},
	}
	for _, tc := range damage {
		t.Run(tc.name, func(t *testing.T) {
			sh(t, tc.cmd)
			d, err := b.Verify(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(d.Kinds, tc.kinds) {
				t.Fatalf("drift = %v (%v), want %v", d.Kinds, d.Details, tc.kinds)
			}
			heal(t)
			if d, err := b.Verify(ctx, nil); err != nil || !d.None() {
				t.Fatalf("Verify after repair = %+v, %v", d, err)
			}
			if got := sh(t, "iptables -S CROWDSEC_LOG"); got != wantLog {
				t.Fatalf("after repair:\n%s", got)
			}
			if p.Ping(t, p.Banned4, p.Local4) {
				t.Fatal("banned IPv4 peer got an answer after the repair")
			}
		})
	}

	// A user's rule jumping to CROWDSEC_LOG in IPv4: Close flushes it and
	// keeps it there; in IPv6 (no such rule) it is deleted.
	sh(t, "iptables -N MINE && iptables -A MINE -p tcp -j CROWDSEC_LOG")
	if err := b.Close(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if got := sh(t, "iptables -S CROWDSEC_LOG"); got != "-N CROWDSEC_LOG\n" {
		t.Errorf("IPv4 CROWDSEC_LOG after Close = %q, want it flushed and kept", got)
	}
	if got := sh(t, "iptables -S"); strings.Contains(got, "CROWDSEC_CHAIN") || !strings.Contains(got, "-A MINE -p tcp -j CROWDSEC_LOG") {
		t.Errorf("IPv4 after Close:\n%s", got)
	}
	if got := sh(t, "ip6tables-save -t filter"); strings.Contains(got, "CROWDSEC") {
		t.Errorf("IPv6 after Close:\n%s", got)
	}
	if !p.Ping(t, p.Banned4, p.Local4) {
		t.Error("banned peer still dropped after Close(remove)")
	}
}
