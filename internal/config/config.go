// Package config loads the bouncer's YAML configuration.
//
// It reads crowdsec-firewall-bouncer.yaml files unchanged (upstream keys,
// upstream defaults, `${VAR}` expansion, a `<path>.local` overlay) and adds
// the keys that only cs-journal-bouncer has (journal, heal, resync). Keys
// that only matter to upstream's other modes (nftables, pf) are accepted
// silently so one file can move between the two bouncers.
package config

import (
	"log/slog"
	"time"
)

// Modes cs-journal-bouncer can enforce with. Upstream's "iptables" mode
// uses ipsets plus iptables rules; "ipset" fills the sets only and leaves
// the rules referencing them to the administrator; "nftables" uses
// nf_tables tables, sets and rules (or only sets, with set-only).
const (
	ModeIPTables = "iptables"
	ModeIPSet    = "ipset"
	ModeNFTables = "nftables"
	// ModeDryRun touches no kernel: it logs what it would add and delete.
	ModeDryRun = "dry-run"
)

// NFTablesHooks are the hooks nftables_hooks accepts, as upstream.
var NFTablesHooks = []string{"prerouting", "input", "forward", "output", "postrouting"}

// Values of on_shutdown.
const (
	// OnShutdownRemove deletes our chains, rules and sets at exit, like
	// upstream does.
	OnShutdownRemove = "remove"
	// OnShutdownKeep leaves everything enforced at exit so that a restart
	// leaves no window; the next start adopts what it finds.
	OnShutdownKeep = "keep"
)

// Values of log_mode.
const (
	LogModeStdout = "stdout"
	LogModeFile   = "file"
)

// Values of log_format.
const (
	LogFormatText = "text"
	LogFormatJSON = "json"
)

// Canonical ipset types, the values IPSetType holds after Load.
const (
	IPSetHashNet = "hash:net"
	IPSetHashIP  = "hash:ip"
)

// Config is the validated, defaulted configuration. Load never returns a
// Config that failed validation; callers may use every field as is.
type Config struct {
	// Mode is ModeIPTables, ModeIPSet or ModeDryRun.
	Mode string
	// UpdateFrequency is how often the LAPI stream is polled (> 0).
	UpdateFrequency time.Duration

	// APIURL is the LAPI address, an http or https URL.
	APIURL string
	// APIKey authenticates to LAPI; exclusive with CertPath/KeyPath.
	APIKey string
	// CertPath and KeyPath are the TLS client certificate and key; set
	// both or neither.
	CertPath, KeyPath string
	// CACertPath is an extra CA to trust for LAPI's certificate.
	CACertPath string
	// InsecureSkipVerify disables verification of LAPI's certificate.
	InsecureSkipVerify bool
	// RetryInitialConnect keeps retrying when LAPI is down at start.
	// Default true, unlike go-cs-bouncer: we enforce the journal before
	// contacting LAPI, so waiting for LAPI costs nothing.
	RetryInitialConnect bool
	// Scopes, Origins, ScenariosContaining and ScenariosNotContaining
	// filter the LAPI stream; nil means LAPI's defaults.
	Scopes, Origins, ScenariosContaining, ScenariosNotContaining []string
	// SupportedDecisionsTypes lists the decision types enforced,
	// lower-cased (upstream compares them with the lower-cased type).
	SupportedDecisionsTypes []string

	// LogMode is LogModeStdout or LogModeFile.
	LogMode string
	// LogDir is the directory of the log file in LogModeFile.
	LogDir string
	// LogLevel is a logrus level name as upstream accepts them
	// (trace, debug, info, warning, error, fatal, panic), lower-cased;
	// "warn" is stored as "warning". See SlogLevel.
	LogLevel string
	// LogFormat is LogFormatText or LogFormatJSON.
	LogFormat string
	// LogMaxSize (MB), LogMaxBackups (files) and LogMaxAge (days) rotate
	// the log file; LogCompression gzips rotated files.
	LogMaxSize, LogMaxBackups, LogMaxAge int
	// LogCompression gzips rotated log files.
	LogCompression bool

	// DisableIPv4 and DisableIPv6 turn a family off; not both.
	DisableIPv4, DisableIPv6 bool
	// DenyAction is DROP, REJECT, TARPIT or LOG (upper case); nftables
	// takes only the first two (its backend says so).
	DenyAction string
	// DenyLog adds a LOG rule before the deny action.
	DenyLog bool
	// DenyLogPrefix is the LOG rule's --log-prefix.
	DenyLogPrefix string
	// BlacklistsIPv4 and BlacklistsIPv6 name the sets; the backend checks
	// them against its kernel's limits.
	BlacklistsIPv4, BlacklistsIPv6 string
	// IPSetType is IPSetHashNet or IPSetHashIP.
	IPSetType string
	// IPSetSize is the sets' maxelem.
	IPSetSize int
	// IPSetDisableTimeouts creates sets without per-entry timeouts; expiry
	// is then done by the bouncer alone.
	IPSetDisableTimeouts bool
	// IPTablesChains is iptables_chains as configured (default [INPUT]).
	IPTablesChains []string
	// IPTablesV4Chains and IPTablesV6Chains are the effective per-family
	// chains: iptables_v4_chains/iptables_v6_chains when set, else
	// IPTablesChains. Empty when the family is disabled.
	IPTablesV4Chains, IPTablesV6Chains []string
	// IPTablesAddRuleComments adds "-m comment" ("CrowdSec: <origin>") to
	// our rules; default true, as upstream ships it.
	IPTablesAddRuleComments bool

	// NFTables is the "nftables" section (mode nftables).
	NFTables NFTablesConfig
	// NFTablesHooks is nftables_hooks: one base chain per hook (default
	// [input]), each one of NFTablesHooks, lower-cased.
	NFTablesHooks []string

	// Prometheus configures the metrics endpoint.
	Prometheus PrometheusConfig

	// JournalPath is the bbolt journal file.
	JournalPath string
	// OnShutdown is OnShutdownRemove or OnShutdownKeep.
	OnShutdown string
	// FullResyncInterval is how often the full set is pulled again
	// (startup=true) and diffed with the journal view; 0 disables it.
	FullResyncInterval time.Duration
	// Heal tunes the self-healing loop.
	Heal HealConfig
}

