//go:build bench

package heal

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/iptables"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// TestBenchMassExpiry100k: 100k bans sharing one expiry, kernel timeouts
// off, the real iptables backend: the longest stretch without a loop beat
// (target ≤ 200 ms) and the whole expiry pass (target ≤ 0.3 s), beside a
// raw `ipset restore` deleting the same entries, measured in the same run.
// Printed, never asserted.
func TestBenchMassExpiry100k(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	const n = 100_000
	ref := ipsetDelReference(t, n)
	fmt.Printf("bench reference: ipset restore deleting %d entries: %v\n", n, ref.Round(time.Millisecond))

	clk := &clock{t: t0}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	be, err := iptables.New(iptables.Config{Chains4: []string{"INPUT"}, DisableIPv6: true, DisableTimeouts: true, Now: clk.Now, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close(context.Background(), false) })
	j, err := journal.Open(journal.Options{Path: filepath.Join(t.TempDir(), "j.db"), Now: clk.Now, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Close() })
	if err := j.Append(journal.Batch{Full: true, New: hosts(n, "lists:bench", 10*time.Second)}); err != nil {
		t.Fatal(err)
	}
	ticks := make(chan time.Time)
	e := New(Config{}, Deps{Journal: j, Backend: be, Logger: log, Now: clk.Now, Ticks: ticks})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := e.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()

	// Sample the heartbeat every 100 µs: the longest gap between two beats
	// while the pass runs is the longest stall.
	var stall atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	clk.Advance(11 * time.Second)
	start := time.Now()
	go func() {
		defer close(sampled)
		last := start
		for {
			select {
			case <-stop:
				stall.Store(max(stall.Load(), int64(time.Since(last))))
				return
			default:
			}
			if hb := e.Heartbeat(); hb.After(last) {
				stall.Store(max(stall.Load(), int64(hb.Sub(last))))
				last = hb
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	ticks <- clk.Now()
	if err := e.Submit(ctx, journal.Batch{}, clk.Now()); err != nil { // returns once the pass is over
		t.Fatal(err)
	}
	took := time.Since(start)
	close(stop)
	<-sampled
	if left := j.View().Len(); left != 0 {
		t.Fatalf("%d decisions left after the expiry pass", left)
	}
	longest := time.Duration(stall.Load())
	fmt.Printf("bench expiry of %d bans at once (timeouts off): pass %v (%.2f× raw ipset delete; target ≤ 0.3 s), longest loop stall %v (target ≤ 200 ms)\n",
		n, took.Round(time.Millisecond), took.Seconds()/ref.Seconds(), longest.Round(time.Millisecond))
}

func ipsetDelReference(t *testing.T, n int) time.Duration {
	t.Helper()
	var add, del bytes.Buffer
	add.WriteString("create csjb-del hash:net family inet maxelem 262144\n")
	for _, d := range hosts(n, "x", 0) {
		fmt.Fprintf(&add, "add csjb-del %s\n", d.Prefix.Addr())
		fmt.Fprintf(&del, "del csjb-del %s\n", d.Prefix.Addr())
	}
	run := func(in *bytes.Buffer) {
		cmd := exec.Command("ipset", "restore")
		cmd.Stdin = in
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ipset restore: %v\n%s", err, out)
		}
	}
	run(&add)
	start := time.Now()
	run(&del)
	d := time.Since(start)
	_ = exec.Command("ipset", "destroy", "csjb-del").Run()
	return d
}
