package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// Debian's crowdsec-firewall-bouncer: the packaged file keeps ${BACKEND}
// and ${API_KEY}; its postinst writes mode and api_key into the .local.
const debianMain = `mode: ${BACKEND}
update_frequency: 10s
log_mode: file
api_url: http://127.0.0.1:8080/
api_key: ${API_KEY}
deny_action: DROP
blacklists_ipv4: crowdsec-blacklists
blacklists_ipv6: crowdsec6-blacklists
iptables_chains:
  - INPUT
  - DOCKER-USER
origins:
  - cscli
nftables:
  ipv4:
    enabled: true
    table: crowdsec
pid_dir: /var/run/
`

const ourMain = "mode: iptables\napi_url: http://127.0.0.1:8080/\napi_key: \"\"\non_shutdown: keep\n"

type setupCase struct {
	name       string
	oldMain    string // "" = no crowdsec-firewall-bouncer config
	oldLocal   string
	oldID      string
	cscli      bool   // cscli on PATH
	crowdsec   bool   // crowdsec configured
	cscliOut   string // what `cscli bouncers add` prints
	cscliErr   error
	nft        bool // nft on PATH
	wantCode   int
	wantKey    string
	wantMode   string // "nftables?" = nftables if this build supports it, else iptables
	wantID     string // "registered" = a generated name
	wantSay    []string
	wantChains []string
}

func TestSetup(t *testing.T) {
	tests := []setupCase{
		{
			name: "migrates Debian's bouncer in iptables mode", oldMain: debianMain,
			oldLocal: "mode: iptables\napi_key: debkey123\n", oldID: "FirewallBouncer-abc\n",
			cscli: true, crowdsec: true, wantCode: 0, wantKey: "debkey123", wantMode: "iptables",
			wantID:     "FirewallBouncer-abc",
			wantSay:    []string{"migrating from", "mode=iptables", "auth=api_key", "took over bouncer registration \"FirewallBouncer-abc\"", "config complete"},
			wantChains: []string{"INPUT", "DOCKER-USER"},
		},
		{
			name: "migrates Debian's default nftables mode", oldMain: debianMain,
			oldLocal: "mode: nftables\napi_key: debkey123\n", cscli: true, crowdsec: true,
			wantCode: 0, wantKey: "debkey123", wantMode: "nftables?",
		},
		{
			name: "an unusable migrated key is replaced by a registered one", oldMain: debianMain,
			oldLocal: "mode: iptables\n", cscli: true, crowdsec: true, cscliOut: "newkey456\n",
			wantCode: 0, wantKey: "newkey456", wantMode: "iptables", wantID: "registered",
			wantSay: []string{"api_key in", "${API_KEY}", "not carried over", "registered bouncer cs-journal-bouncer-"},
		},
		{
			name: "fresh install registers with cscli", cscli: true, crowdsec: true, cscliOut: "newkey456\n",
			nft: false, wantCode: 0, wantKey: "newkey456", wantMode: "iptables", wantID: "registered",
			wantSay: []string{"mode: iptables (nft not found", "registered bouncer"},
		},
		{
			name: "fresh install with nft picks nftables like upstream", cscli: true, crowdsec: true,
			cscliOut: "k\n", nft: true, wantCode: 0, wantKey: "k", wantMode: "nftables?", wantID: "registered",
			wantSay: []string{"mode: nftables (nft found"},
		},
		{
			name: "no crowdsec: written, incomplete, says what to do", wantCode: exitIncomplete,
			wantMode: "iptables",
			wantSay:  []string{"cscli not found", "not starting the service", "api_key", "systemctl enable --now cs-journal-bouncer"},
		},
		{
			name: "crowdsec installed but not configured", cscli: true, wantCode: exitIncomplete,
			wantMode: "iptables", wantSay: []string{"crowdsec is not configured"},
		},
		{
			name: "cscli fails", cscli: true, crowdsec: true, cscliErr: errors.New("database is locked"),
			wantCode: exitIncomplete, wantMode: "iptables", wantSay: []string{"registering with cscli failed", "database is locked"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runSetupCase(t, tt) })
	}
}

