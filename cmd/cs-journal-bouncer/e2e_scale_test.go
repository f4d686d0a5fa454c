package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// importBans loads n single-address bans of one duration into LAPI through
// `cscli decisions import` (one call, as a blocklist arrives).
func importBans(t *testing.T, l *testenv.LAPI, n int, duration string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("value,duration,reason,scope,type,origin\n")
	for i := range n {
		fmt.Fprintf(&b, "%s,%s,scale-test,ip,ban,cscli-import\n", benchAddr(i), duration)
	}
	csv := filepath.Join(t.TempDir(), "bans.csv")
	if err := os.WriteFile(csv, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	l.CSCLI(t, "decisions", "import", "-i", csv)
}

// watchHealth polls /health until stop and counts answers other than 200.
func watchHealth(base string) (stop func() (polls, bad int, last string)) {
	var polls, bad atomic.Int64
	var mu sync.Mutex
	var lastBad string
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		c := &http.Client{Timeout: 2 * time.Second}
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			polls.Add(1)
			resp, err := c.Get(base + "/health")
			if err == nil {
				resp.Body.Close()
			}
			if err != nil || resp.StatusCode != http.StatusOK {
				bad.Add(1)
				mu.Lock()
				lastBad = fmt.Sprint(err)
				if resp != nil {
					lastBad = resp.Status
				}
				mu.Unlock()
			}
		}
	})
	return func() (int, int, string) {
		close(done)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return int(polls.Load()), int(bad.Load()), lastBad
	}
}

// 100k bans sharing one short duration, kernel timeouts off, LAPI stopped:
// the daemon alone lifts them, all within about a second of their expiry,
// and stays alive and healthy throughout.
func TestE2EMassExpiryTimeoutsOff(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	const n = 100_000
	const ttl = 45 * time.Second
	l := testenv.StartLAPI(t)
	imported := time.Now() // no ban expires before imported+ttl
	importBans(t, l, n, ttl.String())
	// Every ban was created before this instant, so each expires before
	// pulled+ttl whatever the import took.
	pulled := time.Now()
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := writeConfig(t, l, bouncerOpts{Extra: fmt.Sprintf("ipset_disable_timeouts: true\nprometheus:\n  enabled: true\n  listen_addr: 127.0.0.1\n  listen_port: %d", port)})
	b := startBouncer(t, cfg)
	b.waitLog(t, fmt.Sprintf("new=%d", n), 60*time.Second)
	if got := len(kernelMembers(t)); got != n {
		t.Fatalf("kernel holds %d bans after the pull, want %d", got, n)
	}
	l.Stop(t)
	stop := watchHealth(base)
	deadline := pulled.Add(ttl)
	if early := imported.Add(ttl - time.Second); time.Now().Before(early) {
		time.Sleep(time.Until(early)) // a clock instant, not the kernel
		if got := len(kernelMembers(t)); got != n {
			t.Fatalf("%d of %d bans lifted before any expired", n-got, n)
		}
	}
	// Lifted within ~1 s of the expiry: one verify pass (1 s) plus the work.
	eventually(t, time.Until(deadline)+2500*time.Millisecond, "expired bans still in the kernel", func() bool {
		return len(kernelMembers(t)) == 0
	})
	polls, bad, last := stop()
	if !b.running() {
		t.Fatal("daemon died during the mass expiry")
	}
	if polls == 0 || bad > 0 {
		t.Fatalf("/health answered non-200 %d of %d times (last: %s)", bad, polls, last)
	}
	t.Logf("figure: %d bans expiring between +%s and +%s (import window) all lifted at +%s; /health 200 on %d polls",
		n, ttl, pulled.Add(ttl).Sub(imported).Round(10*time.Millisecond), time.Since(imported).Round(10*time.Millisecond), polls)
}

// A Range decision a hash:ip set cannot hold and more bans than ipset_size:
// the daemon stays alive across a restart, every address is enforced (the
// set grew) and the Range is refused with one warning per run.
func TestE2ERejectedRangeAndSetGrowth(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	const n = 1500
	l := testenv.StartLAPI(t)
	importBans(t, l, n, "4h")
	l.AddDecision(t, "cscli", "Range", "203.0.113.0/24", "4h")
	cfg := writeConfig(t, l, bouncerOpts{OnShutdown: "keep", Extra: "ipset_type: iphash\nipset_size: 1000"})
	for run := range 2 { // the second start finds the entries in the journal
		b := startBouncer(t, cfg)
		b.waitLog(t, "pulled decisions", 30*time.Second)
		eventually(t, 10*time.Second, "not every address enforced", func() bool {
			return len(kernelMembers(t)) == n
		})
		b.waitLog(t, "203.0.113.0/24", 5*time.Second)
		// The daemon's own check (run inside its loop) finds no drift: the
		// refused Range is not expected in the kernel.
		if code, out, errOut := cli(t, cfg, "check"); code != 0 {
			t.Fatalf("run %d: check = %d:\n%s%s", run, code, out, errOut)
		}
		if !b.running() {
			t.Fatalf("run %d: daemon exited with %d", run, b.exitCode())
		}
		out := b.out.String()
		if c := strings.Count(out, "entries not enforced"); c != 1 {
			t.Fatalf("run %d: %d warnings about refused entries, want 1", run, c)
		}
		if strings.Contains(out, "repaired drift") || strings.Contains(out, "replay failed") {
			t.Fatalf("run %d: a refused entry was treated as drift", run)
		}
		b.stop(t)
	}
}

// SIGTERM while the boot replay of 100k journaled bans runs: a clean exit
// (0), no ERROR, and no temporary set left in the kernel.
func TestE2ESigtermDuringBootReplay(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	const n = 100_000
	l := testenv.StartLAPI(t)
	importBans(t, l, n, "4h")
	cfg := writeConfig(t, l, bouncerOpts{OnShutdown: "keep"})
	b := startBouncer(t, cfg)
	b.waitLog(t, fmt.Sprintf("new=%d", n), 60*time.Second)
	b.stop(t)
	l.Stop(t) // boots enforce from the journal alone
	for i, delay := range []time.Duration{0, 20, 50, 80, 120, 160, 200, 300} {
		b := launch(t, cfg)
		b.waitLog(t, "msg=starting", 10*time.Second)
		time.Sleep(delay * time.Millisecond) // lands the signal at another point of the boot
		b.stop(t)                            // exit 0, or the test fails
		out := b.out.String()
		if strings.Contains(out, "level=ERROR") {
			t.Fatalf("run %d (SIGTERM +%dms): ERROR logged:\n%s", i, delay, tail(out, 20))
		}
		if names := sh(t, "ipset", "list", "-n"); strings.Contains(names, "-t\n") {
			t.Fatalf("run %d (SIGTERM +%dms): temporary set left:\n%s", i, delay, names)
		}
	}
	if got := len(kernelMembers(t)); got != n {
		t.Fatalf("after the interrupted boots the kernel holds %d of %d bans", got, n)
	}
}
