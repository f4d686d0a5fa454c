//go:build bench

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestBenchNFTablesStartup prints the nftables figures of `make bench`:
// process start → 100k bans in the kernel with a LAPI stand-in, peak RSS,
// and restart from the journal with LAPI down, beside `nft -f` of the same
// elements into a timeout set measured in the same run. Printed, never
// asserted.
func TestBenchNFTablesStartup(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	const n = 100_000
	url, up := benchLAPI(t, n)
	ref := nftFileReference(t, n)
	fmt.Printf("bench reference: nft -f of %d elements into a timeout set: %v\n", n, ref.Round(time.Millisecond))

	cfg := writeConfig(t, nil, nftMode(bouncerOpts{URL: url, Key: "bench"}))
	start := time.Now()
	b := launch(t, cfg)
	if os.Getenv("CSJB_BENCH_VERBOSE") != "" {
		t.Cleanup(func() { fmt.Printf("bench nftables cold-start log:\n%s\n", b.out.String()) })
	}
	b.waitLog(t, "pulled decisions", 60*time.Second)
	cold := logTime(t, b, "pulled decisions").Sub(start)
	fmt.Printf("bench nftables cold start → %d bans in the kernel: %v (%.2f× nft -f; target ≤ 0.7×; upstream measured 4.6–7.8 s)\n",
		n, cold.Round(time.Millisecond), cold.Seconds()/ref.Seconds())
	requireNFTCount(t, n)
	fmt.Printf("bench nftables peak RSS (cold start): %d MB (target ≤ 60 MB; upstream measured 129–136 MB)\n", peakRSS(t, b.cmd.Process.Pid)/1024)
	benchNFTablesHeal(t, b, n)
	b.stop(t) // on_shutdown: remove

	up.Store(false)
	start = time.Now()
	b2 := launch(t, cfg)
	b2.waitLog(t, "journal enforced", 60*time.Second)
	warm := logTime(t, b2, "journal enforced").Sub(start)
	requireNFTCount(t, n)
	fmt.Printf("bench nftables restart from journal, LAPI down → %d bans in the kernel: %v (%.2f× nft -f; target ≤ 0.3 s)\n",
		n, warm.Round(time.Millisecond), warm.Seconds()/ref.Seconds())
	fmt.Printf("bench nftables peak RSS (journal restart): %d MB\n", peakRSS(t, b2.cmd.Process.Pid)/1024)
	if os.Getenv("CSJB_BENCH_VERBOSE") != "" {
		fmt.Printf("bench nftables restart log:\n%s\n", b2.out.String())
	}
}

// benchNFTablesHeal prints, for each fault nf_tables announces, the time
// from the fault to all n bans enforced again, read from the time stamp of
// the daemon's repair log line (then checked in the kernel), beside the
// 1 s verify tick that bounded repairs before events; then the daemon's
// idle CPU with the event monitor running.
func benchNFTablesHeal(t *testing.T, b *bouncer, n int) {
	time.Sleep(2 * time.Second)
	healBench("bench nftables heal", n, time.Second, []benchFault{
		{"nft flush ruleset", false, func() { sh(t, "nft", "flush", "ruleset") }, nil},
		{"nft delete table ip crowdsec", false, func() { sh(t, "nft", "delete", "table", "ip", "crowdsec") }, nil},
		{"set of 100k flushed", false, func() { sh(t, "nft", "flush", "set", "ip", "crowdsec", benchSet) }, nil},
		{"our rule deleted", false, nil, func() func() { return deleteBenchRule(t) }},
	}, func(fault func()) time.Duration {
		k := len(repairTimes(t, b))
		start := time.Now()
		fault()
		eventually(t, 20*time.Second, "a repair in the log", func() bool { return len(repairTimes(t, b)) > k })
		healed := repairTimes(t, b)[k].Sub(start)
		requireNFTCount(t, n)
		requireRulesOnce(t)
		return healed
	})
	printRepairLog(b, "bench nftables")
	for _, l := range strings.Split(b.out.String(), "\n") {
		if strings.Contains(l, "repaired") && !strings.Contains(l, "repaired drift") {
			fmt.Printf("bench nftables member repair (from the log): %.200s\n", l[max(strings.Index(l, "msg="), 0):])
		}
	}
	const window = 20 * time.Second
	idle := idleCPU(t, b.cmd.Process.Pid, window)
	fmt.Printf("bench nftables idle CPU with %d bans over %v, nf_tables event monitor running: %.2f%% of one core (target ≤ 1 %%)\n", n, window, idle)
}

