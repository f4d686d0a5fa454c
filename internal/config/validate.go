package config

import (
	"cmp"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// upstreamOnlyModes are upstream modes not implemented here yet.
var upstreamOnlyModes = map[string]bool{"pf": true}

// build decodes and validates every key, recording errors in d, and
// returns the Config (meaningful only when d.errs is empty) and warnings.
func build(d *decoder) (*Config, []string) {
	c := &Config{}
	var warns []string
	buildLAPI(d, c)
	buildLogging(d, c)
	warns = append(warns, buildFirewall(d, c)...)
	buildOurs(d, c)
	return c, warns
}

func buildLAPI(d *decoder, c *Config) {
	c.Mode = d.str("mode", "")
	switch {
	case c.Mode == "":
		d.errs = append(d.errs, &KeyError{Key: "mode", Msg: "is required (iptables, ipset, nftables or dry-run)"})
	case upstreamOnlyModes[c.Mode]:
		d.errs = append(d.errs, &KeyError{Key: "mode", err: ErrUnsupportedMode, Msg: fmt.Sprintf(
			"mode %q is not supported yet by cs-journal-bouncer (supported: iptables, ipset, nftables, dry-run)", c.Mode)})
	default:
		d.oneOf("mode", c.Mode, c.Mode, ModeIPTables, ModeIPSet, ModeNFTables, ModeDryRun)
	}

	c.UpdateFrequency = d.duration("update_frequency", defaultUpdateFrequency)
	if c.UpdateFrequency <= 0 {
		d.fail("update_frequency", c.UpdateFrequency, "%s must be positive", fmtDuration(c.UpdateFrequency))
	}

	c.APIURL = d.str("api_url", "")
	if c.APIURL == "" {
		d.errs = append(d.errs, &KeyError{Key: "api_url", Msg: "is required, e.g. http://127.0.0.1:8080/"})
	} else if u, err := url.Parse(c.APIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		d.fail("api_url", c.APIURL, "%s is not an http:// or https:// URL", show("api_url", c.APIURL))
	}

	c.APIKey = d.str("api_key", "")
	c.CertPath = d.str("cert_path", "")
	c.KeyPath = d.str("key_path", "")
	c.CACertPath = d.str("ca_cert_path", "")
	checkAuth(d, c)

	c.InsecureSkipVerify = d.boolean("insecure_skip_verify", false)
	c.RetryInitialConnect = d.boolean("retry_initial_connect", defaultRetryInitConnect)
	c.Scopes = filter(d, "scopes")
	c.Origins = filter(d, "origins")
	c.ScenariosContaining = filter(d, "scenarios_containing")
	c.ScenariosNotContaining = filter(d, "scenarios_not_containing")

	types, _ := d.strs("supported_decisions_types")
	for _, t := range types {
		if t = strings.ToLower(strings.TrimSpace(t)); t != "" {
			c.SupportedDecisionsTypes = append(c.SupportedDecisionsTypes, t)
		}
	}
	if len(c.SupportedDecisionsTypes) == 0 { // upstream: empty means [ban]
		c.SupportedDecisionsTypes = []string{defaultSupportedDecision}
	}
}

// filter reads a LAPI stream filter; empty means LAPI's default, and is
// returned as nil so that callers need only one test.
func filter(d *decoder, key string) []string {
	list, _ := d.strs(key)
	if len(list) == 0 {
		return nil
	}
	return list
}

// checkAuth mirrors go-cs-bouncer, which refuses a key and a certificate
// together, so the error comes at load time rather than at connect time.
func checkAuth(d *decoder, c *Config) {
	if name := d.unsetIn(c.APIKey); name != "" {
		// An unset ${API_KEY} left as is would be sent to LAPI as the key
		// and fail there, over and over with retry_initial_connect.
		d.errs = append(d.errs, &KeyError{Key: "api_key", Msg: fmt.Sprintf(
			"refers to environment variable %s, which is not set", name)})
		return
	}
	hasCert := c.CertPath != "" || c.KeyPath != ""
	switch {
	case c.APIKey != "" && hasCert:
		d.errs = append(d.errs, &KeyError{Key: "api_key", Msg: "cannot be used together with cert_path/key_path: choose one authentication"})
	case c.APIKey == "" && !hasCert:
		d.errs = append(d.errs, &KeyError{Key: "api_key", Msg: "is required (or cert_path and key_path for TLS authentication)"})
	case hasCert && c.CertPath == "":
		d.errs = append(d.errs, &KeyError{Key: "cert_path", Msg: "is required when key_path is set"})
	case hasCert && c.KeyPath == "":
		d.errs = append(d.errs, &KeyError{Key: "key_path", Msg: "is required when cert_path is set"})
	}
}

func buildLogging(d *decoder, c *Config) {
	c.LogMode = d.str("log_mode", defaultLogMode)
	d.oneOf("log_mode", c.LogMode, c.LogMode, LogModeStdout, LogModeFile)
	c.LogDir = d.str("log_dir", defaultLogDir)
	if c.LogDir == "" {
		c.LogDir = defaultLogDir
	}

	raw := d.str("log_level", defaultLogLevel)
	c.LogLevel = strings.ToLower(strings.TrimSpace(raw))
	if c.LogLevel == "warn" { // logrus accepts both
		c.LogLevel = "warning"
	}
	if _, ok := logLevels[c.LogLevel]; !ok {
		d.fail("log_level", raw, "%s is not one of trace, debug, info, warning, error, fatal, panic", show("log_level", raw))
	}

	c.LogFormat = strings.ToLower(d.str("log_format", defaultLogFormat))
	d.oneOf("log_format", c.LogFormat, c.LogFormat, LogFormatText, LogFormatJSON)

	// upstream treats 0 as "use the default"; negative makes no sense.
	c.LogMaxSize = nonNegative(d, "log_max_size", defaultLogMaxSize)
	c.LogMaxBackups = nonNegative(d, "log_max_backups", defaultLogMaxBackups)
	c.LogMaxAge = nonNegative(d, "log_max_age", defaultLogMaxAge)
	c.LogCompression = d.boolean("log_compression", defaultLogCompression)
}

// nonNegative reads an int where 0 means def, as upstream.
func nonNegative(d *decoder, key string, def int) int {
	n := d.integer(key, def)
	switch {
	case n < 0:
		d.fail(key, n, "%d must not be negative", n)
		return def
	case n == 0:
		return def
	}
	return n
}

func buildFirewall(d *decoder, c *Config) []string {
	var warns []string
	c.DisableIPv4 = d.boolean("disable_ipv4", false)
	c.DisableIPv6 = d.boolean("disable_ipv6", false)
	if c.DisableIPv4 && c.DisableIPv6 {
		d.errs = append(d.errs, &KeyError{Key: "disable_ipv6", Msg: "true together with disable_ipv4: true leaves nothing to enforce"})
	}

	// Upstream's values; which of them a mode can do is the backend's rule.
	raw := d.str("deny_action", "")
	c.DenyAction = cmp.Or(strings.ToUpper(strings.TrimSpace(raw)), backend.DefaultDenyAction)
	d.oneOf("deny_action", raw, c.DenyAction, "DROP", "REJECT", "TARPIT", "LOG")
	c.DenyLog = d.boolean("deny_log", false)
	// Lengths and characters of the prefix and the set names are the
	// kernel's business: the backend's New checks them (cmd's -t builds it).
	c.DenyLogPrefix = cmp.Or(d.str("deny_log_prefix", ""), backend.DefaultDenyLogPrefix)
	c.BlacklistsIPv4 = cmp.Or(d.str("blacklists_ipv4", ""), backend.DefaultSetName4)
	c.BlacklistsIPv6 = cmp.Or(d.str("blacklists_ipv6", ""), backend.DefaultSetName6)

	raw = d.str("ipset_type", "nethash")
	switch strings.ToLower(strings.TrimSpace(raw)) {
	case "nethash", IPSetHashNet:
		c.IPSetType = IPSetHashNet
	case "iphash", IPSetHashIP:
		c.IPSetType = IPSetHashIP
		warns = append(warns, "ipset_type: hash:ip cannot hold ranges; Range decisions will not be enforced")
	default:
		c.IPSetType = backend.DefaultIPSetType
		d.fail("ipset_type", raw, "%s is not one of nethash, iphash, hash:net, hash:ip", show("ipset_type", raw))
	}
	// upstream: 0 means the default; the range is ipset's (the backend's).
	c.IPSetSize = cmp.Or(d.integer("ipset_size", 0), backend.DefaultIPSetSize)
	c.IPSetDisableTimeouts = d.boolean("ipset_disable_timeouts", false)
	// Upstream ships this on, and its rules carry "CrowdSec: <origin>".
	c.IPTablesAddRuleComments = d.boolean("iptables_add_rule_comments", true)
	warns = append(warns, resolveChains(d, c)...)
	buildNFTables(d, c)

	c.Prometheus.Enabled = d.boolean("prometheus.enabled", false)
	c.Prometheus.ListenAddr = d.str("prometheus.listen_addr", defaultPromAddr)
	if c.Prometheus.ListenAddr == "" {
		c.Prometheus.ListenAddr = defaultPromAddr
	}
	// upstream reads listen_port as a string; integer() takes both.
	c.Prometheus.ListenPort = d.integer("prometheus.listen_port", defaultPromPort)
	if p := c.Prometheus.ListenPort; p < 1 || p > 65535 {
		d.fail("prometheus.listen_port", p, "%d is not a TCP port (1-65535)", p)
	}
	return warns
}

// resolveChains computes the per-family chains: a family-specific list
// when set (even empty), else iptables_chains (default [INPUT]).
func resolveChains(d *decoder, c *Config) []string {
	var warns []string
	common, set := d.strs("iptables_chains")
	if !set {
		common = []string{defaultIPTablesChain}
	}
	checkChains(d, "iptables_chains", common)
	c.IPTablesChains = common

	v4, set4 := d.strs("iptables_v4_chains")
	if set4 {
		checkChains(d, "iptables_v4_chains", v4)
	} else {
		v4 = slices.Clone(common)
	}
	v6, set6 := d.strs("iptables_v6_chains")
	if set6 {
		checkChains(d, "iptables_v6_chains", v6)
	} else {
		v6 = slices.Clone(common)
	}
	if c.DisableIPv4 {
		v4 = nil
	}
	if c.DisableIPv6 {
		v6 = nil
	}
	c.IPTablesV4Chains, c.IPTablesV6Chains = v4, v6
	if c.Mode == ModeIPTables && len(v4) == 0 && len(v6) == 0 {
		warns = append(warns, "iptables mode with no chains: the sets are filled but no rule of ours uses them")
	}
	return warns
}

// checkChains refuses a chain listed twice in one key. What a chain name
// may be is iptables' rule, checked by the backend's New.
func checkChains(d *decoder, key string, chains []string) {
	seen := map[string]bool{}
	for i, ch := range chains {
		if seen[ch] {
			k := fmt.Sprintf("%s[%d]", key, i)
			d.fail(k, ch, "%s is listed twice", show(k, ch))
		}
		seen[ch] = true
	}
}

func buildOurs(d *decoder, c *Config) {
	c.JournalPath = d.str("journal_path", defaultJournalPath)
	if !filepath.IsAbs(c.JournalPath) {
		d.fail("journal_path", c.JournalPath, "%s is not an absolute path", show("journal_path", c.JournalPath))
	}
	raw := d.str("on_shutdown", defaultOnShutdown)
	c.OnShutdown = strings.ToLower(strings.TrimSpace(raw))
	d.oneOf("on_shutdown", raw, c.OnShutdown, OnShutdownRemove, OnShutdownKeep)

	c.FullResyncInterval = d.duration("full_resync_interval", defaultFullResyncInterval)
	if r := c.FullResyncInterval; r < 0 || (r > 0 && r < c.UpdateFrequency) {
		d.fail("full_resync_interval", r, "%s must be 0 (disabled) or at least update_frequency (%s)",
			fmtDuration(r), fmtDuration(c.UpdateFrequency))
	}

	h := &c.Heal
	h.Interval = positiveDuration(d, "heal.interval", defaultHealInterval)
	h.DeepInterval = positiveDuration(d, "heal.deep_interval", defaultHealDeepInterval)
	h.MaxReplayAttempts = d.integer("heal.max_replay_attempts", defaultHealMaxReplays)
	if h.MaxReplayAttempts <= 0 {
		d.fail("heal.max_replay_attempts", h.MaxReplayAttempts, "%d must be positive", h.MaxReplayAttempts)
	}
	h.BackoffInitial = positiveDuration(d, "heal.backoff_initial", defaultHealBackoffInit)
	h.BackoffMax = positiveDuration(d, "heal.backoff_max", defaultHealBackoffMax)
	h.FightWindow = positiveDuration(d, "heal.fight_window", defaultHealFightWindow)
	h.FreeRepairs = d.integer("heal.free_repairs", defaultHealFreeRepairs)
	if h.FreeRepairs <= 0 {
		d.fail("heal.free_repairs", h.FreeRepairs, "%d must be positive", h.FreeRepairs)
	}
	if h.DeepInterval < h.Interval {
		d.fail("heal.deep_interval", h.DeepInterval, "%s must be at least heal.interval (%s)",
			fmtDuration(h.DeepInterval), fmtDuration(h.Interval))
	}
	// The loop beats every few seconds whatever the interval; past an hour
	// drift would go unrepaired for longer than any ban we'd want to keep.
	if h.Interval > maxHealInterval {
		d.fail("heal.interval", h.Interval, "%s must be at most %s", fmtDuration(h.Interval), fmtDuration(maxHealInterval))
	}
	// Every failed replay doubles the wait; past a few attempts the ladder
	// only delays the full LAPI resync and the exit that lets systemd help.
	if h.MaxReplayAttempts > maxHealReplays {
		d.fail("heal.max_replay_attempts", h.MaxReplayAttempts, "%d must be at most %d", h.MaxReplayAttempts, maxHealReplays)
	}
	if h.BackoffMax > maxHealBackoff {
		d.fail("heal.backoff_max", h.BackoffMax, "%s must be at most %s", fmtDuration(h.BackoffMax), fmtDuration(maxHealBackoff))
	}
	if h.BackoffMax < h.BackoffInitial {
		d.fail("heal.backoff_max", h.BackoffMax, "%s must be at least heal.backoff_initial (%s)",
			fmtDuration(h.BackoffMax), fmtDuration(h.BackoffInitial))
	}
}

func positiveDuration(d *decoder, key string, def time.Duration) time.Duration {
	v := d.duration(key, def)
	if v <= 0 {
		d.fail(key, v, "%s must be positive", fmtDuration(v))
		return def
	}
	return v
}
