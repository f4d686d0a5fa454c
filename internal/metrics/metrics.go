// Package metrics exposes the bouncer's state: Prometheus metrics and a
// /health endpoint on one HTTP listener, and usage metrics pushed to LAPI.
// Every value is computed at scrape time from Sources; nothing is copied
// into the package between scrapes.
//
// Wiring (cmd/cs-journal-bouncer):
//
//	m := metrics.New(metrics.Sources{
//		Health:       enf.Health,
//		PendingSince: enf.PendingSince,
//		Heartbeat:    enf.Heartbeat,
//		JournalStats: j.Stats,
//		Origins:      j.Origins,
//		LAPI:         client,   // Requests(), Failures()
//		Kernel:       be,       // backend.Backend.Counters
//		Rejected:     ...,      // decisions rejected by reason
//		Recovered:    ...,      // 1 if the journal was found corrupt
//	}, metrics.Options{Logger: log, UpdateFrequency: cfg.UpdateFrequency, VerifyInterval: cfg.Heal.Interval})
//	deps.OnRepair = m.ObserveRepair // heal.Deps, before heal.New
//	g.Go(func() error { return metrics.ListenAndServe(gctx, addr, metrics.NewHandler(m), log) })
//	g.Go(func() error { return metrics.RunUsageMetrics(gctx, client.APIClient(), src, log) })
//
// Metric names: the upstream bouncer's (fw_bouncer_*, lapi_requests_*) are
// kept unchanged, with upstream's types and help, so existing dashboards
// work; ours are prefixed cs_journal_bouncer_.
package metrics

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// LAPICounters counts LAPI calls; *lapi.Client implements it.
type LAPICounters interface {
	Requests() uint64
	Failures() uint64
}

// KernelReader reads our kernel objects' member counts and rule counters;
// every backend.Backend implements it, safely from any goroutine.
type KernelReader interface {
	Counters(ctx context.Context) (backend.Counters, error)
}

// Sources are where every metric and the health report come from, read at
// scrape time. Each must be safe to call from the HTTP goroutines. A nil
// field leaves its metrics out (and, for Health, makes /health unhealthy:
// there is no enforcer to vouch for).
type Sources struct {
	// Health is the enforcer's state (heal.Enforcer.Health).
	Health func() heal.Health
	// PendingSince is when the batch waiting for the enforcer was handed
	// over, zero when none waits (heal.Enforcer.PendingSince).
	PendingSince func() time.Time
	// Heartbeat is when the enforcer loop last went round
	// (heal.Enforcer.Heartbeat); it tells a wedged loop from one that is
	// deliberately not verifying while it backs off. Without it, the last
	// verify's age is used.
	Heartbeat func() time.Time
	// JournalStats are the journal's figures (journal.Journal.Stats).
	JournalStats func() journal.Stats
	// Origins maps origin names to the indexes that name kernel sets
	// (journal.Journal.Origins), to label per-origin sets.
	Origins func() map[string]int
	// LAPI counts LAPI calls.
	LAPI LAPICounters
	// Kernel reads set sizes and rule counters.
	Kernel KernelReader
	// Rejected counts decisions rejected during normalization, by reason.
	Rejected func() map[string]uint64
	// Recovered counts journals found corrupt and recovered (moved aside).
	Recovered func() uint64
}

// Options tune the collector and the health thresholds. Zero values take
// the defaults documented on each field.
type Options struct {
	// Logger receives debug lines about failed kernel reads and the
	// listener's lifecycle; nil discards.
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// UpdateFrequency is the LAPI pull interval; it sets the default
	// MaxPendingAge.
	UpdateFrequency time.Duration
	// VerifyInterval is the enforcer's verify cadence (default 1s); it sets
	// the default MaxLoopAge.
	VerifyInterval time.Duration
	// MaxPendingAge: a received batch waiting longer than this to be
	// applied makes /health unhealthy (default max(30s, 3×UpdateFrequency)).
	MaxPendingAge time.Duration
	// MaxLoopAge: an enforcer loop that has not gone round (or, without
	// Sources.Heartbeat, not verified) for this long is wedged and makes
	// /health unhealthy (default 10×VerifyInterval).
	MaxLoopAge time.Duration
	// KernelTimeout bounds one kernel read during a scrape (default 5s).
	KernelTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.VerifyInterval <= 0 {
		o.VerifyInterval = time.Second
	}
	if o.MaxPendingAge <= 0 {
		o.MaxPendingAge = max(30*time.Second, 3*o.UpdateFrequency)
	}
	if o.MaxLoopAge <= 0 {
		o.MaxLoopAge = 10 * o.VerifyInterval
	}
	if o.KernelTimeout <= 0 {
		o.KernelTimeout = 5 * time.Second
	}
	return o
}

// Metrics owns a private Prometheus registry (nothing goes to the global
// default one) holding the scrape-time collector, the repair-duration
// histogram, and the Go runtime and process collectors.
type Metrics struct {
	src     Sources
	opts    Options
	log     *slog.Logger
	reg     *prometheus.Registry
	repairs prometheus.Histogram
	started time.Time
	// kernelErrors counts failed kernel reads during scrapes.
	kernelErrors atomic.Uint64
}

// New builds the registry. It does not start anything.
func New(src Sources, opts Options) *Metrics {
	o := opts.withDefaults()
	m := &Metrics{
		src:     src,
		opts:    o,
		log:     o.Logger.With("component", "metrics"),
		reg:     prometheus.NewRegistry(),
		started: o.Now(),
		repairs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cs_journal_bouncer_repair_duration_seconds",
			Help: "Time taken by successful repairs (ensure + replay of the journal view).",
			// From a single missing rule (ms) to a 100k-entry replay on a
			// busy host (seconds).
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	m.reg.MustRegister(
		&collector{m: m},
		m.repairs,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// ObserveRepair records one successful repair. Its signature matches
// heal.Deps.OnRepair, which calls it from the enforcer loop: it does not
// block. The kinds and entries are in /health and repairs_total already.
func (m *Metrics) ObserveRepair(kinds []string, took time.Duration, entries int) {
	m.repairs.Observe(took.Seconds())
}

// Registry returns the private registry, to serve it or add collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }
