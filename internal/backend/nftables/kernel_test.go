package nftables

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// Kernel tests: each top-level test re-runs itself in a fresh network
// namespace (testenv.InFreshNetns); `nft -j list` is the oracle.

var t0 = time.Now().Truncate(time.Second)

func sh(t *testing.T, script string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

var origins = backend.Origins{0: "crowdsec", 1: "lists:firehol_l1", 2: "cscli"}

func kernelConfig() Config {
	return Config{
		IPv4:  Family{Enabled: true, Priority: -10},
		IPv6:  Family{Enabled: true, Priority: -10},
		Hooks: []string{"input", "forward"},
	}
}

// newKernel returns an ensured backend whose clock is fixed at t0.
func newKernel(t *testing.T, cfg Config) *Backend {
	t.Helper()
	cfg.Now = func() time.Time { return t0 }
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.SetOrigins(origins)
	if err := b.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	return b
}

func entry(p string, origin int, ttl time.Duration) backend.Entry {
	return backend.Entry{Prefix: netip.MustParsePrefix(p), Origin: origin, Until: t0.Add(ttl)}
}

// nftJSON is the subset of `nft -j list` output the tests read.
type nftJSON struct {
	Nftables []map[string]json.RawMessage `json:"nftables"`
}

type jRule struct {
	Family, Table, Chain, Comment string
	Expr                          []map[string]any `json:"expr"`
}

type jChain struct {
	Family, Table, Name, Type, Hook, Policy string
	Prio                                    int
}

type jSet struct {
	Family, Table, Name, Type string
	Flags                     []string
	Elem                      []any
}

// ruleset reads the whole ruleset as JSON objects by kind.
func ruleset(t *testing.T) (rules []jRule, chains []jChain, sets []jSet, tables []string) {
	t.Helper()
	var doc nftJSON
	if err := json.Unmarshal([]byte(sh(t, "nft -j list ruleset")), &doc); err != nil {
		t.Fatal(err)
	}
	for _, o := range doc.Nftables {
		for kind, raw := range o {
			switch kind {
			case "rule":
				var r jRule
				mustJSON(t, raw, &r)
				rules = append(rules, r)
			case "chain":
				var c jChain
				mustJSON(t, raw, &c)
				chains = append(chains, c)
			case "set":
				var s jSet
				mustJSON(t, raw, &s)
				sets = append(sets, s)
			case "table":
				var tb struct{ Family, Name string }
				mustJSON(t, raw, &tb)
				tables = append(tables, tb.Family+" "+tb.Name)
			}
		}
	}
	return
}

func mustJSON(t *testing.T, raw json.RawMessage, v any) {
	t.Helper()
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
}

// elements lists a set's members as "prefix" → remaining expiry, from
// `nft -j list set`: {"elem": {"val": ..., "expires": s}} or plain values.
func elements(t *testing.T, fam, table, set string) map[string]int {
	t.Helper()
	var doc nftJSON
	if err := json.Unmarshal([]byte(sh(t, fmt.Sprintf("nft -j list set %s %s %s", fam, table, set))), &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, o := range doc.Nftables {
		raw, ok := o["set"]
		if !ok {
			continue
		}
		var s jSet
		mustJSON(t, raw, &s)
		for _, e := range s.Elem {
			key, exp := elemKey(e)
			out[key] = exp
		}
	}
	return out
}

func elemKey(e any) (string, int) {
	switch v := e.(type) {
	case string:
		return v, -1
	case map[string]any:
		if el, ok := v["elem"].(map[string]any); ok {
			k, _ := elemKey(el["val"])
			exp := -1
			if f, ok := el["expires"].(float64); ok {
				exp = int(f)
			}
			return k, exp
		}
		if p, ok := v["prefix"].(map[string]any); ok {
			return fmt.Sprintf("%v/%v", p["addr"], p["len"]), -1
		}
		if r, ok := v["range"].([]any); ok {
			return fmt.Sprintf("%v-%v", r[0], r[1]), -1
		}
	}
	return fmt.Sprint(e), -1
}

func keys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestKernelObjects(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	cfg := kernelConfig()
	cfg.DenyLog = true
	b := newKernel(t, cfg)
	if err := b.Ensure(t.Context()); err != nil { // twice: no duplicates
		t.Fatal(err)
	}
	// a second instance (restart, kill -9) adopts what it finds
	newKernel(t, cfg)

	rules, chains, sets, tables := ruleset(t)
	if want := []string{"ip crowdsec", "ip6 crowdsec6"}; !slices.Equal(tables, want) {
		t.Errorf("tables = %q, want %q", tables, want)
	}
	var chainNames []string
	for _, c := range chains {
		chainNames = append(chainNames, c.Family+" "+c.Name)
		if c.Type != "filter" || c.Prio != -10 || c.Policy != "accept" || !strings.HasSuffix(c.Name, "-"+c.Hook) {
			t.Errorf("chain %+v: want filter, prio -10, policy accept, named after its hook", c)
		}
	}
	slices.Sort(chainNames)
	wantChains := []string{"ip crowdsec-chain-forward", "ip crowdsec-chain-input", "ip6 crowdsec6-chain-forward", "ip6 crowdsec6-chain-input"}
	if !slices.Equal(chainNames, wantChains) {
		t.Errorf("chains = %q, want %q", chainNames, wantChains)
	}
	var setNames []string
	for _, s := range sets {
		setNames = append(setNames, s.Family+" "+s.Name+" "+s.Type+" "+strings.Join(s.Flags, ","))
	}
	slices.Sort(setNames)
	wantSets := []string{
		"ip crowdsec-blacklists-crowdsec ipv4_addr timeout",
		"ip crowdsec-blacklists-crowdsec-ranges ipv4_addr interval,timeout",
		"ip crowdsec-blacklists-cscli ipv4_addr timeout",
		"ip crowdsec-blacklists-cscli-ranges ipv4_addr interval,timeout",
		"ip crowdsec-blacklists-lists-firehol_l1 ipv4_addr timeout",
		"ip crowdsec-blacklists-lists-firehol_l1-ranges ipv4_addr interval,timeout",
		"ip6 crowdsec6-blacklists-crowdsec ipv6_addr timeout",
		"ip6 crowdsec6-blacklists-crowdsec-ranges ipv6_addr interval,timeout",
		"ip6 crowdsec6-blacklists-cscli ipv6_addr timeout",
		"ip6 crowdsec6-blacklists-cscli-ranges ipv6_addr interval,timeout",
		"ip6 crowdsec6-blacklists-lists-firehol_l1 ipv6_addr timeout",
		"ip6 crowdsec6-blacklists-lists-firehol_l1-ranges ipv6_addr interval,timeout",
	}
	if !slices.Equal(setNames, wantSets) {
		t.Errorf("sets =\n%s\nwant\n%s", strings.Join(setNames, "\n"), strings.Join(wantSets, "\n"))
	}
	// 4 chains × (processed + 3 origins × 2 sets): no duplicates after two
	// Ensures and a second instance
	if len(rules) != 4*7 {
		t.Errorf("%d rules, want %d", len(rules), 4*7)
	}
	perChain := map[string][]string{}
	for _, r := range rules {
		perChain[r.Family+" "+r.Chain] = append(perChain[r.Family+" "+r.Chain], r.Comment)
	}
	for ch, cs := range perChain {
		if cs[0] != ruleMark+"counter name processed" {
			t.Errorf("%s: first rule %q, want the processed counter", ch, cs[0])
		}
	}
	list := sh(t, "nft list chain ip crowdsec crowdsec-chain-input")
	for _, want := range []string{
		`counter name "processed"`,
		`ip saddr @crowdsec-blacklists-lists-firehol_l1 counter name "crowdsec-blacklists-lists-firehol_l1" log prefix "crowdsec drop: " drop`,
		`ip saddr @crowdsec-blacklists-lists-firehol_l1-ranges counter name "crowdsec-blacklists-lists-firehol_l1" log prefix "crowdsec drop: " drop`,
	} {
		if !strings.Contains(list, want) {
			t.Errorf("chain lacks %q:\n%s", want, list)
		}
	}
	d, err := b.Verify(t.Context(), nil)
	if err != nil || !d.None() {
		t.Errorf("Verify after Ensure: %+v, %v", d, err)
	}
	// a configuration change (REJECT) replaces our rules, not duplicates them
	cfg.DenyAction = "REJECT"
	b2 := newKernel(t, cfg)
	rules, _, _, _ = ruleset(t)
	if len(rules) != 4*7 {
		t.Errorf("after REJECT: %d rules, want %d", len(rules), 4*7)
	}
	if l := sh(t, "nft list chain ip6 crowdsec6 crowdsec6-chain-input"); !strings.Contains(l, "reject with icmpv6 admin-prohibited") {
		t.Errorf("ip6 chain lacks the ICMPv6 reject:\n%s", l)
	}
	if l := sh(t, "nft list chain ip crowdsec crowdsec-chain-input"); !strings.Contains(l, "reject with icmp admin-prohibited") {
		t.Errorf("ip chain lacks the ICMP reject:\n%s", l)
	}
	if err := b2.Close(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if _, _, _, tables := ruleset(t); len(tables) != 0 {
		t.Errorf("after Close(false): tables %q", tables)
	}
}

func TestKernelApply(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b := newKernel(t, kernelConfig())
	err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{
		entry("192.0.2.1/32", 0, time.Hour),
		entry("192.0.2.2/32", 0, time.Hour),
		entry("2001:db8::1/128", 0, time.Hour),
		entry("198.18.0.0/16", 1, time.Hour),
		entry("198.18.7.0/24", 1, 3*time.Hour), // nested, outlives its cover
		entry("198.18.7.9/32", 1, time.Hour),   // a single inside a range: other set
		entry("2001:db8:1::/48", 2, time.Hour),
		entry("0.0.0.0/0", 0, time.Hour),    // refused
		entry("192.0.3.0/23", 0, time.Hour), // unmasked: refused
	}})
	var re *backend.RejectedError
	if !errors.As(err, &re) || len(re.Rejected) != 2 {
		t.Fatalf("Apply: %v, want two rejections", err)
	}
	if rs, rest := backend.Rejected(err); rest != nil || rs[0].Reason != "invalid_prefix" {
		t.Errorf("Rejected: %+v, %v", rs, rest)
	}
	if got := keys(elements(t, "ip", "crowdsec", "crowdsec-blacklists-crowdsec")); !slices.Equal(got, []string{"192.0.2.1", "192.0.2.2"}) {
		t.Errorf("v4 singles: %q", got)
	}
	if got := keys(elements(t, "ip6", "crowdsec6", "crowdsec6-blacklists-crowdsec")); !slices.Equal(got, []string{"2001:db8::1"}) {
		t.Errorf("v6 singles: %q", got)
	}
	ranges := elements(t, "ip", "crowdsec", "crowdsec-blacklists-lists-firehol_l1-ranges")
	if got := keys(ranges); !slices.Equal(got, []string{"198.18.0.0/16"}) {
		t.Errorf("v4 ranges: %q (the /24 is covered by the /16)", got)
	}
	// the cover carries the latest expiry of what it covers: 3h
	if exp := ranges["198.18.0.0/16"]; exp < 3*3600-60 || exp > 3*3600 {
		t.Errorf("cover expires in %ds, want ~3h", exp)
	}
	if got := keys(elements(t, "ip6", "crowdsec6", "crowdsec6-blacklists-cscli-ranges")); !slices.Equal(got, []string{"2001:db8:1::/48"}) {
		t.Errorf("v6 ranges: %q", got)
	}

	// re-add refreshes the timeout; deleting the cover brings the nested
	// range back; Del+Add of one element in one delta leaves it present.
	err = b.Apply(ctx, backend.Delta{
		Del: []backend.Entry{entry("198.18.0.0/16", 1, 0), entry("192.0.2.2/32", 0, 0), entry("192.0.2.77/32", 0, 0), entry("192.0.2.1/32", 0, 0)},
		Add: []backend.Entry{entry("192.0.2.1/32", 0, 10*time.Hour)},
	})
	if err != nil {
		t.Fatal(err)
	}
	singles := elements(t, "ip", "crowdsec", "crowdsec-blacklists-crowdsec")
	if got := keys(singles); !slices.Equal(got, []string{"192.0.2.1"}) {
		t.Errorf("after delete: %q", got)
	}
	if exp := singles["192.0.2.1"]; exp < 10*3600-60 {
		t.Errorf("192.0.2.1 expires in %ds, want ~10h (refreshed)", exp)
	}
	if got := keys(elements(t, "ip", "crowdsec", "crowdsec-blacklists-lists-firehol_l1-ranges")); !slices.Equal(got, []string{"198.18.7.0/24"}) {
		t.Errorf("after deleting the cover: %q, want the nested /24", got)
	}
	m, err := b.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := m[backend.SetKey{Origin: 1}]; !slices.Contains(got, netip.MustParsePrefix("198.18.7.9/32")) || !slices.Contains(got, netip.MustParsePrefix("198.18.7.0/24")) {
		t.Errorf("Members origin 1: %v", got)
	}
	// a fresh instance (restart) reads the interval set back before adding
	// a cover over what is there
	b2 := newKernel(t, kernelConfig())
	if err := b2.Apply(ctx, backend.Delta{Add: []backend.Entry{entry("198.18.0.0/15", 1, 2*time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	if got := keys(elements(t, "ip", "crowdsec", "crowdsec-blacklists-lists-firehol_l1-ranges")); !slices.Equal(got, []string{"198.18.0.0/15"}) {
		t.Errorf("restart + cover: %q", got)
	}
}

func TestKernelReplay(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b := newKernel(t, kernelConfig())
	if err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{entry("203.0.113.5/32", 0, time.Hour), entry("203.0.113.0/24", 0, time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	const n = 100_000
	active := make([]backend.Entry, 0, n+3)
	base := netip.MustParseAddr("198.18.0.0")
	for a := base; len(active) < n; a = a.Next() {
		active = append(active, backend.Entry{Prefix: netip.PrefixFrom(a, 32), Origin: 0, Until: t0.Add(time.Hour)})
	}
	active = append(active,
		entry("192.0.2.0/25", 0, time.Hour),
		entry("2001:db8::/64", 2, time.Hour),
		entry("192.0.2.9/32", 1, -time.Minute), // expired: skipped
	)
	if err := b.Replay(ctx, slices.Values(active)); err != nil {
		t.Fatal(err)
	}
	// counted in nft's text output: its JSON output of a 100k set came
	// back short here (nft 1.0.6)
	text := sh(t, "nft list set ip crowdsec crowdsec-blacklists-crowdsec")
	if got := len(regexp.MustCompile(`(^|[^0-9.])198\.1[89]\.`).FindAllString(text, -1)); got != n {
		t.Errorf("%d singles, want %d", got, n)
	}
	if strings.Contains(text, "203.0.113.5") {
		t.Error("203.0.113.5 survived the replay")
	}
	if got := keys(elements(t, "ip", "crowdsec", "crowdsec-blacklists-crowdsec-ranges")); !slices.Equal(got, []string{"192.0.2.0/25"}) {
		t.Errorf("ranges after replay: %q", got)
	}
	if got := keys(elements(t, "ip6", "crowdsec6", "crowdsec6-blacklists-cscli-ranges")); !slices.Equal(got, []string{"2001:db8::/64"}) {
		t.Errorf("v6 ranges after replay: %q", got)
	}
	if got := elements(t, "ip", "crowdsec", "crowdsec-blacklists-lists-firehol_l1"); len(got) != 0 {
		t.Errorf("expired entry replayed: %v", got)
	}
	c, err := b.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var members int
	for _, s := range c.Sets {
		members += s.Members
	}
	if members != n+2 || !c.Rules || len(c.Families) != 2 {
		t.Errorf("Counters: %d members, %+v", members, c)
	}
}

func TestKernelVerifyFaults(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	tests := []struct {
		name, script, kind string
	}{
		{"flush ruleset", "nft flush ruleset", "table"},
		{"delete table", "nft delete table ip6 crowdsec6", "table"},
		{"flush chain", "nft flush chain ip crowdsec crowdsec-chain-forward", "rule"},
		{"delete chain", "nft delete chain ip crowdsec crowdsec-chain-input", "chain"},
		{"delete our rule", "nft delete rule ip crowdsec crowdsec-chain-input handle $(nft -a list chain ip crowdsec crowdsec-chain-input | grep 'blacklists-cscli-ranges' | sed 's/.*handle //')", "rule"},
		{"delete set", "nft flush chain ip crowdsec crowdsec-chain-input; nft flush chain ip crowdsec crowdsec-chain-forward; nft delete set ip crowdsec crowdsec-blacklists-cscli", "set"},
	}
	b := newKernel(t, kernelConfig())
	for _, tt := range tests {
		if err := b.Ensure(ctx); err != nil {
			t.Fatalf("%s: Ensure: %v", tt.name, err)
		}
		if d, err := b.Verify(ctx, nil); err != nil || !d.None() {
			t.Fatalf("%s: before: %+v %v", tt.name, d, err)
		}
		sh(t, tt.script)
		d, err := b.Verify(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(d.Kinds, tt.kind) {
			t.Errorf("%s: drift %+v, want kind %q", tt.name, d, tt.kind)
		}
	}
	// a flushed set is not seen by the cheap Verify (no counts in
	// nf_tables) but by Members
	if err := b.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{entry("192.0.2.3/32", 2, time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	sh(t, "nft flush set ip crowdsec crowdsec-blacklists-cscli")
	if d, _ := b.Verify(ctx, map[backend.SetKey]int{{Origin: 2}: 1}); !d.None() {
		t.Errorf("flushed set: cheap Verify reported %+v (it cannot count)", d)
	}
	m, err := b.Members(ctx)
	if err != nil || len(m[backend.SetKey{Origin: 2}]) != 0 {
		t.Errorf("Members after flush: %v %v", m[backend.SetKey{Origin: 2}], err)
	}
}

func TestKernelCloseKeep(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b := newKernel(t, kernelConfig())
	if err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{entry("192.0.2.3/32", 0, time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	before := sh(t, "nft list ruleset")
	if err := b.Close(ctx, true); err != nil {
		t.Fatal(err)
	}
	if after := sh(t, "nft list ruleset"); strings.Count(after, "\n") != strings.Count(before, "\n") {
		t.Errorf("Close(keep) changed the ruleset:\n%s", after)
	}
	// someone else's chain in our table survives Close(false), and a
	// table of theirs is never touched
	sh(t, "nft add chain ip crowdsec theirs; nft add table ip filter; nft add chain ip filter input '{ type filter hook input priority 0; }'")
	if err := b.Close(ctx, false); err != nil {
		t.Fatal(err)
	}
	_, chains, sets, tables := ruleset(t)
	var names []string
	for _, c := range chains {
		names = append(names, c.Table+"/"+c.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"crowdsec/theirs", "filter/input"}) || len(sets) != 0 {
		t.Errorf("after Close(false): chains %q sets %d tables %q", names, len(sets), tables)
	}
}

func TestKernelSetOnly(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	// the administrator's tables: an ip one with their own set and rule
	// (no interval flag), and an inet one for IPv6 with an interval set
	sh(t, `nft -f - <<'X'
table ip filter {
	set crowdsec-blacklists { type ipv4_addr; flags timeout; }
	chain input { type filter hook input priority 0; ip saddr @crowdsec-blacklists drop; }
}
table inet fw {
	set crowdsec6-blacklists { type ipv6_addr; flags interval,timeout; }
	chain input { type filter hook input priority 0; ip6 saddr @crowdsec6-blacklists drop; }
}
X`)
	before := sh(t, "nft list chains; nft list tables")
	cfg := Config{
		IPv4: Family{Enabled: true, SetOnly: true, Table: "filter"},
		IPv6: Family{Enabled: true, SetOnly: true, Table: "fw"},
	}
	b := newKernel(t, cfg)
	if k := b.SetKeyOf(3, true); k != (backend.SetKey{V6: true}) {
		t.Errorf("SetKeyOf in set-only: %+v", k)
	}
	err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{
		entry("192.0.2.1/32", 0, time.Hour),
		entry("192.0.2.0/24", 1, time.Hour), // range into a set without interval: refused
		entry("2001:db8::/48", 0, time.Hour),
		entry("2001:db8::5/128", 2, time.Hour), // nested in the /48
	}})
	rs, rest := backend.Rejected(err)
	if rest != nil || len(rs) != 1 || rs[0].Reason != "set_type" {
		t.Fatalf("Apply: %v", err)
	}
	if got := keys(elements(t, "ip", "filter", "crowdsec-blacklists")); !slices.Equal(got, []string{"192.0.2.1"}) {
		t.Errorf("ip filter set: %q", got)
	}
	if got := keys(elements(t, "inet", "fw", "crowdsec6-blacklists")); !slices.Equal(got, []string{"2001:db8::/48"}) {
		t.Errorf("inet fw set: %q", got)
	}
	if d, err := b.Verify(ctx, nil); err != nil || !d.None() {
		t.Errorf("Verify: %+v %v", d, err)
	}
	if err := b.Close(ctx, false); err != nil {
		t.Fatal(err)
	}
	if after := sh(t, "nft list chains; nft list tables"); after != before {
		t.Errorf("set-only created or removed chains/tables:\n%s\nwant\n%s", after, before)
	}
	if got := elements(t, "ip", "filter", "crowdsec-blacklists"); len(got) != 0 {
		t.Errorf("Close(false) left %v in our set", got)
	}
	// the table missing: Ensure fails, nothing is created
	sh(t, "nft delete table inet fw")
	if err := b.Ensure(ctx); !errors.Is(err, ErrTableMissing) {
		t.Errorf("Ensure without the table: %v", err)
	}
}

// ReplayWhen prepares without enforcing: when ready runs, the kernel
// still holds the old members; after it, the new ones. A failing ready
// leaves the old members in force and is returned.
func TestKernelReplayWhen(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b := newKernel(t, kernelConfig())
	old := []backend.Entry{entry("203.0.113.5/32", 0, time.Hour), entry("203.0.113.0/25", 0, time.Hour)}
	if err := b.Apply(ctx, backend.Delta{Add: old}); err != nil {
		t.Fatal(err)
	}
	const set, ranges = "crowdsec-blacklists-crowdsec", "crowdsec-blacklists-crowdsec-ranges"
	oldSingles, oldRanges := keys(elements(t, "ip", "crowdsec", set)), keys(elements(t, "ip", "crowdsec", ranges))
	next := []backend.Entry{entry("192.0.2.7/32", 0, time.Hour), entry("192.0.2.128/25", 0, time.Hour)}

	failed := errors.New("journal not written")
	err := b.ReplayWhen(ctx, slices.Values(next), func() error { return failed })
	if !errors.Is(err, failed) {
		t.Fatalf("ReplayWhen with a failing ready: %v, want its error", err)
	}
	if got := keys(elements(t, "ip", "crowdsec", set)); !slices.Equal(got, oldSingles) {
		t.Fatalf("after a failed ready the set holds %q, want the old %q", got, oldSingles)
	}

	calls := 0
	if err := b.ReplayWhen(ctx, slices.Values(next), func() error {
		calls++
		if got := keys(elements(t, "ip", "crowdsec", set)); !slices.Equal(got, oldSingles) {
			t.Errorf("before ready returned the set held %q, want the old %q", got, oldSingles)
		}
		if got := keys(elements(t, "ip", "crowdsec", ranges)); !slices.Equal(got, oldRanges) {
			t.Errorf("before ready returned the ranges held %q, want the old %q", got, oldRanges)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if calls == 0 {
		t.Fatal("ready was never called")
	}
	if got := keys(elements(t, "ip", "crowdsec", set)); !slices.Equal(got, []string{"192.0.2.7"}) {
		t.Errorf("after ReplayWhen the set holds %q", got)
	}
	if got := keys(elements(t, "ip", "crowdsec", ranges)); !slices.Equal(got, []string{"192.0.2.128/25"}) {
		t.Errorf("after ReplayWhen the ranges hold %q", got)
	}
}

// TestKernelReAddSetsTimeout: an Apply that adds a present element gives
// it the new timeout, longer or shorter, and never a second element —
// whichever way the running kernel is written to (one add from 6.10 on,
// "add, delete, add" before).
func TestKernelReAddSetsTimeout(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	for _, oneAdd := range []bool{false, true} {
		if oneAdd && !kernelAtLeast(6, 10) {
			continue // the kernel would keep the first timeout
		}
		t.Run(fmt.Sprintf("one add %v", oneAdd), func(t *testing.T) {
			sh(t, "nft flush ruleset")
			b := newKernel(t, kernelConfig())
			b.addSetsTimeout = oneAdd
			reAdds(t, b)
		})
	}
}

func reAdds(t *testing.T, b *Backend) {
	ctx := t.Context()
	for _, tc := range []struct {
		ttl  time.Duration
		what string
	}{{time.Hour, "first add"}, {10 * time.Hour, "longer"}, {2 * time.Hour, "shorter"}, {2 * time.Hour, "same"}} {
		if err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{entry("192.0.2.50/32", 0, tc.ttl), entry("2001:db8::50/128", 0, tc.ttl)}}); err != nil {
			t.Fatal(err)
		}
		for _, s := range []struct{ fam, table, set, key string }{
			{"ip", "crowdsec", "crowdsec-blacklists-crowdsec", "192.0.2.50"},
			{"ip6", "crowdsec6", "crowdsec6-blacklists-crowdsec", "2001:db8::50"},
		} {
			els := elements(t, s.fam, s.table, s.set)
			want := int(tc.ttl / time.Second)
			if got, ok := els[s.key]; len(els) != 1 || !ok || got < want-60 || got > want {
				t.Errorf("%s: %s holds %v, want only %s expiring in ~%ds", tc.what, s.set, els, s.key, want)
			}
		}
	}
}
