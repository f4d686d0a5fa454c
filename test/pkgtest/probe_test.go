package pkgtest

// The kernel probes, for every mode in one place: whether an address is
// dropped on input, and which firewall objects of a bouncer exist. They
// read the kernel with the host's tools inside the machine's network
// namespace, and accept either layout:
//   - iptables/ipset: a DROP/REJECT rule matching an ipset, reached from
//     INPUT directly or through jumps (`iptables -S`), and the set holding
//     the address (`ipset save`);
//   - nftables: a chain hooked on input whose rule matches `saddr @set`
//     and drops/rejects, and the set holding the address (`nft -j list
//     ruleset`).
// So a test passes unchanged whichever mode the migrated config says.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// enforcement is what the probe found for one address.
type enforcement struct {
	dropped bool
	how     string // e.g. "ipset crowdsec-blacklists-0" or "nft ip crowdsec/crowdsec-blacklists"
}

// dropped reports whether the kernel drops input from ip, in any mode.
func (m *machine) dropped(ctx context.Context, ip netip.Addr) (enforcement, error) {
	sets, err := m.iptablesDropSets(ctx, ip.Is6())
	if err != nil {
		return enforcement{}, err
	}
	if len(sets) > 0 {
		members, err := m.ipsetMembers(ctx)
		if err != nil {
			return enforcement{}, err
		}
		for _, s := range sets {
			if contains(members[s], ip) {
				return enforcement{true, "ipset " + s}, nil
			}
		}
	}
	how, err := m.nftDrops(ctx, ip)
	if err != nil {
		return enforcement{}, err
	}
	return enforcement{how != "", how}, nil
}

// iptablesDropSets are the ipsets whose members are dropped on INPUT.
func (m *machine) iptablesDropSets(ctx context.Context, v6 bool) ([]string, error) {
	bin := "iptables"
	if v6 {
		bin = "ip6tables"
	}
	out, err := m.netns(ctx, bin, "-w", "-S")
	if err != nil {
		return nil, err
	}
	rules := map[string][][]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[0] == "-A" {
			rules[f[1]] = append(rules[f[1]], f[2:])
		}
	}
	var sets []string
	seen := map[string]bool{}
	var walk func(chain string)
	walk = func(chain string) {
		if seen[chain] {
			return
		}
		seen[chain] = true
		for _, r := range rules[chain] {
			target := flagValue(r, "-j")
			if set := flagValue(r, "--match-set"); set != "" && (target == "DROP" || target == "REJECT") {
				sets = append(sets, set)
			}
			if _, isChain := rules[target]; isChain {
				walk(target)
			}
		}
	}
	walk("INPUT")
	return sets, nil
}

func flagValue(rule []string, flag string) string {
	i := slices.Index(rule, flag)
	if i < 0 || i+1 >= len(rule) {
		return ""
	}
	return rule[i+1]
}

// ipsetMembers maps every ipset to its members (`ipset save`).
func (m *machine) ipsetMembers(ctx context.Context) (map[string][]netip.Prefix, error) {
	out, err := m.netns(ctx, "ipset", "save")
	if err != nil {
		return nil, err
	}
	sets := map[string][]netip.Prefix{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && f[0] == "create":
			sets[f[1]] = sets[f[1]][:0:0]
		case len(f) >= 3 && f[0] == "add":
			if p, ok := parsePrefix(f[2]); ok {
				sets[f[1]] = append(sets[f[1]], p)
			}
		}
	}
	return sets, nil
}

