//go:build bench

package iptables

import (
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// TestBenchReplay measures Replay of 100k IPv4 entries into an empty
// kernel against `ipset restore` of the same entries, and a Verify pass.
// Built only with -tags bench (make bench): a figure, not a test.
func TestBenchReplay(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	entries := v4Entries(100000, time.Hour)
	var script strings.Builder
	script.WriteString("create ref hash:net family inet hashsize 1024 maxelem 131072 timeout 0\n")
	for _, e := range entries {
		fmt.Fprintf(&script, "add ref %s timeout 3600\n", e.Prefix.Addr())
	}
	cmd := exec.Command("ipset", "restore")
	cmd.Stdin = strings.NewReader(script.String())
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ipset restore: %v %s", err, out)
	}
	ref := time.Since(start)

	b, _ := newKernelBackend(t, Config{Chains4: []string{"INPUT"}, DisableIPv6: true})
	if err := ensure(ctx, b, 0); err != nil {
		t.Fatal(err)
	}
	sh(t, "ipset destroy ref")
	start = time.Now()
	if err := b.Replay(ctx, slices.Values(entries)); err != nil {
		t.Fatal(err)
	}
	ours := time.Since(start)
	want := map[backend.SetKey]int{{}: 100000}
	if _, err := b.Verify(ctx, want); err != nil { // first pass reads the tables
		t.Fatal(err)
	}
	const passes = 100
	start = time.Now()
	for range passes {
		if d, err := b.Verify(ctx, want); err != nil || !d.None() {
			t.Fatalf("Verify = %+v, %v", d, err)
		}
	}
	verify := time.Since(start) / passes
	t.Logf("100k IPv4: ipset restore %v, Replay %v (ratio %.1fx); Verify pass %v", ref, ours, float64(ref)/float64(ours), verify)
}

// TestBenchReplay1M: Replay of 1M IPv6 entries with the default ipset_size
// (the set must grow) into an empty kernel, beside `ipset restore` of the
// same entries into a set of the right maxelem, and the bytes Replay
// allocates. A figure, not a test.
func TestBenchReplay1M(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	const n = 1_000_000
	ctx := t.Context()
	entries := make([]backend.Entry, n)
	var script strings.Builder
	script.WriteString("create ref6 hash:net family inet6 maxelem 1048576 timeout 0\n")
	for i := range entries {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		entries[i] = backend.Entry{Prefix: netip.PrefixFrom(a, 128), Until: t0.Add(time.Hour)}
		fmt.Fprintf(&script, "add ref6 %s timeout 3600\n", a)
	}
	cmd := exec.Command("ipset", "restore")
	cmd.Stdin = strings.NewReader(script.String())
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ipset restore: %v %s", err, out)
	}
	ref := time.Since(start)
	sh(t, "ipset destroy ref6")
	b, _ := newKernelBackend(t, Config{Chains6: []string{"INPUT"}, DisableIPv4: true})
	if err := ensure(ctx, b, 0); err != nil {
		t.Fatal(err)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	start = time.Now()
	if err := b.Replay(ctx, slices.Values(entries)); err != nil {
		t.Fatal(err)
	}
	ours := time.Since(start)
	runtime.ReadMemStats(&m1)
	fmt.Printf("bench Replay of %d IPv6 entries, default ipset_size: %v (%.2f× ipset restore %v); allocated %d MB\n",
		n, ours.Round(time.Millisecond), ours.Seconds()/ref.Seconds(), ref.Round(time.Millisecond), (m1.TotalAlloc-m0.TotalAlloc)>>20)
}
