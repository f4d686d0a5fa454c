package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// env returns a lookupEnv backed by a map, so tests never read the
// process environment.
func env(kv ...string) func(string) (string, bool) {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// writeConfig writes text to a fresh file (and local, if not empty, to
// its .local overlay) and returns the main file's path.
func writeConfig(t *testing.T, text, local string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bouncer.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if local != "" {
		if err := os.WriteFile(path+".local", []byte(local), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

const minimal = "mode: iptables\napi_url: http://127.0.0.1:8080/\napi_key: k\n"

// mustLoad loads text (plus an optional overlay) and fails on error.
func mustLoad(t *testing.T, text, local string, lookup func(string) (string, bool)) *Result {
	t.Helper()
	res, err := Load(writeConfig(t, text, local), lookup)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return res
}

func TestUpstreamExample(t *testing.T) {
	path := filepath.Join("..", "..", "testdata", "config", "upstream-crowdsec-firewall-bouncer.yaml")
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Load(path, env("BACKEND", "iptables", "API_KEY", "0123456789abcdef"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("warnings = %q, want none", res.Warnings)
	}
	c := res.Config
	checks := []struct {
		name      string
		got, want any
	}{
		{"Mode", c.Mode, "iptables"},
		{"UpdateFrequency", c.UpdateFrequency, 10 * time.Second},
		{"LogMode", c.LogMode, "file"},
		{"LogDir", c.LogDir, "/var/log/"},
		{"LogLevel", c.LogLevel, "info"},
		{"LogCompression", c.LogCompression, true},
		{"LogMaxSize", c.LogMaxSize, 100},
		{"LogMaxBackups", c.LogMaxBackups, 3},
		{"LogMaxAge", c.LogMaxAge, 30},
		{"APIURL", c.APIURL, "http://127.0.0.1:8080/"},
		{"APIKey", c.APIKey, "0123456789abcdef"},
		{"CertPath", c.CertPath, ""},
		{"InsecureSkipVerify", c.InsecureSkipVerify, false},
		{"DisableIPv6", c.DisableIPv6, false},
		{"DenyAction", c.DenyAction, "DROP"},
		{"DenyLog", c.DenyLog, false},
		{"SupportedDecisionsTypes", c.SupportedDecisionsTypes, []string{"ban"}},
		{"BlacklistsIPv4", c.BlacklistsIPv4, "crowdsec-blacklists"},
		{"BlacklistsIPv6", c.BlacklistsIPv6, "crowdsec6-blacklists"},
		{"IPSetType", c.IPSetType, IPSetHashNet},
		{"IPSetSize", c.IPSetSize, 131072},
		{"Chains4", c.Chains4(), []string{"INPUT"}},
		{"Chains6", c.Chains6(), []string{"INPUT"}},
		{"Prometheus", c.Prometheus, PrometheusConfig{Enabled: false, ListenAddr: "127.0.0.1", ListenPort: 60601}},
		{"JournalPath", c.JournalPath, defaultJournalPath},
		{"OnShutdown", c.OnShutdown, OnShutdownRemove},
		{"FullResyncInterval", c.FullResyncInterval, time.Hour},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %#v, want %#v", ch.name, ch.got, ch.want)
		}
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Error("Load modified the config file")
	}
}

func TestDefaults(t *testing.T) {
	c := mustLoad(t, minimal, "", nil).Config
	want := &Config{
		Mode: ModeIPTables, UpdateFrequency: 10 * time.Second,
		APIURL: "http://127.0.0.1:8080/", APIKey: "k",
		RetryInitialConnect:     true,
		SupportedDecisionsTypes: []string{"ban"},
		LogMode:                 LogModeStdout, LogDir: "/var/log/", LogLevel: "info", LogFormat: LogFormatText,
		LogMaxSize: 500, LogMaxBackups: 3, LogMaxAge: 30, LogCompression: true,
		DenyAction: "DROP", DenyLogPrefix: "crowdsec drop: ",
		BlacklistsIPv4: "crowdsec-blacklists", BlacklistsIPv6: "crowdsec6-blacklists",
		IPSetType: IPSetHashNet, IPSetSize: 131072, IPTablesAddRuleComments: true,
		IPTablesChains: []string{"INPUT"}, IPTablesV4Chains: []string{"INPUT"}, IPTablesV6Chains: []string{"INPUT"},
		NFTables: NFTablesConfig{
			IPv4: NFTablesFamily{Enabled: true, Table: "crowdsec", Chain: "crowdsec-chain"},
			IPv6: NFTablesFamily{Enabled: true, Table: "crowdsec6", Chain: "crowdsec6-chain"},
		},
		NFTablesHooks:      []string{"input"},
		Prometheus:         PrometheusConfig{ListenAddr: "127.0.0.1", ListenPort: 60601},
		JournalPath:        "/var/lib/cs-journal-bouncer/journal.db",
		OnShutdown:         OnShutdownRemove,
		FullResyncInterval: time.Hour,
		Heal: HealConfig{Interval: time.Second, DeepInterval: 5 * time.Minute, MaxReplayAttempts: 5,
			BackoffInitial: time.Second, BackoffMax: time.Minute,
			FightWindow: 10 * time.Second, FreeRepairs: 3},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

func TestDefaultConfigFile(t *testing.T) {
	path := filepath.Join("..", "..", "configs", "cs-journal-bouncer.yaml")
	res, err := Load(path, env("API_KEY", "k"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("warnings = %q, want none", res.Warnings)
	}
	// The shipped file must say what the defaults are, key by key.
	if def := mustLoad(t, minimal, "", nil).Config; !reflect.DeepEqual(res.Config, def) {
		t.Errorf("configs/cs-journal-bouncer.yaml differs from the built-in defaults:\n file %+v\n code %+v", res.Config, def)
	}
}

func TestLocalOverlay(t *testing.T) {
	main := minimal + "deny_action: DROP\nlog_max_backups: 3\nprometheus:\n  enabled: true\n  listen_port: 60601\n"
	tests := []struct {
		name  string
		local string
		check func(*Config) string
	}{
		{"overrides one key, keeps the others", "deny_action: REJECT\n", func(c *Config) string {
			if c.DenyAction != "REJECT" || c.APIKey != "k" || !c.Prometheus.Enabled {
				return "want REJECT with api_key and prometheus kept"
			}
			return ""
		}},
		{"merges nested sections", "prometheus:\n  listen_port: 9999\n", func(c *Config) string {
			if c.Prometheus.ListenPort != 9999 || !c.Prometheus.Enabled {
				return "want port 9999 and enabled kept from the main file"
			}
			return ""
		}},
		{"alias overrides canonical key", "log_max_files: 7\n", func(c *Config) string {
			if c.LogMaxBackups != 7 {
				return "want log_max_files from .local to win"
			}
			return ""
		}},
		{"expands variables too", "api_key: ${LOCAL_KEY}\n", func(c *Config) string {
			if c.APIKey != "from-env" {
				return "want api_key from LOCAL_KEY"
			}
			return ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, main, tt.local, env("LOCAL_KEY", "from-env")).Config
			if msg := tt.check(c); msg != "" {
				t.Errorf("%s; got %+v", msg, c)
			}
		})
	}
}

func TestLocalOverlayErrors(t *testing.T) {
	_, err := Load(writeConfig(t, minimal, "deny_action: [\n"), nil)
	if err == nil || !strings.Contains(err.Error(), ".local") {
		t.Errorf("broken .local: err = %v, want a parse error naming the .local file", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want ErrNotExist", err)
	}
}

func TestExpansionInLoad(t *testing.T) {
	text := "mode: ${MODE}\napi_url: http://$HOST:8080/\napi_key: ${API_KEY}\ndeny_log_prefix: \"${PFX}\"\n"
	tests := []struct {
		name     string
		env      []string
		wantErr  string // substring; "" means success
		wantWarn string
		check    func(*Config) bool
	}{
		{"all set", []string{"MODE", "ipset", "HOST", "127.0.0.1", "API_KEY", "a$b", "PFX", "x: "}, "", "",
			func(c *Config) bool {
				return c.Mode == "ipset" && c.APIURL == "http://127.0.0.1:8080/" && c.APIKey == "a$b" && c.DenyLogPrefix == "x: "
			}},
		{"set to empty is not unset", []string{"MODE", "ipset", "HOST", "127.0.0.1", "API_KEY", "k", "PFX", ""}, "", "",
			func(c *Config) bool { return c.DenyLogPrefix == backend.DefaultDenyLogPrefix }},
		{"unset api key is an error", []string{"MODE", "ipset", "HOST", "127.0.0.1", "PFX", "x"},
			"api_key: refers to environment variable API_KEY, which is not set", "", nil},
		{"unset mode names the variable", []string{"HOST", "127.0.0.1", "API_KEY", "k", "PFX", "x"},
			`mode: "${MODE}" is not one of iptables, ipset, nftables, dry-run (environment variable MODE is not set)`, "", nil},
		{"unset elsewhere is a warning", []string{"MODE", "ipset", "HOST", "127.0.0.1", "API_KEY", "k"}, "",
			`deny_log_prefix: environment variable PFX is not set; "${PFX}" left as is`,
			func(c *Config) bool { return c.DenyLogPrefix == "${PFX}" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Load(writeConfig(t, text, ""), env(tt.env...))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if tt.wantWarn != "" && !slices.Contains(res.Warnings, tt.wantWarn) {
				t.Errorf("warnings = %q, want %q", res.Warnings, tt.wantWarn)
			}
			if tt.wantWarn == "" && len(res.Warnings) != 0 {
				t.Errorf("warnings = %q, want none", res.Warnings)
			}
			if !tt.check(res.Config) {
				t.Errorf("unexpected config %+v", res.Config)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	lookup := env("A", "alpha", "B_1", "beta", "E", "", "D", "$A")
	tests := []struct {
		in, want  string
		wantUnset []string
	}{
		{"x ${A} y", "x alpha y", nil},
		{"x $A y", "x alpha y", nil},
		{"$B_1.", "beta.", nil},
		{"[$E]", "[]", nil},
		{"${NOPE} $NOPE2", "${NOPE} $NOPE2", []string{"NOPE", "NOPE2"}},
		{"$A$A", "alphaalpha", nil},
		{"$", "$", nil},
		{"a $ b", "a $ b", nil},
		{"${A", "${A", nil},
		{"${}", "${}", nil},
		{"$$A", "$alpha", nil},
		{"$D", "$A", nil}, // values are not expanded again
	}
	for _, tt := range tests {
		got, unset := expand(tt.in, lookup)
		if got != tt.want || !slices.Equal(unset, tt.wantUnset) {
			t.Errorf("expand(%q) = %q, %q; want %q, %q", tt.in, got, unset, tt.want, tt.wantUnset)
		}
	}
}

// TestFileSizeBound: a file (or its overlay) over MaxFileBytes is refused
// with ErrTooLarge naming it; one at the limit loads.
func TestFileSizeBound(t *testing.T) {
	pad := func(n int) string { // a YAML comment filling the file to n bytes
		return minimal + "#" + strings.Repeat("x", n-len(minimal)-2) + "\n"
	}
	tests := []struct {
		name, main, local string
		tooLarge          string // "" or the file named in the error
	}{
		{name: "at the limit", main: pad(MaxFileBytes)},
		{name: "main over", main: pad(MaxFileBytes + 1), tooLarge: "bouncer.yaml"},
		{name: "local over", main: minimal, local: pad(MaxFileBytes + 1), tooLarge: "bouncer.yaml.local"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.main, tc.local)
			res, err := Load(path, env())
			if tc.tooLarge == "" {
				if err != nil || res.Config == nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), tc.tooLarge+":") || !strings.Contains(err.Error(), "1 MiB") {
				t.Fatalf("err = %v, want ErrTooLarge naming %s and the limit", err, tc.tooLarge)
			}
		})
	}
}
