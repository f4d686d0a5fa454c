//go:build bench

package nftables

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	gnft "github.com/google/nftables"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// Figures, printed beside a reference measured in the same run, never
// asserted: `go test -tags bench -run TestBench -v ./internal/backend/nftables`.

func benchEntries(n int) []backend.Entry {
	out := make([]backend.Entry, 0, n)
	base := netip.MustParseAddr("198.18.0.0")
	for a := base; len(out) < n; a = a.Next() {
		out = append(out, backend.Entry{Prefix: netip.PrefixFrom(a, 32), Until: t0.Add(time.Hour)})
	}
	return out
}

// nftFile loads the same entries into a plain timeout set with `nft -f`.
func nftFile(t *testing.T, entries []backend.Entry, interval bool) time.Duration {
	t.Helper()
	flags := "timeout"
	if interval {
		flags = "timeout,interval"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "add table ip ref\nadd set ip ref s { type ipv4_addr; flags %s; }\nflush set ip ref s\n", flags)
	for i := 0; i < len(entries); i += 10000 {
		b.WriteString("add element ip ref s {")
		for j, e := range entries[i:min(i+10000, len(entries))] {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%s timeout 3600s", e.Prefix.Addr())
		}
		b.WriteString("}\n")
	}
	path := filepath.Join(t.TempDir(), "ref.nft")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := exec.Command("nft", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v %s", err, out)
	}
	d := time.Since(start)
	sh(t, "nft delete table ip ref")
	return d
}

func TestBenchReplay(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	cfg := kernelConfig()
	cfg.IPv6.Enabled = false
	b := newKernel(t, cfg)
	for _, n := range []int{100_000, 1_000_000} {
		entries := benchEntries(n)
		runtime.GC()
		start := time.Now()
		if err := b.Replay(t.Context(), slices.Values(entries)); err != nil {
			t.Fatal(err)
		}
		ours := time.Since(start)
		ref := nftFile(t, entries, false)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		t.Logf("replay %7d: ours %v, nft -f %v, ratio %.2f (Go heap sys %d MB)", n, ours.Round(time.Millisecond),
			ref.Round(time.Millisecond), float64(ours)/float64(ref), ms.HeapSys>>20)
	}
}

// TestBenchInterval compares filling a plain and an interval set through
// netlink (one transaction each), the choice behind the set layout.
func TestBenchInterval(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	const n = 100_000
	entries := benchEntries(n)
	table := &gnft.Table{Name: "bench", Family: gnft.TableFamilyIPv4}
	for _, interval := range []bool{false, true} {
		conn, err := newConn()
		if err != nil {
			t.Fatal(err)
		}
		conn.AddTable(table)
		set := &gnft.Set{Table: table, Name: fmt.Sprintf("s%v", interval), KeyType: gnft.TypeIPAddr, HasTimeout: true, Interval: interval}
		if err := conn.AddSet(set, nil); err != nil {
			t.Fatal(err)
		}
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		w := &writer{set: set, op: conn.SetAddElements}
		for _, e := range entries {
			w.put(elems(nil, e.Prefix, interval, time.Hour)...)
		}
		w.flush()
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
		ours := time.Since(start)
		ref := nftFile(t, entries, interval)
		t.Logf("%d adds, interval=%v: netlink %v, nft -f %v, ratio %.2f", n, interval, ours.Round(time.Millisecond), ref.Round(time.Millisecond), float64(ours)/float64(ref))
	}
}
