package testenv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptTimeout bounds one lapi.sh call; LAPI is ready in ≈0.1 s, a start
// with port retries in a few seconds.
const scriptTimeout = 60 * time.Second

// installTimeout bounds the download/extract step (apt-get update included).
const installTimeout = 5 * time.Minute

// LAPI is a real CrowdSec Local API (Debian's crowdsec, LAPI only: no agent,
// no CAPI, no hub) started by testdata/lapi.sh in a throwaway directory, on
// 127.0.0.1 of the current network namespace.
type LAPI struct {
	// URL is the base URL with a trailing slash, e.g. http://127.0.0.1:23456/.
	URL string
	// Key is the registered bouncer API key.
	Key string
	// Dir holds config, sqlite database and logs; removed at cleanup.
	Dir string

	binDir string
	script string
}

var installOnce = sync.OnceValues(func() (string, error) {
	script, err := lapiScript()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	out, err := runScript(ctx, script, nil, "install")
	if err != nil {
		return "", err
	}
	bin := parseEnv(out)["CROWDSEC_BIN_DIR"]
	if bin == "" {
		return "", fmt.Errorf("lapi.sh install printed no CROWDSEC_BIN_DIR: %q", out)
	}
	return bin, nil
})

// EnsureLAPIInstalled makes crowdsec and cscli available (extracting
// Debian's .deb into /tmp/crowdsec-deb-cache, without installing it). It
// needs Debian's mirror, so call it before InFreshNetns: the parent
// downloads, and the child, which has no network, finds the cache.
func EnsureLAPIInstalled(t testing.TB) {
	t.Helper()
	if _, err := installOnce(); err != nil {
		t.Fatalf("install crowdsec for the test LAPI (needs network: call EnsureLAPIInstalled before InFreshNetns): %v", err)
	}
}

// StartLAPI starts a LAPI in the current process's network namespace (tests
// call it inside InFreshNetns) and registers a cleanup that stops it and
// removes its directory. On failure it ends the test with the LAPI's log tail.
func StartLAPI(t *testing.T) *LAPI {
	t.Helper()
	EnsureLAPIInstalled(t)
	bin, _ := installOnce()
	script, err := lapiScript()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), scriptTimeout)
	defer cancel()
	out, err := runScript(ctx, script, []string{"CROWDSEC_BIN_DIR=" + bin}, "start")
	env := parseEnv(out)
	l := &LAPI{URL: env["LAPI_URL"], Key: env["LAPI_KEY"], Dir: env["LAPI_DIR"], binDir: bin, script: script}
	if l.Dir != "" {
		t.Cleanup(func() { l.cleanup(t) })
	}
	if err != nil {
		t.Fatalf("start LAPI: %v", err)
	}
	if l.URL == "" || l.Key == "" || l.Dir == "" {
		t.Fatalf("start LAPI: incomplete env from lapi.sh: %q", out)
	}
	return l
}

// cleanup stops the LAPI and removes its directory, showing the log tail
// first when the test failed (it is gone afterwards).
func (l *LAPI) cleanup(t *testing.T) {
	if t.Failed() {
		t.Logf("LAPI log tail:\n%s", l.LogTail(40))
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	if _, err := runScript(ctx, l.script, []string{"CROWDSEC_BIN_DIR=" + l.binDir}, "stop", l.Dir); err != nil {
		t.Errorf("stop LAPI in %s: %v", l.Dir, err)
	}
}

// Stop stops the LAPI process and keeps its directory, port and key, so
// Start can bring the same LAPI back (outage tests).
func (l *LAPI) Stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), scriptTimeout)
	defer cancel()
	if _, err := runScript(ctx, l.script, []string{"CROWDSEC_BIN_DIR=" + l.binDir}, "halt", l.Dir); err != nil {
		t.Fatalf("stop LAPI: %v", err)
	}
}

// Start restarts a stopped LAPI on the same port with the same key and
// database. The bouncer is not re-registered, so its pull state survives.
func (l *LAPI) Start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), scriptTimeout)
	defer cancel()
	if _, err := runScript(ctx, l.script, []string{"CROWDSEC_BIN_DIR=" + l.binDir}, "restart", l.Dir); err != nil {
		t.Fatalf("restart LAPI: %v\n%s", err, l.LogTail(20))
	}
}

