//go:build bench

package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/iptables"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// TestBenchScrape times GET /metrics with 100k bans in the kernel (real
// backend, fresh network namespace) and a 100k-entry journal, and checks
// that the heap does not grow across scrapes. Built only with -tags bench (make bench).
func TestBenchScrape(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	const n = 100000
	now := time.Now()
	be, err := iptables.New(iptables.Config{Chains4: []string{"INPUT"}, Chains6: []string{"INPUT"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := be.Close(context.Background(), false); err != nil {
			t.Errorf("close backend: %v", err)
		}
	})
	j, err := journal.Open(journal.Options{Path: filepath.Join(t.TempDir(), "j.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Close() })

	entries := make([]backend.Entry, n)
	ds := make([]journal.Decision, n)
	for i := range n {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)})
		p := netip.PrefixFrom(a, 32)
		origin := "crowdsec"
		if i%2 == 1 {
			origin = "lists:firehol"
		}
		ds[i] = journal.Decision{Prefix: p, Until: now.Add(time.Hour), Origin: origin, Type: "ban", Scope: journal.ScopeIP}
	}
	if err := j.Append(journal.Batch{Full: true, New: ds}); err != nil {
		t.Fatal(err)
	}
	origins := j.Origins()
	for i, d := range ds {
		entries[i] = backend.Entry{Prefix: d.Prefix, Origin: origins[d.Origin], Until: d.Until}
	}
	be.SetOrigins(backend.Origins{origins["crowdsec"]: "crowdsec", origins["lists:firehol"]: "lists:firehol"})
	if err := be.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := be.Replay(ctx, slices.Values(entries)); err != nil {
		t.Fatal(err)
	}

	m := New(Sources{Kernel: be, Origins: j.Origins, JournalStats: j.Stats}, Options{})
	srv := httptest.NewServer(NewHandler(m))
	defer srv.Close()
	scrape := func() string {
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("scrape: %d %v", resp.StatusCode, err)
		}
		return string(body)
	}
	body := scrape()
	for _, want := range []string{
		`fw_bouncer_banned_ips{ip_type="ipv4",origin="crowdsec"} 50000`,
		`fw_bouncer_banned_ips{ip_type="ipv4",origin="lists:firehol"} 50000`,
		"cs_journal_bouncer_journal_active_entries 100000",
		"cs_journal_bouncer_kernel_read_errors_total 0",
	} {
		if !strings.Contains(body, want) {
			t.Fatalf("scrape lacks %q:\n%s", want, body)
		}
	}
	for range 10 { // warm up connections and pools
		scrape()
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	const scrapes = 200
	before := heap()
	start := time.Now()
	for range scrapes {
		scrape()
	}
	per := time.Since(start) / scrapes
	after := heap()
	start = time.Now()
	for range scrapes {
		if _, err := be.Counters(ctx); err != nil {
			t.Fatal(err)
		}
	}
	kernel := time.Since(start) / scrapes
	start = time.Now()
	for range scrapes {
		j.Stats()
	}
	stats := time.Since(start) / scrapes
	// The figures are reported, not asserted: wall-clock timings vary
	// with the machine (target: ≤ 20 ms per scrape, no growth).
	t.Logf("100k bans: %v per /metrics scrape (%d scrapes, %d bytes each); HeapInuse %d -> %d (%+d bytes)",
		per, scrapes, len(body), before, after, int64(after)-int64(before))
	t.Logf("of which: kernel Counters %v, journal Stats %v", kernel, stats)
}
