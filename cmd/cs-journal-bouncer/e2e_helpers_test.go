package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// The end-to-end tests run the real binary, as root, each in a fresh network
// namespace with a real LAPI (Debian's crowdsec) on its loopback and a peer
// namespace over veth whose pings prove what the kernel drops.

const binEnv = "CSJB_TEST_BINARY"

// TestMain builds the daemon once; children re-executed by InFreshNetns
// inherit its path through the environment.
func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv(binEnv) == "" && !testing.Short() && os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "csjb-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		bin := filepath.Join(dir, "cs-journal-bouncer")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
			os.Exit(1)
		}
		os.Setenv(binEnv, bin)
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// e2eSetup does the parts that need the host's network (downloads) and then
// moves the test into a fresh namespace. It returns false in the parent.
func e2eSetup(t *testing.T) bool {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test (-short)")
	}
	testenv.RequireRoot(t)
	if os.Getenv(binEnv) == "" {
		t.Fatal("daemon binary not built (TestMain)")
	}
	testenv.EnsureLAPIInstalled(t)
	testenv.EnsureTools(t)
	return testenv.InFreshNetns(t)
}

// bouncerOpts are the knobs tests turn; zero values give the defaults below.
type bouncerOpts struct {
	OnShutdown   string // remove (default) | keep
	Journal      string // journal path (default in the test's temp dir)
	URL, Key     string
	Extra        string // extra yaml lines
	DeepInterval string
	FightWindow  string
	Interval     string // heal.interval (default 1s)
	Mode         string // mode (default iptables)
	DenyAction   string // deny_action (default DROP)
}

const configTmpl = `mode: {{.Mode}}
update_frequency: 1s
api_url: {{.URL}}
api_key: {{.Key}}
log_mode: stdout
log_level: debug
disable_ipv6: false
deny_action: {{.DenyAction}}
iptables_chains:
  - INPUT
journal_path: {{.Journal}}
on_shutdown: {{.OnShutdown}}
heal:
  interval: {{.Interval}}
  deep_interval: {{.DeepInterval}}
  fight_window: {{.FightWindow}}
{{.Extra}}
`

// bouncer is one running daemon process.
type bouncer struct {
	t   *testing.T
	cmd *exec.Cmd
	cfg string
	out *syncBuffer
	mu  sync.Mutex
	err error // exit error, set once exited
	ch  chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// writeConfig renders a config file for the LAPI l.
func writeConfig(t *testing.T, l *testenv.LAPI, o bouncerOpts) string {
	t.Helper()
	if o.OnShutdown == "" {
		o.OnShutdown = "remove"
	}
	if o.Interval == "" {
		o.Interval = "1s"
	}
	if o.Mode == "" {
		o.Mode = "iptables"
	}
	if o.DenyAction == "" {
		o.DenyAction = "DROP"
	}
	if o.DeepInterval == "" {
		o.DeepInterval = "5m"
	}
	if o.FightWindow == "" {
		// Tests fault the firewall every few seconds on purpose: these are
		// separate incidents, not a fight (TestE2EDoesNotFight covers that).
		o.FightWindow = "1s"
	}
	if o.URL == "" && l != nil {
		o.URL, o.Key = l.URL, l.Key
	}
	if o.Journal == "" {
		o.Journal = filepath.Join(t.TempDir(), "journal.db")
	}
	var buf bytes.Buffer
	if err := template.Must(template.New("cfg").Parse(configTmpl)).Execute(&buf, o); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "crowdsec-firewall-bouncer.yaml")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startBouncer starts the daemon on cfg and waits until it enforces the
// journal. Cleanup stops it (SIGTERM) if still running.
func startBouncer(t *testing.T, cfg string, env ...string) *bouncer {
	t.Helper()
	b := launch(t, cfg, env...)
	b.waitLog(t, "journal enforced", 15*time.Second)
	return b
}

func launch(t *testing.T, cfg string, env ...string) *bouncer {
	t.Helper()
	b := &bouncer{t: t, cfg: cfg, out: &syncBuffer{}, ch: make(chan struct{})}
	b.cmd = exec.Command(os.Getenv(binEnv), "-c", cfg)
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	b.cmd.Env = append(os.Environ(), env...)
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start bouncer: %v", err)
	}
	b.reapInBackground()
	t.Cleanup(func() {
		if b.running() {
			b.stop(t)
		}
		if t.Failed() {
			t.Logf("bouncer output (pid %d):\n%s", b.cmd.Process.Pid, tail(b.out.String(), 60))
		}
	})
	return b
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (b *bouncer) running() bool {
	select {
	case <-b.ch:
		return false
	default:
		return syscall.Kill(b.cmd.Process.Pid, 0) == nil
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (b *bouncer) stop(t *testing.T) {
	t.Helper()
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.ch:
	case <-time.After(30 * time.Second):
		_ = b.cmd.Process.Kill()
		t.Fatalf("bouncer did not stop on SIGTERM:\n%s", tail(b.out.String(), 30))
	}
	if code := b.exitCode(); code != 0 {
		t.Fatalf("bouncer exited %d on SIGTERM:\n%s", code, tail(b.out.String(), 30))
	}
}

// kill9 kills the daemon without warning, as a crash or OOM would.
func (b *bouncer) kill9() {
	_ = b.cmd.Process.Kill()
	<-b.ch
}

// wait waits for the process to exit by itself and returns its exit code.
func (b *bouncer) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-b.ch:
	case <-time.After(timeout):
		t.Fatalf("bouncer still running after %v:\n%s", timeout, tail(b.out.String(), 30))
	}
	return b.exitCode()
}

