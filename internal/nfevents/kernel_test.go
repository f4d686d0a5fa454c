package nfevents

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// kernelRig runs a monitor in the test's namespace. Commands run through
// own() are recorded as the backend's children; through admin() they are
// someone else's.
type kernelRig struct {
	t    *testing.T
	kids backend.Children
	ch   chan backend.Change
	n    int
}

func (r *kernelRig) run(own bool, args ...string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := cmd.Start
	if own {
		start = func() error { return r.kids.Start(cmd) }
	}
	err := start()
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		r.t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out.String())
	}
}

func (r *kernelRig) own(args ...string)   { r.run(true, args...) }
func (r *kernelRig) admin(args ...string) { r.run(false, args...) }

// until merges changes until cond holds; the kernel delivers events in
// commit order, so whatever arrived before a marker is in the result.
func (r *kernelRig) until(what string, cond func(backend.Change) bool) backend.Change {
	r.t.Helper()
	var got backend.Change
	deadline := time.After(10 * time.Second)
	for !cond(got) {
		select {
		case c := <-r.ch:
			got.Merge(c)
		case <-deadline:
			r.t.Fatalf("no %s within 10s; got %+v", what, got)
		}
	}
	return got
}

// marker deletes a chain of ours as someone else and waits for it: every
// change published before it is then in the result.
func (r *kernelRig) marker() backend.Change {
	r.t.Helper()
	r.n++
	name := fmt.Sprintf("marker%d", r.n)
	r.own("nft", "add", "chain", "ip", "cs", name)
	r.admin("nft", "delete", "chain", "ip", "cs", name)
	return r.until(name, func(c backend.Change) bool { return hasObject(c, "chain ip cs "+name) })
}

func hasObject(c backend.Change, sub string) bool {
	return slices.ContainsFunc(c.Objects, func(s string) bool { return strings.Contains(s, sub) })
}

const setup = `
table ip cs {
	set s { type ipv4_addr; elements = { 192.0.2.10, 192.0.2.11 } }
	set iv { type ipv4_addr; flags interval; elements = { 198.18.0.0/15, 203.0.113.0/24 } }
	chain c { ip saddr @s drop; }
}
`

