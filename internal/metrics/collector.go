package metrics

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// sharedOrigin labels sets that hold every origin (ipset mode), as the
// upstream bouncer does.
const sharedOrigin = "ipset"

// Upstream's metrics: names, types, labels and help unchanged (the
// crowdsec firewall bouncer's pkg/metrics and go-cs-bouncer), so that
// existing dashboards keep working. The fw_bouncer_* counters are gauges
// upstream; they stay gauges here.
var (
	descBanned = prometheus.NewDesc("fw_bouncer_banned_ips",
		"Denotes the number of IPs which are currently banned",
		[]string{"origin", "ip_type"}, nil)
	descDroppedPackets = prometheus.NewDesc("fw_bouncer_dropped_packets",
		"Denotes the number of total dropped packets because of rule(s) created by crowdsec",
		[]string{"origin", "ip_type"}, nil)
	descDroppedBytes = prometheus.NewDesc("fw_bouncer_dropped_bytes",
		"Denotes the number of total dropped bytes because of rule(s) created by crowdsec",
		[]string{"origin", "ip_type"}, nil)
	descProcessedPackets = prometheus.NewDesc("fw_bouncer_processed_packets",
		"Denotes the number of total processed packets by the rules created by crowdsec",
		[]string{"ip_type"}, nil)
	descProcessedBytes = prometheus.NewDesc("fw_bouncer_processed_bytes",
		"Denotes the number of total processed bytes by the rules created by crowdsec",
		[]string{"ip_type"}, nil)
	descLAPIRequests = prometheus.NewDesc("lapi_requests_total",
		"The total number of calls to CrowdSec LAPI", nil, nil)
	descLAPIFailures = prometheus.NewDesc("lapi_requests_failures_total",
		"The total number of failed calls to CrowdSec LAPI", nil, nil)
)

// Ours.
const ns = "cs_journal_bouncer_"

var (
	descRepairs = prometheus.NewDesc(ns+"repairs_total",
		"Successful repairs that fixed each kind of drift (chain, jump, rule, set, count, member, verify).",
		[]string{"kind"}, nil)
	descRepairsByCause = prometheus.NewDesc(ns+"repairs_by_cause_total",
		"Successful repairs by what started them: tick (the periodic verify), event (a kernel change event), apply, boot.",
		[]string{"cause"}, nil)
	descVerifyDuration = prometheus.NewDesc(ns+"verify_duration_seconds",
		"Duration of the last fast verify pass.", nil, nil)
	descLastVerify = prometheus.NewDesc(ns+"last_verify_timestamp_seconds",
		"When the last fast verify pass ran (Unix time, 0 if never).", nil, nil)
	descReplayFailures = prometheus.NewDesc(ns+"replay_failures_total",
		"Failed replay attempts.", nil, nil)
	descConsecutiveFailures = prometheus.NewDesc(ns+"consecutive_replay_failures",
		"Failed replay attempts since the last success; above 0 enforcement is broken.", nil, nil)
	descDeepRepairs = prometheus.NewDesc(ns+"deep_repairs_total",
		"Single entries put back by the deep (member by member) verify.", nil, nil)
	descJournalSize = prometheus.NewDesc(ns+"journal_size_bytes",
		"Size of the journal file.", nil, nil)
	descJournalEvents = prometheus.NewDesc(ns+"journal_events_since_snapshot",
		"Journal events not yet folded into the snapshot.", nil, nil)
	descJournalActive = prometheus.NewDesc(ns+"journal_active_entries",
		"Entries in the journal's view, including expired ones not yet removed.", nil, nil)
	descLastPull = prometheus.NewDesc(ns+"last_lapi_pull_timestamp_seconds",
		"When LAPI last answered a pull (Unix time, 0 if never).", nil, nil)
	descLastFull = prometheus.NewDesc(ns+"last_full_resync_timestamp_seconds",
		"When the last full (startup=true) LAPI pull was received (Unix time, 0 if never).", nil, nil)
	descRejected = prometheus.NewDesc(ns+"decisions_rejected_total",
		"Decisions from LAPI that were not enforced, by reason.", []string{"reason"}, nil)
	descRecovered = prometheus.NewDesc(ns+"journal_recovered_total",
		"Journals found corrupt, moved aside and replaced by an empty one (a full LAPI resync follows).", nil, nil)
	descJournalWriteFailures = prometheus.NewDesc(ns+"journal_write_failures_total",
		"Failed journal writes (appends, compactions, retries); while they fail, bans are enforced from memory.", nil, nil)
	descJournalDurable = prometheus.NewDesc(ns+"journal_durable",
		"1 while the journal file holds every enforced decision; at 0 decisions received since are lost on a restart.", nil, nil)
	descJournalRewrites = prometheus.NewDesc(ns+"journal_rewrites_total",
		"Journal files found changed under the daemon (overwritten, truncated, replaced), moved aside and rewritten from memory.", nil, nil)
	descLAPIReachable = prometheus.NewDesc(ns+"lapi_reachable",
		"1 if the last LAPI pull succeeded; at 0 the bouncer enforces from its journal.", nil, nil)
	descBackingOff = prometheus.NewDesc(ns+"backing_off",
		"1 while repairs are delayed because another program keeps undoing our rules.", nil, nil)
	descEnforcing = prometheus.NewDesc(ns+"enforcing",
		"1 once the journal or LAPI state has reached the kernel.", nil, nil)
	descPendingAge = prometheus.NewDesc(ns+"pending_batch_age_seconds",
		"How long the batch now waiting for the enforcer has waited (0 if none).", nil, nil)
	descKernelErrors = prometheus.NewDesc(ns+"kernel_read_errors_total",
		"Scrapes whose kernel read (set sizes, rule counters) failed; those metrics were left out.", nil, nil)
)

