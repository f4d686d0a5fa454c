package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// The journal's disk fails under the real daemon: a tmpfs that fills, a
// read-only mount, a file overwritten while running. Enforcement must go on
// from memory, /health must say so, and durability must come back.

// privateMounts is a mount namespace of its own, held by a sleeping
// process: mounts made in it never reach the host (propagation private)
// and vanish with it. The daemon runs inside it through a wrapper.
type privateMounts struct {
	pid int
}

func newPrivateMounts(t *testing.T) *privateMounts {
	t.Helper()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sleep", "infinity")
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare --mount: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	m := &privateMounts{pid: cmd.Process.Pid}
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the holder never entered a new mount namespace", func() bool {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", m.pid))
		return err == nil && ns != self
	})
	return m
}

// sh runs a shell command inside the namespace.
func (m *privateMounts) sh(t *testing.T, script string) {
	t.Helper()
	sh(t, "nsenter", "-t", strconv.Itoa(m.pid), "-m", "--", "sh", "-c", script)
}

// path is p as seen inside the namespace, for this process to use.
func (m *privateMounts) path(p string) string {
	return fmt.Sprintf("/proc/%d/root%s", m.pid, p)
}

// runDaemonInside makes launch start the daemon inside the namespace
// (nsenter execs it: same pid, signals reach it).
func (m *privateMounts) runDaemonInside(t *testing.T) {
	t.Helper()
	w := filepath.Join(t.TempDir(), "in-mount-ns")
	script := fmt.Sprintf("#!/bin/sh\nexec nsenter -t %d -m -- %q \"$@\"\n", m.pid, os.Getenv(binEnv))
	if err := os.WriteFile(w, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(binEnv, w)
}

// healthReport is /health's status and reasons.
func healthReport(t *testing.T, base string) (string, []string) {
	t.Helper()
	resp, err := http.Get(base + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status  string   `json:"status"`
		Reasons []string `json:"reasons"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("/health body: %v", err)
	}
	return r.Status, r.Reasons
}

func requireJournalDegraded(t *testing.T, base string) {
	t.Helper()
	// The endpoint starts a moment after the journal is enforced: wait for
	// it to answer, then judge its first answer.
	eventually(t, within, "/health never answered", func() bool {
		resp, err := http.Get(base + "/health")
		if err == nil {
			_ = resp.Body.Close()
		}
		return err == nil
	})
	st, reasons := healthReport(t, base)
	if st != "degraded" || !slices.ContainsFunc(reasons, func(r string) bool {
		return strings.Contains(r, "journal cannot be written")
	}) {
		t.Fatalf("/health = %s %q, want degraded because of the journal", st, reasons)
	}
}

func requireHealthy(t *testing.T, base string) {
	t.Helper()
	eventually(t, within, "/health never healthy again", func() bool {
		st, _ := healthReport(t, base)
		return st == "healthy"
	})
}

func promExtra(port int) string {
	return fmt.Sprintf("  backoff_initial: 500ms\n  backoff_max: 2s\nprometheus:\n  enabled: true\n  listen_addr: 127.0.0.1\n  listen_port: %d", port)
}

// The journal sits on a tiny tmpfs that fills during a 100k sync: every
// ban is enforced, the daemon lives on, /health is degraded; once space is
// freed the journal is written and /health is healthy again.
func TestE2EJournalDiskFullDuring100kSync(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	const n = 100_000
	l := testenv.StartLAPI(t)
	var csv strings.Builder
	csv.WriteString("value,duration,reason,scope,type,origin\n")
	want := make([]netip.Prefix, 0, n)
	for i := range n {
		a := benchAddr(i)
		fmt.Fprintf(&csv, "%s,4h,disk-full-test,ip,ban,cscli-import\n", a)
		want = append(want, netip.MustParsePrefix(a+"/32"))
	}
	slices.SortFunc(want, comparePrefix)
	csvPath := filepath.Join(t.TempDir(), "bans.csv")
	if err := os.WriteFile(csvPath, []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	l.CSCLI(t, "decisions", "import", "-i", csvPath)

	// 4 MiB of tmpfs, all but 96 KiB taken by a filler: room for an empty
	// journal, not for 100k bans (their snapshot alone is ≈200 KB: these
	// consecutive addresses cost about 2 bytes each).
	m := newPrivateMounts(t)
	dir := filepath.Join(t.TempDir(), "journal")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m.sh(t, "mount -t tmpfs -o size=4m,mode=0700 tmpfs "+dir)
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(m.path(filler), make([]byte, 4<<20-96<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	m.runDaemonInside(t)
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	jpath := filepath.Join(dir, "journal.db")
	cfg := writeConfig(t, l, bouncerOpts{Journal: jpath, Extra: promExtra(port)})
	b := startBouncer(t, cfg)

	b.waitLog(t, "journal write failed: enforcing from memory", 60*time.Second)
	b.waitLog(t, "full set applied", 60*time.Second)
	requireSame(t, "disk full: kernel vs LAPI", kernelMembers(t), want)
	if !b.running() {
		t.Fatal("daemon exited")
	}
	requireJournalDegraded(t, base)
	_, fams := scrape(t, base)
	if v := value(fams, "cs_journal_bouncer_journal_write_failures_total", nil); v < 1 {
		t.Fatalf("journal_write_failures_total = %v", v)
	}
	if v := value(fams, "cs_journal_bouncer_journal_durable", nil); v != 0 {
		t.Fatalf("journal_durable = %v with the disk full", v)
	}

	if err := os.Remove(m.path(filler)); err != nil {
		t.Fatal(err)
	}
	b.waitLog(t, "journal durable again", 30*time.Second)
	requireHealthy(t, base)
	b.stop(t)
	requireSame(t, "journal after the disk was freed vs LAPI", journalMembers(t, m.path(jpath)), want)
}

// The journal file is overwritten while the daemon runs: no panic, the
// file is moved aside and rewritten from memory, enforcement goes on.
func TestE2EJournalOverwrittenWhileRunning(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	jpath := filepath.Join(t.TempDir(), "journal.db")
	cfg := writeConfig(t, l, bouncerOpts{Journal: jpath, OnShutdown: "keep"})
	first, second := netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("192.0.2.11/32")
	l.CSCLI(t, "decisions", "add", "--ip", first.Addr().String(), "-d", "4h")
	b := startBouncer(t, cfg)
	hasAll := func(ps ...netip.Prefix) func() bool {
		return func() bool {
			got := kernelMembers(t)
			for _, p := range ps {
				if !slices.Contains(got, p) {
					return false
				}
			}
			return true
		}
	}
	eventually(t, within, "first ban not enforced", hasAll(first))

	fi, err := os.Stat(jpath)
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, fi.Size())
	r := rand.New(rand.NewPCG(5, 6))
	for i := range garbage {
		garbage[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(jpath, garbage, 0o600); err != nil { // same inode
		t.Fatal(err)
	}
	l.CSCLI(t, "decisions", "add", "--ip", second.Addr().String(), "-d", "4h")
	b.waitLog(t, "journal file changed under the daemon: moved aside", within)
	eventually(t, within, "bans not enforced after the journal was overwritten", hasAll(first, second))
	if b.count("panic") > 0 {
		t.Fatal("the daemon logged a panic")
	}
	b.stop(t)
	if asides, _ := filepath.Glob(jpath + ".corrupt-*"); len(asides) != 1 {
		t.Fatalf("moved-aside files: %v, want 1", asides)
	}
	requireSame(t, "rewritten journal", journalMembers(t, jpath), []netip.Prefix{first, second})
}

func TestE2EJournalReadOnlyDirAtBoot(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	testReadOnlyJournalAtBoot(t, false)
}

func TestE2EJournalReadOnlyFileAtBoot(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	testReadOnlyJournalAtBoot(t, true)
}

// testReadOnlyJournalAtBoot: a journal that can be read but not written
// (its directory, or the file alone, mounted read-only) is enforced at boot
// with LAPI down; new LAPI bans are enforced from memory; once writable,
// the journal catches up, so a restart with LAPI down enforces them all.
func testReadOnlyJournalAtBoot(t *testing.T, fileOnly bool) {
	l := testenv.StartLAPI(t)
	dir := filepath.Join(t.TempDir(), "journal")
	jpath := filepath.Join(dir, "journal.db")
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := writeConfig(t, l, bouncerOpts{Journal: jpath, Extra: promExtra(port)})
	first, second := netip.MustParsePrefix("192.0.2.20/32"), netip.MustParsePrefix("192.0.2.21/32")
	l.CSCLI(t, "decisions", "add", "--ip", first.Addr().String(), "-d", "4h")
	b := startBouncer(t, cfg)
	eventually(t, within, "first ban not enforced", func() bool { return slices.Contains(kernelMembers(t), first) })
	b.stop(t) // on_shutdown remove: the kernel is empty again
	if got := kernelMembers(t); len(got) != 0 {
		t.Fatalf("kernel still holds %v after a removing stop", got)
	}

	l.Stop(t)
	m := newPrivateMounts(t)
	target := dir
	if fileOnly {
		target = jpath
	}
	m.sh(t, fmt.Sprintf("mount --bind %[1]q %[1]q && mount -o remount,bind,ro %[1]q", target))
	m.runDaemonInside(t)
	b = startBouncer(t, cfg)
	b.waitLog(t, "journal cannot be written: enforcing it from memory", within)
	eventually(t, within, "journal's ban not enforced from a read-only journal", func() bool {
		return slices.Contains(kernelMembers(t), first)
	})
	requireJournalDegraded(t, base)

	l.Start(t)
	l.CSCLI(t, "decisions", "add", "--ip", second.Addr().String(), "-d", "4h")
	eventually(t, within, "new LAPI ban not enforced with the journal read-only", func() bool {
		return slices.Contains(kernelMembers(t), second)
	})
	requireJournalDegraded(t, base)

	m.sh(t, fmt.Sprintf("mount -o remount,bind,rw %q", target))
	b.waitLog(t, "journal durable again", within)
	requireHealthy(t, base)
	b.stop(t)

	l.Stop(t)
	b = startBouncer(t, cfg)
	b.waitLog(t, "LAPI unreachable", within)
	requireSame(t, "restart with LAPI down: kernel", kernelMembers(t), []netip.Prefix{first, second})
	b.stop(t)
}

// A fatal cause reaches the configured log file, not only stderr.
func TestE2EFatalCauseInLogFile(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test (-short)")
	}
	testenv.RequireRoot(t)
	if os.Getenv(binEnv) == "" {
		t.Fatal("daemon binary not built (TestMain)")
	}
	if !testenv.InFreshNetns(t) {
		return
	}
	jpath := filepath.Join(t.TempDir(), "journal.db")
	held, err := journal.Open(journal.Options{Path: jpath, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	logDir := t.TempDir()
	cfg := writeConfig(t, nil, bouncerOpts{Journal: jpath, URL: "http://127.0.0.1:9/", Key: "unused"})
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	data = []byte(strings.Replace(string(data), "log_mode: stdout", "log_mode: file\nlog_dir: "+logDir, 1))
	if err := os.WriteFile(cfg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	b := launch(t, cfg)
	if code := b.wait(t, 30*time.Second); code != 1 {
		t.Fatalf("exit code %d with the journal locked, want 1:\n%s", code, b.out.String())
	}
	if !strings.Contains(b.out.String(), "locked by another process") {
		t.Fatalf("stderr lacks the cause:\n%s", b.out.String())
	}
	logged, err := os.ReadFile(filepath.Join(logDir, "cs-journal-bouncer.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logged), "exiting on a fatal error") || !strings.Contains(string(logged), "locked by another process") {
		t.Fatalf("log file lacks the fatal cause:\n%s", logged)
	}
}
