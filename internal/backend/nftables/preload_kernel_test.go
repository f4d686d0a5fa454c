package nftables

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// preloadBackend is an ensured backend with no origin declared (a cold
// start) and a clock the test moves.
func preloadBackend(t *testing.T) (*Backend, *atomic.Int64) {
	t.Helper()
	var clock atomic.Int64
	clock.Store(t0.UnixNano())
	cfg := kernelConfig()
	cfg.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	return b, &clock
}

// rulesMatching returns the comments of the rules that match set.
func rulesMatching(t *testing.T, set string) []string {
	t.Helper()
	rules, _, _, _ := ruleset(t)
	var out []string
	for _, r := range rules {
		if strings.Contains(r.Comment, "@"+set+" ") {
			out = append(out, r.Comment)
		}
	}
	return out
}

// pulled is one decision of a pull as the normalizer hands it over.
type pulled struct {
	p      netip.Prefix
	until  time.Time
	origin string
}

// preloadPull runs a preload over ds and returns the replay's entries:
// one per (address, origin) with the latest Until, as the view holds them.
func preloadPull(t *testing.T, b *Backend, ds []pulled, keep bool) []backend.Entry {
	t.Helper()
	return preloadPullCtx(t, t.Context(), b, ds, keep)
}

func preloadPullCtx(t *testing.T, ctx context.Context, b *Backend, ds []pulled, keep bool) []backend.Entry {
	t.Helper()
	pl := b.Preload(ctx)
	if pl == nil {
		t.Fatal("Preload = nil on an ensured table")
	}
	idx := map[string]int{}
	latest := map[netip.Prefix]map[int]time.Time{}
	for _, d := range ds {
		pl.Add(d.p, d.until, d.origin)
		o, ok := idx[d.origin]
		if !ok {
			o = len(idx)
			idx[d.origin] = o
		}
		if latest[d.p] == nil {
			latest[d.p] = map[int]time.Time{}
		}
		if d.until.After(latest[d.p][o]) {
			latest[d.p][o] = d.until
		}
	}
	pl.Finish(keep)
	names := backend.Origins{}
	for n, o := range idx {
		names[o] = n
	}
	b.SetOrigins(names)
	var es []backend.Entry
	for p, byOrigin := range latest {
		for o, u := range byOrigin {
			es = append(es, backend.Entry{Prefix: p, Origin: o, Until: u})
		}
	}
	return es
}

// A cold start's pull preloaded into new sets: nothing matches them until
// the journal has the batch (ready), then the replay keeps their content
// (the elements' timeouts are those of the preload, not recomputed) and
// gives them their rules. Ranges and the other family are filled by the
// replay itself.
func TestKernelPreloadKept(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b, clock := preloadBackend(t)
	const n = 25_000 // a few preload transactions
	var ds []pulled
	for i := range n {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		ds = append(ds, pulled{netip.PrefixFrom(a, 32), t0.Add(2 * time.Hour), "lists:bench"})
	}
	ds = append(ds,
		pulled{netip.MustParsePrefix("2001:db8::7/128"), t0.Add(2 * time.Hour), "cscli"},
		pulled{netip.MustParsePrefix("203.0.113.0/24"), t0.Add(2 * time.Hour), "cscli"})
	const set, set6, ranges = "crowdsec-blacklists-lists-bench", "crowdsec6-blacklists-cscli", "crowdsec-blacklists-cscli-ranges"
	es := preloadPull(t, b, ds, true)
	if got := len(elements(t, "ip", "crowdsec", set)); got != n {
		t.Fatalf("after the preload %s holds %d elements, want %d", set, got, n)
	}
	if err := b.Ensure(ctx); err != nil { // the enforcer's Ensure before its replay
		t.Fatal(err)
	}
	clock.Add(int64(30 * time.Minute)) // a refill would give 1h30m timeouts
	ready := func() error {
		// The preloaded sets are matched by no rule; cscli's v4 rules
		// exist (it has no preloaded v4 set) but its ranges are empty.
		for _, s := range []string{set, set6} {
			if r := rulesMatching(t, s); len(r) > 0 {
				t.Errorf("before the journal has the batch, rules match %s: %q", s, r)
			}
		}
		if got := elements(t, "ip", "crowdsec", ranges); len(got) > 0 {
			t.Errorf("before the journal has the batch, %s holds %q", ranges, keys(got))
		}
		return nil
	}
	if err := b.ReplayWhen(ctx, slices.Values(es), ready); err != nil {
		t.Fatal(err)
	}
	got := elements(t, "ip", "crowdsec", set)
	if len(got) != n {
		t.Fatalf("after the replay %s holds %d elements, want %d", set, len(got), n)
	}
	for k, exp := range got {
		if exp < 7000 {
			t.Fatalf("%s expires in %d s: refilled by the replay (kept, it would expire in ~7200 s)", k, exp)
		}
	}
	if got := keys(elements(t, "ip6", "crowdsec6", set6)); !slices.Equal(got, []string{"2001:db8::7"}) {
		t.Errorf("%s holds %q", set6, got)
	}
	if got := keys(elements(t, "ip", "crowdsec", ranges)); !slices.Equal(got, []string{"203.0.113.0/24"}) {
		t.Errorf("%s holds %q", ranges, got)
	}
	for _, s := range []string{set, set6, ranges} {
		if r := rulesMatching(t, s); len(r) != len(kernelConfig().Hooks) {
			t.Errorf("after the replay %d rules match %s, want one per hook: %q", len(r), s, r)
		}
	}
	if d, err := b.Verify(ctx, nil); err != nil || !d.None() {
		t.Errorf("Verify after the replay = %+v, %v", d, err)
	}
}

