package iptables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// Kernel tests: each top-level test re-runs itself in a fresh network
// namespace (testenv.InFreshNetns), so the host firewall is never touched.

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// sh runs a shell snippet inside the test's namespace.
func sh(t *testing.T, script string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

// countingRunner counts iptables-save calls, to prove Verify skips them.
type countingRunner struct {
	inner commandRunner
	saves int
}

func (c *countingRunner) run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	if strings.HasSuffix(name, "-save") {
		c.saves++
	}
	return c.inner.run(ctx, stdin, name, args...)
}

// newKernelBackend returns a backend with a fixed clock t0, closed
// (removing everything) at test end.
func newKernelBackend(t *testing.T, cfg Config) (*Backend, *countingRunner) {
	t.Helper()
	cfg.Now = func() time.Time { return t0 }
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cr := &countingRunner{inner: b.runner}
	b.runner = cr
	t.Cleanup(func() {
		if err := b.Close(context.Background(), false); err != nil {
			t.Errorf("cleanup Close: %v", err)
		}
	})
	return b, cr
}

// members returns "prefix timeout" strings from `ipset save`.
func members(t *testing.T, set string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for line := range strings.Lines(sh(t, "ipset save "+set)) {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "add" {
			continue
		}
		to := -1
		if len(f) >= 5 && f[3] == "timeout" {
			to, _ = strconv.Atoi(f[4])
		}
		out[f[2]] = to
	}
	return out
}

func keysOf(m map[string]int) []string {
	var k []string
	for p := range m {
		k = append(k, p)
	}
	slices.Sort(k)
	return k
}

func entry(p string, origin int, ttl time.Duration) backend.Entry {
	return backend.Entry{Prefix: netip.MustParsePrefix(p), Origin: origin, Until: t0.Add(ttl)}
}

func TestKernelEnsureIdempotent(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b, _ := newKernelBackend(t, Config{
		Chains4: []string{"INPUT", "FORWARD", "DOCKER-USER"}, Chains6: []string{"INPUT"},
		DenyLog: true, RuleComments: true, DenyAction: "REJECT",
	})
	b.SetOrigins(backend.Origins{0: "crowdsec", 1: "lists:firehol"})
	for range 2 {
		if err := ensure(ctx, b, 0, 1); err != nil {
			t.Fatal(err)
		}
	}
	save4, save6 := sh(t, "iptables-save -t filter"), sh(t, "ip6tables-save -t filter")
	tests := []struct {
		save, line string
		n          int
	}{
		{save4, "-A INPUT -j CROWDSEC_CHAIN", 1},
		{save4, "-A FORWARD -j CROWDSEC_CHAIN", 1},
		{save4, "-A DOCKER-USER -j CROWDSEC_CHAIN", 0},
		{save4, "-A CROWDSEC_CHAIN ", 2},
		{save4, "--match-set crowdsec-blacklists-1 src -m comment --comment \"CrowdSec: lists:firehol\" -j CROWDSEC_LOG", 1},
		{save4, "-A CROWDSEC_LOG -j LOG --log-prefix \"crowdsec drop: \"\n-A CROWDSEC_LOG -j REJECT --reject-with icmp-port-unreachable\n", 1},
		{save6, "-A INPUT -j CROWDSEC_CHAIN", 1},
		{save6, "-j REJECT --reject-with icmp6-port-unreachable", 1},
	}
	for _, tc := range tests {
		if got := strings.Count(tc.save, tc.line); got != tc.n {
			t.Errorf("%q appears %d times, want %d:\n%s", tc.line, got, tc.n, tc.save)
		}
	}
	// A hooked chain that appears later gets its jump on the next Ensure,
	// at position 1, before a rule already there.
	if d, err := b.Verify(ctx, nil); err != nil || !d.None() {
		t.Fatalf("Verify with DOCKER-USER absent = %+v, %v: a missing hooked chain is not drift", d, err)
	}
	sh(t, "iptables -N DOCKER-USER && iptables -A DOCKER-USER -j RETURN")
	// Verify notices the chain appeared without our jump, so the heal loop
	// calls Ensure.
	if d, err := b.Verify(ctx, nil); err != nil || !slices.Contains(d.Kinds, "jump") {
		t.Fatalf("Verify after DOCKER-USER appeared = %+v, %v, want jump drift", d, err)
	}
	if err := b.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sh(t, "iptables -S DOCKER-USER"); !strings.Contains(got, "-A DOCKER-USER -j CROWDSEC_CHAIN\n-A DOCKER-USER -j RETURN") {
		t.Fatalf("DOCKER-USER:\n%s", got)
	}
	d, err := b.Verify(ctx, nil)
	if err != nil || !d.None() {
		t.Fatalf("Verify after Ensure = %v, %v", d, err)
	}
}

