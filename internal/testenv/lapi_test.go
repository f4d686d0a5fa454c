package testenv

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

// decisionsOf lists LAPI's active decisions through the bouncer API (GET
// /v1/decisions), as value -> origin; err is set when LAPI is unreachable.
func decisionsOf(t *testing.T, l *LAPI) (map[string]string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, l.URL+"v1/decisions", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Api-Key", l.Key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET decisions: %d %s", resp.StatusCode, body)
	}
	var ds []struct{ Value, Origin string }
	if err := json.Unmarshal(body, &ds); err != nil { // "null" when empty
		t.Fatalf("decode %q: %v", body, err)
	}
	out := map[string]string{}
	for _, d := range ds {
		out[d.Value] = d.Origin
	}
	return out, nil
}

// TestLAPIHarness checks the real-LAPI helper end to end: decisions added by
// cscli and with arbitrary origins are served, and Stop/Start keeps port,
// key and data; cleanup removes the directory.
func TestLAPIHarness(t *testing.T) {
	RequireRoot(t)
	EnsureLAPIInstalled(t)
	if !InFreshNetns(t) {
		return
	}
	var dir string
	t.Run("lifecycle", func(t *testing.T) {
		l := StartLAPI(t)
		dir = l.Dir
		l.CSCLI(t, "decisions", "add", "--ip", "192.0.2.10", "-d", "4h")
		l.AddDecision(t, "CAPI", "Ip", "198.51.100.7", "1h")
		l.AddDecision(t, "lists", "Range", "203.0.113.0/24", "1h")
		want := map[string]string{"192.0.2.10": "cscli", "198.51.100.7": "CAPI", "203.0.113.0/24": "lists"}
		check := func(when string) {
			t.Helper()
			got, err := decisionsOf(t, l)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			for v, o := range want {
				if got[v] != o {
					t.Errorf("%s: decision %s has origin %q, want %q (all: %v)", when, v, got[v], o, got)
				}
			}
		}
		check("after start")
		if out := l.CSCLI(t, "decisions", "list", "-o", "json"); !strings.Contains(out, "192.0.2.10") {
			t.Errorf("cscli decisions list does not show the ban: %s", out)
		}
		url, key := l.URL, l.Key
		l.Stop(t)
		if _, err := decisionsOf(t, l); err == nil {
			t.Fatal("LAPI still answers after Stop")
		}
		l.Start(t)
		if l.URL != url || l.Key != key {
			t.Fatalf("restart moved the LAPI: %s %s -> %s %s", url, key, l.URL, l.Key)
		}
		check("after restart")
	})
	if dir == "" {
		t.Fatal("lifecycle did not start a LAPI")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("LAPI dir %s not removed by cleanup: %v", dir, err)
	}
}

func TestParseEnv(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
	}{
		{in: "", want: map[string]string{}},
		{in: "LAPI_URL=http://127.0.0.1:1/\nLAPI_KEY=abc\nCSCLI=\"/x/cscli -c /d/config.yaml\"\n",
			want: map[string]string{"LAPI_URL": "http://127.0.0.1:1/", "LAPI_KEY": "abc", "CSCLI": "/x/cscli -c /d/config.yaml"}},
		{in: "noise line\nA=b=c\n", want: map[string]string{"A": "b=c"}},
	}
	for _, tc := range tests {
		got := parseEnv(tc.in)
		if len(got) != len(tc.want) {
			t.Errorf("parseEnv(%q) = %v, want %v", tc.in, got, tc.want)
			continue
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("parseEnv(%q)[%s] = %q, want %q", tc.in, k, got[k], v)
			}
		}
	}
}

func TestYAMLField(t *testing.T) {
	creds := []byte("url: http://127.0.0.1:1/\nlogin: lapi-test-machine\npassword: 'p:w'\n")
	tests := []struct{ key, want string }{
		{"login", "lapi-test-machine"}, {"password", "p:w"}, {"url", "http://127.0.0.1:1/"}, {"missing", ""},
	}
	for _, tc := range tests {
		if got := yamlField(creds, tc.key); got != tc.want {
			t.Errorf("yamlField(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
}