var allDescs = []*prometheus.Desc{
	descBanned, descDroppedPackets, descDroppedBytes, descProcessedPackets, descProcessedBytes,
	descLAPIRequests, descLAPIFailures,
	descRepairs, descRepairsByCause, descVerifyDuration, descLastVerify, descReplayFailures, descConsecutiveFailures,
	descDeepRepairs, descJournalSize, descJournalEvents, descJournalActive, descLastPull, descLastFull,
	descRejected, descRecovered, descLAPIReachable, descBackingOff, descEnforcing, descPendingAge,
	descKernelErrors, descJournalWriteFailures, descJournalDurable, descJournalRewrites,
}

// collector computes every value at scrape time from m.src.
type collector struct {
	m *Metrics
	// kernelMu serializes kernel reads: two scrapers at once need not run
	// two sets of iptables-save.
	kernelMu sync.Mutex
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	src := c.m.src
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	c.collectKernel(gauge)
	if src.LAPI != nil {
		counter(descLAPIRequests, float64(src.LAPI.Requests()))
		counter(descLAPIFailures, float64(src.LAPI.Failures()))
	}
	if src.Health != nil {
		h := src.Health()
		for _, k := range sortedKeys(h.RepairsByKind) {
			counter(descRepairs, float64(h.RepairsByKind[k]), k)
		}
		for _, k := range sortedKeys(h.RepairsByCause) {
			counter(descRepairsByCause, float64(h.RepairsByCause[k]), k)
		}
		gauge(descVerifyDuration, h.VerifyTook.Seconds())
		gauge(descLastVerify, unixSeconds(h.LastVerify))
		counter(descReplayFailures, float64(h.ReplayFailures))
		gauge(descConsecutiveFailures, float64(h.ConsecutiveFailures))
		counter(descDeepRepairs, float64(h.DeepRepairs))
		gauge(descLastPull, unixSeconds(h.LastPull))
		gauge(descLastFull, unixSeconds(h.LastFullResync))
		gauge(descLAPIReachable, boolValue(h.LAPIReachable))
		gauge(descBackingOff, boolValue(h.BackingOff))
		gauge(descEnforcing, boolValue(h.Enforcing))
	}
	if src.PendingSince != nil {
		gauge(descPendingAge, pendingAge(src.PendingSince(), c.m.opts.Now()).Seconds())
	}
	if src.JournalStats != nil {
		st := src.JournalStats()
		if st.FileSize >= 0 {
			gauge(descJournalSize, float64(st.FileSize))
		}
		gauge(descJournalEvents, float64(st.EventsSinceSnapshot))
		gauge(descJournalActive, float64(st.Active))
		counter(descJournalWriteFailures, float64(st.WriteFailures))
		gauge(descJournalDurable, boolValue(st.WriteError == ""))
		counter(descJournalRewrites, float64(st.Rewrites))
	}
	if src.Rejected != nil {
		rej := src.Rejected()
		for _, r := range sortedKeys(rej) {
			counter(descRejected, float64(rej[r]), r)
		}
	}
	if src.Recovered != nil {
		counter(descRecovered, float64(src.Recovered()))
	}
	counter(descKernelErrors, float64(c.m.kernelErrors.Load()))
}

