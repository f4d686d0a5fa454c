// Package testenv holds helpers for tests that need a real kernel, a real
// LAPI or a peer bouncer. Nothing here is used outside tests.
package testenv

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
)

// childEnv names the variable that tells a re-executed test binary which
// test it runs inside a fresh network namespace.
const childEnv = "CSJB_NETNS_CHILD"

// parentNetnsEnv carries the parent's network namespace inode to the child,
// a second safety check besides comparing with pid 1's namespace.
const parentNetnsEnv = "CSJB_NETNS_PARENT"

// RequireRoot skips the test when not running as root, except in CI
// (env CI=true) where a skipped kernel test would hide a failure, so it
// fails instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test must run as root in CI (CI=true)")
	}
	t.Skip("this test needs root")
}

// NetnsInode returns the inode of the network namespace of the given
// /proc/<pid>/ns/net path, which identifies the namespace.
func NetnsInode(path string) (uint64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("stat %s: no inode information", path)
	}
	return st.Ino, nil
}

// InFreshNetns runs the calling test in a fresh, private network namespace,
// so that it may change iptables, ipset and nftables state without touching
// the host. It must be called first thing in a top-level test (not a
// subtest: the test is re-run by name with -test.run):
//
//	if !testenv.InFreshNetns(t) { return }
//
// In the parent process it re-executes the test binary under
// `unshare --net`, streams the child's output into t.Log, fails if the child
// failed, skipped or did not run the test, and returns false. In the child it
// checks that the namespace really is not the host's (t.Fatal otherwise),
// brings lo up, and returns true.
func InFreshNetns(t *testing.T) bool {
	t.Helper()
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("InFreshNetns must be called from a top-level test, not subtest %q", t.Name())
	}
	if os.Getenv(childEnv) == t.Name() {
		enterChild(t)
		return true
	}
	RequireRoot(t)
	runChild(t)
	return false
}

// enterChild is the child side: safety checks, then loopback up.
func enterChild(t *testing.T) {
	t.Helper()
	self, err := NetnsInode("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("netns child: %v", err)
	}
	// pid 1's namespace may be unreadable in a sandbox even for root; the
	// parent's inode, passed in the environment, is then the check.
	checked := false
	if host, err := NetnsInode("/proc/1/ns/net"); err == nil {
		checked = true
		if self == host {
			t.Fatal("netns child: still in pid 1's network namespace; refusing to touch the host firewall")
		}
	}
	if p := os.Getenv(parentNetnsEnv); p != "" {
		checked = true
		if p == strconv.FormatUint(self, 10) {
			t.Fatal("netns child: still in the parent's network namespace; refusing to touch the host firewall")
		}
	}
	if !checked {
		t.Fatal("netns child: cannot prove this is a fresh network namespace; refusing to continue")
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("netns child: find lo: %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("netns child: bring lo up: %v", err)
	}
}

// runChild is the parent side: re-exec the test binary in a new netns.
func runChild(t *testing.T) {
	t.Helper()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("netns: unshare not found (apt-get install util-linux): %v", err)
	}
	self, err := NetnsInode("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	args := []string{"--net", "--", os.Args[0],
		"-test.run", "^" + regexp.QuoteMeta(t.Name()) + "$",
		"-test.v", "-test.count=1"}
	if f := flag.Lookup("test.timeout"); f != nil && f.Value.String() != "" && f.Value.String() != "0s" {
		args = append(args, "-test.timeout="+f.Value.String())
	}
	ctx := t.Context()
	cmd := exec.CommandContext(ctx, unshare, args...)
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name(), parentNetnsEnv+"="+strconv.FormatUint(self, 10))
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	var out bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for sc.Scan() {
			line := sc.Text()
			out.WriteString(line)
			out.WriteByte('\n')
			t.Log("netns: " + line)
		}
		// Drain whatever a too-long line left so the child never blocks.
		_, _ = io.Copy(io.Discard, pr)
	}()
	runErr := cmd.Run()
	_ = pw.Close()
	wg.Wait()
	if err := childVerdict(t.Name(), out.String(), runErr); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatalf("netns child: %v", context.Cause(ctx))
	}
}

// childVerdict decides from the child's output and exit status whether the
// test really ran and passed in the namespace.
func childVerdict(name, out string, runErr error) error {
	if runErr != nil {
		return fmt.Errorf("netns child for %s failed: %w", name, runErr)
	}
	switch {
	case strings.Contains(out, "no tests to run"):
		return fmt.Errorf("netns child for %s ran no test", name)
	case strings.Contains(out, "--- SKIP: "+name+" "):
		return fmt.Errorf("netns child for %s skipped the test", name)
	case !strings.Contains(out, "--- PASS: "+name+" "):
		return fmt.Errorf("netns child for %s did not report PASS", name)
	}
	return nil
}
