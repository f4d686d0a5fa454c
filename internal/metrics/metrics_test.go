package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) // Unix 1772366400

type fakeKernel struct {
	mu    sync.Mutex
	c     backend.Counters
	err   error
	calls int
}

func (f *fakeKernel) Counters(context.Context) (backend.Counters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return f.c, f.err
}

type fakeLAPI struct{ req, fail uint64 }

func (f fakeLAPI) Requests() uint64 { return f.req }
func (f fakeLAPI) Failures() uint64 { return f.fail }

// iptablesCounters: origins 0 (crowdsec) and 1 (lists:firehol), plus a set
// of origin 7 the journal does not name.
func iptablesCounters() backend.Counters {
	return backend.Counters{
		Rules: true,
		Sets: []backend.SetCounters{
			{Name: "crowdsec-blacklists-0", Family: "ipv4", Members: 10, Packets: 5, Bytes: 420},
			{Name: "crowdsec-blacklists-1", Key: backend.SetKey{Origin: 1}, Family: "ipv4", Members: 100000, Packets: 1, Bytes: 84},
			{Name: "crowdsec-blacklists-7", Key: backend.SetKey{Origin: 7}, Family: "ipv4", Members: 2},
			{Name: "crowdsec6-blacklists-0", Key: backend.SetKey{V6: true}, Family: "ipv6", Members: 3, Packets: 2, Bytes: 208},
		},
		Families: []backend.FamilyCounters{
			{Family: "ipv4", Packets: 1000, Bytes: 64000},
			{Family: "ipv6", V6: true, Packets: 10, Bytes: 800},
		},
	}
}

func fullSources(k *fakeKernel) Sources {
	return Sources{
		Health: func() heal.Health {
			return heal.Health{
				LastVerify: t0, LastVerifyOK: true, VerifyTook: 1500 * time.Microsecond,
				Repairs: 3, RepairsByKind: map[string]int{"jump": 2, "set": 1},
				ReplayFailures: 1, DeepRepairs: 4, LAPIReachable: true, BackingOff: true,
				LastPull: t0.Add(-5 * time.Second), LastFullResync: t0.Add(-time.Hour), Enforcing: true,
			}
		},
		PendingSince: func() time.Time { return t0.Add(-2 * time.Second) },
		JournalStats: func() journal.Stats {
			return journal.Stats{FileSize: 65536, EventsSinceSnapshot: 12, Active: 100013}
		},
		Origins:   func() map[string]int { return map[string]int{"crowdsec": 0, "lists:firehol": 1} },
		LAPI:      fakeLAPI{req: 40, fail: 2},
		Kernel:    k,
		Rejected:  func() map[string]uint64 { return map[string]uint64{"bad_value": 3, "scope": 1} },
		Recovered: func() uint64 { return 1 },
	}
}

const wantUpstream = `
# HELP fw_bouncer_banned_ips Denotes the number of IPs which are currently banned
# TYPE fw_bouncer_banned_ips gauge
fw_bouncer_banned_ips{ip_type="ipv4",origin="7"} 2
fw_bouncer_banned_ips{ip_type="ipv4",origin="crowdsec"} 10
fw_bouncer_banned_ips{ip_type="ipv4",origin="lists:firehol"} 100000
fw_bouncer_banned_ips{ip_type="ipv6",origin="crowdsec"} 3
# HELP fw_bouncer_dropped_bytes Denotes the number of total dropped bytes because of rule(s) created by crowdsec
# TYPE fw_bouncer_dropped_bytes gauge
fw_bouncer_dropped_bytes{ip_type="ipv4",origin="7"} 0
fw_bouncer_dropped_bytes{ip_type="ipv4",origin="crowdsec"} 420
fw_bouncer_dropped_bytes{ip_type="ipv4",origin="lists:firehol"} 84
fw_bouncer_dropped_bytes{ip_type="ipv6",origin="crowdsec"} 208
# HELP fw_bouncer_dropped_packets Denotes the number of total dropped packets because of rule(s) created by crowdsec
# TYPE fw_bouncer_dropped_packets gauge
fw_bouncer_dropped_packets{ip_type="ipv4",origin="7"} 0
fw_bouncer_dropped_packets{ip_type="ipv4",origin="crowdsec"} 5
fw_bouncer_dropped_packets{ip_type="ipv4",origin="lists:firehol"} 1
fw_bouncer_dropped_packets{ip_type="ipv6",origin="crowdsec"} 2
# HELP fw_bouncer_processed_bytes Denotes the number of total processed bytes by the rules created by crowdsec
# TYPE fw_bouncer_processed_bytes gauge
fw_bouncer_processed_bytes{ip_type="ipv4"} 64000
fw_bouncer_processed_bytes{ip_type="ipv6"} 800
# HELP fw_bouncer_processed_packets Denotes the number of total processed packets by the rules created by crowdsec
# TYPE fw_bouncer_processed_packets gauge
fw_bouncer_processed_packets{ip_type="ipv4"} 1000
fw_bouncer_processed_packets{ip_type="ipv6"} 10
`

