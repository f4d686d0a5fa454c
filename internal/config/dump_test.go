package config

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/config")

const secret = "s3cr3t-LAPI-key-0123456789"

func TestDumpGolden(t *testing.T) {
	res, err := Load(filepath.Join("..", "..", "configs", "cs-journal-bouncer.yaml"), env("API_KEY", secret))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	var buf bytes.Buffer
	if err := res.Config.Dump(&buf); err != nil {
		t.Fatalf("Dump: %v", err)
	}
	golden := filepath.Join("..", "..", "testdata", "config", "cs-journal-bouncer.dump.golden")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("Dump differs from %s (go test -update rewrites it):\n%s", golden, buf.String())
	}
}

func TestDumpNeverShowsAPIKey(t *testing.T) {
	tests := []struct {
		name, text, local string
	}{
		{"literal key", strings.Replace(minimal, "api_key: k", "api_key: "+secret, 1), ""},
		{"key from env", strings.Replace(minimal, "api_key: k", "api_key: ${KEY}", 1), ""},
		{"key from .local", minimal, "api_key: " + secret + "\n"},
		{"quoted key in .local with an alias in main", minimal + "log_max_files: 2\n", "api_key: \"" + secret + "\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := mustLoad(t, tt.text, tt.local, env("KEY", secret))
			if res.Config.APIKey != secret {
				t.Fatalf("APIKey = %q, want the secret (test is not testing anything)", res.Config.APIKey)
			}
			var buf bytes.Buffer
			if err := res.Config.Dump(&buf); err != nil {
				t.Fatalf("Dump: %v", err)
			}
			if strings.Contains(buf.String(), secret) {
				t.Errorf("Dump contains the api key:\n%s", buf.String())
			}
			if !strings.Contains(buf.String(), "api_key: '********'") {
				t.Errorf("Dump lacks the masked api_key:\n%s", buf.String())
			}
			if s := fmt.Sprint(res.Merged); strings.Contains(s, secret) || !strings.Contains(s, mask) {
				t.Errorf("Merged leaks or lacks the masked api key: %s", s)
			}
		})
	}
}

func TestErrorsNeverShowAPIKey(t *testing.T) {
	for _, text := range []string{
		"mode: iptables\napi_url: http://127.0.0.1:8080/\napi_key: [" + secret + "]\n",
		"mode: iptables\napi_url: http://127.0.0.1:8080/\napi_key: " + secret + "\ncert_path: /c\nkey_path: /k\n",
		"mode: iptables\napi_url: http://127.0.0.1:8080/\napi_key: {x: " + secret + "}\n",
	} {
		_, err := Load(writeConfig(t, text, ""), nil)
		if err == nil {
			t.Fatalf("Load(%q) succeeded", text)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows the api key: %v", err)
		}
	}
}

func TestDumpRoundTrip(t *testing.T) {
	for _, text := range []string{
		minimal + "iptables_chains: [INPUT, FORWARD]\niptables_v6_chains: [INPUT]\n" +
			"scopes: [Ip]\nfull_resync_interval: 90m\nheal:\n  interval: 1500ms\n" +
			"log_max_files: 9\ndeny_log: true\nprometheus:\n  enabled: true\n",
		strings.Replace(minimal, "mode: iptables", "mode: nftables", 1) + "nftables_hooks: [input, forward]\n" +
			"nftables:\n  ipv4:\n    set-only: true\n    table: filter\n  ipv6:\n    enabled: false\n    chain: c6\n    priority: -10\n",
	} {
		testDumpRoundTrip(t, text)
	}
}

func testDumpRoundTrip(t *testing.T, text string) {
	t.Helper()
	orig := mustLoad(t, text, "", nil).Config
	var buf bytes.Buffer
	if err := orig.Dump(&buf); err != nil {
		t.Fatalf("Dump: %v", err)
	}
	res := mustLoad(t, buf.String(), "", nil)
	if len(res.Warnings) != 0 {
		t.Errorf("reloaded dump has warnings %q", res.Warnings)
	}
	again := res.Config
	if again.APIKey != mask {
		t.Errorf("reloaded APIKey = %q, want the mask", again.APIKey)
	}
	again.APIKey = orig.APIKey
	if !reflect.DeepEqual(orig, again) {
		t.Errorf("round trip changed the config:\n was %+v\n now %+v\ndump:\n%s", orig, again, buf.String())
	}
}

func TestFmtDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"}, {time.Hour, "1h"}, {5 * time.Minute, "5m"}, {10 * time.Second, "10s"},
		{90 * time.Minute, "1h30m"}, {time.Hour + time.Second, "1h0m1s"}, {1500 * time.Millisecond, "1.5s"},
		{-time.Hour, "-1h"},
	}
	for _, tt := range tests {
		if got := fmtDuration(tt.d); got != tt.want {
			t.Errorf("fmtDuration(%v) = %q, want %q", tt.d, got, tt.want)
		}
		if back, err := time.ParseDuration(fmtDuration(tt.d)); err != nil || back != tt.d {
			t.Errorf("fmtDuration(%v) does not parse back: %v, %v", tt.d, back, err)
		}
	}
}