func TestKernelApply(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b, _ := newKernelBackend(t, Config{Chains4: []string{"INPUT"}, Chains6: []string{"INPUT"}})
	// No Ensure: Apply creates the sets and rules of new origins itself.
	err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{
		entry("192.0.2.1/32", 0, 100*time.Second),
		entry("198.51.100.0/24", 0, time.Hour),
		entry("203.0.113.0/24", 2, 10000*time.Hour), // capped
		entry("2001:db8::1/128", 0, time.Hour),
		entry("2001:db8:1::/48", 2, time.Hour),
		entry("192.0.2.200/32", 0, -time.Second), // already expired: skipped
	}})
	if err != nil {
		t.Fatal(err)
	}
	v4, v4o2, v6 := members(t, "crowdsec-blacklists-0"), members(t, "crowdsec-blacklists-2"), members(t, "crowdsec6-blacklists-0")
	if got := keysOf(v4); !slices.Equal(got, []string{"192.0.2.1", "198.51.100.0/24"}) {
		t.Fatalf("v4 origin 0 = %v", got)
	}
	if to := v4["192.0.2.1"]; to < 95 || to > 100 {
		t.Errorf("timeout of 192.0.2.1 = %d, want ≈100", to)
	}
	if to := v4o2["203.0.113.0/24"]; to < maxTimeout-5 || to > maxTimeout {
		t.Errorf("capped timeout = %d, want ≈%d", to, maxTimeout)
	}
	if got := keysOf(v6); !slices.Equal(got, []string{"2001:db8::1"}) {
		t.Fatalf("v6 origin 0 = %v", got)
	}
	if got := keysOf(members(t, "crowdsec6-blacklists-2")); !slices.Equal(got, []string{"2001:db8:1::/48"}) {
		t.Fatalf("v6 origin 2 = %v", got)
	}
	if !strings.Contains(sh(t, "iptables-save -t filter"), "--match-set crowdsec-blacklists-2 src -j DROP") {
		t.Fatal("no rule for origin 2")
	}

	// Re-adding updates the timeout (no EXCL); deleting an absent entry
	// is fine; an invalid entry is reported but does not stop the rest.
	err = b.Apply(ctx, backend.Delta{
		Del: []backend.Entry{entry("198.51.100.0/24", 0, 0), entry("192.0.2.99/32", 0, 0), entry("2001:db8::1/128", 0, 0)},
		Add: []backend.Entry{entry("192.0.2.1/32", 0, 2000*time.Second), entry("0.0.0.0/0", 0, time.Hour), entry("192.0.2.2/32", 0, time.Hour)},
	})
	if !errors.Is(err, ErrInvalidEntry) {
		t.Fatalf("Apply with a /0 = %v, want ErrInvalidEntry", err)
	}
	v4 = members(t, "crowdsec-blacklists-0")
	if got := keysOf(v4); !slices.Equal(got, []string{"192.0.2.1", "192.0.2.2"}) {
		t.Fatalf("after delta v4 = %v", got)
	}
	if to := v4["192.0.2.1"]; to < 1990 {
		t.Errorf("re-add did not update timeout: %d", to)
	}
	if n := len(members(t, "crowdsec6-blacklists-0")); n != 0 {
		t.Fatalf("v6 not deleted: %d left", n)
	}

	// A kernel rejection names the failing entry: a set without timeout
	// support refuses an entry with a timeout.
	sh(t, "ipset create plain hash:net")
	s, _ := b.socket()
	err = s.adt(ctx, ipsetCmdAdd, "plain", []kEntry{newKEntry(netip.MustParsePrefix("192.0.2.5/32"), 5, 0)}, true, true)
	var ke *KernelError
	if !errors.As(err, &ke) || ke.Line != 1 || !strings.Contains(err.Error(), "192.0.2.5/32") {
		t.Fatalf("adt error = %v, want KernelError at entry 1 naming 192.0.2.5/32", err)
	}
	sh(t, "ipset destroy plain")
}

