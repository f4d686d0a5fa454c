//go:build bench

package iptables

import (
	"fmt"
	"os/exec"
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
	if err := b.Replay(ctx, entries); err != nil {
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