func runSetupCase(t *testing.T, tt setupCase) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cs-journal-bouncer.yaml")
	old := filepath.Join(dir, "crowdsec-firewall-bouncer.yaml")
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(cfg, ourMain)
	if tt.oldMain != "" {
		write(old, tt.oldMain)
		write(old+".local", tt.oldLocal)
	}
	if tt.oldID != "" {
		write(old+".id", tt.oldID)
	}
	csCfg := filepath.Join(dir, "crowdsec-config.yaml")
	if tt.crowdsec {
		write(csCfg, "common: {}\n")
	}
	var cscliCalls [][]string
	env := setupEnv{
		lookPath: func(name string) (string, error) {
			if (name == "cscli" && tt.cscli) || (name == "nft" && tt.nft) {
				return "/usr/bin/" + name, nil
			}
			return "", exec.ErrNotFound
		},
		run: func(_ context.Context, name string, args ...string) ([]byte, error) {
			cscliCalls = append(cscliCalls, append([]string{name}, args...))
			return []byte(tt.cscliOut), tt.cscliErr
		},
		crowdsecConfig: csCfg,
		now:            func() time.Time { return time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC) },
	}
	before := map[string][]byte{}
	for _, p := range []string{old, old + ".local"} {
		before[p], _ = os.ReadFile(p)
	}

	var out bytes.Buffer
	code, err := setup(context.Background(), cfg, old, env, &out)
	if err != nil {
		t.Fatalf("setup: %v\n%s", err, out.String())
	}
	if code != tt.wantCode {
		t.Errorf("exit %d, want %d\n%s", code, tt.wantCode, out.String())
	}
	for _, s := range tt.wantSay {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out.String())
		}
	}
	for p, b := range before {
		if now, _ := os.ReadFile(p); !bytes.Equal(now, b) {
			t.Errorf("%s changed", p)
		}
	}

	local := readLocal(t, cfg+".local")
	if fi, err := os.Stat(cfg + ".local"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s.local: %v, mode %v", cfg, err, fi.Mode())
	}
	if got, _ := local["api_key"].(string); got != tt.wantKey {
		t.Errorf("api_key %q, want %q", got, tt.wantKey)
	}
	wantMode := tt.wantMode
	if wantMode == "nftables?" {
		wantMode = "iptables"
		if modeSupported("nftables") {
			wantMode = "nftables"
		}
	}
	if local["mode"] != wantMode {
		t.Errorf("mode %v, want %s", local["mode"], wantMode)
	}
	if tt.wantChains != nil {
		if got := strings.Fields(strings.Trim(strings.ReplaceAll(anyString(local["iptables_chains"]), ",", " "), "[]")); strings.Join(got, " ") != strings.Join(tt.wantChains, " ") {
			t.Errorf("iptables_chains %v, want %v", local["iptables_chains"], tt.wantChains)
		}
		if _, ok := local["pid_dir"]; ok {
			t.Errorf("pid_dir (ignored upstream key) carried over")
		}
		if _, ok := local["nftables"]; !ok {
			t.Errorf("nftables section not carried over")
		}
	}
	id, _ := os.ReadFile(cfg + ".id")
	switch gotID := strings.TrimSpace(string(id)); tt.wantID {
	case "":
		if gotID != "" {
			t.Errorf(".id %q, want none", gotID)
		}
	case "registered":
		if !strings.HasPrefix(gotID, "cs-journal-bouncer-") || len(cscliCalls) != 1 || cscliCalls[0][len(cscliCalls[0])-1] != gotID {
			t.Errorf(".id %q, cscli calls %q", gotID, cscliCalls)
		}
	default:
		if gotID != tt.wantID {
			t.Errorf(".id %q, want %q", gotID, tt.wantID)
		}
		if _, err := os.Stat(old + ".id"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Debian's .id still there: its purge would delete the key we use")
		}
	}

	// Idempotent: a second run (upgrade, reinstall) keeps the file as is.
	first, _ := os.ReadFile(cfg + ".local")
	out.Reset()
	code2, err := setup(context.Background(), cfg, old, env, &out)
	if err != nil || code2 != code || !strings.Contains(out.String(), "keeping") {
		t.Errorf("second run: %d, %v, %s", code2, err, out.String())
	}
	if again, _ := os.ReadFile(cfg + ".local"); !bytes.Equal(again, first) {
		t.Errorf("second run rewrote .local")
	}
}

func readLocal(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
	return m
}

func anyString(v any) string {
	if v == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString("[")
	if xs, ok := v.([]any); ok {
		for i, x := range xs {
			if i > 0 {
				b.WriteString(" ")
			}
			b.WriteString(x.(string))
		}
	}
	b.WriteString("]")
	return b.String()
}