// twoOrigins is an IPv4 backend in iptables mode with origins 0 and 1
// ensured and seed applied.
func twoOrigins(t *testing.T, seed ...backend.Entry) *Backend {
	t.Helper()
	b, _ := newKernelBackend(t, Config{Chains4: []string{"INPUT"}, DisableIPv6: true})
	if err := ensure(t.Context(), b, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(t.Context(), backend.Delta{Add: seed}); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKernelReplay(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b := twoOrigins(t, entry("192.0.2.1/32", 0, time.Hour), entry("192.0.2.2/32", 0, time.Hour), entry("192.0.2.3/32", 1, time.Hour))
	tests := []struct {
		name   string
		damage string
		active []backend.Entry
		want0  []string
		want1  []string
	}{
		{"swap into existing sets", "", []backend.Entry{
			entry("192.0.2.2/32", 0, time.Hour), entry("198.51.100.0/24", 0, time.Hour), entry("192.0.2.9/32", 0, -time.Minute),
		}, []string{"192.0.2.2", "198.51.100.0/24"}, nil},
		{"set destroyed", "iptables -F CROWDSEC_CHAIN && ipset destroy crowdsec-blacklists-1", []backend.Entry{
			entry("192.0.2.2/32", 0, time.Hour), entry("203.0.113.7/32", 1, time.Hour),
		}, []string{"192.0.2.2"}, []string{"203.0.113.7"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.damage != "" {
				sh(t, tc.damage)
			}
			if err := b.Replay(ctx, slices.Values(tc.active)); err != nil {
				t.Fatal(err)
			}
			if got := keysOf(members(t, "crowdsec-blacklists-0")); !slices.Equal(got, tc.want0) {
				t.Errorf("origin 0 = %v, want %v", got, tc.want0)
			}
			if got := keysOf(members(t, "crowdsec-blacklists-1")); !slices.Equal(got, tc.want1) {
				t.Errorf("origin 1 = %v, want %v", got, tc.want1)
			}
			if strings.Contains(sh(t, "ipset list -n"), "-t\n") {
				t.Error("a temporary set was left behind")
			}
		})
	}
	m, err := b.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := m[backend.SetKey{Origin: 1}]; len(got) != 1 || got[0] != netip.MustParsePrefix("203.0.113.7/32") {
		t.Fatalf("Members origin 1 = %v", got)
	}
}

func TestKernelVerify(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b, cr := newKernelBackend(t, Config{Chains4: []string{"INPUT", "FORWARD"}, Chains6: []string{"INPUT"}, RuleComments: true})
	active := []backend.Entry{
		entry("192.0.2.1/32", 0, time.Hour), entry("192.0.2.2/32", 0, time.Hour),
		entry("198.51.100.0/24", 1, time.Hour), entry("2001:db8::1/128", 0, time.Hour),
	}
	want := map[backend.SetKey]int{{Origin: 0}: 2, {Origin: 1}: 1, {Origin: 0, V6: true}: 1}
	heal := func(t *testing.T) {
		t.Helper()
		if err := ensure(ctx, b, 0, 1); err != nil {
			t.Fatal(err)
		}
		if err := b.Replay(ctx, slices.Values(active)); err != nil {
			t.Fatal(err)
		}
		d, err := b.Verify(ctx, want)
		if err != nil || !d.None() {
			t.Fatalf("Verify after heal = %+v, %v", d, err)
		}
	}
	heal(t)
	// Clean and unchanged: the rules check is skipped (nf_tables
	// generation unchanged), so no iptables-save runs.
	before := cr.saves
	if d, err := b.Verify(ctx, want); err != nil || !d.None() {
		t.Fatalf("second Verify = %+v, %v", d, err)
	}
	if cr.saves != before {
		t.Errorf("unchanged ruleset: Verify ran iptables-save %d times", cr.saves-before)
	}
	if d, _ := b.Verify(ctx, map[backend.SetKey]int{{Origin: 0}: 3}); !slices.Equal(d.Kinds, []string{"count"}) {
		t.Errorf("want above count: drift %v", d.Kinds)
	}

	tests := []struct {
		name   string
		damage string
		kinds  []string
	}{
		{"jump deleted", "iptables -D INPUT -j CROWDSEC_CHAIN", []string{"jump"}},
		{"v6 jump deleted", "ip6tables -D INPUT -j CROWDSEC_CHAIN", []string{"jump"}},
		{"chain flushed", "iptables -F CROWDSEC_CHAIN", []string{"rule"}},
		{"foreign rule in our chain", "iptables -A CROWDSEC_CHAIN -j ACCEPT", []string{"rule"}},
		{"chain deleted", "iptables -D INPUT -j CROWDSEC_CHAIN && iptables -D FORWARD -j CROWDSEC_CHAIN && iptables -F CROWDSEC_CHAIN && iptables -X CROWDSEC_CHAIN", []string{"chain", "jump", "jump"}},
		{"set flushed", "ipset flush crowdsec-blacklists-0", []string{"count"}},
		{"set destroyed", "ip6tables -F CROWDSEC_CHAIN && ipset destroy crowdsec6-blacklists-0", []string{"set", "rule"}},
		{"nft flush ruleset", "nft flush ruleset", []string{"chain", "jump", "jump", "chain", "jump"}},
		{"one member deleted", "ipset del crowdsec-blacklists-1 198.51.100.0/24", []string{"count"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sh(t, tc.damage)
			d, err := b.Verify(ctx, want)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(d.Kinds, tc.kinds) {
				t.Errorf("drift = %v (%v), want %v", d.Kinds, d.Details, tc.kinds)
			}
			heal(t)
		})
	}
}

func TestKernelClose(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	sh(t, `ipset create foreign hash:ip && ipset add foreign 192.0.2.50 &&
iptables -N FOREIGN && iptables -A FOREIGN -m set --match-set foreign src -j DROP &&
iptables -A INPUT -s 192.0.2.51/32 -j ACCEPT && iptables -A INPUT -j FOREIGN`)
	foreign4 := func() string {
		var sb strings.Builder
		for l := range strings.Lines(sh(t, "iptables-save -t filter")) {
			if !strings.HasPrefix(l, "#") && !strings.Contains(l, "CROWDSEC") {
				sb.WriteString(l)
			}
		}
		return sb.String()
	}
	wantForeign := foreign4()
	cfg := Config{Chains4: []string{"INPUT"}, Chains6: []string{"INPUT"}, Now: func() time.Time { return t0 }}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Replay(ctx, slices.Values([]backend.Entry{entry("192.0.2.1/32", 0, time.Hour), entry("2001:db8::/64", 3, time.Hour)})); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(ctx, true); err != nil {
		t.Fatal(err)
	}
	if got := keysOf(members(t, "crowdsec-blacklists-0")); !slices.Equal(got, []string{"192.0.2.1"}) {
		t.Fatalf("after Close(keep) set holds %v", got)
	}
	if !strings.Contains(sh(t, "iptables -S INPUT"), "-j CROWDSEC_CHAIN") {
		t.Fatal("Close(keep) removed the jump")
	}
	// A new instance (a restart) removes what the previous one left,
	// including sets of origins it never heard of.
	b2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Close(ctx, false); err != nil {
		t.Fatal(err)
	}
	if sets := sh(t, "ipset list -n"); sets != "foreign\n" {
		t.Errorf("sets after Close(remove) = %q", sets)
	}
	if got := sh(t, "iptables-save -t filter; ip6tables-save -t filter"); strings.Contains(got, "CROWDSEC") {
		t.Errorf("our rules survived Close(remove):\n%s", got)
	}
	if got := foreign4(); got != wantForeign {
		t.Errorf("foreign rules changed:\n%s\nwant\n%s", got, wantForeign)
	}
	if got := keysOf(members(t, "foreign")); !slices.Equal(got, []string{"192.0.2.50"}) {
		t.Errorf("foreign set = %v", got)
	}
}

func TestKernelIPSetMode(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	// The user owns the v6 set and made it without timeout support.
	sh(t, "ipset create mine6 hash:net family inet6 && ipset add mine6 2001:db8:9::/48")
	b, _ := newKernelBackend(t, Config{Mode: "ipset", SetName4: "mine4", SetName6: "mine6"})
	if err := ensure(ctx, b, 0, 5); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{
		entry("192.0.2.1/32", 0, time.Hour), entry("192.0.2.2/32", 5, time.Hour), entry("2001:db8::1/128", 5, time.Hour),
	}}); err != nil {
		t.Fatal(err)
	}
	if got := keysOf(members(t, "mine4")); !slices.Equal(got, []string{"192.0.2.1", "192.0.2.2"}) {
		t.Fatalf("mine4 = %v", got)
	}
	if got := members(t, "mine6"); got["2001:db8::1"] != -1 || len(got) != 2 {
		t.Fatalf("mine6 = %v (want no timeouts, 2 members)", got)
	}
	if strings.Contains(sh(t, "iptables-save; ip6tables-save"), "CROWDSEC") {
		t.Fatal("ipset mode wrote iptables rules")
	}
	if err := b.Replay(ctx, slices.Values([]backend.Entry{entry("192.0.2.3/32", 7, time.Hour)})); err != nil {
		t.Fatal(err)
	}
	if got := keysOf(members(t, "mine4")); !slices.Equal(got, []string{"192.0.2.3"}) {
		t.Fatalf("mine4 after replay = %v", got)
	}
	want := map[backend.SetKey]int{{Origin: 7}: 1, {Origin: 8}: 1}
	if d, err := b.Verify(ctx, want); err != nil || !slices.Equal(d.Kinds, []string{"count"}) {
		t.Fatalf("Verify summed per family = %v, %v; want count drift (1 < 2)", d, err)
	}
	if err := b.Close(ctx, false); err != nil {
		t.Fatal(err)
	}
	if sets := strings.Fields(sh(t, "ipset list -n")); !slices.Equal(slices.Sorted(slices.Values(sets)), []string{"mine4", "mine6"}) {
		t.Fatalf("ipset mode Close(remove) must keep the sets: %q", sets)
	}
	if n := len(members(t, "mine4")) + len(members(t, "mine6")); n != 0 {
		t.Fatalf("ipset mode Close(remove) left %d members", n)
	}
	sh(t, "ipset destroy mine4 && ipset destroy mine6")
}