// CSCLI runs cscli against this LAPI and returns its standard output, e.g.
// CSCLI(t, "decisions", "add", "--ip", "192.0.2.10", "-d", "4h").
func (l *LAPI) CSCLI(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), scriptTimeout)
	defer cancel()
	full := append([]string{"-c", filepath.Join(l.Dir, "config.yaml")}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(l.binDir, "cscli"), full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cscli %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// AddDecision posts a ban with any origin (crowdsec, lists, CAPI, ...) as
// the LAPI's machine, which `cscli decisions add` (always origin cscli)
// cannot. Origin "lists" gets scenario "lists:test" like a blocklist would.
func (l *LAPI) AddDecision(t *testing.T, origin, scope, value, duration string) {
	t.Helper()
	scenario := "test/scenario"
	if origin == "lists" {
		scenario = "lists:test"
	}
	l.AddTypedDecision(t, origin, scope, value, duration, "ban", scenario)
}

// AddTypedDecision is AddDecision with an explicit type and scenario.
func (l *LAPI) AddTypedDecision(t *testing.T, origin, scope, value, duration, typ, scenario string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), scriptTimeout)
	defer cancel()
	if err := l.postAlert(ctx, origin, scope, value, duration, typ, scenario); err != nil {
		t.Fatalf("add decision %s %s %s %s: %v", origin, scope, value, duration, err)
	}
}

func (l *LAPI) postAlert(ctx context.Context, origin, scope, value, duration, typ, scenario string) error {
	creds, err := os.ReadFile(filepath.Join(l.Dir, "local_api_credentials.yaml"))
	if err != nil {
		return fmt.Errorf("read machine credentials: %w", err)
	}
	login, password := yamlField(creds, "login"), yamlField(creds, "password")
	var tok struct {
		Token string `json:"token"`
	}
	if err := l.postJSON(ctx, "v1/watchers/login", "", map[string]any{
		"machine_id": login, "password": password, "scenarios": []string{},
	}, &tok); err != nil {
		return fmt.Errorf("machine login: %w", err)
	}
	now := time.Now().UTC().Format(time.RFC3339)
	alert := map[string]any{
		"capacity": 0, "events": []any{}, "events_count": 1, "leakspeed": "0",
		"message": "test", "scenario": scenario, "scenario_hash": "", "scenario_version": "",
		"simulated": false, "start_at": now, "stop_at": now,
		"source": map[string]any{"scope": scope, "value": value},
		"decisions": []map[string]any{{
			"duration": duration, "origin": origin, "scenario": scenario,
			"scope": scope, "type": typ, "value": value,
		}},
	}
	if err := l.postJSON(ctx, "v1/alerts", tok.Token, []any{alert}, nil); err != nil {
		return fmt.Errorf("post alert: %w", err)
	}
	return nil
}

func (l *LAPI) postJSON(ctx context.Context, path, bearer string, body, out any) error {
	buf, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.URL+path, bytes.NewReader(buf))
	if err != nil {
		return fmt.Errorf("request %s: %w", path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("post %s: %w", path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read %s response: %w", path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post %s: http %d: %s", path, resp.StatusCode, bytes.TrimSpace(data))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode %s response: %w", path, err)
		}
	}
	return nil
}

// LogTail returns the last n lines of the LAPI's logs, for failure messages.
func (l *LAPI) LogTail(n int) string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(l.Dir, "log", "*.log"))
	for _, f := range logs {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "==> %s <==\n%s\n", f, strings.Join(lines, "\n"))
	}
	return b.String()
}

// yamlField reads a top-level "key: value" line; the credentials file is
// three such lines, not worth a YAML parser.
func yamlField(data []byte, key string) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.Trim(strings.TrimSpace(v), `"'`)
		}
	}
	return ""
}

// lapiScript finds testdata/lapi.sh at the module root, walking up from the
// working directory (go test runs in the package directory).
func lapiScript() (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "testdata", "lapi.sh")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("find lapi.sh: %w", err)
	}
	return p, nil
}

// ModuleRoot returns the directory holding go.mod, searched from the working
// directory upwards, so helpers find testdata/ from any package's tests.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// runScript runs lapi.sh and returns its stdout; the error carries stderr,
// where the script puts its diagnostics and the LAPI log tail.
func runScript(ctx context.Context, script string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// crowdsec runs in the background past the script's exit, with its
	// output in the LAPI dir; don't wait on inherited pipes forever.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("lapi.sh %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// parseEnv reads the KEY=VALUE lines lapi.sh prints.
func parseEnv(out string) map[string]string {
	env := make(map[string]string)
	for line := range strings.Lines(out) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			env[k] = strings.Trim(v, `"`)
		}
	}
	return env
}
