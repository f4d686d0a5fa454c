package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/sdnotify/sdnotifytest"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// The real daemon under a fake systemd: READY=1 once the journal is
// enforced, STATUS= lines, WATCHDOG=1 pings while the enforcer loop is
// alive — and none while the loop is wedged (here: iptables-restore hangs,
// as it does behind a stuck xtables lock), then again once it is free.
func TestE2ESystemdNotifyAndWatchdog(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	sock, msgs := sdnotifytest.Listen(t)
	dir, flag := brokenRestore(t, true)
	cfg := writeConfig(t, l, bouncerOpts{})
	// WatchdogSec=4s: pings every second while the loop (1s ticks) is alive.
	b := launch(t, cfg, "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=4000000", "PATH="+dir+":"+os.Getenv("PATH"))

	ready := sdnotifytest.WaitFor(t, msgs, 15*time.Second, "READY=1")
	// Our chain must already be in the kernel when systemd hears READY.
	if _, err := tryRun("iptables", "-S", "CROWDSEC_CHAIN"); err != nil {
		t.Fatal("READY=1 sent before our chain existed")
	}
	if !strings.Contains(ready, "STATUS=") {
		t.Errorf("READY without a STATUS line: %q", ready)
	}
	sdnotifytest.WaitFor(t, msgs, 5*time.Second, "WATCHDOG=1")
	l.CSCLI(t, "decisions", "add", "--ip", "192.0.2.10", "-d", "4h")
	b.waitLog(t, "pulled decisions", within)
	got := sdnotifytest.Collect(msgs, 3*time.Second)
	pings, status := 0, ""
	for _, m := range got {
		if sdnotifytest.Has(m, "WATCHDOG=1") {
			pings++
		}
		if f := sdnotifytest.Fields(m); f["STATUS"] != "" {
			status = f["STATUS"]
		}
	}
	if pings < 2 {
		t.Fatalf("%d watchdog pings in 3s with WatchdogSec=4s: %q", pings, got)
	}
	t.Logf("status line: %q", status)

	// Wedge the loop: the repair's iptables-restore hangs.
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	both("-D INPUT -j CROWDSEC_CHAIN")(t, "", "")
	// Detection (≤1s) + the 2s age limit + slack; what arrives meanwhile is
	// drained, not judged.
	sdnotifytest.Collect(msgs, 3500*time.Millisecond)
	stuck := sdnotifytest.Collect(msgs, 2*time.Second)
	for _, m := range stuck {
		if sdnotifytest.Has(m, "WATCHDOG=1") {
			t.Fatalf("watchdog ping while the loop is wedged: %q", stuck)
		}
	}
	if !strings.Contains(b.out.String(), "withholding watchdog pings") {
		t.Fatal("no log line about withheld pings")
	}
	// Unwedged: the repair completes and the pings resume.
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	b.waitLog(t, "repaired drift", 15*time.Second)
	sdnotifytest.WaitFor(t, msgs, 10*time.Second, "WATCHDOG=1")
}
