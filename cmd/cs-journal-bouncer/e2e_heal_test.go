package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// fault is something another program does to our firewall state.
type fault struct {
	name string
	do   func(t *testing.T, saved4, saved6 string)
}

func both(cmds ...string) func(t *testing.T, _, _ string) {
	return func(t *testing.T, _, _ string) {
		for _, c := range cmds {
			for _, tool := range []string{"iptables", "ip6tables"} {
				sh(t, append([]string{tool}, strings.Fields(c)...)...)
			}
		}
	}
}

func ipsetAll(t *testing.T, verb string) {
	for _, name := range strings.Fields(sh(t, "ipset", "list", "-n")) {
		if strings.Contains(name, "blacklists") {
			sh(t, "ipset", verb, name)
		}
	}
}

var faults = []fault{
	{"jump rule deleted", both("-D INPUT -j CROWDSEC_CHAIN")},
	{"chain flushed", both("-F CROWDSEC_CHAIN")},
	// Event-driven repairs put rules back within milliseconds: faults made
	// of several steps run them as one commit, or retry the last step.
	{"chain deleted", atomically("-D INPUT -j CROWDSEC_CHAIN", "-F CROWDSEC_CHAIN", "-X CROWDSEC_CHAIN")},
	{"set flushed", func(t *testing.T, _, _ string) { ipsetAll(t, "flush") }},
	{"set destroyed", func(t *testing.T, s4, s6 string) {
		// a set in use cannot be destroyed
		destroySets(t, func() { atomically("-F CROWDSEC_CHAIN")(t, s4, s6) })
	}},
	{"everything wiped", func(t *testing.T, _, _ string) { destroySets(t, func() { wipeTables(t) }) }},
	{"nft flush ruleset", func(t *testing.T, _, _ string) { sh(t, "nft", "flush", "ruleset") }},
	{"iptables-restore of rules saved before start", func(t *testing.T, s4, s6 string) {
		sh(t, "iptables-restore", s4)
		sh(t, "ip6tables-restore", s6)
	}},
	{"one entry deleted by hand", func(t *testing.T, _, _ string) {
		for _, name := range strings.Fields(sh(t, "ipset", "list", "-n")) {
			if strings.HasPrefix(name, "crowdsec-blacklists") {
				_, _ = tryRun("ipset", "del", name, "192.0.2.10")
			}
			if strings.HasPrefix(name, "crowdsec6-blacklists") {
				_, _ = tryRun("ipset", "del", name, "2001:db8::10")
			}
		}
	}},
	// Same count, other members: only the deep verify (2s here) sees it.
	{"one entry swapped for another by hand", func(t *testing.T, _, _ string) {
		for _, name := range strings.Fields(sh(t, "ipset", "list", "-n")) {
			switch {
			case strings.HasPrefix(name, "crowdsec-blacklists"):
				if _, err := tryRun("ipset", "del", name, "192.0.2.10"); err == nil {
					sh(t, "ipset", "add", name, "203.0.113.99")
				}
			case strings.HasPrefix(name, "crowdsec6-blacklists"):
				if _, err := tryRun("ipset", "del", name, "2001:db8::10"); err == nil {
					sh(t, "ipset", "add", name, "2001:db8:ffff::99")
				}
			}
		}
	}},
}

// e2eMode is what the mode-agnostic tests (fault matrix, kill -9) need to
// know of a firewall mode.
type e2eMode struct {
	opts func(bouncerOpts) bouncerOpts
	// save sets up the administrator's own rules and saves them, as a
	// reload of their firewall would bring them back.
	save   func(t *testing.T) (saved4, saved6 string)
	faults []fault
	// events are the faults the kernel announces over nf_tables netlink:
	// each must be repaired on its event, not on the verify tick.
	events []fault
	// deep is heal.deep_interval for the fault matrix: short where some
	// fault is only seen by the deep verify, "" (the default) otherwise.
	deep string
	// once checks our hook rules are there exactly once and nothing
	// temporary is left.
	once func(t *testing.T)
	// members reads every member of our sets, sorted.
	members func(t *testing.T) []netip.Prefix
}

