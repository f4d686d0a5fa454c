package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// eventTick is heal.interval in the event tests: so long that only an
// nf_tables event can explain a repair within the test, and the log line
// says so (cause=event; a tick's repair says cause=tick).
const eventTick = "30s"

// eventDeep is heal.deep_interval in the event tests: the deep verify
// would find a flushed set or a deleted element, so it must not run.
const eventDeep = "1h"

// In iptables mode on iptables-nft, deleting our jump, flushing or deleting
// our chain, `nft flush ruleset` and an iptables-restore of rules saved
// before we started are repaired on the kernel's event, not on the tick.
func TestE2EEventRepairs(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	if !strings.Contains(sh(t, "iptables", "-V"), "nf_tables") {
		t.Fatal("iptables is not iptables-nft: these faults send no nf_tables events")
	}
	testEventRepairs(t, iptablesE2E)
}

// iptablesEvents are the iptables-mode faults nf_tables announces (ipset
// sends no events: its faults are the tick's).
var iptablesEvents = []fault{
	{"jump rule deleted", both("-D INPUT -j CROWDSEC_CHAIN")},
	{"chain flushed", both("-F CROWDSEC_CHAIN")},
	// One commit: with repairs this fast, separate commands would
	// find the jump back before -X.
	{"chain deleted", atomically("-D INPUT -j CROWDSEC_CHAIN", "-F CROWDSEC_CHAIN", "-X CROWDSEC_CHAIN")},
	{"nft flush ruleset", func(t *testing.T, _, _ string) { sh(t, "nft", "flush", "ruleset") }},
	{"iptables-restore of rules saved before start", func(t *testing.T, s4, s6 string) {
		sh(t, "iptables-restore", s4)
		sh(t, "ip6tables-restore", s6)
	}},
}

// testEventRepairs runs each of a mode's event faults against one bouncer
// whose verify tick (30 s) and deep verify (1 h) are too slow to explain a
// repair: each must be repaired with cause=event, the banned peer dropped
// again (v4 and v6) by the same process, and no repair may come from the
// tick.
func testEventRepairs(t *testing.T, m e2eMode) {
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	saved4, saved6 := m.save(t)
	b := startBouncer(t, writeConfig(t, l, m.opts(bouncerOpts{Interval: eventTick, DeepInterval: eventDeep,
		Extra: "  free_repairs: 20"})))
	pid := b.cmd.Process.Pid
	l.AddDecision(t, "crowdsec", "Ip", p.Banned4.String(), "4h")
	l.AddDecision(t, "crowdsec", "Ip", p.Banned6.String(), "4h")
	requireDropped(t, p, p.Banned4, within)
	requireDropped(t, p, p.Banned6, within)
	for _, f := range m.events {
		before := b.count("cause=event")
		start := time.Now()
		f.do(t, saved4, saved6)
		// Well inside the 30 s tick; the cause in the log is the proof.
		b.waitCount(t, "cause=event", before+1, 20*time.Second)
		took := time.Since(start)
		requireDropped(t, p, p.Banned4, within)
		requireDropped(t, p, p.Banned6, within)
		if !b.running() || b.cmd.Process.Pid != pid {
			t.Fatalf("%s: bouncer restarted or exited", f.name)
		}
		t.Logf("figure: %s: repaired on the event %v after the fault", f.name, took.Round(time.Millisecond))
	}
	if n := b.count("cause=tick"); n != 0 {
		t.Fatalf("%d repairs came from the tick, want all from events", n)
	}
	m.once(t)
}