const wantLAPI = `
# HELP lapi_requests_failures_total The total number of failed calls to CrowdSec LAPI
# TYPE lapi_requests_failures_total counter
lapi_requests_failures_total 2
# HELP lapi_requests_total The total number of calls to CrowdSec LAPI
# TYPE lapi_requests_total counter
lapi_requests_total 40
`

const wantOurs = `
# HELP cs_journal_bouncer_backing_off 1 while repairs are delayed because another program keeps undoing our rules.
# TYPE cs_journal_bouncer_backing_off gauge
cs_journal_bouncer_backing_off 1
# HELP cs_journal_bouncer_consecutive_replay_failures Failed replay attempts since the last success; above 0 enforcement is broken.
# TYPE cs_journal_bouncer_consecutive_replay_failures gauge
cs_journal_bouncer_consecutive_replay_failures 0
# HELP cs_journal_bouncer_decisions_rejected_total Decisions from LAPI that were not enforced, by reason.
# TYPE cs_journal_bouncer_decisions_rejected_total counter
cs_journal_bouncer_decisions_rejected_total{reason="bad_value"} 3
cs_journal_bouncer_decisions_rejected_total{reason="scope"} 1
# HELP cs_journal_bouncer_deep_repairs_total Single entries put back by the deep (member by member) verify.
# TYPE cs_journal_bouncer_deep_repairs_total counter
cs_journal_bouncer_deep_repairs_total 4
# HELP cs_journal_bouncer_enforcing 1 once the journal or LAPI state has reached the kernel.
# TYPE cs_journal_bouncer_enforcing gauge
cs_journal_bouncer_enforcing 1
# HELP cs_journal_bouncer_journal_active_entries Entries in the journal's view, including expired ones not yet removed.
# TYPE cs_journal_bouncer_journal_active_entries gauge
cs_journal_bouncer_journal_active_entries 100013
# HELP cs_journal_bouncer_journal_events_since_snapshot Journal events not yet folded into the snapshot.
# TYPE cs_journal_bouncer_journal_events_since_snapshot gauge
cs_journal_bouncer_journal_events_since_snapshot 12
# HELP cs_journal_bouncer_journal_recovered_total Journals found corrupt, moved aside and replaced by an empty one (a full LAPI resync follows).
# TYPE cs_journal_bouncer_journal_recovered_total counter
cs_journal_bouncer_journal_recovered_total 1
# HELP cs_journal_bouncer_journal_size_bytes Size of the journal file.
# TYPE cs_journal_bouncer_journal_size_bytes gauge
cs_journal_bouncer_journal_size_bytes 65536
# HELP cs_journal_bouncer_lapi_reachable 1 if the last LAPI pull succeeded; at 0 the bouncer enforces from its journal.
# TYPE cs_journal_bouncer_lapi_reachable gauge
cs_journal_bouncer_lapi_reachable 1
# HELP cs_journal_bouncer_last_full_resync_timestamp_seconds When the last full (startup=true) LAPI pull was received (Unix time, 0 if never).
# TYPE cs_journal_bouncer_last_full_resync_timestamp_seconds gauge
cs_journal_bouncer_last_full_resync_timestamp_seconds 1772362800
# HELP cs_journal_bouncer_last_lapi_pull_timestamp_seconds When LAPI last answered a pull (Unix time, 0 if never).
# TYPE cs_journal_bouncer_last_lapi_pull_timestamp_seconds gauge
cs_journal_bouncer_last_lapi_pull_timestamp_seconds 1772366395
# HELP cs_journal_bouncer_last_verify_timestamp_seconds When the last fast verify pass ran (Unix time, 0 if never).
# TYPE cs_journal_bouncer_last_verify_timestamp_seconds gauge
cs_journal_bouncer_last_verify_timestamp_seconds 1772366400
# HELP cs_journal_bouncer_pending_batch_age_seconds How long the batch now waiting for the enforcer has waited (0 if none).
# TYPE cs_journal_bouncer_pending_batch_age_seconds gauge
cs_journal_bouncer_pending_batch_age_seconds 2
# HELP cs_journal_bouncer_repairs_total Successful repairs that fixed each kind of drift (chain, jump, rule, set, count, member, verify).
# TYPE cs_journal_bouncer_repairs_total counter
cs_journal_bouncer_repairs_total{kind="jump"} 2
cs_journal_bouncer_repairs_total{kind="set"} 1
# HELP cs_journal_bouncer_replay_failures_total Failed replay attempts.
# TYPE cs_journal_bouncer_replay_failures_total counter
cs_journal_bouncer_replay_failures_total 1
# HELP cs_journal_bouncer_verify_duration_seconds Duration of the last fast verify pass.
# TYPE cs_journal_bouncer_verify_duration_seconds gauge
cs_journal_bouncer_verify_duration_seconds 0.0015
`