// collectKernel emits the upstream fw_bouncer_* metrics. A failed read
// leaves them out of this scrape, counts the failure and logs it at debug
// (a scrape every few seconds must not flood the log); the other metrics
// are still served.
func (c *collector) collectKernel(gauge func(*prometheus.Desc, float64, ...string)) {
	if c.m.src.Kernel == nil {
		return
	}
	kc, err := c.readKernel()
	if err != nil {
		c.m.kernelErrors.Add(1)
		c.m.log.Debug("kernel counters unavailable for this scrape", "err", err)
		return
	}
	for _, s := range labelSets(kc, originNames(c.m.src)) {
		gauge(descBanned, float64(s.members), s.origin, s.family)
		if kc.Rules {
			gauge(descDroppedPackets, float64(s.packets), s.origin, s.family)
			gauge(descDroppedBytes, float64(s.bytes), s.origin, s.family)
		}
	}
	if kc.Rules {
		for _, f := range kc.Families {
			gauge(descProcessedPackets, float64(f.Packets), f.Family)
			gauge(descProcessedBytes, float64(f.Bytes), f.Family)
		}
	}
}

func (c *collector) readKernel() (backend.Counters, error) {
	c.kernelMu.Lock()
	defer c.kernelMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.m.opts.KernelTimeout)
	defer cancel()
	return c.m.src.Kernel.Counters(ctx)
}

// originNames inverts Sources.Origins: origin index → name.
func originNames(src Sources) map[int]string {
	if src.Origins == nil {
		return nil
	}
	byName := src.Origins()
	out := make(map[int]string, len(byName))
	for n, i := range byName {
		out[i] = n
	}
	return out
}

// labeled is one (origin, ip_type) series of the per-set metrics.
type labeled struct {
	origin, family string
	members        int
	packets, bytes uint64
}

// labelSets names each set's origin and merges sets that end up with the
// same labels (which would otherwise be a duplicate series and fail the
// scrape), in a stable order.
func labelSets(kc backend.Counters, names map[int]string) []labeled {
	idx := map[[2]string]int{}
	var out []labeled
	for _, s := range kc.Sets {
		origin := sharedOrigin
		if !s.Shared {
			origin = names[s.Key.Origin]
			if origin == "" {
				// A set of an origin the journal no longer names (left
				// by an earlier run): keep it visible by its index.
				origin = strconv.Itoa(s.Key.Origin)
			}
		}
		k := [2]string{origin, s.Family}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, labeled{origin: origin, family: s.Family})
		}
		out[i].members += s.Members
		out[i].packets += s.Packets
		out[i].bytes += s.Bytes
	}
	slices.SortFunc(out, func(a, b labeled) int {
		return cmp.Or(cmp.Compare(a.family, b.family), cmp.Compare(a.origin, b.origin))
	})
	return out
}
