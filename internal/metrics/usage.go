package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/apiclient"
	"github.com/crowdsecurity/crowdsec/pkg/models"
	csbouncer "github.com/crowdsecurity/go-cs-bouncer"
	"github.com/sirupsen/logrus"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// UsageBouncerType is the remediation component type reported to LAPI:
// upstream's, so that `cscli metrics` groups us with firewall bouncers.
const UsageBouncerType = "crowdsec-firewall-bouncer"

// usageInterval is go-cs-bouncer's default push interval (upstream's too).
const usageInterval = 15 * time.Minute

// usageKernelTimeout bounds the kernel read of one push.
const usageKernelTimeout = 10 * time.Second

// ErrNoAPIClient is returned by RunUsageMetrics when it is given no LAPI
// client to push with.
var ErrNoAPIClient = errors.New("no LAPI client")

// RunUsageMetrics pushes usage metrics to LAPI every 15 minutes, like the
// upstream bouncer, until ctx ends (then it returns nil): active decisions
// (kernel set sizes per origin and ip_type), and the dropped and processed
// packets and bytes since the previous push. It uses go-cs-bouncer's
// metrics provider. A LAPI without the usage-metrics endpoint (older than
// 1.6: Debian's 1.4.6 answers 404) gets one info line and then silence;
// other push failures log one warning per streak.
func RunUsageMetrics(ctx context.Context, api *apiclient.ApiClient, src Sources, logger *slog.Logger) error {
	return runUsage(ctx, api, src, logger, usageInterval)
}

func runUsage(ctx context.Context, api *apiclient.ApiClient, src Sources, logger *slog.Logger, every time.Duration) error {
	if api == nil {
		return ErrNoAPIClient
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	log := logger.With("component", "usage-metrics")
	u := &usage{src: src, log: log, last: map[string]uint64{}}
	// A private logrus logger (not the process-global one) whose lines go
	// to slog through pushLog, which keeps repeated failures quiet.
	ll := logrus.New()
	ll.SetOutput(io.Discard)
	ll.SetLevel(logrus.DebugLevel)
	ll.AddHook(&pushLog{log: log, stopping: ctx.Done()})
	p, err := csbouncer.NewMetricsProvider(api, UsageBouncerType, u.update, ll)
	if err != nil {
		return err
	}
	p.Interval = every
	if err := p.Run(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// usage computes each push's items; it runs on the provider's goroutine.
type usage struct {
	src Sources
	log *slog.Logger
	// last holds the rule counters sent at the previous push: LAPI wants
	// the traffic of the window, upstream's counters are cumulative.
	last map[string]uint64
}

func (u *usage) update(met *models.RemediationComponentsMetrics, window time.Duration) {
	now := time.Now()
	dm := &models.DetailedMetrics{
		Meta: &models.MetricsMeta{
			UtcNowTimestamp:   ptr(now.Unix()),
			WindowSizeSeconds: ptr(int64(window.Seconds())),
		},
		Items: []*models.MetricsDetailItem{},
	}
	met.Metrics = append(met.Metrics, dm)
	if u.src.Kernel == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), usageKernelTimeout)
	defer cancel()
	kc, err := u.src.Kernel.Counters(ctx)
	if err != nil {
		u.log.Debug("kernel counters unavailable for usage metrics", "err", err)
		return
	}
	dm.Items = u.items(kc, originNames(u.src))
}

// items turns one kernel reading into LAPI usage items, with upstream's
// names and units: active_decisions/ip (absolute), dropped and processed in
// byte and packet (deltas since the last push).
func (u *usage) items(kc backend.Counters, names map[int]string) []*models.MetricsDetailItem {
	var out []*models.MetricsDetailItem
	add := func(name, unit string, v float64, labels map[string]string) {
		out = append(out, &models.MetricsDetailItem{Name: ptr(name), Unit: ptr(unit), Value: ptr(v), Labels: labels})
	}
	for _, s := range labelSets(kc, names) {
		labels := map[string]string{"origin": s.origin, "ip_type": s.family}
		add("active_decisions", "ip", float64(s.members), labels)
		if kc.Rules {
			key := "dropped\x00" + s.origin + "\x00" + s.family
			add("dropped", "byte", u.delta(key+"\x00byte", s.bytes), labels)
			add("dropped", "packet", u.delta(key+"\x00packet", s.packets), labels)
		}
	}
	if kc.Rules {
		for _, f := range kc.Families {
			labels := map[string]string{"ip_type": f.Family}
			key := "processed\x00" + f.Family
			add("processed", "byte", u.delta(key+"\x00byte", f.Bytes), labels)
			add("processed", "packet", u.delta(key+"\x00packet", f.Packets), labels)
		}
	}
	return out
}

// delta returns what a cumulative counter gained since the last push. A
// counter below its last value was reset (a repair recreated our chain):
// everything it holds is new.
func (u *usage) delta(key string, cur uint64) float64 {
	prev, seen := u.last[key]
	u.last[key] = cur
	if !seen || cur < prev {
		return float64(cur)
	}
	return float64(cur - prev)
}

func ptr[T any](v T) *T { return &v }

// pushLog routes go-cs-bouncer's metrics provider logs to slog. The
// provider warns on every failed push, every interval, forever; here a
// LAPI without the endpoint is said once at info, and other failures once
// per streak at warn, the repeats at debug.
type pushLog struct {
	log *slog.Logger
	// stopping closes at shutdown: a push cut short then is no failure.
	stopping <-chan struct{}

	mu        sync.Mutex
	saidNo404 bool
	failing   bool
}

func (*pushLog) Levels() []logrus.Level { return logrus.AllLevels }

func (h *pushLog) Fire(e *logrus.Entry) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.stopping:
		h.log.Debug("usage metrics at shutdown", "message", e.Message)
		return nil
	default:
	}
	switch pushOutcome(e) {
	case pushNoEndpoint:
		if !h.saidNo404 {
			h.saidNo404 = true
			h.log.Info("LAPI has no usage-metrics endpoint (older than 1.6?): usage metrics are not reported")
			return nil
		}
		h.log.Debug("usage metrics not sent: no endpoint", "message", e.Message)
	case pushFailed:
		if !h.failing {
			h.failing = true
			h.log.Warn("usage metrics push failed", "message", e.Message)
			return nil
		}
		h.log.Debug("usage metrics push failed again", "message", e.Message)
	case pushSent:
		if h.failing {
			h.log.Info("usage metrics push works again")
		}
		h.failing = false
		h.log.Debug("usage metrics sent")
	default:
		h.log.Debug("usage metrics", "message", e.Message)
	}
	return nil
}

type outcome int

const (
	pushOther outcome = iota
	pushSent
	pushNoEndpoint
	pushFailed
)

// pushOutcome classifies a provider log line. go-cs-bouncer v0.0.21 reports
// outcomes only as log messages (metrics.go sendMetrics); all matching on
// them lives here.
func pushOutcome(e *logrus.Entry) outcome {
	switch {
	case strings.Contains(e.Message, "metrics endpoint not found"):
		return pushNoEndpoint
	case e.Message == "usage metrics sent":
		return pushSent
	case e.Level <= logrus.WarnLevel && (strings.Contains(e.Message, "failed to send metrics") ||
		strings.Contains(e.Message, "timeout sending metrics")):
		return pushFailed
	}
	return pushOther
}
