package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/admin"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// cli runs the built binary's operator command and returns its exit code
// and output.
func cli(t *testing.T, cfg string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Getenv(binEnv), append([]string{"-c", cfg}, args...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), o.String(), e.String()
	}
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	return 0, o.String(), e.String()
}

// cliJSON runs a command with --json, requires exit code want, and decodes.
func cliJSON(t *testing.T, cfg string, want int, out any, args ...string) {
	t.Helper()
	code, stdout, stderr := cli(t, cfg, append(args, "--json")...)
	if code != want {
		t.Fatalf("%q: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, want, stdout, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		t.Fatalf("%q: %v\n%s", args, err, stdout)
	}
}

func near(a, b time.Time, tol time.Duration) bool { d := a.Sub(b); return d < tol && d > -tol }

// The operator commands, first against a running daemon (admin socket),
// then against the journal file with the daemon stopped.
func TestE2ECLI(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	// Heal slowly, so that a member removed by hand stays missing long
	// enough for `check` to see it; keep rules at shutdown for the offline
	// check.
	cfg := writeConfig(t, l, bouncerOpts{Interval: "1m", DeepInterval: "1h", OnShutdown: "keep"})
	b := startBouncer(t, cfg)
	banned := time.Now()
	l.CSCLI(t, "decisions", "add", "--ip", "192.0.2.10", "-d", "4h")
	eventually(t, within, "journal show 192.0.2.10 never reported the ban", func() bool {
		code, _, _ := cli(t, cfg, "journal", "show", "192.0.2.10")
		return code == 0
	})
	var cscliIdx int
	for _, mode := range []string{"daemon", "offline"} {
		t.Logf("mode %s", mode)
		var shw admin.Show
		cliJSON(t, cfg, 0, &shw, "journal", "show", "192.0.2.10")
		if len(shw.Matches) != 1 {
			t.Fatalf("%s: show: %+v", mode, shw)
		}
		m := shw.Matches[0]
		if m.Origin != "cscli" || m.Value != "192.0.2.10" || m.Scope != "ip" || m.Type != "ban" || m.Scenario == "" {
			t.Fatalf("%s: show: %+v", mode, m)
		}
		if !near(m.Until, banned.Add(4*time.Hour), time.Minute) || !near(m.Since, banned, time.Minute) {
			t.Fatalf("%s: show: until %v since %v, banned at %v", mode, m.Until, m.Since, banned)
		}
		code, out, errOut := cli(t, cfg, "journal", "show", "192.0.2.10")
		if code != 0 || !strings.Contains(out, "origin    cscli") || !strings.Contains(out, "(in 3h5") {
			t.Fatalf("%s: show text: exit %d\n%s%s", mode, code, out, errOut)
		}
		if offline := strings.Contains(errOut, "no daemon on"); offline != (mode == "offline") {
			t.Fatalf("%s: stderr says %q", mode, errOut)
		}
		if code, out, _ := cli(t, cfg, "journal", "show", "192.0.2.99"); code != 1 || !strings.Contains(out, "not blocked") {
			t.Fatalf("%s: show 192.0.2.99: exit %d\n%s", mode, code, out)
		}
		var st admin.Stats
		cliJSON(t, cfg, 0, &st, "journal", "stats")
		if st.Active != 1 || len(st.ByOrigin) != 1 || st.ByOrigin[0].Origin != "cscli" || st.FileSize <= 0 {
			t.Fatalf("%s: stats: %+v", mode, st)
		}
		cscliIdx = st.ByOrigin[0].Index
		if code, out, _ := cli(t, cfg, "journal", "stats"); code != 0 || !strings.Contains(out, "crowdsec-blacklists-") {
			t.Fatalf("%s: stats text: exit %d\n%s", mode, code, out)
		}
		if code, out, _ := cli(t, cfg, "journal", "list"); code != 0 || !strings.Contains(out, "192.0.2.10") {
			t.Fatalf("%s: list: exit %d\n%s", mode, code, out)
		}
		var es []admin.Entry
		code, out, _ = cli(t, cfg, "journal", "export")
		if err := json.Unmarshal([]byte(out), &es); code != 0 || err != nil || len(es) != 1 || es[0].Value != "192.0.2.10" {
			t.Fatalf("%s: export: exit %d, %v\n%s", mode, code, err, out)
		}
		var rep journal.VerifyReport
		cliJSON(t, cfg, 0, &rep, "journal", "verify")
		if !rep.OK() {
			t.Fatalf("%s: verify: %+v", mode, rep)
		}
		set := fmt.Sprintf("crowdsec-blacklists-%d", cscliIdx)
		if code, out, errOut := cli(t, cfg, "check"); code != 0 {
			t.Fatalf("%s: check before the fault: exit %d\n%s%s", mode, code, out, errOut)
		}
		sh(t, "ipset", "del", set, "192.0.2.10")
		code, out, errOut = cli(t, cfg, "check")
		if code != 1 || !strings.Contains(out, "192.0.2.10/32") {
			t.Fatalf("%s: check after ipset del: exit %d, want 1 naming 192.0.2.10\n%s%s", mode, code, out, errOut)
		}
		// Put it back by hand: the daemon's heal is slow here on purpose,
		// and offline nobody repairs.
		sh(t, "ipset", "add", set, "192.0.2.10", "timeout", "3600")
		if mode == "daemon" {
			b.stop(t)
			if _, err := os.Stat(admin.SocketPath(journalPathOf(t, cfg))); err == nil {
				t.Fatal("admin socket left behind after the daemon stopped")
			}
		}
	}
}

// journalPathOf reads journal_path back from a config written by writeConfig.
func journalPathOf(t *testing.T, cfg string) string {
	t.Helper()
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "journal_path: "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("no journal_path in config")
	return ""
}
