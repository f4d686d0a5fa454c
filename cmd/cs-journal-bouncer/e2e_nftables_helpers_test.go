package main

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// The kernel's view for the nftables-mode tests, read with the nft binary
// (JSON output), independently of the daemon's own netlink code.

// nftObj is one object of `nft -j list ...`: exactly one field is set.
type nftObj struct {
	Table *struct {
		Family, Name string
	} `json:"table"`
	Set *struct {
		Family, Name, Table string
		Type                string
		Flags               []string
		Elem                []json.RawMessage
	} `json:"set"`
	Chain *struct {
		Family, Table, Name, Type, Hook, Policy string
		Prio                                    int
	} `json:"chain"`
	Rule *struct {
		Family, Table, Chain, Comment string
		Handle                        int
		Expr                          []json.RawMessage
	} `json:"rule"`
	Counter *struct {
		Family, Name, Table string
		Packets, Bytes      uint64
	} `json:"counter"`
}

// nftList runs `nft -j list <what...>` and returns its objects; a missing
// object (exit status 1) gives nil.
func nftList(t *testing.T, what ...string) []nftObj {
	t.Helper()
	out, err := tryRun("nft", append([]string{"-j", "list"}, what...)...)
	if err != nil {
		if strings.Contains(out, "No such file or directory") {
			return nil
		}
		t.Fatalf("nft -j list %s: %v\n%s", strings.Join(what, " "), err, out)
	}
	var doc struct {
		Nftables []nftObj `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j list %s: %v\n%.500s", strings.Join(what, " "), err, out)
	}
	return doc.Nftables
}

// nftElem is one set element as nft reports it.
type nftElem struct {
	Prefix  netip.Prefix
	Timeout time.Duration // as set when added; 0: none
	Expires time.Duration // left when listed
}

// elements decodes a set's elements: plain addresses, prefixes and
// ranges (a range is split into the prefixes that cover it exactly).
func elements(t *testing.T, raw []json.RawMessage) []nftElem {
	t.Helper()
	var out []nftElem
	for _, r := range raw {
		var wrapped struct {
			Elem *struct {
				Val     json.RawMessage `json:"val"`
				Timeout int64           `json:"timeout"`
				Expires int64           `json:"expires"`
			} `json:"elem"`
		}
		val, to, exp := r, int64(0), int64(0)
		if json.Unmarshal(r, &wrapped) == nil && wrapped.Elem != nil {
			val, to, exp = wrapped.Elem.Val, wrapped.Elem.Timeout, wrapped.Elem.Expires
		}
		for _, p := range elemPrefixes(t, val) {
			out = append(out, nftElem{Prefix: p, Timeout: time.Duration(to) * time.Second, Expires: time.Duration(exp) * time.Second})
		}
	}
	return out
}

func elemPrefixes(t *testing.T, val json.RawMessage) []netip.Prefix {
	t.Helper()
	var s string
	if json.Unmarshal(val, &s) == nil {
		a := netip.MustParseAddr(s)
		return []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}
	}
	var v struct {
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
		Range []string `json:"range"`
	}
	if err := json.Unmarshal(val, &v); err != nil {
		t.Fatalf("set element %s: %v", val, err)
	}
	switch {
	case v.Prefix != nil:
		return []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr(v.Prefix.Addr), v.Prefix.Len)}
	case len(v.Range) == 2:
		return rangePrefixes(netip.MustParseAddr(v.Range[0]), netip.MustParseAddr(v.Range[1]))
	}
	t.Fatalf("set element %s: unknown form", val)
	return nil
}

// rangePrefixes splits [first, last] into the fewest prefixes.
func rangePrefixes(first, last netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for first.IsValid() && first.Compare(last) <= 0 {
		bits := first.BitLen()
		for bits > 0 {
			p := netip.PrefixFrom(first, bits-1).Masked()
			if p.Addr() != first || lastOf(p).Compare(last) > 0 {
				break
			}
			bits--
		}
		p := netip.PrefixFrom(first, bits)
		out = append(out, p)
		first = lastOf(p).Next()
	}
	return out
}

func lastOf(p netip.Prefix) netip.Addr {
	a := p.Addr().AsSlice()
	for i := p.Bits(); i < len(a)*8; i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	r, _ := netip.AddrFromSlice(a)
	return r
}

// nftSet returns the elements of one set (none when it is missing).
func nftSet(t *testing.T, family, table, set string) []nftElem {
	t.Helper()
	for _, o := range nftList(t, "set", family, table, set) {
		if o.Set != nil {
			return elements(t, o.Set.Elem)
		}
	}
	return nil
}

// nftTables lists the tables of the default names (ip crowdsec, ip6
// crowdsec6).
var nftTables = [][2]string{{"ip", "crowdsec"}, {"ip6", "crowdsec6"}}

// nftMembers reads every member of our sets in our tables, sorted.
func nftMembers(t *testing.T) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, ft := range nftTables {
		for _, o := range nftList(t, "table", ft[0], ft[1]) {
			if o.Set != nil && strings.Contains(o.Set.Name, "-blacklists-") {
				for _, e := range elements(t, o.Set.Elem) {
					out = append(out, e.Prefix)
				}
			}
		}
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

// requireRulesOnce checks each of our chains holds each of our rules once:
// the processed counter and two rules (singles, ranges) per origin set.
func requireRulesOnce(t *testing.T) {
	t.Helper()
	for _, ft := range nftTables {
		sets := 0
		seen := map[string]map[string]int{}
		for _, o := range nftList(t, "table", ft[0], ft[1]) {
			if o.Set != nil {
				sets++
			}
			if o.Rule != nil && strings.HasPrefix(o.Rule.Comment, "cs-journal-bouncer: ") {
				if seen[o.Rule.Chain] == nil {
					seen[o.Rule.Chain] = map[string]int{}
				}
				seen[o.Rule.Chain][o.Rule.Comment]++
			}
		}
		if len(seen) == 0 {
			t.Fatalf("table %s %s: none of our rules", ft[0], ft[1])
		}
		for chain, rules := range seen {
			total := 0
			for c, k := range rules {
				if k != 1 {
					t.Fatalf("%s %s %s: rule %q is there %d times", ft[0], ft[1], chain, c, k)
				}
				total += k
			}
			if total != 1+sets {
				t.Fatalf("%s %s %s: %d rules of ours for %d sets, want %d", ft[0], ft[1], chain, total, sets, 1+sets)
			}
		}
	}
}

// nftMode is the configuration of the nftables-mode tests: upstream's
// default names, both families, hooks input and forward.
func nftMode(o bouncerOpts) bouncerOpts {
	o.Mode = "nftables"
	// After Extra, which may end inside the heal section.
	o.Extra += "\nnftables_hooks: [input, forward]"
	return o
}