func (b *bouncer) exitCode() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		return 0
	}
	if ee, ok := b.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// count returns how many log lines contain s.
func (b *bouncer) count(s string) int { return strings.Count(b.out.String(), s) }

func (b *bouncer) waitLog(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	b.waitCount(t, s, 1, timeout)
}

func (b *bouncer) waitCount(t *testing.T, s string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for b.count(s) < n {
		if !b.running() {
			t.Fatalf("bouncer exited (code %d) waiting for %q:\n%s", b.exitCode(), s, tail(b.out.String(), 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d× %q in the log after %v:\n%s", n, s, timeout, tail(b.out.String(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventually polls cond (each poll may itself take a second: a ping that is
// dropped waits for its reply that long).
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pings reports whether from reaches the bouncer's host.
func pings(t *testing.T, p *testenv.Peers, from netip.Addr) bool {
	t.Helper()
	to := p.Local4
	if from.Is6() {
		to = p.Local6
	}
	return p.Ping(t, from, to)
}

// requireDropped waits until the banned address is dropped and checks the
// clean one of the same family still passes: a firewall that drops
// everything does not count.
func requireDropped(t *testing.T, p *testenv.Peers, banned netip.Addr, within time.Duration) {
	t.Helper()
	eventually(t, within, banned.String()+" is still answered", func() bool { return !pings(t, p, banned) })
	clean := p.Clean4
	if banned.Is6() {
		clean = p.Clean6
	}
	// One lost echo on a loaded machine is not a drop: a firewall dropping
	// the clean peer drops all three.
	for i := 0; !pings(t, p, clean); i++ {
		if i == 2 {
			t.Fatalf("clean peer %s is dropped too", clean)
		}
	}
}

func requirePasses(t *testing.T, p *testenv.Peers, addr netip.Addr, within time.Duration) {
	t.Helper()
	eventually(t, within, addr.String()+" is still dropped", func() bool { return pings(t, p, addr) })
}

// sh runs a command in the test's namespace and fails the test on error.
func sh(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func tryRun(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// brokenRestore puts iptables-restore and ip6tables-restore wrappers in a
// directory to prepend to the daemon's PATH: they run the real tool, except
// while the returned flag file exists, when they fail (hang=false) or block
// (hang=true, like a stuck xtables lock). The faults are real processes
// failing, not hooks in the daemon.
func brokenRestore(t *testing.T, hang bool) (dir, flag string) {
	t.Helper()
	dir = t.TempDir()
	flag = filepath.Join(dir, "fail")
	fault := "[ -e %q ] && { echo 'injected failure' >&2; exit 1; }"
	if hang {
		fault = "while [ -e %q ]; do sleep 0.1; done"
	}
	for _, tool := range []string{"iptables-restore", "ip6tables-restore"} {
		real, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		script := fmt.Sprintf("#!/bin/sh\n"+fault+"\nexec %q \"$@\"\n", flag, real)
		if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir, flag
}

// benchAddr is the i-th address of 198.18.0.0/15 (131072 addresses).
func benchAddr(i int) string {
	return fmt.Sprintf("198.%d.%d.%d", 18+i/65536, (i/256)%256, i%256)
}

// reapInBackground waits for the started process and records how it ended
// (b.err, then b.ch closed), so the test can poll and stop it.
func (b *bouncer) reapInBackground() {
	go func() {
		err := b.cmd.Wait()
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
		close(b.ch)
	}()
}