func parsePrefix(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

func contains(ps []netip.Prefix, ip netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// nft -j list ruleset, the parts the probe reads.
type nftRuleset struct {
	Nftables []map[string]json.RawMessage `json:"nftables"`
}

type nftChain struct {
	Family string `json:"family"`
	Table  string `json:"table"`
	Name   string `json:"name"`
	Hook   string `json:"hook"`
}

type nftRule struct {
	Family string            `json:"family"`
	Table  string            `json:"table"`
	Chain  string            `json:"chain"`
	Expr   []json.RawMessage `json:"expr"`
}

type nftSet struct {
	Family string            `json:"family"`
	Table  string            `json:"table"`
	Name   string            `json:"name"`
	Elem   []json.RawMessage `json:"elem"`
}

// nftDrops names the nftables set (family table/set) through which a
// chain hooked on input drops ip, or "" when none does. Chains reached by
// jump/goto from a hooked chain count too.
func (m *machine) nftDrops(ctx context.Context, ip netip.Addr) (string, error) {
	out, err := m.netns(ctx, "nft", "-j", "list", "ruleset")
	if err != nil {
		return "", err
	}
	var rs nftRuleset
	if err := json.Unmarshal(out, &rs); err != nil {
		return "", fmt.Errorf("nft -j: %w", err)
	}
	key := func(f, t, n string) string { return f + " " + t + "/" + n }
	hooked := map[string]bool{}
	var rules []nftRule
	sets := map[string]nftSet{}
	for _, obj := range rs.Nftables {
		switch {
		case obj["chain"] != nil:
			var c nftChain
			if json.Unmarshal(obj["chain"], &c) == nil && c.Hook == "input" {
				hooked[key(c.Family, c.Table, c.Name)] = true
			}
		case obj["rule"] != nil:
			var r nftRule
			if json.Unmarshal(obj["rule"], &r) == nil {
				rules = append(rules, r)
			}
		case obj["set"] != nil:
			var s nftSet
			if json.Unmarshal(obj["set"], &s) == nil {
				sets[key(s.Family, s.Table, s.Name)] = s
			}
		}
	}
	// Chains reached from hooked ones by jump or goto.
	for changed := true; changed; {
		changed = false
		for _, r := range rules {
			if !hooked[key(r.Family, r.Table, r.Chain)] {
				continue
			}
			for _, e := range r.Expr {
				for _, verb := range []string{"jump", "goto"} {
					if target := jsonPath(e, verb, "target"); target != "" && !hooked[key(r.Family, r.Table, target)] {
						hooked[key(r.Family, r.Table, target)] = true
						changed = true
					}
				}
			}
		}
	}
	for _, r := range rules {
		if !hooked[key(r.Family, r.Table, r.Chain)] {
			continue
		}
		set, verdict := "", false
		for _, e := range r.Expr {
			if right := jsonPath(e, "match", "right"); strings.HasPrefix(right, "@") {
				set = right[1:]
			}
			var x map[string]json.RawMessage
			if json.Unmarshal(e, &x) == nil && (x["drop"] != nil || x["reject"] != nil) {
				verdict = true
			}
		}
		if set == "" || !verdict {
			continue
		}
		s := sets[key(r.Family, r.Table, set)]
		for _, el := range s.Elem {
			if p, ok := nftElem(el); ok && p.Contains(ip) {
				return key(r.Family, r.Table, set), nil
			}
		}
	}
	return "", nil
}

// jsonPath reads a string at obj[a][b], "" when absent or not a string.
func jsonPath(raw json.RawMessage, a, b string) string {
	var x map[string]map[string]json.RawMessage
	if json.Unmarshal(raw, &x) != nil || x[a] == nil {
		return ""
	}
	var s string
	if json.Unmarshal(x[a][b], &s) != nil {
		return ""
	}
	return s
}

// nftElem decodes one set element: "192.0.2.1", {"prefix": {...}},
// {"range": [...]}, or any of those wrapped in {"elem": {"val": ...}} when
// it carries a timeout.
func nftElem(raw json.RawMessage) (netip.Prefix, bool) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return parsePrefix(s)
	}
	var x struct {
		Elem *struct {
			Val json.RawMessage `json:"val"`
		} `json:"elem"`
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
	}
	if json.Unmarshal(raw, &x) != nil {
		return netip.Prefix{}, false
	}
	switch {
	case x.Elem != nil:
		return nftElem(x.Elem.Val)
	case x.Prefix != nil:
		return parsePrefix(fmt.Sprintf("%s/%d", x.Prefix.Addr, x.Prefix.Len))
	}
	return netip.Prefix{}, false
}

// bouncerObjects lists the firewall objects either bouncer creates with
// default names: iptables chains and rules naming CROWDSEC or our sets,
// ipsets named crowdsec*-blacklists*, nftables tables crowdsec*. Empty
// means no trace of a bouncer in the kernel.
func (m *machine) bouncerObjects(ctx context.Context) ([]string, error) {
	var found []string
	for _, bin := range []string{"iptables", "ip6tables"} {
		out, err := m.netns(ctx, bin, "-w", "-S")
		if err != nil {
			return nil, err
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "CROWDSEC") || strings.Contains(l, "blacklists") {
				found = append(found, bin+": "+l)
			}
		}
	}
	out, err := m.netns(ctx, "ipset", "list", "-n")
	if err != nil {
		return nil, err
	}
	for _, n := range strings.Fields(string(out)) {
		if strings.Contains(n, "blacklists") {
			found = append(found, "ipset "+n)
		}
	}
	out, err = m.netns(ctx, "nft", "list", "tables")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && strings.HasPrefix(f[2], "crowdsec") {
			found = append(found, "nft "+l)
		}
	}
	return found, nil
}

// probe checks every 50 ms that each address stays dropped, until stop is
// closed, and counts checks and failed checks ("gaps").
type probe struct {
	checks, gaps int
	errs         []error
	longest      time.Duration // longest run of failed checks
}

func (m *machine) startProbe(ips ...netip.Addr) (stop func() probe) {
	quit := make(chan struct{})
	res := make(chan probe, 1)
	go func() {
		var p probe
		var gapStart time.Time
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				res <- p
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ok := true
			for _, ip := range ips {
				e, err := m.dropped(ctx, ip)
				if err != nil && len(p.errs) < 5 {
					p.errs = append(p.errs, err)
				}
				ok = ok && err == nil && e.dropped
			}
			cancel()
			p.checks++
			switch {
			case !ok:
				p.gaps++
				if gapStart.IsZero() {
					gapStart = time.Now()
				}
				if d := time.Since(gapStart); d > p.longest {
					p.longest = d
				}
			default:
				gapStart = time.Time{}
			}
		}
	}()
	return func() probe { close(quit); return <-res }
}

func (p probe) String() string {
	return fmt.Sprintf("%d checks, %d gaps (longest %s), %d errors %v", p.checks, p.gaps, p.longest.Round(time.Millisecond), len(p.errs), p.errs)
}