func kernelErrors(n int) string {
	return `
# HELP cs_journal_bouncer_kernel_read_errors_total Scrapes whose kernel read (set sizes, rule counters) failed; those metrics were left out.
# TYPE cs_journal_bouncer_kernel_read_errors_total counter
cs_journal_bouncer_kernel_read_errors_total ` + string(rune('0'+n)) + "\n"
}

// collected lists every metric name the collector may emit, so that
// GatherAndCompare also proves absent ones are absent.
var collected = []string{
	"fw_bouncer_banned_ips", "fw_bouncer_dropped_packets", "fw_bouncer_dropped_bytes",
	"fw_bouncer_processed_packets", "fw_bouncer_processed_bytes",
	"lapi_requests_total", "lapi_requests_failures_total",
	"cs_journal_bouncer_repairs_total", "cs_journal_bouncer_verify_duration_seconds",
	"cs_journal_bouncer_last_verify_timestamp_seconds", "cs_journal_bouncer_replay_failures_total",
	"cs_journal_bouncer_consecutive_replay_failures", "cs_journal_bouncer_deep_repairs_total",
	"cs_journal_bouncer_journal_size_bytes", "cs_journal_bouncer_journal_events_since_snapshot",
	"cs_journal_bouncer_journal_active_entries", "cs_journal_bouncer_last_lapi_pull_timestamp_seconds",
	"cs_journal_bouncer_last_full_resync_timestamp_seconds", "cs_journal_bouncer_decisions_rejected_total",
	"cs_journal_bouncer_journal_recovered_total", "cs_journal_bouncer_lapi_reachable",
	"cs_journal_bouncer_backing_off", "cs_journal_bouncer_enforcing",
	"cs_journal_bouncer_pending_batch_age_seconds", "cs_journal_bouncer_kernel_read_errors_total",
}

func TestCollector(t *testing.T) {
	ipset := backend.Counters{Sets: []backend.SetCounters{
		{Name: "mine4", Family: "ipv4", Shared: true, Members: 7},
		{Name: "mine6", Key: backend.SetKey{V6: true}, Family: "ipv6", Shared: true, Members: 1},
	}, Families: []backend.FamilyCounters{{Family: "ipv4"}, {Family: "ipv6", V6: true}}}
	tests := []struct {
		name    string
		kernel  *fakeKernel
		sources func(k *fakeKernel) Sources
		want    string
	}{
		{
			name:    "iptables mode, every source",
			kernel:  &fakeKernel{c: iptablesCounters()},
			sources: fullSources,
			want:    wantUpstream + wantLAPI + wantOurs + kernelErrors(0),
		},
		{
			name:    "ipset mode: one shared set per family, no rule counters",
			kernel:  &fakeKernel{c: ipset},
			sources: func(k *fakeKernel) Sources { return Sources{Kernel: k} },
			want: `
# HELP fw_bouncer_banned_ips Denotes the number of IPs which are currently banned
# TYPE fw_bouncer_banned_ips gauge
fw_bouncer_banned_ips{ip_type="ipv4",origin="ipset"} 7
fw_bouncer_banned_ips{ip_type="ipv6",origin="ipset"} 1
` + kernelErrors(0),
		},
		{
			name:    "kernel read error: the rest is still served, the error counted",
			kernel:  &fakeKernel{err: errors.New("netlink: boom")},
			sources: fullSources,
			want:    wantLAPI + wantOurs + kernelErrors(1),
		},
		{
			name:    "no sources",
			sources: func(*fakeKernel) Sources { return Sources{} },
			want:    kernelErrors(0),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New(tc.sources(tc.kernel), Options{Now: func() time.Time { return t0 }})
			if err := gatherAndCompare(m.Registry(), strings.NewReader(tc.want), collected...); err != nil {
				t.Fatal(err)
			}
			problems, err := lint(m.Registry())
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}
		})
	}
}