// Our own writes wake nothing: a burst of LAPI deltas, including new
// origins whose rules rewrite our chain (iptables-restore flushes and
// refills it), leaves the repair count unchanged and no event pass runs.
func TestE2EOwnWritesCauseNoRepair(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	b := startBouncer(t, writeConfig(t, l, bouncerOpts{Interval: eventTick, DeepInterval: eventDeep}))
	l.AddDecision(t, "crowdsec", "Ip", "192.0.2.1", "4h")
	b.waitLog(t, "rules written", within)
	rulesBefore := b.count("rules written")
	for i, origin := range []string{"cscli", "lists", "crowdsec", "cscli", "lists"} {
		l.AddDecision(t, origin, "Ip", benchAddr(i+10), "4h")
	}
	l.AddDecision(t, "CAPI", "Range", "203.0.113.0/24", "4h")
	eventually(t, 30*time.Second, "the deltas' bans in the kernel", func() bool {
		out, err := tryRun("ipset", "list", "-t")
		return err == nil && strings.Count(sh(t, "iptables-save"), "--match-set") >= 4 && strings.Contains(out, "Number of entries")
	})
	b.waitCount(t, "rules written", rulesBefore+1, within) // own rule writes happened
	// A marker fault from someone else, in one transaction (IPv4 only: a
	// fault in both families is two, and the second can wake a second
	// pass): once it is repaired, every event before it has been handled.
	sh(t, "iptables", "-D", "INPUT", "-j", "CROWDSEC_CHAIN")
	b.waitCount(t, "cause=event", 1, 20*time.Second)
	if n := b.count("repaired drift"); n != 1 {
		t.Fatalf("%d repairs, want only the marker's: our own writes caused repairs", n)
	}
	if n := b.count("kernel change event"); n != 1 {
		t.Fatalf("%d event passes, want only the marker's: our own writes woke the enforcer", n)
	}
}

// atomically runs iptables commands as one iptables-restore transaction
// per family, as a firewall script loading rules would.
func atomically(cmds ...string) func(t *testing.T, _, _ string) {
	return func(t *testing.T, _, _ string) {
		script := "*filter\n" + strings.Join(cmds, "\n") + "\nCOMMIT\n"
		for _, tool := range []string{"iptables-restore", "ip6tables-restore"} {
			cmd := exec.CommandContext(t.Context(), tool, "--noflush")
			cmd.Stdin = strings.NewReader(script)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", tool, err, out)
			}
		}
	}
}

// wipeTables empties both filter tables in one commit each, like an
// iptables-restore of a bare ruleset.
func wipeTables(t *testing.T) {
	t.Helper()
	script := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
	for _, tool := range []string{"iptables-restore", "ip6tables-restore"} {
		cmd := exec.CommandContext(t.Context(), tool)
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", tool, err, out)
		}
	}
}

// destroySets removes the rules referencing our sets with unref, then
// destroys the sets, again if the bouncer's event-driven repair put a
// reference back first.
func destroySets(t *testing.T, unref func()) {
	t.Helper()
	for range 20 {
		unref()
		ok := true
		for _, name := range strings.Fields(sh(t, "ipset", "list", "-n")) {
			if strings.Contains(name, "blacklists") {
				if _, err := tryRun("ipset", "destroy", name); err != nil {
					ok = false
				}
			}
		}
		if ok {
			return
		}
	}
	t.Fatal("could not destroy our sets in 20 tries: repairs always came first")
}

// mode: dry-run logs what it would do and leaves the kernel alone.
func TestE2EDryRunTouchesNoKernel(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	cfg := writeConfig(t, l, bouncerOpts{})
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(data), "mode: iptables", "mode: dry-run", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	// iptables-save's comment lines carry the time: compare the rest.
	rules := func() string {
		var keep []string
		for _, l := range strings.Split(sh(t, "iptables-save"), "\n") {
			if !strings.HasPrefix(l, "#") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	rulesBefore, nftBefore := rules(), sh(t, "nft", "list", "ruleset")
	b := startBouncer(t, cfg)
	l.AddDecision(t, "crowdsec", "Ip", "192.0.2.10", "4h")
	b.waitLog(t, "192.0.2.10/32 in crowdsec-blacklists-", within)
	if !strings.Contains(b.out.String(), "dry-run: would add") {
		t.Fatalf("no 'would add' line:\n%s", tail(b.out.String(), 20))
	}
	if sets := sh(t, "ipset", "list", "-n"); strings.TrimSpace(sets) != "" {
		t.Fatalf("dry run created sets: %s", sets)
	}
	if rules() != rulesBefore || sh(t, "nft", "list", "ruleset") != nftBefore {
		t.Fatal("dry run changed the rules")
	}
	b.stop(t)
	if n := b.count("repaired drift"); n != 0 {
		t.Fatalf("%d repairs in a dry run: its model drifted", n)
	}
}
