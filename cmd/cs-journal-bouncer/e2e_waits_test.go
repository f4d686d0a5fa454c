package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/sdnotify/sdnotifytest"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// legacyTools puts iptables-legacy's tools first on PATH under the plain
// names the daemon runs (xtables-legacy-multi picks its mode from argv[0]).
func legacyTools(t *testing.T) string {
	t.Helper()
	multi, err := exec.LookPath("xtables-legacy-multi")
	if err != nil {
		t.Fatalf("iptables-legacy is not installed: %v", err)
	}
	dir := t.TempDir()
	for _, tool := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		if err := os.Symlink(multi, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// lockHeld reports whether someone holds the flock on path.
func lockHeld(path string) bool {
	return exec.Command("flock", "-n", path, "true").Run() != nil
}

// An xtables lock held by another program (iptables-legacy, which takes
// it) used to wedge the enforcer loop inside iptables-restore --wait. Now
// the wait is bounded: the loop keeps going round (systemd's watchdog, at
// the unit's WatchdogSec=30s, keeps getting pings), each expired wait is
// logged, and the repair lands once the lock is free. The lock file is
// the namespace-private XTABLES_LOCKFILE, so the host's /run/xtables.lock
// is never held.
func TestE2EHeldXtablesLockDoesNotWedgeTheLoop(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	lock := filepath.Join(t.TempDir(), "xtables.lock")
	if err := os.WriteFile(lock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	legacy := legacyTools(t)
	sock, msgs := sdnotifytest.Listen(t)
	b := launch(t, writeConfig(t, l, bouncerOpts{}), "PATH="+legacy+":"+os.Getenv("PATH"),
		"XTABLES_LOCKFILE="+lock, "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=30000000")
	b.waitLog(t, "journal enforced", 15*time.Second)
	if !strings.Contains(sh(t, "iptables-legacy", "-S", "INPUT"), "-j CROWDSEC_CHAIN") {
		t.Fatal("the daemon did not use iptables-legacy")
	}
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)

	// flock passes the locked fd on to sleep: release means killing both.
	holder := exec.Command("flock", lock, "sleep", "300")
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	release := func() { _ = syscall.Kill(-holder.Process.Pid, syscall.SIGKILL); _ = holder.Wait() }
	t.Cleanup(release)
	eventually(t, 10*time.Second, "the lock holder never took the lock", func() bool { return lockHeld(lock) })
	// Drift that needs iptables-restore: our jump deleted (by a tool using
	// another lock file, so it is not blocked itself).
	del := exec.Command(filepath.Join(legacy, "iptables"), "-D", "INPUT", "-j", "CROWDSEC_CHAIN")
	del.Env = append(os.Environ(), "XTABLES_LOCKFILE="+lock+".other")
	if out, err := del.CombinedOutput(); err != nil {
		t.Fatalf("delete jump: %v\n%s", err, out)
	}

	b.waitLog(t, "xtables lock wait timed out", 20*time.Second)
	sdnotifytest.Collect(msgs, 0) // pings from before the first expired wait
	sdnotifytest.WaitFor(t, msgs, 20*time.Second, "WATCHDOG=1")
	b.waitCount(t, "xtables lock wait timed out", 2, 20*time.Second)
	if !lockHeld(lock) {
		t.Fatal("the lock was released early: the test proves nothing")
	}
	if strings.Contains(b.out.String(), "withholding watchdog pings") {
		t.Fatalf("the watchdog saw a wedged loop:\n%s", tail(b.out.String(), 30))
	}
	if !strings.Contains(b.out.String(), "iptables-restore --noflush --wait 5") {
		t.Fatal("the timeout log line does not name the command")
	}

	release()
	if lockHeld(lock) {
		t.Fatal("lock still held after killing its holder")
	}
	b.waitLog(t, "repaired drift", 30*time.Second)
	requireDropped(t, p, p.Banned4, within)
	if !b.running() {
		t.Fatal("daemon gone")
	}
}

// iptables-nft takes no xtables lock, but any external tool can hang: an
// iptables-restore that never returns is killed at its deadline, with a
// log line naming it, and the loop goes on.
func TestE2EHungRestoreIsKilledAtItsDeadline(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	dir, flag := brokenRestore(t, true)
	sock, msgs := sdnotifytest.Listen(t)
	b := startBouncer(t, writeConfig(t, l, bouncerOpts{}), "PATH="+dir+":"+os.Getenv("PATH"),
		"NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=30000000")
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)

	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	both("-D INPUT -j CROWDSEC_CHAIN")(t, "", "")
	b.waitLog(t, "external command timed out and was killed", 30*time.Second)
	if !strings.Contains(b.out.String(), `cmd="`+filepath.Join(dir, "iptables-restore")) &&
		!strings.Contains(b.out.String(), `cmd="iptables-restore`) {
		t.Fatalf("the timeout line does not name iptables-restore:\n%s", tail(b.out.String(), 20))
	}
	sdnotifytest.Collect(msgs, 0)
	sdnotifytest.WaitFor(t, msgs, 20*time.Second, "WATCHDOG=1")
	if strings.Contains(b.out.String(), "withholding watchdog pings") {
		t.Fatalf("the watchdog saw a wedged loop:\n%s", tail(b.out.String(), 30))
	}
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	b.waitLog(t, "repaired drift", 30*time.Second)
	requireDropped(t, p, p.Banned4, within)
}