func TestKernelEvents(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	r := &kernelRig{t: t, ch: make(chan backend.Change, 16)}
	m, err := New(backend.NFTObjects{
		Tables:   []backend.NFTTable{{Family: familyIPv4, Name: "cs"}},
		Chains:   []backend.NFTChain{{Family: familyIPv4, Table: "filter", Chain: "CROWDSEC_CHAIN"}},
		Hooks:    []backend.NFTChain{{Family: familyIPv4, Table: "filter", Chain: "INPUT"}},
		OwnWrite: r.kids.Own,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, r.ch) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after cancel: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()
	script := filepath.Join(t.TempDir(), "setup.nft")
	if err := os.WriteFile(script, []byte(setup), 0o600); err != nil {
		t.Fatal(err)
	}
	reset := func() {
		r.own("nft", "flush", "ruleset")
		r.own("nft", "-f", script)
		r.own("iptables", "-N", "CROWDSEC_CHAIN")
		r.own("iptables", "-A", "CROWDSEC_CHAIN", "-s", "192.0.2.1", "-j", "DROP")
		r.own("iptables", "-A", "CROWDSEC_CHAIN", "-s", "192.0.2.2", "-j", "DROP")
		r.own("iptables", "-I", "INPUT", "-j", "CROWDSEC_CHAIN")
		r.own("iptables", "-A", "OUTPUT", "-d", "192.0.2.3", "-j", "DROP")
	}
	// The monitor may subscribe after the first commands: wait until it
	// sees something.
	r.own("nft", "add", "table", "ip", "cs")
	eventuallySubscribed(t, r)

	pfx := netip.MustParsePrefix
	cases := []struct {
		name  string
		fault func()
		want  func(backend.Change) bool
	}{
		{"jump deleted", func() { r.admin("iptables", "-D", "INPUT", "-j", "CROWDSEC_CHAIN") },
			func(c backend.Change) bool { return hasObject(c, "rule in hook chain ip filter INPUT") }},
		{"chain flushed", func() { r.admin("iptables", "-F", "CROWDSEC_CHAIN") },
			func(c backend.Change) bool { return hasObject(c, "rule in ip filter CROWDSEC_CHAIN") }},
		{"chain deleted", func() {
			r.admin("sh", "-c", "iptables -D INPUT -j CROWDSEC_CHAIN && iptables -F CROWDSEC_CHAIN && iptables -X CROWDSEC_CHAIN")
		}, func(c backend.Change) bool { return hasObject(c, "chain ip filter CROWDSEC_CHAIN") }},
		{"nft flush ruleset", func() { r.admin("nft", "flush", "ruleset") },
			func(c backend.Change) bool { return hasObject(c, "ip cs") && hasObject(c, "ip filter") }},
		{"iptables-restore of an older table", func() {
			r.admin("sh", "-c", "printf '*filter\\n:INPUT ACCEPT [0:0]\\nCOMMIT\\n' | iptables-restore")
		}, func(c backend.Change) bool { return hasObject(c, "filter INPUT") || hasObject(c, "CROWDSEC_CHAIN") }},
		{"set deleted", func() { r.admin("sh", "-c", "nft flush chain ip cs c && nft delete set ip cs s") },
			func(c backend.Change) bool { return hasObject(c, "set ip cs s") && c.Refill }},
		{"element deleted", func() { r.admin("nft", "delete", "element", "ip", "cs", "s", "{ 192.0.2.10 }") },
			func(c backend.Change) bool { return slices.Contains(c.Elements["s"], pfx("192.0.2.10/32")) }},
		{"interval element deleted", func() { r.admin("nft", "delete", "element", "ip", "cs", "iv", "{ 198.18.0.0/15 }") },
			func(c backend.Change) bool { return slices.Contains(c.Elements["iv"], pfx("198.18.0.0/15")) }},
	}
	for _, c := range cases {
		reset()
		r.marker() // drains whatever reset caused (it caused nothing: own writes)
		c.fault()
		got := r.until(c.name, c.want)
		t.Logf("%s: %+v", c.name, got)
	}

	// Own writes and others' noise publish nothing: the marker arrives
	// alone.
	reset()
	r.marker()
	r.own("iptables", "-D", "INPUT", "-j", "CROWDSEC_CHAIN")
	r.own("iptables", "-F", "CROWDSEC_CHAIN")
	r.own("nft", "delete", "element", "ip", "cs", "s", "{ 192.0.2.11 }")
	r.admin("iptables", "-D", "OUTPUT", "-d", "192.0.2.3", "-j", "DROP")
	r.admin("sh", "-c", "nft add table ip other && nft delete table ip other")
	got := r.marker()
	if len(got.Objects) != 1 || len(got.Elements) != 0 || got.Deep {
		t.Fatalf("own writes or noise published a change: %+v", got)
	}
}

// eventuallySubscribed deletes a marker until the monitor reports one: Run
// subscribes in its own goroutine.
func eventuallySubscribed(t *testing.T, r *kernelRig) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.own("nft", "add", "chain", "ip", "cs", "probe")
		r.admin("nft", "delete", "chain", "ip", "cs", "probe")
		select {
		case c := <-r.ch:
			if hasObject(c, "probe") {
				return
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatal("monitor never reported an event")
}

// watchTableCS runs a monitor of table ip cs, created, until the test
// ends. Before Run has subscribed, pausing it does and reports nothing.
func watchTableCS(t *testing.T) (*kernelRig, *Monitor) {
	t.Helper()
	r := &kernelRig{t: t, ch: make(chan backend.Change, 16)}
	m, err := New(backend.NFTObjects{Tables: []backend.NFTTable{{Family: familyIPv4, Name: "cs"}}, OwnWrite: r.kids.Own},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	m.PauseEvents()(0)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = m.Run(ctx, r.ch) }()
	r.own("nft", "add", "table", "ip", "cs")
	eventuallySubscribed(t, r)
	return r, m
}

// A commit of 100k elements — our own replay at the scale the daemon is
// sized for — fits the socket buffer: the kernel queues the whole commit's
// events at once, and a lost event would cost a deep verify after every
// replay.
func TestKernelBigCommitNoOverrun(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	r, _ := watchTableCS(t)
	var b strings.Builder
	b.WriteString("add set ip cs big { type ipv4_addr; flags timeout; }\nadd element ip cs big {\n")
	for i := range 100_000 {
		fmt.Fprintf(&b, "198.%d.%d.%d timeout 4h,\n", 18+i>>16, i>>8&0xff, i&0xff)
	}
	b.WriteString("}\n")
	script := filepath.Join(t.TempDir(), "big.nft")
	if err := os.WriteFile(script, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	r.own("nft", "-f", script)
	if got := r.marker(); got.Deep || got.Refill || len(got.Objects) != 1 {
		t.Fatalf("our own 100k commit published %+v, want only the marker", got)
	}
	// Another program flushing the set deletes 100k elements in one
	// commit: too many to list, so the change asks for a refill, not for
	// the deep verify.
	r.admin("nft", "flush", "set", "ip", "cs", "big")
	got := r.until("100k set flushed", func(c backend.Change) bool { return c.Refill })
	if got.Deep || len(got.Elements) != 0 {
		t.Fatalf("foreign flush of 100k: %+v, want a refill without the deep verify", got.Objects)
	}
}

// While paused the monitor hears nothing, and on resume it reports a Deep
// change exactly when someone else committed meanwhile: our own commits,
// counted by the caller, match the generation counter and publish nothing.
func TestKernelPause(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	r, m := watchTableCS(t)

	cases := []struct {
		name  string
		write func() int // what happens while paused; returns our commits
		deep  bool
	}{
		{"our own two commits", func() int {
			r.own("nft", "add", "chain", "ip", "cs", "a")
			r.own("nft", "delete", "chain", "ip", "cs", "a")
			return 2
		}, false},
		{"someone deletes our chain", func() int {
			r.own("nft", "add", "chain", "ip", "cs", "b")
			r.admin("nft", "delete", "chain", "ip", "cs", "b")
			return 1
		}, true},
		{"someone commits elsewhere", func() int {
			r.admin("nft", "add", "table", "ip", "other")
			return 0
		}, true},
		{"our commit miscounted as failed", func() int {
			r.own("nft", "add", "chain", "ip", "cs", "c")
			return 0
		}, true},
	}
	for _, c := range cases {
		resume := m.PauseEvents()
		own := c.write()
		resume(own)
		got := r.marker()
		if got.Deep != c.deep {
			t.Errorf("%s: deep %v, want %v (%+v)", c.name, got.Deep, c.deep, got)
		}
		// Paused means deaf: the deletion itself was not heard.
		if hasObject(got, "chain ip cs b") {
			t.Errorf("%s: an event arrived while paused: %+v", c.name, got.Objects)
		}
	}
}
