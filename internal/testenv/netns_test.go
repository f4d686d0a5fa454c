package testenv

import (
	"errors"
	"net"
	"os"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"
)

// probeAddr is a documentation address the child puts on its own lo; the
// parent must not see it on the host's lo.
const probeAddr = "192.0.2.77/32"

func loHasAddr(t *testing.T, cidr string) bool {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	addrs, err := netlink.AddrList(lo, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list lo addresses: %v", err)
	}
	for _, a := range addrs {
		if a.IPNet.String() == cidr {
			return true
		}
	}
	return false
}

func TestInFreshNetnsIsolates(t *testing.T) {
	if loHasAddr(t, probeAddr) {
		t.Fatalf("host lo already has %s; cannot prove isolation", probeAddr)
	}
	if !InFreshNetns(t) {
		// Parent: the child added probeAddr to its lo and passed; the
		// host's lo must still not have it.
		if loHasAddr(t, probeAddr) {
			t.Fatalf("child's address %s leaked into the parent namespace", probeAddr)
		}
		return
	}
	self, err := NetnsInode("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if parent := os.Getenv(parentNetnsEnv); parent == "" || parent == strconv.FormatUint(self, 10) {
		t.Fatalf("child netns %d, parent %q: not a fresh namespace", self, parent)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Fatal("lo is not up in the child")
	}
	addr, err := netlink.ParseAddr(probeAddr)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(lo, addr); err != nil {
		t.Fatalf("add %s to lo: %v", probeAddr, err)
	}
	if !loHasAddr(t, probeAddr) {
		t.Fatal("address not visible in the child after adding it")
	}
}

func TestChildVerdict(t *testing.T) {
	const name = "TestX"
	tests := []struct {
		desc   string
		out    string
		runErr error
		ok     bool
	}{
		{"pass", "=== RUN   TestX\n--- PASS: TestX (0.00s)\nPASS\n", nil, true},
		{"exit error", "--- PASS: TestX (0.00s)\n", errors.New("exit status 1"), false},
		{"skipped", "=== RUN   TestX\n--- SKIP: TestX (0.00s)\nPASS\n", nil, false},
		{"no tests", "testing: warning: no tests to run\nPASS\n", nil, false},
		{"other test passed", "--- PASS: TestXY (0.00s)\n", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			err := childVerdict(name, tc.out, tc.runErr)
			if (err == nil) != tc.ok {
				t.Fatalf("childVerdict() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
