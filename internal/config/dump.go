package config

import (
	"fmt"
	"io"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// dumpDoc fixes the order and spelling of the keys Dump writes: the
// order of configs/cs-journal-bouncer.yaml, one canonical name per key.
type dumpDoc struct {
	Mode                    string   `yaml:"mode"`
	UpdateFrequency         string   `yaml:"update_frequency"`
	APIURL                  string   `yaml:"api_url"`
	APIKey                  string   `yaml:"api_key"`
	CertPath                string   `yaml:"cert_path"`
	KeyPath                 string   `yaml:"key_path"`
	CACertPath              string   `yaml:"ca_cert_path"`
	InsecureSkipVerify      bool     `yaml:"insecure_skip_verify"`
	RetryInitialConnect     bool     `yaml:"retry_initial_connect"`
	Scopes                  []string `yaml:"scopes"`
	Origins                 []string `yaml:"origins"`
	ScenariosContaining     []string `yaml:"scenarios_containing"`
	ScenariosNotContaining  []string `yaml:"scenarios_not_containing"`
	SupportedDecisionsTypes []string `yaml:"supported_decisions_types"`
	LogMode                 string   `yaml:"log_mode"`
	LogDir                  string   `yaml:"log_dir"`
	LogLevel                string   `yaml:"log_level"`
	LogFormat               string   `yaml:"log_format"`
	LogMaxSize              int      `yaml:"log_max_size"`
	LogMaxBackups           int      `yaml:"log_max_backups"`
	LogMaxAge               int      `yaml:"log_max_age"`
	LogCompression          bool     `yaml:"log_compression"`
	DisableIPv4             bool     `yaml:"disable_ipv4"`
	DisableIPv6             bool     `yaml:"disable_ipv6"`
	DenyAction              string   `yaml:"deny_action"`
	DenyLog                 bool     `yaml:"deny_log"`
	DenyLogPrefix           string   `yaml:"deny_log_prefix"`
	BlacklistsIPv4          string   `yaml:"blacklists_ipv4"`
	BlacklistsIPv6          string   `yaml:"blacklists_ipv6"`
	IPSetType               string   `yaml:"ipset_type"`
	IPSetSize               int      `yaml:"ipset_size"`
	IPSetDisableTimeouts    bool     `yaml:"ipset_disable_timeouts"`
	IPTablesChains          []string `yaml:"iptables_chains"`
	IPTablesV4Chains        []string `yaml:"iptables_v4_chains"`
	IPTablesV6Chains        []string `yaml:"iptables_v6_chains"`
	IPTablesAddRuleComments bool     `yaml:"iptables_add_rule_comments"`
	NFTablesHooks           []string `yaml:"nftables_hooks"`
	NFTables                struct {
		IPv4 dumpNFTFamily `yaml:"ipv4"`
		IPv6 dumpNFTFamily `yaml:"ipv6"`
	} `yaml:"nftables"`
	Prometheus struct {
		Enabled    bool   `yaml:"enabled"`
		ListenAddr string `yaml:"listen_addr"`
		ListenPort int    `yaml:"listen_port"`
	} `yaml:"prometheus"`
	JournalPath        string `yaml:"journal_path"`
	OnShutdown         string `yaml:"on_shutdown"`
	FullResyncInterval string `yaml:"full_resync_interval"`
	Heal               struct {
		Interval          string `yaml:"interval"`
		DeepInterval      string `yaml:"deep_interval"`
		MaxReplayAttempts int    `yaml:"max_replay_attempts"`
		BackoffInitial    string `yaml:"backoff_initial"`
		BackoffMax        string `yaml:"backoff_max"`
		FightWindow       string `yaml:"fight_window"`
		FreeRepairs       int    `yaml:"free_repairs"`
	} `yaml:"heal"`
}

// dumpNFTFamily is one nftables.ipvX section, in upstream's spelling.
type dumpNFTFamily struct {
	Enabled  bool   `yaml:"enabled"`
	SetOnly  bool   `yaml:"set-only"`
	Table    string `yaml:"table"`
	Chain    string `yaml:"chain"`
	Priority int    `yaml:"priority"`
}

// Dump writes the effective configuration (defaults filled in, aliases
// resolved, per-family chains resolved) as YAML that Load accepts, for
// `-T`. The api_key value is replaced by "********"; certificate and key
// files are named, never read.
func (c *Config) Dump(w io.Writer) error {
	doc := dumpDoc{
		Mode: c.Mode, UpdateFrequency: fmtDuration(c.UpdateFrequency),
		APIURL: c.APIURL, CertPath: c.CertPath, KeyPath: c.KeyPath, CACertPath: c.CACertPath,
		InsecureSkipVerify: c.InsecureSkipVerify, RetryInitialConnect: c.RetryInitialConnect,
		Scopes: c.Scopes, Origins: c.Origins,
		ScenariosContaining: c.ScenariosContaining, ScenariosNotContaining: c.ScenariosNotContaining,
		SupportedDecisionsTypes: c.SupportedDecisionsTypes,
		LogMode:                 c.LogMode, LogDir: c.LogDir, LogLevel: c.LogLevel, LogFormat: c.LogFormat,
		LogMaxSize: c.LogMaxSize, LogMaxBackups: c.LogMaxBackups, LogMaxAge: c.LogMaxAge,
		LogCompression: c.LogCompression,
		DisableIPv4:    c.DisableIPv4, DisableIPv6: c.DisableIPv6,
		DenyAction: c.DenyAction, DenyLog: c.DenyLog, DenyLogPrefix: c.DenyLogPrefix,
		BlacklistsIPv4: c.BlacklistsIPv4, BlacklistsIPv6: c.BlacklistsIPv6,
		IPSetType: c.IPSetType, IPSetSize: c.IPSetSize, IPSetDisableTimeouts: c.IPSetDisableTimeouts,
		IPTablesChains: c.IPTablesChains, IPTablesV4Chains: c.IPTablesV4Chains,
		IPTablesV6Chains: c.IPTablesV6Chains, IPTablesAddRuleComments: c.IPTablesAddRuleComments,
		NFTablesHooks: c.NFTablesHooks,
		JournalPath:   c.JournalPath, OnShutdown: c.OnShutdown,
		FullResyncInterval: fmtDuration(c.FullResyncInterval),
	}
	if c.APIKey != "" {
		doc.APIKey = mask
	}
	doc.NFTables.IPv4, doc.NFTables.IPv6 = dumpNFTFamily(c.NFTables.IPv4), dumpNFTFamily(c.NFTables.IPv6)
	doc.Prometheus.Enabled = c.Prometheus.Enabled
	doc.Prometheus.ListenAddr = c.Prometheus.ListenAddr
	doc.Prometheus.ListenPort = c.Prometheus.ListenPort
	doc.Heal.Interval = fmtDuration(c.Heal.Interval)
	doc.Heal.DeepInterval = fmtDuration(c.Heal.DeepInterval)
	doc.Heal.MaxReplayAttempts = c.Heal.MaxReplayAttempts
	doc.Heal.BackoffInitial = fmtDuration(c.Heal.BackoffInitial)
	doc.Heal.BackoffMax = fmtDuration(c.Heal.BackoffMax)
	doc.Heal.FightWindow = fmtDuration(c.Heal.FightWindow)
	doc.Heal.FreeRepairs = c.Heal.FreeRepairs

	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return fmt.Errorf("dump config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("dump config: %w", err)
	}
	return nil
}

// fmtDuration writes 1h rather than time.Duration's 1h0m0s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
