package pkgtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// artifacts are built once per test binary: the .deb under test (make
// deb) and the cached Debian root (scripts/pkgtest-root.sh).
var artifacts struct {
	once     sync.Once
	deb      string
	root     string
	err      error
	rootTook time.Duration
}

func repoRoot(t *testing.T) string {
	t.Helper()
	r, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// prepare skips (outside CI) or fails unless root, then builds the .deb
// and the Debian root once.
func prepare(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("package tests boot a Debian root under systemd: not in -short")
	}
	testenv.RequireRoot(t)
	repo := repoRoot(t)
	artifacts.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "make", "-s", "-C", repo, "deb").CombinedOutput()
		if err != nil {
			artifacts.err = fmt.Errorf("make deb: %w\n%s", err, out)
			return
		}
		lines := strings.Fields(strings.TrimSpace(string(out)))
		artifacts.deb = filepath.Join(repo, lines[len(lines)-1])
		t0 := time.Now()
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "bash", filepath.Join(repo, "scripts", "pkgtest-root.sh"))
		cmd.Stderr = &stderr
		out, err = cmd.Output()
		if err != nil {
			artifacts.err = fmt.Errorf("pkgtest-root.sh: %w\n%s", err, stderr.String())
			return
		}
		artifacts.root = strings.TrimSpace(string(out))
		artifacts.rootTook = time.Since(t0)
	})
	if artifacts.err != nil {
		t.Fatal(artifacts.err)
	}
	t.Logf("package %s; Debian root %s (ready in %s)", filepath.Base(artifacts.deb), artifacts.root, artifacts.rootTook.Round(time.Millisecond))
}

// machine is a copy of the cached Debian root booted with systemd as PID 1
// in its own pid, mount, network and UTS namespaces.
type machine struct {
	t      *testing.T
	merged string // the root as the host sees it (an overlay)
	pid    int    // systemd, as a host pid
}

// boot starts a machine on an overlay of the cached root (writes go to a
// per-test directory; the cache is never written) and waits until systemd
// has finished starting its units.
func boot(t *testing.T) *machine {
	t.Helper()
	prepare(t)
	dir := t.TempDir()
	m := &machine{t: t, merged: filepath.Join(dir, "merged")}
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", artifacts.root, dir, dir)
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", opts, m.merged).CombinedOutput(); err != nil {
		t.Fatalf("mount overlay: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", m.merged).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", m.merged, err, out)
		}
	})

	// A fresh /proc for the new pid namespace; /sys and /dev from the host;
	// /run and /tmp empty, as on a booted machine.
	script := `set -e
M=$1
mount -t proc proc "$M/proc"
mount --rbind /sys "$M/sys"
mount --rbind /dev "$M/dev"
mount -t tmpfs -o mode=0755 tmpfs "$M/run"
mount -t tmpfs -o mode=1777 tmpfs "$M/tmp"
exec chroot "$M" /lib/systemd/systemd --system`
	console, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--propagation", "private",
		"sh", "-c", script, "boot", m.merged)
	cmd.Stdout, cmd.Stderr = console, console
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); console.Close() }()
	t.Cleanup(func() {
		if m.pid > 0 {
			// SIGKILL of a pid namespace's init kills everything in it.
			_ = exec.Command("kill", "-KILL", strconv.Itoa(m.pid)).Run()
		} else {
			_ = cmd.Process.Kill()
		}
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("machine did not die")
		}
	})
	m.pid = m.waitInit(t, cmd.Process.Pid, done)
	state := ""
	ok := poll(90*time.Second, func() bool {
		state, _ = m.sh("systemctl is-system-running")
		state = strings.TrimSpace(state)
		return state == "running" || state == "degraded"
	})
	if !ok {
		log, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		failed, _ := m.sh("systemctl --failed --no-pager; journalctl -b --no-pager | tail -40")
		t.Fatalf("systemd did not finish booting (state %q)\nconsole: %s\n%s", state, log, failed)
	}
	if state == "degraded" {
		failed, _ := m.sh("systemctl --failed --no-pager")
		t.Logf("machine booted degraded:\n%s", failed)
	}
	return m
}

// waitInit finds systemd: the child unshare forks into the new pid
// namespace, once it has exec'd systemd.
func (m *machine) waitInit(t *testing.T, unsharePID int, done <-chan error) int {
	t.Helper()
	var pid int
	ok := poll(30*time.Second, func() bool {
		select {
		case err := <-done:
			t.Fatalf("unshare exited early: %v", err)
		default:
		}
		kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", unsharePID, unsharePID))
		if err != nil || len(bytes.Fields(kids)) == 0 {
			return false
		}
		pid, _ = strconv.Atoi(string(bytes.Fields(kids)[0]))
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		return err == nil && strings.HasSuffix(exe, "/systemd")
	})
	if !ok {
		t.Fatal("systemd never started in the namespaces")
	}
	return pid
}

// sh runs a shell script inside the machine (all its namespaces and its
// root) with a clean environment, and returns stdout+stderr.
func (m *machine) sh(script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(m.pid), "-m", "-p", "-n", "-u", "-r", "-w",
		"env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "TERM=dumb", "DEBIAN_FRONTEND=noninteractive",
		"sh", "-c", script)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must is sh that fails the test on a non-zero exit.
func (m *machine) must(script string) string {
	m.t.Helper()
	out, err := m.sh(script)
	if err != nil {
		m.t.Fatalf("in the machine: %s: %v\n%s", script, err, out)
	}
	return out
}

// netns runs a host binary in the machine's network namespace only: the
// kernel probes use the host's nft, iptables and ipset, which see exactly
// the machine's firewall.
func (m *machine) netns(ctx context.Context, args ...string) ([]byte, error) {
	all := append([]string{"-t", strconv.Itoa(m.pid), "-n"}, args...)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "nsenter", all...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// copyIn puts a host file into the machine at path.
func (m *machine) copyIn(src, path string) {
	m.t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.merged, path), data, 0o644); err != nil {
		m.t.Fatal(err)
	}
}

// installDeb copies the package in and runs apt install on it; it returns
// apt's output with dpkg's progress noise removed.
func (m *machine) installDeb(flags string) (string, error) {
	m.copyIn(artifacts.deb, "/root/"+filepath.Base(artifacts.deb))
	out, err := m.sh("apt-get install -y -q " + flags + " /root/" + filepath.Base(artifacts.deb) + " 2>&1")
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "Reading database") || strings.HasPrefix(l, "debconf:") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n"), err
}

// active reports systemctl is-active of a unit.
func (m *machine) active(unit string) string {
	out, _ := m.sh("systemctl is-active " + unit)
	return strings.TrimSpace(out)
}

// mainPID is the unit's main process, as a pid inside the machine.
func (m *machine) mainPID(unit string) string {
	out, _ := m.sh("systemctl show -p MainPID --value " + unit)
	return strings.TrimSpace(out)
}

// poll calls cond every 50ms until it returns true or the deadline passes.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
