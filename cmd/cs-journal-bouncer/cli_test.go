package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/admin"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

var updateGolden = flag.Bool("update", false, "rewrite golden files in testdata/cli")

var cliT0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("..", "..", "testdata", "cli", name+".golden")
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from %s:\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
}

func TestCLIFormatGolden(t *testing.T) {
	cscli := admin.Entry{Value: "192.0.2.10", Prefix: netip.MustParsePrefix("192.0.2.10/32"), Origin: "cscli",
		Scenario: "manual 'ban' from 'localhost'", Type: "ban", Scope: "ip", Until: cliT0.Add(4 * time.Hour), Since: cliT0.Add(-90 * time.Second)}
	list := admin.Entry{Value: "192.0.2.8/29", Prefix: netip.MustParsePrefix("192.0.2.8/29"), Origin: "lists",
		Scenario: "lists:firehol", Type: "ban", Scope: "range", Until: cliT0.Add(24 * time.Hour)} // since unknown
	v6 := admin.Entry{Value: "2001:db8::/64", Prefix: netip.MustParsePrefix("2001:db8::/64"), Origin: "CAPI",
		Scenario: "crowdsecurity/ssh-bf", Type: "ban", Scope: "range", Until: cliT0.Add(time.Hour), Since: cliT0.Add(-time.Hour)}
	names := func(o int, v6 bool) string {
		if v6 {
			return "crowdsec6-blacklists-" + string(rune('0'+o))
		}
		return "crowdsec-blacklists-" + string(rune('0'+o))
	}
	tests := []struct {
		name string
		f    func(*bytes.Buffer) error
	}{
		{"stats", func(b *bytes.Buffer) error {
			return formatStats(b, admin.Stats{Path: "/var/lib/cs-journal-bouncer/journal.db", FileSize: 65536, EventsSinceSnapshot: 3,
				Active: 3, OldestUntil: cliT0.Add(time.Hour), NewestUntil: cliT0.Add(24 * time.Hour), Now: cliT0,
				ByOrigin: []admin.OriginCount{{Origin: "cscli", Index: 0, IPv4: 1}, {Origin: "lists", Index: 1, IPv4: 1}, {Origin: "CAPI", Index: 2, IPv6: 1}}}, names)
		}},
		{"stats-empty", func(b *bytes.Buffer) error {
			return formatStats(b, admin.Stats{Path: "/j/journal.db", FileSize: 32768, Now: cliT0, ByOrigin: []admin.OriginCount{}}, names)
		}},
		{"show-blocked", func(b *bytes.Buffer) error {
			return formatShow(b, admin.Show{Target: netip.MustParsePrefix("192.0.2.10/32"), Matches: []admin.Entry{list, cscli}, Now: cliT0})
		}},
		{"show-range", func(b *bytes.Buffer) error {
			return formatShow(b, admin.Show{Target: netip.MustParsePrefix("2001:db8::/32"), Matches: []admin.Entry{v6}, Now: cliT0})
		}},
		{"show-not-blocked", func(b *bytes.Buffer) error {
			return formatShow(b, admin.Show{Target: netip.MustParsePrefix("192.0.2.99/32"), Matches: []admin.Entry{}, Now: cliT0})
		}},
		{"list", func(b *bytes.Buffer) error { return formatList(b, []admin.Entry{list, cscli, v6}) }},
		{"export", func(b *bytes.Buffer) error { return printJSON(b, []admin.Entry{list, cscli}) }},
		{"verify-ok", func(b *bytes.Buffer) error {
			return formatVerify(b, journal.VerifyReport{Path: "/j/journal.db", SnapshotDecisions: 100000, Events: 3, EventDecisions: 12})
		}},
		{"verify-problems", func(b *bytes.Buffer) error {
			return formatVerify(b, journal.VerifyReport{Path: "/j/journal.db", Events: 2,
				Problems: []string{"bbolt check: page 12: unreachable unfreed", "event 7: decode journal record at byte 3: bad uvarint"}})
		}},
		{"check-clean", func(b *bytes.Buffer) error {
			return formatCheck(b, admin.Check{Clean: true, Drift: []admin.DriftItem{}})
		}},
		{"check-drift", func(b *bytes.Buffer) error {
			return formatCheck(b, admin.Check{Drift: []admin.DriftItem{
				{Kind: "jump", Detail: "ipv4: chain INPUT has no jump to CROWDSEC_CHAIN"},
				{Kind: "member", Detail: "192.0.2.10/32 (origin set 0) missing from the kernel"}}})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tt.f(&b); err != nil {
				t.Fatal(err)
			}
			golden(t, tt.name, b.Bytes())
		})
	}
}

