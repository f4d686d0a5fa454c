package config

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// render writes base with overrides applied ("" deletes a key) as YAML,
// one top-level key per line, so a case can replace any key without
// producing a duplicate (which YAML refuses).
func render(overrides map[string]string) string {
	base := map[string]string{
		"mode":    "iptables",
		"api_url": "http://127.0.0.1:8080/",
		"api_key": "k",
	}
	for k, v := range overrides {
		if v == "" {
			delete(base, k)
		} else {
			base[k] = v
		}
	}
	keys := make([]string, 0, len(base))
	for k := range base {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %s\n", k, base[k])
	}
	return b.String()
}

func TestBadValues(t *testing.T) {
	tests := []struct {
		key, value string
		want       string // the exact KeyError message expected among the errors
	}{
		{"deny_action", "DORP", `deny_action: "DORP" is not one of DROP, REJECT, TARPIT, LOG`},
		{"deny_action", "dorp", `deny_action: "dorp" is not one of DROP, REJECT, TARPIT, LOG`},
		{"mode", "iptabels", `mode: "iptabels" is not one of iptables, ipset, nftables, dry-run`},
		{"mode", `""`, `mode: is required (iptables, ipset, nftables or dry-run)`},
		{"update_frequency", "10", `update_frequency: 10 is not a duration (use a unit, e.g. 10s, 5m, 1h)`},
		{"update_frequency", "ten", `update_frequency: "ten" is not a duration (use a unit, e.g. 10s, 5m, 1h)`},
		{"update_frequency", "0s", `update_frequency: 0s must be positive`},
		{"update_frequency", "-1s", `update_frequency: -1s must be positive`},
		{"api_url", "ftp://lapi/", `api_url: "ftp://lapi/" is not an http:// or https:// URL`},
		{"api_url", "127.0.0.1:8080", `api_url: "127.0.0.1:8080" is not an http:// or https:// URL`},
		{"api_url", `""`, `api_url: is required, e.g. http://127.0.0.1:8080/`},
		{"api_key", `""`, `api_key: is required (or cert_path and key_path for TLS authentication)`},
		{"cert_path", "/c.pem", `api_key: cannot be used together with cert_path/key_path: choose one authentication`},
		{"log_mode", "syslog", `log_mode: "syslog" is not one of stdout, file`},
		{"log_level", "verbose", `log_level: "verbose" is not one of trace, debug, info, warning, error, fatal, panic`},
		{"log_format", "xml", `log_format: "xml" is not one of text, json`},
		{"log_max_size", "-1", `log_max_size: -1 must not be negative`},
		{"log_max_size", "big", `log_max_size: "big" is not an integer`},
		{"log_compression", "maybe", `log_compression: "maybe" is not a boolean (true or false)`},
		{"deny_log", "2", `deny_log: 2 is not a boolean (true or false)`},
		{"ipset_type", "bitmap:ip", `ipset_type: "bitmap:ip" is not one of nethash, iphash, hash:net, hash:ip`},
		{"iptables_chains", "INPUT", `iptables_chains: "INPUT" is not a list (write one item per line, each starting with "- ")`},
		{"iptables_chains", "[INPUT, INPUT]", `iptables_chains[1]: "INPUT" is listed twice`},
		{"disable_ipv4", "true\ndisable_ipv6: true", `disable_ipv6: true together with disable_ipv4: true leaves nothing to enforce`},
		{"prometheus", "{listen_port: 70000}", `prometheus.listen_port: 70000 is not a TCP port (1-65535)`},
		{"prometheus", "{enabled: sure}", `prometheus.enabled: "sure" is not a boolean (true or false)`},
		{"journal_path", "journal.db", `journal_path: "journal.db" is not an absolute path`},
		{"on_shutdown", "flush", `on_shutdown: "flush" is not one of remove, keep`},
		{"full_resync_interval", "5s", `full_resync_interval: 5s must be 0 (disabled) or at least update_frequency (10s)`},
		{"full_resync_interval", "-1h", `full_resync_interval: -1h must be 0 (disabled) or at least update_frequency (10s)`},
		{"heal", "{interval: 0s}", `heal.interval: 0s must be positive`},
		{"heal", "{max_replay_attempts: 0}", `heal.max_replay_attempts: 0 must be positive`},
		{"heal", "{backoff_initial: 2m}", `heal.backoff_max: 1m must be at least heal.backoff_initial (2m)`},
		{"heal", "{deep_interval: 100ms}", `heal.deep_interval: 100ms must be at least heal.interval (1s)`},
		{"heal", "{backoff_max: soon}", `heal.backoff_max: "soon" is not a duration (use a unit, e.g. 10s, 5m, 1h)`},
		{"heal", "{free_repairs: 0}", `heal.free_repairs: 0 must be positive`},
		{"heal", "{fight_window: -1s}", `heal.fight_window: -1s must be positive`},
		{"heal", "{interval: 2h, deep_interval: 3h}", `heal.interval: 2h must be at most 1h`},
		{"heal", "{max_replay_attempts: 11}", `heal.max_replay_attempts: 11 must be at most 10`},
		{"heal", "{backoff_max: 11m}", `heal.backoff_max: 11m must be at most 10m`},
		{"log_max_files", "4\nlog_max_backups: 5", `log_max_files: 4 conflicts with log_max_backups: 5; these keys are aliases, keep one`},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			res, err := Load(writeConfig(t, render(map[string]string{tt.key: tt.value}), ""), nil)
			if err == nil {
				t.Fatalf("Load succeeded, want error %q", tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("err = %v, want it to match ErrInvalid", err)
			}
			if res != nil && res.Config != nil {
				t.Error("Result.Config is set on error")
			}
			if !slices.Contains(strings.Split(err.Error(), "\n"), tt.want) &&
				!strings.HasSuffix(strings.SplitN(err.Error(), "\n", 2)[0], ": "+tt.want) {
				t.Errorf("err =\n%v\nwant a line %q", err, tt.want)
			}
		})
	}
}

