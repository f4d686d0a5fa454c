package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// Fail-safe end-to-end tests for what LAPI sends: nothing it sends may lock
// the host out or lift the bans the kernel enforces.

// loopbackAnswers checks that 127.0.0.1 answers a ping inside the test's
// namespace: a ban on loopback would drop it.
func loopbackAnswers(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// A lost echo on a loaded machine is not a drop: a ban drops all three.
	for i := 0; ; i++ {
		out, err := exec.CommandContext(ctx, "ping", "-n", "-q", "-c1", "-W1", "127.0.0.1").CombinedOutput()
		if err == nil {
			return
		}
		if i == 2 {
			t.Fatalf("loopback does not answer: %v\n%s", err, out)
		}
	}
}

// TestE2ELoopbackBanNeverEnforced: bans on loopback (an Ip, and a range
// covering it) from a real LAPI are rejected, so LAPI stays reachable (a
// later delete arrives) and loopback answers, before and after a restart.
func TestE2ELoopbackBanNeverEnforced(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	l := testenv.StartLAPI(t)
	p := testenv.NewPeers(t)
	cfg := writeConfig(t, l, bouncerOpts{OnShutdown: "keep"})
	b := startBouncer(t, cfg)
	l.CSCLI(t, "decisions", "add", "--ip", "127.0.0.1", "-d", "4h")
	l.CSCLI(t, "decisions", "add", "--range", "0.0.0.0/1", "-d", "4h")
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	requireDropped(t, p, p.Banned4, within) // pulled with or after the loopback bans
	loopbackAnswers(t)
	b.waitCount(t, `reason="protected address"`, 2, within)
	// LAPI is still reachable: its delete arrives and lifts the ban.
	l.CSCLI(t, "decisions", "delete", "--ip", p.Banned4.String())
	requirePasses(t, p, p.Banned4, within)
	b.stop(t)

	// A restart enforces the journal before LAPI's first answer is
	// applied: the loopback bans must not be in it.
	l.CSCLI(t, "decisions", "add", "--ip", p.Banned4.String(), "-d", "4h")
	b2 := startBouncer(t, cfg)
	loopbackAnswers(t)
	requireDropped(t, p, p.Banned4, within)
	b2.waitCount(t, `reason="protected address"`, 2, within)
	l.CSCLI(t, "decisions", "delete", "--ip", p.Banned4.String())
	requirePasses(t, p, p.Banned4, within)
	loopbackAnswers(t)
	if out := sh(t, "ipset", "list"); strings.Contains(out, "127.0.0.") || strings.Contains(out, "0.0.0.0/1") {
		t.Fatalf("a loopback ban reached the kernel:\n%s", out)
	}
}

// standIn is a scriptable LAPI: startup=true pulls get full, deltas get
// well-formed empty lists, and status, when set, refuses the key.
type standIn struct {
	url    string
	mu     sync.Mutex
	full   string
	status int
	fulls  int // startup pulls answered since the last set
}

// startStandIn serves on addr (host:0) in the test's namespace.
func startStandIn(t *testing.T, addr, full string) *standIn {
	t.Helper()
	s := &standIn{full: full}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.url = "http://" + ln.Addr().String() + "/"
	srv := &http.Server{Handler: s}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

func (s *standIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	status, full := s.status, s.full
	startup := r.URL.Query().Get("startup") == "true"
	if startup && r.URL.Path == "/v1/decisions/stream" {
		s.fulls++
	}
	s.mu.Unlock()
	switch {
	case r.URL.Path != "/v1/decisions/stream":
		http.NotFound(w, r) // usage metrics: an old LAPI's answer
	case status != 0:
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"message":"access forbidden"}`)
	case startup:
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, full)
	default:
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"deleted":null,"new":null}`)
	}
}

// set changes the startup answer and the status.
func (s *standIn) set(full string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.full, s.status, s.fulls = full, status, 0
}

// waitFulls waits until n startup pulls got the current answer.
func (s *standIn) waitFulls(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d startup pulls", n), func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.fulls >= n
	})
}

