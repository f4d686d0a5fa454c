package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/admin"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/lapi"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/metrics"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/sdnotify"
)

// newLogger honours upstream's log_mode/log_dir/log_* keys; -v forces debug.
func newLogger(cfg *config.Config, verbose bool, stderr io.Writer) (*slog.Logger, io.Closer, error) {
	var w io.Writer = stderr
	var closer io.Closer = io.NopCloser(nil)
	if cfg.LogMode == "file" {
		lj := &lumberjack.Logger{
			Filename:   filepath.Join(cfg.LogDir, "cs-journal-bouncer.log"),
			MaxSize:    cfg.LogMaxSize,
			MaxBackups: cfg.LogMaxBackups,
			MaxAge:     cfg.LogMaxAge,
			Compress:   cfg.LogCompression,
		}
		w, closer = lj, lj
	}
	level := cfg.SlogLevel()
	if verbose {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(h), closer, nil
}

// run is the daemon: journal → enforce → LAPI → loop, until ctx ends or a
// fatal error.
func run(ctx context.Context, cfg *config.Config, verbose bool, stderr io.Writer, hup hangup) (err error) {
	log, lc, err := newLogger(cfg, verbose, stderr)
	if err != nil {
		return err
	}
	defer lc.Close()
	defer func() {
		// The cause of a fatal exit goes to the configured log too, not
		// only to stderr (main prints it there).
		if err != nil {
			log.Error("exiting on a fatal error", "err", err)
		}
	}()
	start := time.Now()
	memCtx, stopMem := context.WithCancel(ctx)
	defer stopMem()
	go func() { _ = tuneMemoryLimit(memCtx, log) }()
	log.Info("starting", "version", version, "mode", cfg.Mode, "journal", cfg.JournalPath)
	client := buildClient(lapi.ClientConfig{
		APIURL: cfg.APIURL, APIKey: cfg.APIKey,
		CertPath: cfg.CertPath, KeyPath: cfg.KeyPath, CACertPath: cfg.CACertPath,
		InsecureSkipVerify: cfg.InsecureSkipVerify,
		UserAgent:          "cs-journal-bouncer/" + version,
		Scopes:             cfg.Scopes, Origins: cfg.Origins,
		ScenariosContaining: cfg.ScenariosContaining, ScenariosNotContaining: cfg.ScenariosNotContaining,
	}, log)

	// A journal that cannot be written is still enforced (from memory, with
	// /health degraded); the enforcer retries writing it.
	j, err := journal.Open(journal.Options{Path: cfg.JournalPath, Logger: log, KeepUnwritable: true})
	if err != nil {
		return fmt.Errorf("open journal: %w", err)
	}
	defer func() {
		if cerr := j.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close journal: %w", cerr))
		}
	}()
	if aside := j.Recovered(); aside != "" {
		log.Error("journal was corrupt: moved aside, starting empty, forcing a full LAPI resync",
			"journal", cfg.JournalPath, "moved_to", aside)
	}

	be, err := newBackend(cfg, log)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	// nftables names a set after its origin: the backend must know the
	// journal's origins before their sets are named in the log (the boot
	// declares the same).
	declared := backend.Origins{}
	for name, i := range j.Origins() {
		declared[i] = name
	}
	be.SetOrigins(declared)
	logInForce(log, cfg, be, j.Origins())
	mon, wake := newMonitor(be, log)
	p := &puller{
		client: client, log: log.With("component", "lapi"),
		norm: lapi.NormalizeOptions{
			Types:       toSet(cfg.SupportedDecisionsTypes),
			DisableIPv4: cfg.DisableIPv4, DisableIPv6: cfg.DisableIPv6,
		},
		every:       cfg.UpdateFrequency,
		fullEvery:   cfg.FullResyncInterval,
		retryBoot:   cfg.RetryInitialConnect,
		emptyAtBoot: j.View().Len() == 0,
	}
	// A preload may only start once the boot has declared the journal's
	// origins and made our tables: it loads only sets no rule matches.
	var booted atomic.Bool
	if pl, ok := be.(backend.Preloader); ok {
		p.preload = func(ctx context.Context) backend.Preload {
			if !booted.Load() {
				return nil
			}
			return pl.Preload(ctx)
		}
	}
	var m *metrics.Metrics // set below; the enforcer reports repairs to it
	enf := heal.New(heal.Config{
		VerifyInterval:    cfg.Heal.Interval,
		DeepInterval:      cfg.Heal.DeepInterval,
		MaxReplayAttempts: cfg.Heal.MaxReplayAttempts,
		BackoffInitial:    cfg.Heal.BackoffInitial,
		BackoffMax:        cfg.Heal.BackoffMax,
		FightWindow:       cfg.Heal.FightWindow,
		FreeRepairs:       cfg.Heal.FreeRepairs,
	}, heal.Deps{Journal: j, Backend: be, Logger: log, Resync: p.fullBatch, Wake: wake,
		OnRepair: func(kinds []string, took time.Duration, n int) {
			if m != nil {
				m.ObserveRepair(kinds, took, n)
			}
		},
		// Entries the kernel refuses count in the same
		// decisions_rejected_total as decisions normalization refuses.
		OnReject: func(reason string, n int) { p.rejected.addN(reason, n) },
	})
	p.enf = enf
	var recovered uint64
	if j.Recovered() != "" {
		recovered = 1
	}
	src := metrics.Sources{
		Health: enf.Health, PendingSince: enf.PendingSince, Heartbeat: enf.Heartbeat,
		JournalStats: j.Stats, Origins: j.Origins, LAPI: client, Kernel: be,
		Rejected:  p.rejected.snapshot,
		Recovered: func() uint64 { return recovered },
	}
	m = metrics.New(src, metrics.Options{Logger: log, UpdateFrequency: cfg.UpdateFrequency, VerifyInterval: cfg.Heal.Interval})

	// LAPI's addresses are resolved by the first pull (DNS may be slow or
	// down): never on the way to enforcing the journal.
	p.resolve = func(ctx context.Context) []netip.Prefix { return lapiPrefixes(ctx, cfg.APIURL, log) }

	bootCtx, cancelBoot := context.WithCancel(ctx)
	defer cancelBoot()
	g, gctx := errgroup.WithContext(bootCtx)
	// The first pull runs beside the boot replay: the journal is enforced
	// without waiting for LAPI, and LAPI's answer waits for the loop
	// (Submit), so it is applied after the journal all the same.
	g.Go(func() error { return p.run(gctx) })

	// A stop during the boot replay is a stop: the shutdown below honours
	// on_shutdown, as for any other SIGTERM.
	if err := enf.Boot(gctx); err != nil && gctx.Err() == nil {
		cancelBoot()
		return errors.Join(err, ignoreCanceled(g.Wait()))
	}
	booted.Store(true)
	log.Info("enforcing from journal", "entries", j.View().Len(), "since_start", time.Since(start).Round(time.Millisecond))
	if err := sdnotify.Ready(fmt.Sprintf("enforcing %d bans from the journal", j.View().Len())); err != nil {
		log.Warn("systemd notify failed", "err", err)
	}
	// A client that cannot be built is a start-up error; a stop meanwhile
	// is a stop, shut down below like any other.
	api, err := client.wait(gctx)
	if err != nil && gctx.Err() == nil {
		cancelBoot()
		return errors.Join(err, ignoreCanceled(g.Wait()))
	}

	g.Go(func() (err error) {
		// A bug must not end the process without a word in the log; the
		// rules are kept, as on any fatal error.
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("enforcer panic: %v\n%s", r, debug.Stack())
			}
		}()
		return enf.Run(gctx)
	})
	g.Go(func() error { return watchKernel(gctx, mon, wake, log) })
	g.Go(func() error {
		svc := admin.NewDaemonService(enf, j, nil)
		if err := admin.Serve(gctx, admin.SocketPath(cfg.JournalPath), svc, log); err != nil {
			log.Error("admin socket unavailable; journal and check commands will not work while the daemon runs", "err", err)
		}
		return nil
	})
	g.Go(func() error { return sdnotify.RunWatchdog(gctx, enf.Heartbeat, log) })
	g.Go(func() error { return onHangup(gctx, hup, cfg, log) })
	if api != nil {
		g.Go(func() error { return metrics.RunUsageMetrics(gctx, api.APIClient(), src, log) })
	}
	if cfg.Prometheus.Enabled {
		addr := net.JoinHostPort(cfg.Prometheus.ListenAddr, strconv.Itoa(cfg.Prometheus.ListenPort))
		g.Go(func() error { return metrics.ListenAndServe(gctx, addr, metrics.NewHandler(m), log) })
	}
	g.Go(func() error {
		return sdnotify.RunStatus(gctx, 5*time.Second, func() string {
			return sdnotify.FormatStatus(enf.Health(), time.Now())
		}, log)
	})
	err = g.Wait()

	// A clean stop honours on_shutdown; a fatal error always keeps the rules:
	// removing them would open the host while systemd restarts us.
	clean := ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled))
	keep := cfg.OnShutdown == "keep" || !clean
	if nerr := sdnotify.Stopping(); nerr != nil {
		log.Warn("systemd notify failed", "err", nerr)
	}
	closeCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cerr := enf.Close(closeCtx, keep)
	log.Info("stopped", "kept_rules", keep)
	if clean {
		err = nil // the cancellation we asked for is not a failure; Close's errors are
	}
	return errors.Join(err, cerr)
}