var iptablesE2E = e2eMode{
	opts: func(o bouncerOpts) bouncerOpts { return o },
	save: func(t *testing.T) (string, string) {
		sh(t, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
		sh(t, "ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
		dir := t.TempDir()
		saved4, saved6 := filepath.Join(dir, "rules.v4"), filepath.Join(dir, "rules.v6")
		for f, tool := range map[string]string{saved4: "iptables-save", saved6: "ip6tables-save"} {
			if err := os.WriteFile(f, []byte(sh(t, tool)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return saved4, saved6
	},
	faults: faults,
	events: iptablesEvents,
	// ipset sends no events and a swapped member keeps the count.
	deep: "2s",
	once: func(t *testing.T) {
		if n := strings.Count(sh(t, "iptables-save"), "-j CROWDSEC_CHAIN"); n != 1 {
			t.Fatalf("%d jump rules, want 1", n)
		}
		if strings.Contains(sh(t, "ipset", "list", "-n"), "-t\n") {
			t.Fatalf("temporary sets left behind:\n%s", sh(t, "ipset", "list", "-n"))
		}
	},
	members: kernelMembers,
}

// testHeal runs every fault against one running bouncer: after each, the
// banned peer must be dropped again (v4 and v6), the clean one must pass, the
// bouncer's PID must be unchanged and its log must show the repair.
func testHeal(t *testing.T, lapiUp bool, m e2eMode) {
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	saved4, saved6 := m.save(t)
	b := startBouncer(t, writeConfig(t, l, m.opts(bouncerOpts{DeepInterval: m.deep})))
	pid := b.cmd.Process.Pid
	l.AddDecision(t, "crowdsec", "Ip", p.Banned4.String(), "4h")
	l.AddDecision(t, "crowdsec", "Ip", p.Banned6.String(), "4h")
	requireDropped(t, p, p.Banned4, within)
	requireDropped(t, p, p.Banned6, within)
	if !lapiUp {
		l.Stop(t)
		b.waitLog(t, "LAPI pull failed", within)
	}
	for _, f := range m.faults {
		before := b.count("repaired")
		start := time.Now()
		f.do(t, saved4, saved6)
		b.waitCount(t, "repaired", before+1, 20*time.Second)
		detected := time.Since(start)
		requireDropped(t, p, p.Banned4, within)
		requireDropped(t, p, p.Banned6, within)
		if !b.running() || b.cmd.Process.Pid != pid {
			t.Fatalf("%s: bouncer restarted or exited", f.name)
		}
		t.Logf("figure: %s: repaired %v after the fault (LAPI up: %v)", f.name, detected.Round(time.Millisecond), lapiUp)
	}
	m.once(t)
}

func TestE2EHealWithLAPIUp(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	testHeal(t, true, iptablesE2E)
}

func TestE2EHealWithLAPIDown(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	testHeal(t, false, iptablesE2E)
}

// A replay that keeps failing climbs the ladder and ends in exit code 3. The
// failure is real: iptables-restore is replaced (through PATH) by a wrapper
// that fails once a flag file exists.
func TestE2EReplayFailureExitsWithCode3(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	dir, flag := brokenRestore(t, false)
	cfg := writeConfig(t, l, bouncerOpts{Extra: "  max_replay_attempts: 3\n  backoff_initial: 100ms\n  backoff_max: 200ms"})
	b := startBouncer(t, cfg, "PATH="+dir+":"+os.Getenv("PATH"))
	l.CSCLI(t, "decisions", "add", "--ip", "192.0.2.10", "-d", "4h")
	b.waitLog(t, "pulled decisions", within)
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	both("-D INPUT -j CROWDSEC_CHAIN")(t, "", "")
	if code := b.wait(t, 60*time.Second); code != 3 {
		t.Fatalf("exit code %d after the ladder, want 3", code)
	}
	out := b.out.String()
	for _, want := range []string{"replay failed", "asking LAPI for a full resync", "replay failed after all retries"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

// Another program that keeps deleting our jump rule must not drag us into a
// tight loop: after heal.free_repairs quick repeats, repairs back off.
func TestE2EDoesNotFight(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	b := startBouncer(t, writeConfig(t, l, bouncerOpts{FightWindow: "10s",
		Extra: "  free_repairs: 2\n  backoff_initial: 1s\n  backoff_max: 8s"}))
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)
	const fight = 15 * time.Second
	end := time.Now().Add(fight)
	for time.Now().Before(end) {
		_, _ = tryRun("iptables", "-D", "INPUT", "-j", "CROWDSEC_CHAIN")
		time.Sleep(200 * time.Millisecond)
	}
	repairs := b.count("repaired drift")
	// Without backoff: one repair per 1s verify pass, ≈15. With it: 2 free,
	// then waits of 1, 2, 4, 8 s: ≈6.
	t.Logf("figure: %d repairs during a %v fight", repairs, fight)
	if repairs > 9 {
		t.Fatalf("%d repairs in %v: fighting the other program", repairs, fight)
	}
	if !strings.Contains(b.out.String(), "backing off") {
		t.Fatal("no backoff logged")
	}
	// Once the other program stops, we win within the longest backoff.
	requireDropped(t, p, p.Banned4, 15*time.Second)
}

// A clean stop with on_shutdown: remove that cannot remove our rules says so
// and exits 1, rather than reporting success over rules left behind.
func TestE2EStopReportsRemovalFailure(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	dir, flag := brokenRestore(t, false)
	b := startBouncer(t, writeConfig(t, l, bouncerOpts{}), "PATH="+dir+":"+os.Getenv("PATH"))
	b.waitLog(t, "pulled decisions", within)
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	if code := b.wait(t, 30*time.Second); code != 1 {
		t.Fatalf("exit code %d when the rules could not be removed, want 1", code)
	}
	if !strings.Contains(b.out.String(), "injected failure") {
		t.Fatalf("the removal error is not reported:\n%s", tail(b.out.String(), 10))
	}
}
