package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

const secretKey = "s3cr3t-api-key-0123456789abcdef"

// -T prints the merged config: the API key must be masked.
func TestPrintConfigMasksAPIKey(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "crowdsec-firewall-bouncer.yaml")
	if err := os.WriteFile(cfg, []byte("mode: iptables\napi_url: http://127.0.0.1:8080/\napi_key: ${TEST_KEY}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TEST_KEY", secretKey)
	var out, errOut bytes.Buffer
	if code := realMain([]string{"-c", cfg, "-T"}, &out, &errOut); code != 0 {
		t.Fatalf("-T exit %d: %s", code, errOut.String())
	}
	if strings.Contains(out.String()+errOut.String(), secretKey) {
		t.Fatalf("-T output shows the API key:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "api_key:") {
		t.Fatalf("-T output has no api_key line:\n%s", out.String())
	}
	// A bad value in the same file must not echo the key either.
	if err := os.WriteFile(cfg+".local", []byte("deny_action: DORP\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := realMain([]string{"-c", cfg, "-t"}, &out, &errOut); code != 1 {
		t.Fatalf("bad value: exit %d, want 1", code)
	}
	if !strings.Contains(errOut.String(), "deny_action") || strings.Contains(errOut.String(), secretKey) {
		t.Fatalf("config error output: %s", errOut.String())
	}
}

// The API key never reaches the logs, at debug level, in stdout and file
// modes, across a start, pulls, a LAPI outage and a stop.
func TestE2ELogsNeverShowAPIKey(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	logDir := t.TempDir()
	for _, mode := range []string{"stdout", "file"} {
		cfg := writeConfig(t, l, bouncerOpts{})
		text, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		s := strings.Replace(string(text), "log_mode: stdout", "log_mode: "+mode+"\nlog_dir: "+logDir, 1)
		s = strings.Replace(s, "log_level: debug", "log_level: trace", 1)
		if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		b := launch(t, cfg)
		logFile := filepath.Join(logDir, "cs-journal-bouncer.log")
		eventually(t, 15*time.Second, "daemon never enforced its journal", func() bool {
			if mode == "stdout" {
				return b.count("journal enforced") > 0
			}
			data, _ := os.ReadFile(logFile)
			return strings.Contains(string(data), "journal enforced")
		})
		l.CSCLI(t, "decisions", "add", "--ip", "192.0.2.10", "-d", "4h")
		time.Sleep(2500 * time.Millisecond)
		b.stop(t)
		logs := b.out.String()
		if mode == "file" {
			data, err := os.ReadFile(logFile)
			if err != nil {
				t.Fatalf("log_mode file: %v", err)
			}
			logs += string(data)
			if !strings.Contains(string(data), "journal enforced") {
				t.Fatalf("log file lacks the daemon's lines:\n%s", data)
			}
		}
		if strings.Contains(logs, l.Key) {
			t.Fatalf("log_mode %s: the API key appears in the logs", mode)
		}
		if !strings.Contains(logs, "level=DEBUG") {
			t.Fatalf("log_mode %s: no debug lines: the check proves nothing", mode)
		}
	}
}
