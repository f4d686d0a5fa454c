package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// cmdTimeout bounds one ip/ping/sysctl call.
const cmdTimeout = 20 * time.Second

// Peers is a second network namespace joined to the test's namespace by a
// veth pair: hosts that send traffic to the bouncer, one banned and one
// clean address per family, so tests can prove a ban drops exactly the
// banned source.
type Peers struct {
	// NS is the peer namespace name (ip netns), removed at cleanup.
	NS string
	// Link and PeerLink are the test-side and peer-side veth names.
	Link, PeerLink string
	// Local4 and Local6 are the test side's addresses (the bouncer host).
	Local4, Local6 netip.Addr
	// Banned4/Banned6 are the peer addresses tests ban; Clean4/Clean6 stay
	// allowed and show the firewall does not drop everything.
	Banned4, Clean4, Banned6, Clean6 netip.Addr
}

// Addresses of the peer setup, all in documentation ranges.
var (
	peerLocal4  = netip.MustParseAddr("192.0.2.1")
	peerLocal6  = netip.MustParseAddr("2001:db8::1")
	peerBanned4 = netip.MustParseAddr("192.0.2.10")
	peerClean4  = netip.MustParseAddr("192.0.2.20")
	peerBanned6 = netip.MustParseAddr("2001:db8::10")
	peerClean6  = netip.MustParseAddr("2001:db8::20")
)

var toolsOnce = sync.OnceValue(func() error {
	if _, err := exec.LookPath("ip"); err != nil {
		if err := aptInstall("iproute2"); err != nil {
			return err
		}
	}
	if _, err := exec.LookPath("ping"); err != nil {
		if err := aptInstall("iputils-ping"); err != nil {
			return err
		}
	}
	return nil
})

// EnsureTools installs what Peers needs (ip, ping) when missing. apt needs
// the network, so call it before InFreshNetns.
func EnsureTools(t testing.TB) {
	t.Helper()
	if err := toolsOnce(); err != nil {
		t.Fatalf("install test tools (needs network: call EnsureTools before InFreshNetns): %v", err)
	}
}

// aptInstall installs Debian packages, running apt-get update once if the
// first attempt fails (fresh machines have no package lists).
func aptInstall(pkgs ...string) error {
	run := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w: %s", strings.Join(args, " "), err, lastLines(string(out), 5))
		}
		return nil
	}
	install := append([]string{"install", "-y", "-q"}, pkgs...)
	if run(install...) == nil {
		return nil
	}
	if err := run("update", "-q"); err != nil {
		return err
	}
	return run(install...)
}

// NewPeers creates the peer namespace (csjb-peer-<random>) and a veth pair
// from the current namespace to it. Test side: 192.0.2.1/24 and
// 2001:db8::1/64; peer side: 192.0.2.10, 192.0.2.20, 2001:db8::10 and
// 2001:db8::20. It must run inside InFreshNetns: it refuses the host's
// namespace. Cleanup deletes the peer namespace (which removes the pair).
func NewPeers(t *testing.T) *Peers {
	t.Helper()
	requireFreshNetns(t)
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: call EnsureTools before InFreshNetns: %v", tool, err)
		}
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatalf("random peer name: %v", err)
	}
	id := hex.EncodeToString(rnd[:])
	p := &Peers{
		NS:   "csjb-peer-" + id,
		Link: "csjb" + id + "t", PeerLink: "csjb" + id + "p", // ≤ 15 bytes (IFNAMSIZ)
		Local4: peerLocal4, Local6: peerLocal6,
		Banned4: peerBanned4, Clean4: peerClean4, Banned6: peerBanned6, Clean6: peerClean6,
	}
	mustRun(t, "ip", "netns", "add", p.NS)
	t.Cleanup(func() {
		if _, err := run(context.Background(), "ip", "netns", "delete", p.NS); err != nil {
			t.Errorf("delete peer namespace: %v", err)
		}
	})
	mustRun(t, "ip", "link", "add", p.Link, "type", "veth", "peer", "name", p.PeerLink, "netns", p.NS)
	// No duplicate address detection on either side: addresses (link-local
	// ones too) are usable at once instead of "tentative" for a second or two.
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+p.Link+"/accept_dad", []byte("0"), 0o644); err != nil {
		t.Fatalf("disable DAD on %s: %v", p.Link, err)
	}
	mustRun(t, "ip", "netns", "exec", p.NS, "sysctl", "-q", "-w", "net.ipv6.conf."+p.PeerLink+".accept_dad=0")

	mustRun(t, "ip", "addr", "add", p.Local4.String()+"/24", "dev", p.Link)
	mustRun(t, "ip", "-6", "addr", "add", p.Local6.String()+"/64", "dev", p.Link, "nodad")
	mustRun(t, "ip", "link", "set", p.Link, "up")
	for _, a := range []netip.Addr{p.Banned4, p.Clean4} {
		mustRun(t, "ip", "-n", p.NS, "addr", "add", a.String()+"/24", "dev", p.PeerLink)
	}
	for _, a := range []netip.Addr{p.Banned6, p.Clean6} {
		mustRun(t, "ip", "-n", p.NS, "-6", "addr", "add", a.String()+"/64", "dev", p.PeerLink, "nodad")
	}
	mustRun(t, "ip", "-n", p.NS, "link", "set", "lo", "up")
	mustRun(t, "ip", "-n", p.NS, "link", "set", p.PeerLink, "up")
	p.waitUp(t)
	return p
}