func v4Entries(n int, ttl time.Duration) []backend.Entry {
	out := make([]backend.Entry, n)
	for i := range n {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)})
		out[i] = backend.Entry{Prefix: netip.PrefixFrom(a, 32), Until: t0.Add(ttl)}
	}
	return out
}

func TestKernelReplay100k(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b, _ := newKernelBackend(t, Config{Chains4: []string{"INPUT"}, DisableIPv6: true})
	entries := v4Entries(100000, time.Hour)
	for range 2 { // into a missing set, then through the swap
		if err := b.Replay(ctx, slices.Values(entries)); err != nil {
			t.Fatal(err)
		}
		if d, err := b.Verify(ctx, map[backend.SetKey]int{{}: 100000}); err != nil || !d.None() {
			t.Fatalf("Verify at 100k = %+v, %v", d, err)
		}
	}
	sh(t, "ipset destroy small4 2>/dev/null || true")
}

// Another process listing our sets (monitoring, an admin's `ipset list`)
// holds a reference for the length of its dump; swap and destroy answer EBUSY
// meanwhile. Replays must ride that out, not fail.
func TestKernelReplayWhileListed(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b, _ := newKernelBackend(t, Config{Chains4: []string{"INPUT"}, DisableIPv6: true})
	entries := v4Entries(50000, time.Hour)
	if err := b.Replay(ctx, slices.Values(entries)); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			_ = exec.Command("ipset", "list", "crowdsec-blacklists-0").Run()
			n++
		}
	}()
	for i := range 15 {
		if err := b.Replay(ctx, slices.Values(entries)); err != nil {
			close(stop)
			<-done
			t.Fatalf("replay %d while the set is being listed: %v", i, err)
		}
	}
	close(stop)
	t.Logf("%d concurrent listings", <-done)
}

