package nftables

import (
	"net/netip"
	"slices"
	"testing"
	"time"
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

func TestNewValidates(t *testing.T) {
	for _, c := range []Config{
		{},
		{IPv4: Family{Enabled: true}, Hooks: []string{"ingres"}},
		{IPv4: Family{Enabled: true}, DenyAction: "TARPIT"},
		{IPv4: Family{Enabled: true, Table: "a b"}},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
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