// TestCanonicalValues: upstream's aliases and letter case are the file's
// business; the backends receive canonical values only.
func TestCanonicalValues(t *testing.T) {
	tests := []struct {
		key, value string
		got        func(*Config) string
		want       string
	}{
		{"ipset_type", "nethash", func(c *Config) string { return c.IPSetType }, IPSetHashNet},
		{"ipset_type", "iphash", func(c *Config) string { return c.IPSetType }, IPSetHashIP},
		{"deny_action", "reject", func(c *Config) string { return c.DenyAction }, "REJECT"},
		{"deny_action", `""`, func(c *Config) string { return c.DenyAction }, "DROP"},
		{"ipset_size", "0", func(c *Config) string { return fmt.Sprint(c.IPSetSize) }, "131072"},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			c := mustLoad(t, render(map[string]string{tt.key: tt.value}), "", nil).Config
			if got := tt.got(c); got != tt.want {
				t.Errorf("%s: %s gives %q, want %q", tt.key, tt.value, got, tt.want)
			}
		})
	}
}

func TestCertAuth(t *testing.T) {
	tests := []struct {
		name      string
		overrides map[string]string
		wantErr   string
	}{
		{"cert and key", map[string]string{"api_key": "", "cert_path": "/c.pem", "key_path": "/k.pem"}, ""},
		{"cert only", map[string]string{"api_key": "", "cert_path": "/c.pem"}, "key_path: is required when cert_path is set"},
		{"key only", map[string]string{"api_key": "", "key_path": "/k.pem"}, "cert_path: is required when key_path is set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, render(tt.overrides), ""), nil)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("Load: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestAllErrorsAtOnce(t *testing.T) {
	_, err := Load(writeConfig(t, render(map[string]string{"deny_action": "X", "ipset_type": "Y", "on_shutdown": "Z"}), ""), nil)
	if err == nil {
		t.Fatal("Load succeeded")
	}
	for _, key := range []string{"deny_action:", "ipset_type:", "on_shutdown:"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("err = %v, want it to report %s", err, key)
		}
	}
}

func TestUnsupportedModes(t *testing.T) {
	for _, mode := range []string{"pf"} {
		t.Run(mode, func(t *testing.T) {
			_, err := Load(writeConfig(t, render(map[string]string{"mode": mode}), ""), nil)
			if !errors.Is(err, ErrUnsupportedMode) {
				t.Fatalf("err = %v, want ErrUnsupportedMode", err)
			}
			want := fmt.Sprintf("mode %q is not supported yet by cs-journal-bouncer (supported: iptables, ipset, nftables, dry-run)", mode)
			if !strings.Contains(err.Error(), want) {
				t.Errorf("err = %v, want %q", err, want)
			}
		})
	}
	// dry-run, like upstream's, is accepted
	if c, err := Load(writeConfig(t, render(map[string]string{"mode": "dry-run"}), ""), nil); err != nil || c.Config.Mode != ModeDryRun {
		t.Errorf("mode dry-run: err %v", err)
	}
	// an unknown mode is a plain bad value, not "not supported yet"
	_, err := Load(writeConfig(t, render(map[string]string{"mode": "tc"}), ""), nil)
	if err == nil || errors.Is(err, ErrUnsupportedMode) {
		t.Errorf("mode tc: err = %v, want a bad-value error", err)
	}
}

func TestUnknownKeys(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		want  []string // warnings, without the file prefix
	}{
		{"misspelt top-level", "deny_actoin: DROP\n", []string{`unknown key "deny_actoin" (did you mean "deny_action"?)`}},
		{"misspelt in section", "heal:\n  intervall: 2s\n", []string{`unknown key "heal.intervall" (did you mean "heal.interval"?)`}},
		{"no close key", "zzzzzz: 1\n", []string{`unknown key "zzzzzz"`}},
		{"upstream other modes are silent", "nftables:\n  ipv4:\n    enabled: true\nnftables_hooks: [input]\npf:\n  anchor_name: x\n", nil},
		{"upstream deprecated are silent", "pid_dir: /run\ndaemonize: true\n", nil},
		{"aliases are known", "log_max_files: 2\ncompress_logs: false\n", nil},
		{"empty key", "ipset_sise:\n", []string{`unknown key "ipset_sise" (did you mean "ipset_size"?)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, minimal+tt.extra, "")
			res, err := Load(path, nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			var want []string
			for _, w := range tt.want {
				want = append(want, path+": "+w)
			}
			if !slices.Equal(res.Warnings, want) {
				t.Errorf("warnings = %q, want %q", res.Warnings, want)
			}
		})
	}
}

func TestWarningsSurviveErrors(t *testing.T) {
	res, err := Load(writeConfig(t, "mode: iptables\napi_ulr: http://127.0.0.1:8080/\napi_key: k\n", ""), nil)
	if err == nil || !strings.Contains(err.Error(), "api_url: is required") {
		t.Fatalf("err = %v, want api_url required", err)
	}
	if res == nil || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], `(did you mean "api_url"?)`) {
		t.Errorf("result = %+v, want the misspelling warning alongside the error", res)
	}
}

func TestChains(t *testing.T) {
	tests := []struct {
		name         string
		overrides    map[string]string
		want4, want6 []string
		wantWarn     bool
	}{
		{"default", nil, []string{"INPUT"}, []string{"INPUT"}, false},
		{"common list", map[string]string{"iptables_chains": "[INPUT, DOCKER-USER]"},
			[]string{"INPUT", "DOCKER-USER"}, []string{"INPUT", "DOCKER-USER"}, false},
		{"v6 override", map[string]string{"iptables_chains": "[INPUT, FORWARD]", "iptables_v6_chains": "[INPUT]"},
			[]string{"INPUT", "FORWARD"}, []string{"INPUT"}, false},
		{"v4 override, v6 from default", map[string]string{"iptables_v4_chains": "[FORWARD]"},
			[]string{"FORWARD"}, []string{"INPUT"}, false},
		{"explicit empty family", map[string]string{"iptables_v6_chains": "[]"},
			[]string{"INPUT"}, []string{}, false},
		{"null family means unset", map[string]string{"iptables_v6_chains": "null"},
			[]string{"INPUT"}, []string{"INPUT"}, false},
		{"disabled family has none", map[string]string{"disable_ipv6": "true", "iptables_v6_chains": "[FORWARD]"},
			[]string{"INPUT"}, nil, false},
		{"no chains at all warns", map[string]string{"iptables_chains": "[]"}, []string{}, []string{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := mustLoad(t, render(tt.overrides), "", nil)
			c := res.Config
			if !slices.Equal(c.Chains4(), tt.want4) || (c.Chains4() == nil) != (tt.want4 == nil) {
				t.Errorf("Chains4 = %#v, want %#v", c.Chains4(), tt.want4)
			}
			if !slices.Equal(c.Chains6(), tt.want6) || (c.Chains6() == nil) != (tt.want6 == nil) {
				t.Errorf("Chains6 = %#v, want %#v", c.Chains6(), tt.want6)
			}
			if got := len(res.Warnings) > 0; got != tt.wantWarn {
				t.Errorf("warnings = %q, want some: %v", res.Warnings, tt.wantWarn)
			}
		})
	}
}

func TestAliases(t *testing.T) {
	tests := []struct {
		name         string
		extra        string
		wantBackups  int
		wantCompress bool
	}{
		{"upstream example spelling", "log_max_backups: 4\nlog_compression: false\n", 4, false},
		{"upstream code spelling", "log_max_files: 6\ncompress_logs: false\n", 6, false},
		{"both, same value", "log_max_files: 5\nlog_max_backups: 5\n", 5, true},
		{"neither", "", 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, minimal+tt.extra, "", nil).Config
			if c.LogMaxBackups != tt.wantBackups || c.LogCompression != tt.wantCompress {
				t.Errorf("LogMaxBackups, LogCompression = %d, %v; want %d, %v",
					c.LogMaxBackups, c.LogCompression, tt.wantBackups, tt.wantCompress)
			}
		})
	}
}

func TestLenientScalars(t *testing.T) {
	// upstream decodes with yaml.v2 (YAML 1.1 booleans, scalars into
	// strings; listen_port is a string there), viper with yaml.v3.
	text := minimal + "deny_log: yes\ninsecure_skip_verify: off\ndeny_log_prefix: 42\n" +
		"prometheus:\n  listen_port: \"9100\"\nupdate_frequency: \" 5s\"\nfull_resync_interval: 0\n" +
		"deny_action: reject\nipset_type: IPHASH\nlog_level: WARN\nsupported_decisions_types: [Ban, captcha]\n"
	res := mustLoad(t, text, "", nil)
	c := res.Config
	if !c.DenyLog || c.InsecureSkipVerify || c.DenyLogPrefix != "42" || c.Prometheus.ListenPort != 9100 ||
		c.UpdateFrequency != 5*time.Second || c.FullResyncInterval != 0 || c.DenyAction != "REJECT" ||
		c.IPSetType != IPSetHashIP || c.LogLevel != "warning" ||
		!slices.Equal(c.SupportedDecisionsTypes, []string{"ban", "captcha"}) {
		t.Errorf("unexpected config %+v", c)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "hash:ip cannot hold ranges") {
		t.Errorf("warnings = %q, want the hash:ip warning", res.Warnings)
	}
}

func TestSlogLevel(t *testing.T) {
	for name, want := range logLevels {
		c := mustLoad(t, minimal+"log_level: "+name+"\n", "", nil).Config
		if c.SlogLevel() != want {
			t.Errorf("log_level %s: SlogLevel = %v, want %v", name, c.SlogLevel(), want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "abc", 0}, {"", "abc", 3},
		{"deny_actoin", "deny_action", 1}, // transposition
		{"kitten", "sitting", 3},
		{"mode", "node", 1},
	}
	for _, tt := range tests {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