// cliEnv is a config and a journal in t.TempDir().
type cliEnv struct {
	cfg, journal string
}

func newCLIEnv(t *testing.T, ds ...journal.Decision) cliEnv {
	t.Helper()
	dir := t.TempDir()
	e := cliEnv{cfg: filepath.Join(dir, "bouncer.yaml"), journal: filepath.Join(dir, "lib", "journal.db")}
	yaml := "mode: iptables\napi_url: http://127.0.0.1:1/\napi_key: test\njournal_path: " + e.journal + "\n"
	if err := os.WriteFile(e.cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(journal.Options{Path: e.journal})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Append(journal.Batch{New: ds}); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return e
}

func cliDec(prefix, origin string, ttl time.Duration) journal.Decision {
	p := netip.MustParsePrefix(prefix)
	scope := journal.ScopeRange
	if p.IsSingleIP() {
		scope = journal.ScopeIP
	}
	return journal.Decision{Prefix: p, Until: time.Now().Add(ttl).Truncate(time.Millisecond), Origin: origin, Scenario: "crowdsecurity/ssh-bf", Type: "ban", Scope: scope}
}

func runMain(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = realMain(args, &o, &e)
	return code, o.String(), e.String()
}

func TestCLIOffline(t *testing.T) {
	env := newCLIEnv(t, cliDec("192.0.2.10/32", "cscli", 4*time.Hour), cliDec("2001:db8::/64", "lists", time.Hour))
	before, err := os.ReadFile(env.journal)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"show blocked, flags first", []string{"-c", env.cfg, "journal", "show", "192.0.2.10"}, 0, "origin    cscli"},
		{"show, flags last", []string{"journal", "show", "192.0.2.10", "-c", env.cfg}, 0, "is blocked by 1 active decision"},
		{"show v6 in range", []string{"journal", "show", "-c", env.cfg, "2001:db8::77"}, 0, "lists"},
		{"show not blocked", []string{"journal", "show", "192.0.2.99", "-c", env.cfg}, 1, "is not blocked"},
		{"show cidr overlap", []string{"journal", "show", "192.0.2.0/24", "-c", env.cfg}, 0, "overlaps 1 active decision"},
		{"stats", []string{"journal", "stats", "-c", env.cfg}, 0, "active decisions       2"},
		{"list", []string{"journal", "list", "-c", env.cfg}, 0, "2001:db8::/64"},
		{"verify", []string{"journal", "verify", "-c", env.cfg}, 0, "ok: no problem found"},
		{"usage: no subcommand", []string{"journal", "-c", env.cfg}, 2, ""},
		{"usage: show without target", []string{"journal", "show", "-c", env.cfg}, 2, ""},
		{"usage: bad target", []string{"journal", "show", "banana", "-c", env.cfg}, 2, ""},
		{"usage: extra word", []string{"check", "now", "-c", env.cfg}, 2, ""},
		{"usage: unknown flag", []string{"journal", "stats", "--frobnicate", "-c", env.cfg}, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runMain(tt.args...)
			if code != tt.code || !strings.Contains(out, tt.contains) {
				t.Fatalf("exit %d (want %d), stdout:\n%s\nstderr:\n%s\nwant it to contain %q", code, tt.code, out, errOut, tt.contains)
			}
		})
	}
	// export prints a JSON array, with or without --json.
	for _, args := range [][]string{{"journal", "export", "-c", env.cfg}, {"journal", "list", "--json", "-c", env.cfg}} {
		code, out, errOut := runMain(args...)
		var es []admin.Entry
		if err := json.Unmarshal([]byte(out), &es); code != 0 || err != nil || len(es) != 2 || es[0].Value != "192.0.2.10" || es[0].Since.IsZero() {
			t.Fatalf("%q: exit %d, %v, %+v\n%s", args, code, err, es, errOut)
		}
	}
	after, err := os.ReadFile(env.journal)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("the CLI changed the journal file")
	}
}

func TestCLIJournalLockedWithoutDaemon(t *testing.T) {
	env := newCLIEnv(t, cliDec("192.0.2.10/32", "cscli", time.Hour))
	j, err := journal.Open(journal.Options{Path: env.journal})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	code, _, errOut := runMain("journal", "stats", "-c", env.cfg)
	if code != 3 || !strings.Contains(errOut, "locked by another process, but nothing answers") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
}