// lapiResolveTimeout bounds the look-up of LAPI's host name at start-up.
const lapiResolveTimeout = 5 * time.Second

// lapiPrefixes returns LAPI's addresses, which no ban may cover (loopback
// is always protected). A failed look-up is not fatal: the bouncer must
// enforce its journal whatever DNS does.
func lapiPrefixes(ctx context.Context, apiURL string, log *slog.Logger) []netip.Prefix {
	ctx, cancel := context.WithTimeout(ctx, lapiResolveTimeout)
	defer cancel()
	ps, err := lapi.LAPIPrefixes(ctx, apiURL, net.DefaultResolver)
	if err != nil {
		log.Warn("cannot resolve LAPI's address: only loopback is protected from bans", "err", err)
	}
	return ps
}

func toSet(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// result carries a value and its error across a channel.
// lateClient is the LAPI client while it is built: over TLS that loads the
// system's CA certificates (≈30 ms), and the journal's boot replay must not
// wait for it. A pull waits; counters read zero until it is there.
type lateClient struct {
	ready chan struct{}
	c     *lapi.Client
	err   error
}

func buildClient(cfg lapi.ClientConfig, log *slog.Logger) *lateClient {
	l := &lateClient{ready: make(chan struct{})}
	go func() {
		l.c, l.err = lapi.NewClient(cfg, log)
		if l.err != nil {
			l.err = fmt.Errorf("lapi client: %w", l.err)
		}
		close(l.ready)
	}()
	return l
}

// wait returns the client once built.
func (l *lateClient) wait(ctx context.Context) (*lapi.Client, error) {
	select {
	case <-l.ready:
		return l.c, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// built returns the client if it is built, else nil.
func (l *lateClient) built() *lapi.Client {
	select {
	case <-l.ready:
		return l.c
	default:
		return nil
	}
}

// PullBatch implements decisionSource.
func (l *lateClient) PullBatch(ctx context.Context, startup bool, opts lapi.NormalizeOptions, now func() time.Time) (journal.Batch, []lapi.Rejection, lapi.Stats, error) {
	c, err := l.wait(ctx)
	if err != nil {
		return journal.Batch{}, nil, lapi.Stats{}, err
	}
	return c.PullBatch(ctx, startup, opts, now)
}

// Requests implements metrics.LAPICounters.
func (l *lateClient) Requests() uint64 {
	if c := l.built(); c != nil {
		return c.Requests()
	}
	return 0
}

// Failures implements metrics.LAPICounters.
func (l *lateClient) Failures() uint64 {
	if c := l.built(); c != nil {
		return c.Failures()
	}
	return 0
}

// ignoreCanceled drops the cancellation that stopped the other goroutines
// after a fatal error: that error says it all.
func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
