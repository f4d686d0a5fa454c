package nftables

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

func TestMirrorRoots(t *testing.T) {
	now := time.Unix(1000, 0)
	at := func(h int) time.Time { return now.Add(time.Duration(h) * time.Hour) }
	pp := netip.MustParsePrefix
	m := newMirror()
	ch := m.update(nil, map[netip.Prefix]time.Time{pp("198.18.0.0/16"): at(1), pp("198.18.7.0/24"): at(3), pp("203.0.113.0/24"): {}}, now)
	want := []change{{p: pp("198.18.0.0/16"), until: at(3), add: true, fresh: true}, {p: pp("203.0.113.0/24"), add: true, fresh: true}}
	if !slices.Equal(ch, want) {
		t.Fatalf("changes %+v, want %+v", ch, want)
	}
	ch = m.update([]netip.Prefix{pp("198.18.0.0/16")}, nil, now)
	want = []change{{p: pp("198.18.0.0/16"), until: at(3)}, {p: pp("198.18.7.0/24"), until: at(3), add: true, fresh: true}}
	if !slices.Equal(ch, want) {
		t.Fatalf("after deleting the cover: %+v, want %+v", ch, want)
	}
	// expired wants leave on the next update
	ch = m.update(nil, nil, at(4))
	if len(ch) != 1 || ch[0].add || ch[0].p != pp("198.18.7.0/24") {
		t.Fatalf("after expiry: %+v", ch)
	}
}

func TestRangeToPrefixes(t *testing.T) {
	a := netip.MustParseAddr
	got := rangeToPrefixes(a("192.0.2.1"), a("192.0.2.6"))
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.2/31"), netip.MustParsePrefix("192.0.2.4/31"), netip.MustParsePrefix("192.0.2.6/32")}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := rangeToPrefixes(a("2001:db8::"), lastAddr(netip.MustParsePrefix("2001:db8::/48"))); len(got) != 1 || got[0].Bits() != 48 {
		t.Errorf("v6 /48: %v", got)
	}
}

// TestNewValidates: New rejects what nf_tables cannot take, every value at
// once, each as a *backend.ConfigError naming the upstream key and the
// value. Hook names' letter case, a hook listed twice and both families
// off are internal/config's rules, tested there.
func TestNewValidates(t *testing.T) {
	v4 := Family{Enabled: true}
	long := strings.Repeat("c", 250)
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"unknown hook", Config{IPv4: v4, Hooks: []string{"input", "ingres"}},
			[]string{`nftables_hooks[1]: "ingres" is not a hook of this backend (prerouting, input, forward, output, postrouting)`}},
		{"tarpit", Config{IPv4: v4, DenyAction: "TARPIT"},
			[]string{`deny_action: "TARPIT" is not supported in mode nftables (DROP or REJECT)`}},
		{"table with space", Config{IPv4: v4, IPv6: Family{Table: "my table"}},
			[]string{`nftables.ipv6.table: "my table" must not contain spaces, quotes or control characters`}},
		{"priority range", Config{IPv4: Family{Enabled: true, Priority: 3000000000}},
			[]string{`nftables.ipv4.priority: 3000000000 is outside the 32-bit range of nftables priorities`}},
		{"chain too long", Config{IPv4: Family{Enabled: true, Chain: long}},
			[]string{`nftables.ipv4.chain: "` + long + `" is 250 characters long; at most 243 are allowed`}},
		{"set name too long", Config{IPv4: Family{Enabled: true, SetName: long}},
			[]string{`blacklists_ipv4: "` + long + `" is 250 characters long; at most 243 are allowed`}},
		{"log prefix too long", Config{IPv4: v4, DenyLogPrefix: strings.Repeat("p", 128)},
			[]string{`deny_log_prefix: "` + strings.Repeat("p", 128) + `" is longer than nftables' 127 characters`}},
		{"every error at once", Config{IPv4: v4, DenyAction: "LOG", Hooks: []string{"ingress"}}, []string{
			`nftables_hooks[0]: "ingress" is not a hook of this backend (prerouting, input, forward, output, postrouting)`,
			`deny_action: "LOG" is not supported in mode nftables (DROP or REJECT)`}},
		{"log prefix past iptables' limit", Config{IPv4: v4, DenyLogPrefix: strings.Repeat("p", 127)}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			var ce *backend.ConfigError
			if !errors.Is(err, backend.ErrInvalidConfig) || !errors.As(err, &ce) {
				t.Fatalf("New: %v, want *backend.ConfigError", err)
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, tc.want) {
				t.Fatalf("New errors =\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
	b, err := New(Config{IPv4: Family{Enabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	b.SetOrigins(map[int]string{3: "lists:firehol l1"})
	if got := b.SetName(b.SetKeyOf(3, false)); got != "crowdsec-blacklists-lists-firehol_l1" {
		t.Errorf("SetName = %q", got)
	}
}

func TestReleaseAtLeast(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    bool
	}{
		{"6.18.44-cloud-amd64", true}, {"6.10.0", true}, {"6.9.12", false}, {"6.1.0-28-amd64", false},
		{"7.0", true}, {"5.19.1", false}, {"", false}, {"garbage", false},
	} {
		if got := releaseAtLeast(tc.release, 6, 10); got != tc.want {
			t.Errorf("releaseAtLeast(%q, 6, 10) = %v, want %v", tc.release, got, tc.want)
		}
	}
}
