package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/dryrun"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/iptables"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/nftables"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/nfevents"
)

// newBackend builds the backend of the configured mode: the one place that
// knows which firewall packages exist. Building one never touches the
// kernel (`-t`, the CLI and set naming rely on that); objects appear on
// Ensure.
func newBackend(cfg *config.Config, log *slog.Logger) (backend.Backend, error) {
	switch cfg.Mode {
	case config.ModeIPTables, config.ModeIPSet:
		return iptables.New(iptablesConfig(cfg, log))
	case config.ModeNFTables:
		return nftables.New(nftablesConfig(cfg, log))
	case config.ModeDryRun:
		return dryrun.New(dryrun.Config{DisableIPv4: cfg.DisableIPv4, DisableIPv6: cfg.DisableIPv6,
			SetName4: cfg.BlacklistsIPv4, SetName6: cfg.BlacklistsIPv6, Logger: log}), nil
	}
	return nil, fmt.Errorf("mode %q: %w", cfg.Mode, config.ErrUnsupportedMode)
}

// checkBackend builds the configured backend and drops it: its New
// rejects, as *backend.ConfigError naming the upstream key, every value
// its kernel cannot take. Nothing is left to close: New opens nothing.
func checkBackend(cfg *config.Config) error {
	_, err := newBackend(cfg, slog.New(slog.DiscardHandler))
	return err
}

func iptablesConfig(cfg *config.Config, log *slog.Logger) iptables.Config {
	return iptables.Config{
		Mode:            cfg.Mode,
		DisableIPv4:     cfg.DisableIPv4,
		DisableIPv6:     cfg.DisableIPv6,
		SetName4:        cfg.BlacklistsIPv4,
		SetName6:        cfg.BlacklistsIPv6,
		SetType:         cfg.IPSetType,
		MaxElem:         cfg.IPSetSize,
		DisableTimeouts: cfg.IPSetDisableTimeouts,
		Chains4:         cfg.Chains4(),
		Chains6:         cfg.Chains6(),
		DenyAction:      cfg.DenyAction,
		DenyLog:         cfg.DenyLog,
		DenyLogPrefix:   cfg.DenyLogPrefix,
		RuleComments:    cfg.IPTablesAddRuleComments,
		Logger:          log,
	}
}

func nftablesConfig(cfg *config.Config, log *slog.Logger) nftables.Config {
	fam := func(f config.NFTablesFamily, set string) nftables.Family {
		return nftables.Family{Enabled: f.Enabled, SetOnly: f.SetOnly, Table: f.Table, Chain: f.Chain, Priority: f.Priority, SetName: set}
	}
	return nftables.Config{
		IPv4:            fam(cfg.NFTables.IPv4, cfg.BlacklistsIPv4),
		IPv6:            fam(cfg.NFTables.IPv6, cfg.BlacklistsIPv6),
		Hooks:           cfg.NFTablesHooks,
		DenyAction:      cfg.DenyAction,
		DenyLog:         cfg.DenyLog,
		DenyLogPrefix:   cfg.DenyLogPrefix,
		DisableTimeouts: cfg.IPSetDisableTimeouts,
		Logger:          log,
	}
}

// newMonitor builds the nf_tables event monitor for a backend that names
// nf_tables objects, and the channel it wakes the enforcer on. Both are
// nil when there is nothing to watch (ipset, dry-run): the verify tick
// alone finds drift then. A backend that writes many set elements at once
// may pause the monitor around those writes (backend.QuietWriter).
func newMonitor(be backend.Backend, log *slog.Logger) (*nfevents.Monitor, chan backend.Change) {
	w, ok := be.(backend.NFTWatcher)
	if !ok {
		return nil, nil
	}
	m, err := nfevents.New(w.NFTObjects(), log)
	if err != nil {
		return nil, nil // nothing to watch in this mode
	}
	if q, ok := be.(backend.QuietWriter); ok {
		q.SetEventPauser(m)
	}
	return m, make(chan backend.Change)
}

// watchKernel runs the monitor until ctx ends. A monitor that cannot run
// (no netlink socket) is reported and the daemon goes on: the verify tick
// still finds every drift, only later.
func watchKernel(ctx context.Context, m *nfevents.Monitor, wake chan<- backend.Change, log *slog.Logger) error {
	if m == nil {
		return nil
	}
	if err := m.Run(ctx, wake); err != nil && ctx.Err() == nil {
		log.Error("nf_tables event monitor stopped; drift is found by the verify tick only", "err", err)
	}
	return nil
}
