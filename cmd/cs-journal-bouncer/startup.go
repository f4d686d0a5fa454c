package main

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/iptables"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
)

// logInForce writes the few lines that tell a person reading the log what
// this process enforces and how it talks to LAPI, as upstream's bouncer
// does at start: auth method, mode, deny action, chains and sets (one line
// per origin the journal already knows, like upstream's "using <set> as set
// for origin <origin>").
func logInForce(log *slog.Logger, cfg *config.Config, be backend.Backend, origins map[string]int) {
	auth := []any{"auth", "api key"}
	if cfg.CertPath != "" {
		auth = []any{"auth", "TLS client certificate", "cert", cfg.CertPath, "key", cfg.KeyPath}
	}
	log.Info("LAPI", append([]any{"url", cfg.APIURL}, auth...)...)

	families := []bool{}
	if !cfg.DisableIPv4 {
		families = append(families, false)
	}
	if !cfg.DisableIPv6 {
		families = append(families, true)
	}
	setPattern := func(v6 bool) string {
		name := cfg.BlacklistsIPv4
		if v6 {
			name = cfg.BlacklistsIPv6
		}
		if cfg.Mode != config.ModeIPSet {
			name += "-<origin>"
		}
		return name
	}
	var sets []any
	for _, v6 := range families {
		fam := "ipv4"
		if v6 {
			fam = "ipv6"
		}
		sets = append(sets, fam, setPattern(v6))
	}
	switch cfg.Mode {
	case config.ModeDryRun:
		log.Info("mode dry-run: nothing is written to the kernel; every add and delete is logged")
		return
	case config.ModeNFTables:
		rules := []any{"hooks", cfg.NFTablesHooks, "deny_action", cfg.DenyAction, "deny_log", cfg.DenyLog}
		for _, f := range []struct {
			name string
			c    config.NFTablesFamily
		}{{"ipv4", cfg.NFTables.IPv4}, {"ipv6", cfg.NFTables.IPv6}} {
			switch {
			case !f.c.Enabled:
			case f.c.SetOnly:
				rules = append(rules, f.name, "set-only in table "+f.c.Table)
			default:
				rules = append(rules, f.name, fmt.Sprintf("table %s, chains %s-<hook>, priority %d", f.c.Table, f.c.Chain, f.c.Priority))
			}
		}
		log.Info("mode nftables: one set per origin and family, one rule per set in each hooked chain", append(rules, sets...)...)
	case config.ModeIPSet:
		log.Info("mode ipset: only the sets are filled; your own rules decide what matching packets get",
			append(sets, "type", cfg.IPSetType, "maxelem", cfg.IPSetSize, "timeouts", !cfg.IPSetDisableTimeouts)...)
		return
	default:
		rules := []any{"deny_action", cfg.DenyAction, "deny_log", cfg.DenyLog}
		if cfg.DenyLog {
			rules = append(rules, "log_chain", iptables.LogChain, "deny_log_prefix", cfg.DenyLogPrefix)
		}
		if !cfg.DisableIPv4 {
			rules = append(rules, "ipv4_chains", cfg.Chains4())
		}
		if !cfg.DisableIPv6 {
			rules = append(rules, "ipv6_chains", cfg.Chains6())
		}
		rules = append(rules, "rule_comments", cfg.IPTablesAddRuleComments)
		log.Info("mode iptables: one rule per set in chain CROWDSEC_CHAIN, jumped to from the configured chains", rules...)
		log.Info("sets: one per origin and family", append(sets, "type", cfg.IPSetType, "maxelem", cfg.IPSetSize, "timeouts", !cfg.IPSetDisableTimeouts)...)
	}
	for _, name := range slices.Sorted(maps.Keys(origins)) {
		for _, v6 := range families {
			log.Info("set for origin", "set", be.SetName(be.SetKeyOf(origins[name], v6)), "origin", name)
		}
	}
}