// A preload that is not exactly the replay's content is refilled: an
// address sent twice (the element holds the last add's timeout, not the
// latest), one the view no longer holds, or a load that failed (its pull
// was cancelled).
func TestKernelPreloadRefilled(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	const set = "crowdsec-blacklists-crowdsec"
	a, c := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.3/32")
	for _, tc := range []struct {
		name   string
		ds     []pulled
		drop   netip.Prefix // left out of the view
		cancel bool         // the pull's context ends before the load
		want   map[string]int
	}{
		{"duplicate", []pulled{{a, t0.Add(3 * time.Hour), "crowdsec"}, {a, t0.Add(time.Hour), "crowdsec"}, {c, t0.Add(time.Hour), "crowdsec"}},
			netip.Prefix{}, false, map[string]int{"192.0.2.1": 3*3600 - 1800, "192.0.2.3": 3600 - 1800}},
		{"not in the view", []pulled{{a, t0.Add(3 * time.Hour), "crowdsec"}, {c, t0.Add(time.Hour), "crowdsec"}},
			c, false, map[string]int{"192.0.2.1": 3*3600 - 1800}},
		{"load failed", []pulled{{a, t0.Add(3 * time.Hour), "crowdsec"}, {c, t0.Add(time.Hour), "crowdsec"}},
			netip.Prefix{}, true, map[string]int{"192.0.2.1": 3*3600 - 1800, "192.0.2.3": 3600 - 1800}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sh(t, "nft flush ruleset")
			b, clock := preloadBackend(t)
			ctx, cancel := context.WithCancel(t.Context())
			if tc.cancel {
				cancel()
			}
			es := preloadPullCtx(t, ctx, b, tc.ds, true)
			cancel()
			es = slices.DeleteFunc(es, func(e backend.Entry) bool { return e.Prefix == tc.drop })
			if err := b.Ensure(t.Context()); err != nil {
				t.Fatal(err)
			}
			clock.Add(int64(30 * time.Minute))
			if err := b.Replay(t.Context(), slices.Values(es)); err != nil {
				t.Fatal(err)
			}
			got := elements(t, "ip", "crowdsec", set)
			if !slices.Equal(keys(got), keys(tc.want)) {
				t.Fatalf("set holds %q, want %q", keys(got), keys(tc.want))
			}
			for k, want := range tc.want {
				// The kernel counts down in real time: allow a few seconds.
				if got[k] > want+5 || got[k] < want-5 {
					t.Errorf("%s expires in %d s, want ~%d (refilled at the replay's clock)", k, got[k], want)
				}
			}
			if r := rulesMatching(t, set); len(r) != len(kernelConfig().Hooks) {
				t.Errorf("%d rules match %s, want one per hook", len(r), set)
			}
		})
	}
}