// lapiDecision renders one decision as LAPI sends it.
func lapiDecision(scope, value string) string {
	return `{"duration":"3h59m58s","id":1,"origin":"cscli","scenario":"manual","scope":"` + scope + `","type":"ban","value":"` + value + `"}`
}

// TestE2EEmptyFullReplyKeepsBans: a full resync answered 200 with an empty
// body, {}, null, whitespace or a stream object missing a list keeps every
// ban in the kernel; a well-formed empty answer then lifts them, so the
// resyncs really were applied.
func TestE2EEmptyFullReplyKeepsBans(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	p := testenv.NewPeers(t)
	s := startStandIn(t, "127.0.0.1:0", `{"deleted":null,"new":[`+lapiDecision("Ip", p.Banned4.String())+`]}`)
	b := startBouncer(t, writeConfig(t, nil, bouncerOpts{URL: s.url, Key: "k", Extra: "full_resync_interval: 1s"}))
	requireDropped(t, p, p.Banned4, within)
	for _, body := range []string{``, `{}`, `null`, " \n\t ", `{"new":null}`, `{"deleted":null}`} {
		before := b.count("LAPI answer not trusted")
		s.set(body, 0)
		s.waitFulls(t, 2, 2*within) // the first one is handled by now
		if pings(t, p, p.Banned4) {
			t.Fatalf("full resync answered %q lifted the ban", body)
		}
		b.waitCount(t, "LAPI answer not trusted", before+1, within)
	}
	s.set(`{"deleted":null,"new":null}`, 0)
	requirePasses(t, p, p.Banned4, within)
}

// TestE2EBadDecisionRejectedAlone: in one full answer, a decision with a
// field of the wrong type and a range covering LAPI's own address are
// rejected alone while the good decision is enforced; then a LAPI that
// refuses our key is logged as such and the ban stays.
func TestE2EBadDecisionRejectedAlone(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	p := testenv.NewPeers(t)
	bad := strings.Replace(lapiDecision("Ip", p.Banned6.String()), `"id":1`, `"id":"forty"`, 1)
	// 192.0.2.0/27 holds the stand-in's address (Local4) and Clean4.
	lapiRange := lapiDecision("Range", "192.0.2.0/27")
	full := `{"deleted":null,"new":[` + bad + `,` + lapiDecision("Ip", p.Banned4.String()) + `,` + lapiRange + `]}`
	s := startStandIn(t, net.JoinHostPort(p.Local4.String(), "0"), full)
	b := startBouncer(t, writeConfig(t, nil, bouncerOpts{URL: s.url, Key: "k"}))
	requireDropped(t, p, p.Banned4, within) // and Clean4 passes: the range was rejected
	b.waitLog(t, `reason="malformed decision"`, within)
	b.waitLog(t, `reason="protected address"`, within)
	if !pings(t, p, p.Banned6) {
		t.Fatal("the malformed decision was enforced")
	}

	s.set(full, http.StatusForbidden)
	b.waitLog(t, "LAPI rejected our API key", within)
	if pings(t, p, p.Banned4) {
		t.Fatal("a refused key lifted the ban")
	}
}

// The LAPI client is built beside the boot replay, never in its way. One
// that cannot be built (a client certificate that does not load) is still
// a start-up error: exit 1 naming the cause, not a pull retried forever.
func TestE2EUnloadableClientCertExits(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	dir := t.TempDir()
	cert, key := dir+"/client.pem", dir+"/client-key.pem"
	for _, f := range []string{cert, key} {
		if err := os.WriteFile(f, []byte("not PEM\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeConfig(t, nil, bouncerOpts{URL: "https://127.0.0.1:1/", Key: `""`,
		Extra: fmt.Sprintf("cert_path: %s\nkey_path: %s\n", cert, key)})
	b := launch(t, cfg)
	if code := b.wait(t, 30*time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s", code, tail(b.out.String(), 20))
	}
	if out := b.out.String(); !strings.Contains(out, "lapi client") || !strings.Contains(out, "unable to load certificate") {
		t.Fatalf("the exit does not name the client certificate:\n%s", tail(out, 20))
	}
}