// deleteBenchRule finds our v4 input rule matching the bench set by handle
// in a terse listing of the chain and returns the fault that deletes it:
// the listing (≈0.4 s with 100k bans) runs before the timed window.
func deleteBenchRule(t *testing.T) func() {
	for _, l := range strings.Split(sh(t, "nft", "-a", "-t", "list", "chain", "ip", "crowdsec", "crowdsec-chain-input"), "\n") {
		if _, h, ok := strings.Cut(l, "# handle "); ok && strings.Contains(l, "@"+benchSet+" ") {
			h = strings.TrimSpace(h)
			return func() { sh(t, "nft", "delete", "rule", "ip", "crowdsec", "crowdsec-chain-input", "handle", h) }
		}
	}
	t.Fatal("no rule of ours matches the bench set")
	return nil
}

// repairTimes returns the time stamps of the daemon's repair log lines
// (a replay, members put back, a deep verify's repair), oldest first.
func repairTimes(t *testing.T, b *bouncer) []time.Time {
	t.Helper()
	var out []time.Time
	for _, l := range strings.Split(b.out.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "repaired") {
			out = append(out, lineTime(t, l))
		}
	}
	return out
}

// benchSet is the set the stand-in's bans (origin lists:bench) go to.
const benchSet = "crowdsec-blacklists-lists-bench"

// logTime returns the time stamp of the first log line holding msg. The
// daemon logs "journal enforced" and "pulled decisions" once the kernel
// transaction is committed; the time stamp is exact where polling the
// kernel is not: an `nft` call on a 100k set takes longer than what it
// measures, and competes for the CPU. requireNFTCount then checks the
// kernel.
func logTime(t *testing.T, b *bouncer, msg string) time.Time {
	t.Helper()
	for _, l := range strings.Split(b.out.String(), "\n") {
		if strings.Contains(l, msg) {
			return lineTime(t, l)
		}
	}
	t.Fatalf("no %q in the log", msg)
	return time.Time{}
}

// lineTime parses the time stamp a log line starts with.
func lineTime(t *testing.T, l string) time.Time {
	t.Helper()
	f, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
	at, err := time.Parse(time.RFC3339Nano, f)
	if err != nil {
		t.Fatalf("log line %q: %v", l, err)
	}
	return at
}

// requireNFTCount checks the bench set holds all n bans.
func requireNFTCount(t *testing.T, n int) {
	t.Helper()
	if got := len(nftSet(t, "ip", "crowdsec", benchSet)); got != n {
		t.Fatalf("kernel holds %d of %d", got, n)
	}
}

// nftFileReference times `nft -f` of n elements with timeouts into a
// fresh timeout set (table included), as a script would load them.
func nftFileReference(t *testing.T, n int) time.Duration {
	t.Helper()
	var in bytes.Buffer
	in.WriteString("table ip csjb_ref {\n set s {\n  type ipv4_addr\n  flags timeout\n  elements = {\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&in, "   %s timeout 14400s,\n", benchAddr(i))
	}
	in.WriteString("  }\n }\n}\n")
	start := time.Now()
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s", err, out)
	}
	d := time.Since(start)
	sh(t, "nft", "delete", "table", "ip", "csjb_ref")
	return d
}
