package sdnotify

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// unitPath is the shipped systemd unit; the watchdog and notify protocol
// here only work if the unit asks for them.
const unitPath = "../../configs/cs-journal-bouncer.service"

// unitFile is a parsed unit: section → key → values in order (a key may
// repeat, e.g. ExecStartPre=).
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.HasSuffix(line, `\`) {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", unitPath, n, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

func TestUnitFileDirectives(t *testing.T) {
	text, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, string(text))
	tests := []struct {
		section, key string
		want         string // "" means: present with any value
	}{
		{"Unit", "StartLimitIntervalSec", ""},
		{"Unit", "StartLimitBurst", ""},
		{"Service", "Type", "notify"},
		{"Service", "NotifyAccess", "main"},
		{"Service", "WatchdogSec", "30s"},
		{"Service", "Restart", "always"},
		{"Service", "TimeoutAbortSec", ""},
		{"Service", "RestartSec", ""},
		{"Service", "ExecStart", "/usr/bin/cs-journal-bouncer -c /etc/crowdsec/bouncers/cs-journal-bouncer.yaml"},
		{"Service", "StateDirectory", "cs-journal-bouncer"},
		{"Service", "StateDirectoryMode", "0700"},
		{"Service", "User", "root"},
		{"Service", "CapabilityBoundingSet", "CAP_NET_ADMIN CAP_NET_RAW"},
		{"Service", "NoNewPrivileges", "yes"},
		{"Service", "ProtectSystem", "strict"},
		{"Service", "ProtectHome", "yes"},
		{"Service", "PrivateTmp", "yes"},
		{"Service", "ProtectKernelTunables", "yes"},
		{"Service", "ProtectKernelModules", "yes"},
		{"Service", "ProtectControlGroups", "yes"},
		{"Service", "ProtectClock", "yes"},
		{"Service", "ProtectHostname", "yes"},
		{"Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"},
		{"Service", "RestrictNamespaces", "yes"},
		{"Service", "RestrictRealtime", "yes"},
		{"Service", "LockPersonality", "yes"},
		{"Service", "MemoryDenyWriteExecute", "yes"},
		{"Service", "SystemCallArchitectures", "native"},
		{"Install", "WantedBy", "multi-user.target"},
	}
	for _, tt := range tests {
		vals, ok := u[tt.section][tt.key]
		switch {
		case !ok:
			t.Errorf("[%s] %s= missing", tt.section, tt.key)
		case len(vals) != 1:
			t.Errorf("[%s] %s= set %d times: %q", tt.section, tt.key, len(vals), vals)
		case tt.want != "" && vals[0] != tt.want:
			t.Errorf("[%s] %s=%s, want %s", tt.section, tt.key, vals[0], tt.want)
		}
	}
	// Restarts after exit 3 (heal.ExitReplayFailed) are the point, and Go's
	// runtime exits 2 after a panic or the watchdog's SIGABRT: no exit
	// status may prevent a restart.
	if v, ok := u["Service"]["RestartPreventExitStatus"]; ok {
		t.Errorf("RestartPreventExitStatus=%q: exit 3 and watchdog kills (exit 2) must restart", v)
	}
	// The config test runs before the daemon, with the same config.
	if pre := u["Service"]["ExecStartPre"]; !slices.Contains(pre, u["Service"]["ExecStart"][0]+" -t") {
		t.Errorf("ExecStartPre=%q: no config test (-t) of the ExecStart command", pre)
	}
	rw := strings.Fields(strings.Join(u["Service"]["ReadWritePaths"], " "))
	for _, p := range []string{"/var/log", "-/run/xtables.lock"} {
		if !slices.Contains(rw, p) {
			t.Errorf("ReadWritePaths=%q lacks %s", rw, p)
		}
	}
}

// TestUnitFileVerify runs systemd-analyze verify when it is installed.
// Commands absent on this machine (the bouncer binary, modprobe in a
// container) are pointed at /bin/true first, so verify judges the
// directives, not the host.
func TestUnitFileVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze not installed: scripts/deps.sh installs it (package systemd)")
		}
		t.Skip("systemd-analyze not installed")
	}
	text, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, string(text))
	for _, key := range []string{"ExecStartPre", "ExecStart"} {
		for _, cmd := range u["Service"][key] {
			bin := strings.Fields(strings.TrimLeft(cmd, "-+!@:"))[0]
			if _, err := os.Stat(bin); err != nil {
				t.Logf("%s not on this machine: verifying with /bin/true in its place", bin)
				text = bytes.ReplaceAll(text, []byte(bin+" "), []byte("/bin/true "))
			}
		}
	}
	path := filepath.Join(t.TempDir(), "cs-journal-bouncer.service")
	if err := os.WriteFile(path, text, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// verify exits 0 even for unknown keys or bad values; any output is a
	// finding.
	out, err := exec.CommandContext(ctx, analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