func TestCLIMissingJournal(t *testing.T) {
	env := newCLIEnv(t)
	if err := os.Remove(env.journal); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runMain("journal", "list", "-c", env.cfg)
	if code != 3 || !strings.Contains(errOut, "no daemon running") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if _, err := os.Stat(env.journal); err == nil {
		t.Fatal("the CLI created a journal")
	}
}

// cliFake is an admin.Service with canned answers: the CLI must prefer the
// socket over the (here different) journal file.
type cliFake struct{ drift bool }

func (f cliFake) Stats(context.Context) (admin.Stats, error) {
	return admin.Stats{Path: "from-daemon", Active: 7, Now: cliT0, ByOrigin: []admin.OriginCount{}}, nil
}
func (f cliFake) Show(_ context.Context, p netip.Prefix) (admin.Show, error) {
	return admin.Show{Target: p, Matches: []admin.Entry{}, Now: cliT0}, nil
}
func (f cliFake) List(context.Context) ([]admin.Entry, error) { return []admin.Entry{}, nil }
func (f cliFake) Verify(context.Context) (journal.VerifyReport, error) {
	return journal.VerifyReport{Path: "from-daemon", Problems: []string{"bad page"}}, nil
}
func (f cliFake) Check(context.Context) (admin.Check, error) {
	if f.drift {
		return admin.Check{Drift: []admin.DriftItem{{Kind: "member", Detail: "192.0.2.10/32 (origin set 0) missing from the kernel"}}}, nil
	}
	return admin.Check{Clean: true, Drift: []admin.DriftItem{}}, nil
}

func TestCLIUsesAdminSocket(t *testing.T) {
	for _, drift := range []bool{false, true} {
		env := newCLIEnv(t, cliDec("192.0.2.10/32", "cscli", time.Hour))
		ctx, cancel := context.WithCancel(context.Background())
		sock := admin.SocketPath(env.journal)
		errc := make(chan error, 1)
		go func() { errc <- admin.Serve(ctx, sock, cliFake{drift: drift}, slog.New(slog.DiscardHandler)) }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("admin socket never came up")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if code, out, _ := runMain("journal", "stats", "-c", env.cfg); code != 0 || !strings.Contains(out, "from-daemon") {
			t.Fatalf("stats: exit %d:\n%s", code, out)
		}
		// The daemon's answer wins over the file, which does block .10.
		if code, out, _ := runMain("journal", "show", "192.0.2.10", "-c", env.cfg); code != 1 || !strings.Contains(out, "not blocked") {
			t.Fatalf("show: exit %d:\n%s", code, out)
		}
		if code, _, _ := runMain("journal", "verify", "-c", env.cfg); code != 1 {
			t.Fatalf("verify with problems: exit %d", code)
		}
		code, out, errOut := runMain("check", "-c", env.cfg)
		want := 0
		if drift {
			want = 1
		}
		if code != want || (drift && !strings.Contains(out, "192.0.2.10/32")) {
			t.Fatalf("check (drift %v): exit %d:\n%s%s", drift, code, out, errOut)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// TestOnEveryGC: the limit is retuned after each GC cycle, and no more once
// the context ends.
func TestOnEveryGC(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	c := make(chan struct{}, 1)
	onEveryGC(ctx, c)
	for i := range 3 {
		deadline := time.Now().Add(10 * time.Second)
		got := false
		for !got && time.Now().Before(deadline) {
			runtime.GC()
			select {
			case <-c:
				got = true
			case <-time.After(10 * time.Millisecond):
			}
		}
		if !got {
			t.Fatalf("cycle %d: no signal after GC", i)
		}
	}
	cancel()
	// A sentinel armed before cancel may still fire once; after that, none.
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	for len(c) > 0 {
		<-c
	}
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if len(c) != 0 {
		t.Fatal("signalled after the context ended")
	}
}

func TestMemLimitFor(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int64
	}{
		{0, memLimitFloor},
		{10 << 20, memLimitFloor},
		{100 << 20, 141 << 20},
	} {
		if got := memLimitFor(c.live); got != c.want {
			t.Errorf("memLimitFor(%d MiB) = %d MiB, want %d MiB", c.live>>20, got>>20, c.want>>20)
		}
	}
}