// ReplayWhen fills every set aside and swaps nothing in before ready
// returns; a failing ready leaves the old members in force, no temporary
// set behind, and is returned. A set missing at replay time (ipset mode:
// a rule may match it by name) is not filled before ready either.
func TestKernelReplayWhen(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b := twoOrigins(t, entry("192.0.2.1/32", 0, time.Hour), entry("192.0.2.3/32", 1, time.Hour))
	next := []backend.Entry{entry("198.51.100.0/24", 0, time.Hour), entry("192.0.2.2/32", 0, time.Hour), entry("203.0.113.7/32", 1, time.Hour)}
	state := func() string {
		return fmt.Sprint(keysOf(members(t, "crowdsec-blacklists-0")), keysOf(members(t, "crowdsec-blacklists-1")))
	}
	old := state()

	failed := errors.New("journal not written")
	if err := b.ReplayWhen(ctx, slices.Values(next), func() error { return failed }); !errors.Is(err, failed) {
		t.Fatalf("ReplayWhen with a failing ready: %v, want its error", err)
	}
	if got := state(); got != old {
		t.Fatalf("after a failed ready the sets hold %v, want the old %v", got, old)
	}
	if strings.Contains(sh(t, "ipset list -n"), "-t\n") {
		t.Error("a temporary set was left behind")
	}

	// The largest set goes first: here one that must be recreated.
	sh(t, "iptables -F CROWDSEC_CHAIN && ipset destroy crowdsec-blacklists-0")
	calls := 0
	if err := b.ReplayWhen(ctx, slices.Values(next), func() error {
		// Only the first call is the barrier; later ones find it passed.
		if calls++; calls > 1 {
			return nil
		}
		if strings.Contains(sh(t, "ipset list -n"), "crowdsec-blacklists-0\n") {
			if got := keysOf(members(t, "crowdsec-blacklists-0")); len(got) != 0 {
				t.Errorf("before ready returned the recreated set held %v", got)
			}
		}
		if got := keysOf(members(t, "crowdsec-blacklists-1")); !slices.Equal(got, []string{"192.0.2.3"}) {
			t.Errorf("before ready returned origin 1 held %v, want the old [192.0.2.3]", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if calls == 0 {
		t.Fatal("ready was never called")
	}
	want := "[192.0.2.2 198.51.100.0/24] [203.0.113.7]"
	if got := state(); got != want {
		t.Fatalf("after ReplayWhen the sets hold %v, want %v", got, want)
	}
}

// Replay fills every set in one walk, sending each set's entries in chunks
// as they come: entries of three sets interleaved, each set larger than a
// chunk, and some expired or refused, must land exactly where they belong.
func TestKernelReplayInterleavedSets(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b, _ := newKernelBackend(t, Config{Chains4: []string{"INPUT"}, Chains6: []string{"INPUT"}})
	if err := ensure(ctx, b, 0, 1); err != nil {
		t.Fatal(err)
	}
	n := fillChunk*2 + 321
	want := map[string]map[string]bool{"crowdsec-blacklists-0": {}, "crowdsec-blacklists-1": {}, "crowdsec6-blacklists-0": {}}
	var active []backend.Entry
	for i := range n {
		a4 := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		a6 := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
		ttl := time.Hour
		if i%1000 == 7 {
			ttl = -time.Second // expired: left out
		}
		active = append(active,
			backend.Entry{Prefix: netip.PrefixFrom(a4, 32), Origin: i % 2, Until: t0.Add(ttl)},
			backend.Entry{Prefix: netip.PrefixFrom(a6, 128), Until: t0.Add(ttl)})
		if ttl > 0 {
			want[fmt.Sprintf("crowdsec-blacklists-%d", i%2)][a4.String()] = true
			want["crowdsec6-blacklists-0"][a6.String()] = true
		}
	}
	active = append(active, entry("192.0.2.5/24", 0, time.Hour)) // not masked: refused
	err := b.Replay(ctx, slices.Values(active))
	var re *backend.RejectedError
	if !errors.As(err, &re) || len(re.Rejected) != 1 || re.Rejected[0].Reason != "invalid_prefix" {
		t.Fatalf("Replay = %v, want the one unmasked entry refused", err)
	}
	for set, w := range want {
		got := members(t, set)
		if len(got) != len(w) {
			t.Errorf("%s holds %d members, want %d", set, len(got), len(w))
		}
		for p := range w {
			if _, ok := got[p]; !ok {
				t.Errorf("%s lacks %s", set, p)
				break
			}
		}
	}
	if out := sh(t, "ipset list -n"); strings.Contains(out, "-t\n") {
		t.Errorf("temporary set left behind:\n%s", out)
	}
}

// stopAfter is a context whose Err reports cancellation from its n-th call
// on: a replay interrupted at every netlink step in turn, deterministically.
type stopAfter struct {
	context.Context
	n, calls int
}

func (c *stopAfter) Err() error {
	c.calls++
	if c.calls >= c.n {
		return context.Canceled
	}
	return nil
}

// A replay cancelled at any step leaves no temporary set behind, and each
// set holds either all of its old entries or all of its new ones.
func TestKernelReplayCancelledAtEveryStep(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	b, _ := newKernelBackend(t, Config{Chains4: []string{"INPUT"}, Chains6: []string{"INPUT"}})
	if err := ensure(t.Context(), b, 0); err != nil {
		t.Fatal(err)
	}
	sets := []string{"crowdsec-blacklists-0", "crowdsec6-blacklists-0"}
	// content gen: n addresses per family that no other gen shares.
	content := func(gen, n int) ([]backend.Entry, map[string]map[string]int) {
		var es []backend.Entry
		want := map[string]map[string]int{sets[0]: {}, sets[1]: {}}
		for i := range n {
			a4 := netip.AddrFrom4([4]byte{198, 18, byte(gen), byte(i)})
			a6 := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 13: byte(gen), 15: byte(i)})
			es = append(es, entry(a4.String()+"/32", 0, time.Hour), entry(a6.String()+"/128", 0, time.Hour))
			want[sets[0]][a4.String()], want[sets[1]][a6.String()] = 1, 1
		}
		return es, want
	}
	first, held := content(0, 200)
	if err := b.Replay(t.Context(), slices.Values(first)); err != nil {
		t.Fatal(err)
	}
	for k := 1; ; k++ {
		if k == 500 {
			t.Fatal("no replay completed in 500 steps")
		}
		next, want := content(k%250+1, 100+k%2*50) // sizes differ step to step
		err := b.Replay(&stopAfter{Context: t.Context(), n: k}, slices.Values(next))
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("step %d: Replay = %v, want nil or cancelled", k, err)
		}
		if out := sh(t, "ipset list -n"); strings.Contains(out, "-t\n") {
			t.Fatalf("step %d: temporary set left behind:\n%s", k, out)
		}
		for _, set := range sets {
			got := members(t, set)
			switch {
			case slices.Equal(keysOf(got), keysOf(want[set])):
				held[set] = want[set]
			case err != nil && slices.Equal(keysOf(got), keysOf(held[set])):
			default:
				t.Fatalf("step %d (err %v): %s holds %d members, neither its %d old nor its %d new entries",
					k, err, set, len(got), len(held[set]), len(want[set]))
			}
		}
		if err == nil {
			t.Logf("replay completed at step %d", k)
			return
		}
	}
}