// Two sets ending with the same labels (an origin named "7" and a set of
// unnamed origin 7) must merge, not produce a duplicate series that fails
// the whole scrape.
func TestCollectorMergesDuplicateLabels(t *testing.T) {
	k := &fakeKernel{c: backend.Counters{Sets: []backend.SetCounters{
		{Name: "a-3", Key: backend.SetKey{Origin: 3}, Family: "ipv4", Members: 1},
		{Name: "a-7", Key: backend.SetKey{Origin: 7}, Family: "ipv4", Members: 2},
	}}}
	m := New(Sources{Kernel: k, Origins: func() map[string]int { return map[string]int{"7": 3} }}, Options{})
	want := `
# HELP fw_bouncer_banned_ips Denotes the number of IPs which are currently banned
# TYPE fw_bouncer_banned_ips gauge
fw_bouncer_banned_ips{ip_type="ipv4",origin="7"} 3
`
	if err := gatherAndCompare(m.Registry(), strings.NewReader(want), "fw_bouncer_banned_ips"); err != nil {
		t.Fatal(err)
	}
}

func TestObserveRepair(t *testing.T) {
	m := New(Sources{}, Options{})
	for _, d := range []time.Duration{3 * time.Millisecond, 40 * time.Millisecond, 2 * time.Second} {
		m.ObserveRepair([]string{"set"}, d, 100)
	}
	want := `
# HELP cs_journal_bouncer_repair_duration_seconds Time taken by successful repairs (ensure + replay of the journal view).
# TYPE cs_journal_bouncer_repair_duration_seconds histogram
cs_journal_bouncer_repair_duration_seconds_bucket{le="0.001"} 0
cs_journal_bouncer_repair_duration_seconds_bucket{le="0.0025"} 0
cs_journal_bouncer_repair_duration_seconds_bucket{le="0.005"} 1
cs_journal_bouncer_repair_duration_seconds_bucket{le="0.01"} 1
cs_journal_bouncer_repair_duration_seconds_bucket{le="0.025"} 1
cs_journal_bouncer_repair_duration_seconds_bucket{le="0.05"} 2
cs_journal_bouncer_repair_duration_seconds_bucket{le="0.1"} 2
cs_journal_bouncer_repair_duration_seconds_bucket{le="0.25"} 2
cs_journal_bouncer_repair_duration_seconds_bucket{le="0.5"} 2
cs_journal_bouncer_repair_duration_seconds_bucket{le="1"} 2
cs_journal_bouncer_repair_duration_seconds_bucket{le="2.5"} 3
cs_journal_bouncer_repair_duration_seconds_bucket{le="5"} 3
cs_journal_bouncer_repair_duration_seconds_bucket{le="10"} 3
cs_journal_bouncer_repair_duration_seconds_bucket{le="30"} 3
cs_journal_bouncer_repair_duration_seconds_bucket{le="+Inf"} 3
cs_journal_bouncer_repair_duration_seconds_sum 2.043
cs_journal_bouncer_repair_duration_seconds_count 3
`
	if err := gatherAndCompare(m.Registry(), strings.NewReader(want), "cs_journal_bouncer_repair_duration_seconds"); err != nil {
		t.Fatal(err)
	}
}

// The /metrics page is served (200, other metrics present) when the kernel
// cannot be read, and each failed read is counted.
func TestMetricsEndpointKernelError(t *testing.T) {
	k := &fakeKernel{err: errors.New("iptables-save: exit status 4")}
	srv := httptest.NewServer(NewHandler(New(fullSources(k), Options{})))
	defer srv.Close()
	for i := 1; i <= 2; i++ {
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d:\n%s", resp.StatusCode, body)
		}
		for _, want := range []string{
			"cs_journal_bouncer_kernel_read_errors_total " + string(rune('0'+i)),
			"lapi_requests_total 40", "cs_journal_bouncer_journal_active_entries 100013",
			"go_goroutines", "process_resident_memory_bytes",
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("scrape %d lacks %q", i, want)
			}
		}
		if strings.Contains(string(body), "fw_bouncer_banned_ips{") {
			t.Errorf("scrape %d has kernel metrics despite the read error", i)
		}
	}
	if k.calls != 2 {
		t.Fatalf("kernel read %d times for 2 scrapes", k.calls)
	}
}
