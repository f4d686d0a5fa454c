package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// scrape fetches /metrics and returns the raw text and the parsed families.
func scrape(t *testing.T, base string) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return string(body), fams
}

// value returns the value of the series of family name whose labels include
// all of want, or -1 when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return -1
	}
	total, found := 0.0, false
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		found = true
		switch {
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	if !found {
		return -1
	}
	return total
}

func health(t *testing.T, base string) (int, string) {
	t.Helper()
	resp, err := http.Get(base + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("/health body: %v", err)
	}
	return resp.StatusCode, r.Status
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Metrics and /health of the real daemon, with real packets: upstream names
// with sensible values, a repair counted, the exposition lint-clean, and the
// health states healthy → degraded (LAPI stopped) → unhealthy (replays fail).
func TestE2EMetricsAndHealth(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	dir, flag := brokenRestore(t, false)
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := writeConfig(t, l, bouncerOpts{Extra: fmt.Sprintf("  backoff_initial: 20s\n  backoff_max: 20s\nprometheus:\n  enabled: true\n  listen_addr: 127.0.0.1\n  listen_port: %d", port)})
	b := startBouncer(t, cfg, "PATH="+dir+":"+os.Getenv("PATH"))
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within)
	eventually(t, 5*time.Second, "/health never healthy", func() bool {
		code, st := health(t, base)
		return code == 200 && st == "healthy"
	})

	text, fams := scrape(t, base)
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil || len(problems) > 0 {
		t.Fatalf("promlint: %v %+v", err, problems)
	}
	if v := value(fams, "fw_bouncer_banned_ips", map[string]string{"origin": "cscli", "ip_type": "ipv4"}); v != 1 {
		t.Fatalf("fw_bouncer_banned_ips{origin=cscli,ip_type=ipv4} = %v, want 1", v)
	}
	if v := value(fams, "lapi_requests_total", nil); v < 2 {
		t.Fatalf("lapi_requests_total = %v", v)
	}
	dropped := value(fams, "fw_bouncer_dropped_packets", map[string]string{"origin": "cscli", "ip_type": "ipv4"})
	processed := value(fams, "fw_bouncer_processed_packets", map[string]string{"ip_type": "ipv4"})
	for range 3 {
		if pings(t, p, p.Banned4) {
			t.Fatal("banned peer answered")
		}
	}
	_, fams = scrape(t, base)
	if d := value(fams, "fw_bouncer_dropped_packets", map[string]string{"origin": "cscli", "ip_type": "ipv4"}); d < dropped+3 {
		t.Fatalf("dropped packets %v → %v after 3 dropped pings", dropped, d)
	}
	if pr := value(fams, "fw_bouncer_processed_packets", map[string]string{"ip_type": "ipv4"}); pr < processed+3 {
		t.Fatalf("processed packets %v → %v", processed, pr)
	}
	if v := value(fams, "fw_bouncer_dropped_bytes", map[string]string{"origin": "cscli", "ip_type": "ipv4"}); v <= 0 {
		t.Fatalf("dropped bytes %v", v)
	}

	// A repair is counted, by kind, and timed.
	both("-D INPUT -j CROWDSEC_CHAIN")(t, "", "")
	b.waitLog(t, "repaired drift", within)
	_, fams = scrape(t, base)
	if v := value(fams, "cs_journal_bouncer_repairs_total", map[string]string{"kind": "jump"}); v < 1 {
		t.Fatalf("repairs_total{kind=jump} = %v", v)
	}
	if v := value(fams, "cs_journal_bouncer_repair_duration_seconds", nil); v < 1 {
		t.Fatalf("repair_duration_seconds count = %v", v)
	}

	// LAPI stopped: still enforcing from the journal → degraded, 200.
	l.Stop(t)
	b.waitLog(t, "LAPI pull failed", within)
	if code, st := health(t, base); code != 200 || st != "degraded" {
		t.Fatalf("/health with LAPI down = %d %s, want 200 degraded", code, st)
	}
	// Replays failing: enforcement broken → 503.
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Let the final SIGTERM remove our rules for real (cleanups run last-in
	// first-out: this one before the bouncer's stop).
	t.Cleanup(func() { _ = os.Remove(flag) })
	both("-D INPUT -j CROWDSEC_CHAIN")(t, "", "")
	// The ladder's own line, not the Ensure-only attempt's ("ensure without
	// replay failed"); /health follows it within the same step.
	b.waitLog(t, `msg="replay failed"`, within)
	eventually(t, within, "/health 503 unhealthy with replays failing", func() bool {
		code, st := health(t, base)
		return code == 503 && st == "unhealthy"
	})
}