// Preload loads nothing into a set that exists (a rule may match it) or
// into an origin already declared; a failed pull removes what it loaded.
func TestKernelPreloadOnlyNewSets(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	b, _ := preloadBackend(t)
	b.SetOrigins(backend.Origins{0: "crowdsec"})
	if err := b.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	a := netip.MustParsePrefix("192.0.2.1/32")
	pl := b.Preload(t.Context())
	pl.Add(a, t0.Add(time.Hour), "crowdsec") // declared, and its set exists
	pl.Add(a, t0.Add(time.Hour), "cscli")    // new: loaded, then removed
	pl.Finish(true)
	if got := elements(t, "ip", "crowdsec", "crowdsec-blacklists-crowdsec"); len(got) != 0 {
		t.Errorf("the declared origin's set got %q from a preload", keys(got))
	}
	if got := keys(elements(t, "ip", "crowdsec", "crowdsec-blacklists-cscli")); !slices.Equal(got, []string{"192.0.2.1"}) {
		t.Errorf("the new origin's set holds %q", got)
	}
	// A repair replays the view before the pull's batch reaches the
	// journal: cscli is not declared yet, so its set stays unmatched.
	if err := b.Replay(t.Context(), slices.Values([]backend.Entry{})); err != nil {
		t.Fatal(err)
	}
	if r := rulesMatching(t, "crowdsec-blacklists-cscli"); len(r) > 0 {
		t.Errorf("a repair before the batch was journaled gave the preloaded set rules: %q", r)
	}
	b.SetOrigins(backend.Origins{0: "crowdsec", 1: "cscli"})
	if err := b.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r := rulesMatching(t, "crowdsec-blacklists-cscli"); len(r) > 0 {
		t.Errorf("Ensure before the replay gave the preloaded set rules: %q", r)
	}
	if err := b.Replay(t.Context(), slices.Values([]backend.Entry{entry("192.0.2.1/32", 1, time.Hour)})); err != nil {
		t.Fatal(err)
	}
	if r := rulesMatching(t, "crowdsec-blacklists-cscli"); len(r) != len(kernelConfig().Hooks) {
		t.Errorf("after the replay %d rules match the preloaded set, want one per hook", len(r))
	}

	pl = b.Preload(t.Context())
	pl.Add(a, t0.Add(time.Hour), "lists:gone")
	pl.Finish(false)
	_, _, sets, _ := ruleset(t)
	for _, s := range sets {
		if s.Name == "crowdsec-blacklists-lists-gone" {
			t.Errorf("a failed pull's set was left: %s", s.Name)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.pending) > 0 {
		t.Errorf("a failed pull left pending sets: %v", b.pending)
	}
}

// A set a killed preload left behind (undeclared origin, no rule matches
// it, stale elements) is flushed and loaded again; a set of an undeclared
// origin that a rule of the administrator looks up is left alone.
func TestKernelPreloadLeftover(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	b, _ := preloadBackend(t)
	sh(t, "nft add set ip crowdsec crowdsec-blacklists-cscli '{ type ipv4_addr; flags timeout; }'")
	sh(t, "nft add element ip crowdsec crowdsec-blacklists-cscli '{ 198.51.100.9 timeout 1h }'")
	sh(t, "nft add set ip crowdsec crowdsec-blacklists-theirs '{ type ipv4_addr; flags timeout; }'")
	sh(t, "nft add chain ip crowdsec admin && nft add rule ip crowdsec admin ip saddr @crowdsec-blacklists-theirs accept")
	a := netip.MustParsePrefix("192.0.2.1/32")
	es := preloadPull(t, b, []pulled{{a, t0.Add(time.Hour), "cscli"}, {a, t0.Add(time.Hour), "theirs"}}, true)
	if got := keys(elements(t, "ip", "crowdsec", "crowdsec-blacklists-cscli")); !slices.Equal(got, []string{"192.0.2.1"}) {
		t.Errorf("the left-over set holds %q after the preload, want the stale element gone", got)
	}
	if got := elements(t, "ip", "crowdsec", "crowdsec-blacklists-theirs"); len(got) != 0 {
		t.Errorf("a set a rule matches got %q from a preload", keys(got))
	}
	if r := rulesMatching(t, "crowdsec-blacklists-cscli"); len(r) > 0 {
		t.Errorf("rules match the preloaded set before the replay: %q", r)
	}
	if err := b.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := b.Replay(t.Context(), slices.Values(es)); err != nil {
		t.Fatal(err)
	}
	for _, set := range []string{"crowdsec-blacklists-cscli", "crowdsec-blacklists-theirs"} {
		if got := keys(elements(t, "ip", "crowdsec", set)); !slices.Equal(got, []string{"192.0.2.1"}) {
			t.Errorf("after the replay %s holds %q", set, got)
		}
	}
}
