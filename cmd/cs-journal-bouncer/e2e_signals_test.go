package main

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// SIGHUP, and SIGPIPE from a log reader that went away, used to kill the
// daemon with a status systemd's Restart=on-failure does not restart. Here
// the same process (same PID) keeps enforcing through both: a real packet
// from a peer banned afterwards is dropped.
func TestE2ESignalsDoNotStopTheDaemon(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)

	t.Run("SIGHUP re-reads the config and keeps enforcing", func(t *testing.T) {
		cfg := writeConfig(t, l, bouncerOpts{})
		b := startBouncer(t, cfg)
		pid := b.cmd.Process.Pid
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		b.waitLog(t, "SIGHUP: configuration re-read, valid and unchanged", within)
		// A changed file is named, not applied.
		text, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg, []byte(strings.Replace(string(text), "deny_action: DROP", "deny_action: REJECT", 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		b.waitLog(t, "restart the service to apply it", within)
		if !strings.Contains(b.out.String(), "changed=[deny_action]") {
			t.Fatalf("SIGHUP did not name the changed key:\n%s", tail(b.out.String(), 10))
		}
		l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
		requireDropped(t, p, p.Banned4, within)
		if !b.running() || b.cmd.Process.Pid != pid {
			t.Fatal("daemon gone after SIGHUP")
		}
		if strings.Contains(sh(t, "iptables", "-S", "CROWDSEC_CHAIN"), "REJECT") {
			t.Fatal("deny_action applied live on SIGHUP")
		}
		b.stop(t)
		l.CSCLI(t, "decisions", "delete", "--ip", p.Banned4.String())
	})

	t.Run("log reader gone, then SIGPIPE", func(t *testing.T) {
		b, closeReader := launchPiped(t, writeConfig(t, l, bouncerOpts{}))
		b.waitLog(t, "journal enforced", 15*time.Second)
		closeReader()
		// Every pull logs (log_level debug): the writes now hit a pipe
		// without a reader.
		l.CSCLI(t, "decisions", "add", "--ip", p.Banned6.String(), "-d", "4h")
		requireDropped(t, p, p.Banned6, within)
		if err := syscall.Kill(b.cmd.Process.Pid, syscall.SIGPIPE); err != nil {
			t.Fatal(err)
		}
		l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
		requireDropped(t, p, p.Banned4, within)
		if !b.running() {
			t.Fatalf("daemon died: %v", b.err)
		}
		b.stop(t) // exit 0 although its last words go nowhere
	})
}

// launchPiped starts the daemon with stdout and stderr on a pipe that the
// test reads into b.out until closeReader closes the read end.
func launchPiped(t *testing.T, cfg string) (b *bouncer, closeReader func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	b = &bouncer{t: t, cfg: cfg, out: &syncBuffer{}, ch: make(chan struct{})}
	b.cmd = exec.Command(os.Getenv(binEnv), "-c", cfg)
	b.cmd.Stdout, b.cmd.Stderr = w, w
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = w.Close() // the daemon holds the only write end
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			_, _ = b.out.Write([]byte(sc.Text() + "\n"))
		}
	}()
	b.reapInBackground()
	t.Cleanup(func() {
		if b.running() {
			b.stop(t)
		}
	})
	return b, func() {
		_ = r.Close()
		<-read
	}
}
