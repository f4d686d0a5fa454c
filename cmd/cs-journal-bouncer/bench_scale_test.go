//go:build bench

package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// benchAddr6 is the i-th address of 2001:db8::/96: 1M bans do not fit in
// the IPv4 benchmark ranges.
func benchAddr6(i int) string { return fmt.Sprintf("2001:db8::%x:%x", i>>16, i&0xffff) }

// serveStream starts a LAPI stand-in whose startup answer lists n IPv6
// bans (1M bans are ~140 MB of JSON).
func serveStream(t *testing.T, n int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Built before the clock starts: the stand-in's own work is not ours.
	var body bytes.Buffer
	body.Grow(n * 140)
	body.WriteString(`{"new":[`)
	for i := range n {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"duration":"3h59m%d.5s","id":%d,"origin":"lists","scenario":"lists:bench","scope":"Ip","type":"ban","value":"%s"}`,
			i%60, i+1, benchAddr6(i))
	}
	body.WriteString(`],"deleted":null}`)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("startup") != "true" {
			_, _ = w.Write([]byte(`{"new":null,"deleted":null}`))
			return
		}
		_, _ = w.Write(body.Bytes())
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String() + "/"
}

// setMembers6 sums the member counts of our IPv6 sets.
func setMembers6() int { return membersOf("crowdsec6-blacklists-") }

// TestBenchStart1M: process start → 1M bans in the kernel with the default
// configuration (ipset_size 131072: the set must grow), and peak RSS,
// beside a raw `ipset restore` of the same entries into a set of the right
// maxelem. Printed, never asserted.
func TestBenchStart1M(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	const n = 1_000_000
	url := serveStream(t, n)
	ref := rawIPSetRestore(t, "inet6", n, benchAddr6)
	fmt.Printf("bench reference: ipset restore of %d IPv6 entries (maxelem sized): %v\n", n, ref.Round(time.Millisecond))
	cfg := writeConfig(t, nil, bouncerOpts{URL: url, Key: "bench"})
	start := time.Now()
	b := launch(t, cfg)
	if os.Getenv("CSJB_BENCH_VERBOSE") != "" {
		t.Cleanup(func() { fmt.Printf("bench 1M cold-start log:\n%s\n", b.out.String()) })
	}
	type sample struct {
		at  time.Time
		rss int
	}
	var samples []sample
	deadline := time.Now().Add(120 * time.Second)
	for setMembers6() < n {
		samples = append(samples, sample{time.Now(), currentRSS(t, b.cmd.Process.Pid) / 1024})
		if !b.running() {
			t.Fatalf("bouncer exited:\n%s", tail(b.out.String(), 30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel holds %d of %d after 120s:\n%s", setMembers6(), n, tail(b.out.String(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	rss := peakRSS(t, b.cmd.Process.Pid) / 1024
	fmt.Printf("bench cold start → %d bans in the kernel, default config: %v (%.2f× ipset restore; target ≤ 0.6×)\n", n, took.Round(time.Millisecond), took.Seconds()/ref.Seconds())
	fmt.Printf("bench peak RSS at %d bans: %d MB (target ≤ 120 MB; upstream measured 684 MB)\n", n, rss)
	// Split the RSS samples at the replay: the first Ensure after the pull
	// is journaled ("rules written ... origins=1").
	var replayAt time.Time
	for _, l := range strings.Split(b.out.String(), "\n") {
		if strings.Contains(l, `msg="rules written"`) && strings.Contains(l, "origins=1") {
			if ts, ok := strings.CutPrefix(strings.Fields(l)[0], "time="); ok {
				replayAt, _ = time.Parse(time.RFC3339Nano, ts)
			}
			break
		}
	}
	pullPeak, replayPeak := 0, 0
	for _, s := range samples {
		if !replayAt.IsZero() && s.at.After(replayAt) {
			replayPeak = max(replayPeak, s.rss)
		} else {
			pullPeak = max(pullPeak, s.rss)
		}
	}
	fmt.Printf("bench RSS sampled every ~20 ms: pull + journal phase max %d MB, replay phase max %d MB (pull phase %v, replay phase %v)\n",
		pullPeak, replayPeak, replayAt.Sub(start).Round(time.Millisecond), (took - replayAt.Sub(start)).Round(time.Millisecond))
}
