package testenv

import (
	"net/netip"
	"os"
	"strconv"
	"testing"
)

// TestPeers checks the peer namespace with no firewall: every peer address
// reaches the test side in both families, and Ping can also say no (an
// address nobody holds), so the check is not vacuous.
func TestPeers(t *testing.T) {
	RequireRoot(t)
	EnsureTools(t)
	if !InFreshNetns(t) {
		return
	}
	p := NewPeers(t)
	tests := []struct {
		name     string
		from, to netip.Addr
		want     bool
	}{
		{"banned v4", p.Banned4, p.Local4, true},
		{"clean v4", p.Clean4, p.Local4, true},
		{"banned v6", p.Banned6, p.Local6, true},
		{"clean v6", p.Clean6, p.Local6, true},
		{"nobody at v4", p.Clean4, netip.MustParseAddr("192.0.2.99"), false},
		{"nobody at v6", p.Clean6, netip.MustParseAddr("2001:db8::99"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.Ping(t, tc.from, tc.to); got != tc.want {
				t.Errorf("ping %s -> %s = %v, want %v", tc.from, tc.to, got, tc.want)
			}
		})
	}
}

func TestCheckFreshNetns(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("the host-side check runs in the parent only")
	}
	self, err := NetnsInode("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	selfID := strconv.FormatUint(self, 10)
	// Here, in the parent's namespace, every combination must be refused:
	// no child marker, a forged marker with our own namespace as "parent",
	// and a forged marker without any parent to compare with (refused
	// unless pid 1's namespace is readable and differs, i.e. we already are
	// in a private namespace, which a plain go test is not).
	tests := []struct{ child, parent string }{
		{"", ""}, {"", "1"}, {"TestForged", selfID},
	}
	if _, err := NetnsInode("/proc/1/ns/net"); err != nil {
		tests = append(tests, struct{ child, parent string }{"TestForged", ""})
	}
	for _, tc := range tests {
		if err := checkFreshNetns(tc.child, tc.parent); err == nil {
			t.Errorf("checkFreshNetns(%q, %q) accepted the test's own namespace", tc.child, tc.parent)
		}
	}
}
