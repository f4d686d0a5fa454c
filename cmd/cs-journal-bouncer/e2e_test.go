package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// One update_frequency is 1s in these tests; "within" allows for the pull,
// the ping timeout (1s per dropped ping) and a loaded CI machine.
const within = 8 * time.Second

func TestE2EBansDropPacketsAndDeletesLiftThem(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	b := startBouncer(t, writeConfig(t, l, bouncerOpts{}))
	for _, a := range []netip.Addr{p.Banned4, p.Clean4, p.Banned6, p.Clean6} {
		if !pings(t, p, a) {
			t.Fatalf("%s dropped before any ban", a)
		}
	}

	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned6.String(), "-d", "4h")
	requireDropped(t, p, p.Banned6, within)

	l.CSCLI(t, "decisions", "delete", "--ip", p.Banned4.String())
	requirePasses(t, p, p.Banned4, within)
	l.CSCLI(t, "decisions", "delete", "--ip", p.Banned6.String())
	requirePasses(t, p, p.Banned6, within)

	// Ranges: 192.0.2.8/29 holds .10 but not .20; 2001:db8::10/126 holds ::10 but not ::20.
	l.CSCLI(t, "decisions", "add", "--range", "192.0.2.8/29", "-d", "4h")
	requireDropped(t, p, p.Banned4, within)
	l.CSCLI(t, "decisions", "add", "--range", "2001:db8::10/126", "-d", "4h")
	requireDropped(t, p, p.Banned6, within)
	// Another origin lands in its own set and is enforced too.
	l.CSCLI(t, "decisions", "delete", "--range", "192.0.2.8/29")
	requirePasses(t, p, p.Banned4, within)
	l.AddDecision(t, "lists", "Ip", p.Banned4.String(), "4h")
	requireDropped(t, p, p.Banned4, within)
	if !strings.Contains(sh(t, "ipset", "list", "-n"), "crowdsec-blacklists-") {
		t.Fatal("no per-origin set")
	}
	b.stop(t)
	// on_shutdown: remove (default) leaves nothing of ours.
	if out := sh(t, "iptables-save"); strings.Contains(out, "CROWDSEC") {
		t.Fatalf("rules left after remove:\n%s", out)
	}
	if out := sh(t, "ipset", "list", "-n"); strings.TrimSpace(out) != "" {
		t.Fatalf("sets left after remove: %s", out)
	}
	requirePasses(t, p, p.Banned4, within)
}

func TestE2EExpiryLiftsBan(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	startBouncer(t, writeConfig(t, l, bouncerOpts{}))
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "6s")
	requireDropped(t, p, p.Banned4, within)
	requirePasses(t, p, p.Banned4, 15*time.Second)
}

// The guarantee: bans are enforced from the journal at boot, before and
// without LAPI.
func TestE2EJournalEnforcedWithLAPIDown(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	cfg := writeConfig(t, l, bouncerOpts{})
	b := startBouncer(t, cfg)
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned6.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)
	requireDropped(t, p, p.Banned6, within)
	b.stop(t) // on_shutdown: remove — the host is open now
	requirePasses(t, p, p.Banned4, within)

	l.Stop(t)
	b2 := startBouncer(t, cfg)
	if !pings(t, p, p.Clean4) || pings(t, p, p.Banned4) || pings(t, p, p.Banned6) {
		t.Fatal("journal not enforced at boot with LAPI down")
	}
	b2.waitLog(t, "LAPI unreachable", within)
	if pings(t, p, p.Banned4) {
		t.Fatal("ban lost while LAPI is down")
	}
}

func TestE2EDeletedWhileDownLiftedOnReconnect(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	cfg := writeConfig(t, l, bouncerOpts{OnShutdown: "keep"})
	b := startBouncer(t, cfg)
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned6.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)
	requireDropped(t, p, p.Banned6, within)
	b.stop(t)
	l.CSCLI(t, "decisions", "delete", "--ip", p.Banned4.String())
	b2 := startBouncer(t, cfg)
	b2.waitLog(t, "pulled decisions", within)
	requirePasses(t, p, p.Banned4, within)
	if pings(t, p, p.Banned6) {
		t.Fatal("ban still active in LAPI was lifted")
	}
}

func TestE2EKeepEnforcesAcrossRestart(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	cfg := writeConfig(t, l, bouncerOpts{OnShutdown: "keep"})
	b := startBouncer(t, cfg)
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)
	b.stop(t)
	if pings(t, p, p.Banned4) {
		t.Fatal("on_shutdown: keep, but the ban stopped while the bouncer was down")
	}
	b2 := startBouncer(t, cfg)
	b2.waitLog(t, "pulled decisions", within)
	requireDropped(t, p, p.Banned4, within)
	if n := strings.Count(sh(t, "iptables-save"), "-j CROWDSEC_CHAIN"); n != 1 {
		t.Fatalf("%d jump rules after a keep restart, want 1", n)
	}
}

func TestE2ESecondInstanceRefused(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	cfg := writeConfig(t, l, bouncerOpts{})
	startBouncer(t, cfg)
	second := launch(t, cfg)
	if code := second.wait(t, 15*time.Second); code != 1 {
		t.Fatalf("second instance exit code %d, want 1", code)
	}
	if !strings.Contains(second.out.String(), "another cs-journal-bouncer") {
		t.Fatalf("second instance error unclear:\n%s", second.out.String())
	}
}

func TestE2ECorruptJournalSurvived(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	journal := filepath.Join(t.TempDir(), "journal.db")
	if err := os.WriteFile(journal, []byte(strings.Repeat("not a bbolt file ", 400)), 0o600); err != nil {
		t.Fatal(err)
	}
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	b := startBouncer(t, writeConfig(t, l, bouncerOpts{Journal: journal}))
	b.waitLog(t, "journal was corrupt", within)
	requireDropped(t, p, p.Banned4, within)
	aside, _ := filepath.Glob(journal + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("corrupt journal not moved aside: %v", aside)
	}
}
