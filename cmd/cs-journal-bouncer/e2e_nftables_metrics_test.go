package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// In nftables mode the upstream metrics come from our named counters and
// cover every origin (upstream reports one): two origins, two families,
// real packets counted as dropped and processed.
func TestE2ENFTablesMetrics(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	cfg := writeConfig(t, l, nftE2E.opts(bouncerOpts{Extra: fmt.Sprintf(
		"prometheus:\n  enabled: true\n  listen_addr: 127.0.0.1\n  listen_port: %d", port)}))
	startBouncer(t, cfg)
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	l.AddDecision(t, "crowdsec", "Ip", p.Banned6.String(), "4h")
	requireDropped(t, p, p.Banned4, within)
	requireDropped(t, p, p.Banned6, within)

	text, fams := scrape(t, base)
	if problems, err := promlint.New(strings.NewReader(text)).Lint(); err != nil || len(problems) > 0 {
		t.Fatalf("promlint: %v %+v", err, problems)
	}
	for _, s := range []map[string]string{
		{"origin": "cscli", "ip_type": "ipv4"},
		{"origin": "crowdsec", "ip_type": "ipv6"},
	} {
		if v := value(fams, "fw_bouncer_banned_ips", s); v != 1 {
			t.Errorf("fw_bouncer_banned_ips%v = %v, want 1", s, v)
		}
	}
	cscli4 := map[string]string{"origin": "cscli", "ip_type": "ipv4"}
	dropped := value(fams, "fw_bouncer_dropped_packets", cscli4)
	processed := value(fams, "fw_bouncer_processed_packets", map[string]string{"ip_type": "ipv4"})
	for range 3 {
		if pings(t, p, p.Banned4) {
			t.Fatal("banned peer answered")
		}
	}
	_, fams = scrape(t, base)
	if d := value(fams, "fw_bouncer_dropped_packets", cscli4); d < dropped+3 {
		t.Errorf("dropped packets %v → %v after 3 dropped pings", dropped, d)
	}
	if pr := value(fams, "fw_bouncer_processed_packets", map[string]string{"ip_type": "ipv4"}); pr < processed+3 {
		t.Errorf("processed packets %v → %v", processed, pr)
	}
	if v := value(fams, "fw_bouncer_dropped_bytes", cscli4); v <= 0 {
		t.Errorf("dropped bytes %v", v)
	}
	if v := value(fams, "fw_bouncer_dropped_packets", map[string]string{"origin": "crowdsec", "ip_type": "ipv6"}); v < 1 {
		t.Errorf("v6 dropped packets %v after the v6 peer was dropped", v)
	}
}