// waitUp polls until both veth ends report carrier: "ip link set up" returns
// before the kernel has finished, and a ping sent earlier is lost.
func (p *Peers) waitUp(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		local, errL := run(t.Context(), "ip", "-o", "link", "show", "dev", p.Link)
		peer, errP := run(t.Context(), "ip", "-n", p.NS, "-o", "link", "show", "dev", p.PeerLink)
		if errL == nil && errP == nil && strings.Contains(local, "state UP") && strings.Contains(peer, "state UP") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("veth pair not up after 10s:\n%s\n%s (%v, %v)", local, peer, errL, errP)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Ping sends one ICMP echo from the peer address from to the address to and
// reports whether it was answered. Other failures (bad address, missing
// ping) end the test.
func (p *Peers) Ping(t *testing.T, from, to netip.Addr) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
	defer cancel()
	out, err := run(ctx, "ip", "netns", "exec", p.NS, "ping", "-n", "-q", "-c1", "-W1", "-I", from.String(), to.String())
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false // ping's "no reply" status
	default:
		t.Fatalf("ping %s -> %s: %v\n%s", from, to, err, out)
		return false
	}
}

// Answers is Ping for an address that must answer: a first echo can be lost
// while neighbour discovery settles on a loaded machine, so it tries three
// times before saying no. Use Ping where no answer is expected.
func (p *Peers) Answers(t *testing.T, from, to netip.Addr) bool {
	t.Helper()
	for range 3 {
		if p.Ping(t, from, to) {
			return true
		}
	}
	return false
}

// Exec runs a command inside the peer namespace and returns its combined
// output; failures end the test.
func (p *Peers) Exec(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, append([]string{"ip", "netns", "exec", p.NS}, args...)...)
}

// requireFreshNetns refuses to go on in the host's network namespace: the
// helpers here create links and addresses.
func requireFreshNetns(t *testing.T) {
	t.Helper()
	if err := checkFreshNetns(os.Getenv(childEnv), os.Getenv(parentNetnsEnv)); err != nil {
		t.Fatal(err)
	}
}

// checkFreshNetns explains why the current namespace may not be changed.
// Only InFreshNetns's child may (child names its test), and only when its
// namespace provably differs from the parent's (parent is the parent's
// namespace inode) or pid 1's; like enterChild, it refuses when it cannot
// prove either, since pid 1's namespace is unreadable in some sandboxes.
func checkFreshNetns(child, parent string) error {
	if child == "" {
		return errors.New("not inside InFreshNetns: refusing to change the host's network")
	}
	self, err := NetnsInode("/proc/self/ns/net")
	if err != nil {
		return err
	}
	proved := false
	if host, err := NetnsInode("/proc/1/ns/net"); err == nil {
		if host == self {
			return errors.New("in pid 1's network namespace: refusing to change the host's network")
		}
		proved = true
	}
	if parent != "" {
		if parent == strconv.FormatUint(self, 10) {
			return errors.New("in the parent's network namespace: refusing to change the host's network")
		}
		proved = true
	}
	if !proved {
		return errors.New("cannot prove this is a fresh network namespace: refusing to change the network")
	}
	return nil
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
	defer cancel()
	out, err := run(ctx, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

func run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return out.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
