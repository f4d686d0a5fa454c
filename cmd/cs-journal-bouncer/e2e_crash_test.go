package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// kernelMembers reads every member of our (non-temporary) v4/v6 sets.
func kernelMembers(t *testing.T) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	sc := bufio.NewScanner(strings.NewReader(sh(t, "ipset", "save")))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[0] != "add" || !strings.Contains(f[1], "blacklists") || strings.HasSuffix(f[1], "-t") {
			continue
		}
		p, err := netip.ParsePrefix(f[2])
		if err != nil {
			a, aerr := netip.ParseAddr(f[2])
			if aerr != nil {
				t.Fatalf("ipset save line %q: %v", sc.Text(), err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p)
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// journalMembers opens the journal (the daemon must be stopped) and returns
// its active prefixes.
func journalMembers(t *testing.T, path string) []netip.Prefix {
	t.Helper()
	j, err := journal.Open(journal.Options{Path: path, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.Recovered() != "" {
		t.Fatalf("journal was corrupt after kill -9 (moved to %s)", j.Recovered())
	}
	var out []netip.Prefix
	now := time.Now()
	j.View().Each(func(d journal.Decision) bool {
		if d.Until.After(now) {
			out = append(out, d.Prefix)
		}
		return true
	})
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func requireSame(t *testing.T, what string, got, want []netip.Prefix) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	missing, extra := 0, 0
	for _, p := range want {
		if _, ok := slices.BinarySearchFunc(got, p, comparePrefix); !ok {
			missing++
		}
	}
	for _, p := range got {
		if _, ok := slices.BinarySearchFunc(want, p, comparePrefix); !ok {
			extra++
		}
	}
	t.Fatalf("%s: kernel holds %d, want %d (%d missing, %d extra)", what, len(got), len(want), missing, extra)
}

// kill -9 at random moments during a 100k sync, 20 times; then the kernel
// must match the journal with LAPI down, and LAPI with LAPI up.
func TestE2EKill9During100kSync(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	testKill9During100kSync(t, iptablesE2E)
}

// testKill9During100kSync also checks that the restarts never duplicated
// our rules.
func testKill9During100kSync(t *testing.T, m e2eMode) {
	const n = 100_000
	l := testenv.StartLAPI(t)
	csv := filepath.Join(t.TempDir(), "bans.csv")
	var b strings.Builder
	b.WriteString("value,duration,reason,scope,type,origin\n")
	want := make([]netip.Prefix, 0, n)
	for i := 0; i < n; i++ {
		a := benchAddr(i)
		fmt.Fprintf(&b, "%s,4h,crash-test,ip,ban,cscli-import\n", a)
		want = append(want, netip.MustParsePrefix(a+"/32"))
	}
	if err := os.WriteFile(csv, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	l.CSCLI(t, "decisions", "import", "-i", csv)
	slices.SortFunc(want, comparePrefix)

	jpath := filepath.Join(t.TempDir(), "journal.db")
	cfg := writeConfig(t, l, m.opts(bouncerOpts{OnShutdown: "keep", Journal: jpath}))
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d", seed)
	// One uninterrupted start on a scratch journal measures a 100k sync
	// here (LAPI pull, journal write, kernel). The kills then fall at
	// random in tenths of 1.2× that, so they cover the whole sync: ten
	// from an empty journal, then one start that completes its sync (the
	// journal surely holds the 100k whatever the machine's load), then ten
	// that also replay the 100k at boot.
	calib := launch(t, writeConfig(t, l, m.opts(bouncerOpts{OnShutdown: "keep"})))
	began := time.Now()
	calib.waitLog(t, "pulled decisions", 60*time.Second)
	window := 1.2 * float64(time.Since(began))
	t.Logf("figure: an uninterrupted 100k sync took %v", time.Since(began).Round(time.Millisecond))
	calib.kill9()
	for i := 0; i < 21; i++ {
		bo := launch(t, cfg)
		if i == 10 {
			bo.waitLog(t, "pulled decisions", 60*time.Second)
		} else {
			time.Sleep(time.Duration((float64(i%11) + rng.Float64()) / 10 * window))
		}
		bo.kill9()
	}
	// One more run killed right after its pull is journaled: the comparisons
	// below must be between real contents, never empty against empty.
	bo := launch(t, cfg)
	bo.waitLog(t, "pulled decisions", 60*time.Second)
	bo.kill9()

	l.Stop(t)
	bo = startBouncer(t, cfg)
	bo.waitLog(t, "LAPI unreachable", within)
	bo.stop(t)
	jm := journalMembers(t, jpath)
	if len(jm) != n {
		t.Fatalf("journal holds %d entries after a journaled pull of %d: a kill -9 lost it", len(jm), n)
	}
	requireSame(t, "LAPI down: kernel vs journal", m.members(t), jm)
	t.Logf("figure: journal held %d entries after 22 kill -9", len(jm))

	l.Start(t)
	bo = startBouncer(t, cfg)
	bo.waitLog(t, "pulled decisions", 30*time.Second)
	bo.stop(t)
	requireSame(t, "LAPI up: kernel vs LAPI", m.members(t), want)
	m.once(t)
}