// PrometheusConfig is the "prometheus" section, as upstream.
type PrometheusConfig struct {
	// Enabled starts the metrics endpoint.
	Enabled bool
	// ListenAddr is the address to listen on.
	ListenAddr string
	// ListenPort is the TCP port (1–65535).
	ListenPort int
}

// NFTablesConfig is upstream's "nftables" section.
type NFTablesConfig struct {
	// IPv4 is nftables.ipv4 (table family ip), IPv6 nftables.ipv6 (ip6).
	IPv4, IPv6 NFTablesFamily
}

// NFTablesFamily is one family's part of the "nftables" section.
type NFTablesFamily struct {
	// Enabled is nftables.ipvX.enabled; default: not disable_ipvX.
	Enabled bool
	// SetOnly is nftables.ipvX.set-only: fill blacklists_ipvX in the
	// administrator's table Table, create no chain or rule.
	SetOnly bool
	// Table is the table name (default crowdsec / crowdsec6).
	Table string
	// Chain is the base chains' name prefix (default crowdsec-chain /
	// crowdsec6-chain); each hook's chain is Chain+"-"+hook.
	Chain string
	// Priority is the base chains' priority (default 0).
	Priority int
}

// HealConfig is the "heal" section, ours.
type HealConfig struct {
	// Interval is the cheap drift check period (chains, rules, set headers).
	Interval time.Duration
	// DeepInterval is the period of the expensive check (set members).
	DeepInterval time.Duration
	// MaxReplayAttempts bounds replays before escalating (resync, exit).
	MaxReplayAttempts int
	// BackoffInitial is the first wait after a failed replay.
	BackoffInitial time.Duration
	// BackoffMax caps the wait between replays.
	BackoffMax time.Duration
	// FightWindow: drift that comes back sooner than this after a repair
	// counts as another program undoing our work.
	FightWindow time.Duration
	// FreeRepairs is how many such quick repeats are repaired at once
	// before repairs back off (from backoff_initial up to backoff_max).
	FreeRepairs int
}

// Defaults. Upstream's are taken from its code (not its example file,
// which sets some keys its code never reads). Those that name kernel
// objects or shape rules are backend.Default*, shared with the backends.
const (
	defaultUpdateFrequency = 10 * time.Second
	defaultLogMode         = LogModeStdout // upstream LoggingConfig.setDefaults
	defaultLogDir          = "/var/log/"
	defaultLogLevel        = "info"
	defaultLogMaxSize      = 500
	defaultLogMaxBackups   = 3
	defaultLogMaxAge       = 30
	defaultPromAddr        = "127.0.0.1"
	defaultPromPort        = 60601
	defaultJournalPath     = "/var/lib/cs-journal-bouncer/journal.db"
	// LAPI hard-deletes decisions on alert flush and blocklist refresh
	// without ever listing them as deleted, so only a full pull notices.
	// A startup=true pull of 100k decisions costs ≈1 s on LAPI: hourly
	// bounds such stale bans to one hour at negligible cost.
	defaultFullResyncInterval = time.Hour
	defaultHealInterval       = time.Second
	// A member-by-member comparison costs ≈0.25 s at 100k entries (a full
	// set dump, measured here), too much for every second, cheap every
	// five minutes.
	defaultHealDeepInterval = 5 * time.Minute
	defaultHealMaxReplays   = 5
	defaultHealBackoffInit  = time.Second
	defaultHealBackoffMax   = time.Minute
	defaultHealFightWindow  = 10 * time.Second
	defaultHealFreeRepairs  = 3
	// Upper bounds of heal settings that would leave drift unrepaired or a
	// failing ladder going for hours.
	maxHealInterval          = time.Hour
	maxHealReplays           = 10
	maxHealBackoff           = 10 * time.Minute
	defaultOnShutdown        = OnShutdownRemove
	defaultLogFormat         = LogFormatText
	defaultRetryInitConnect  = true
	defaultLogCompression    = true // upstream: CompressLogs nil → true
	defaultIPTablesChain     = "INPUT"
	defaultSupportedDecision = "ban"
)

// logLevels maps upstream's logrus level names to slog levels. slog has
// no trace/fatal/panic: they sit one step (4) beyond debug/error.
var logLevels = map[string]slog.Level{
	"trace":   slog.LevelDebug - 4,
	"debug":   slog.LevelDebug,
	"info":    slog.LevelInfo,
	"warning": slog.LevelWarn,
	"error":   slog.LevelError,
	"fatal":   slog.LevelError + 4,
	"panic":   slog.LevelError + 8,
}

// SlogLevel returns LogLevel as a slog.Level.
func (c *Config) SlogLevel() slog.Level {
	return logLevels[c.LogLevel]
}

// Chains4 returns the effective IPv4 chains (nil when IPv4 is disabled).
func (c *Config) Chains4() []string { return c.IPTablesV4Chains }

// Chains6 returns the effective IPv6 chains (nil when IPv6 is disabled).
func (c *Config) Chains6() []string { return c.IPTablesV6Chains }
