package sdnotify

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/sdnotify/sdnotifytest"
)

const (
	msgNotStarted = "enforcer loop has not started: withholding watchdog pings"
	msgWedged     = "enforcer loop looks wedged: withholding watchdog pings, systemd will restart us"
	msgResumed    = "enforcer loop alive again: watchdog pings resumed"
	msgPingFailed = "watchdog ping failed"
	msgPingOK     = "watchdog pings get through again"
)

func TestWatchdogCheck(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	never := time.Time{}
	errSend := errors.New("send failed")
	type step struct {
		now      time.Duration // clock = t0 + now
		hb       time.Time
		sendErr  error
		wantPing bool
		wantLogs []string
	}
	// interval 1s: fresh means younger than 500ms, or changed since the
	// previous check.
	tests := []struct {
		name  string
		steps []step
	}{
		{"healthy loop pings every check", []step{
			{now: 0, hb: at(0), wantPing: true},
			{now: 250 * time.Millisecond, hb: at(200 * time.Millisecond), wantPing: true},
			{now: 500 * time.Millisecond, hb: at(450 * time.Millisecond), wantPing: true},
		}},
		{"loop starting within the bound: no warning", []step{
			{now: 0, hb: never},
			{now: 250 * time.Millisecond, hb: never},
			{now: 400 * time.Millisecond, hb: at(350 * time.Millisecond), wantPing: true},
		}},
		{"loop not started past the bound", []step{
			{now: 0, hb: never},
			{now: 250 * time.Millisecond, hb: never},
			{now: 500 * time.Millisecond, hb: never, wantLogs: []string{msgNotStarted}},
			{now: 750 * time.Millisecond, hb: never},
			{now: time.Second, hb: at(900 * time.Millisecond), wantPing: true, wantLogs: []string{msgResumed}},
		}},
		{"wedged loop stops pings, recovery resumes them", []step{
			{now: 0, hb: at(0), wantPing: true},
			{now: 400 * time.Millisecond, hb: at(0), wantPing: true}, // unchanged but young
			{now: 600 * time.Millisecond, hb: at(0), wantLogs: []string{msgWedged}},
			{now: 900 * time.Millisecond, hb: at(0)}, // still wedged: no second log
			{now: time.Hour, hb: at(0)},
			{now: time.Hour + time.Second, hb: at(time.Hour + 900*time.Millisecond), wantPing: true, wantLogs: []string{msgResumed}},
		}},
		{"young heartbeat at exactly the bound is stale", []step{
			{now: 0, hb: at(0), wantPing: true},
			{now: 500 * time.Millisecond, hb: at(0), wantLogs: []string{msgWedged}},
		}},
		{"forward clock step with a live loop keeps pinging", []step{
			{now: 0, hb: at(0), wantPing: true},
			// The loop went round before the step: its heartbeat is an
			// hour "old" but changed.
			{now: time.Hour, hb: at(200 * time.Millisecond), wantPing: true},
			{now: time.Hour + 250*time.Millisecond, hb: at(time.Hour + 100*time.Millisecond), wantPing: true},
		}},
		{"backward clock step with a wedged loop stops pinging", []step{
			{now: 0, hb: at(0), wantPing: true},
			{now: -time.Hour, hb: at(0), wantLogs: []string{msgWedged}},
		}},
		{"failed pings are logged once", []step{
			{now: 0, hb: at(0), sendErr: errSend, wantLogs: []string{msgPingFailed}},
			{now: 250 * time.Millisecond, hb: at(200 * time.Millisecond), sendErr: errSend},
			{now: 500 * time.Millisecond, hb: at(400 * time.Millisecond), wantPing: true, wantLogs: []string{msgPingOK}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				now, hb time.Time
				sendErr error
				sent    int
			)
			log, logs := newLogCapture()
			w := newWatchdog(time.Second, func() time.Time { return hb }, func(state string) error {
				if state != "WATCHDOG=1" {
					t.Errorf("sent %q, want WATCHDOG=1", state)
				}
				if sendErr != nil {
					return sendErr
				}
				sent++
				return nil
			}, log)
			w.now = func() time.Time { return now }
			for i, s := range tt.steps {
				now, hb, sendErr = at(s.now), s.hb, s.sendErr
				before := sent
				got := w.check()
				if got != s.wantPing || (sent > before) != s.wantPing {
					t.Errorf("step %d: check() = %v (sent %d), want ping %v", i, got, sent-before, s.wantPing)
				}
				if gotLogs := drain(logs); !slices.Equal(gotLogs, s.wantLogs) {
					t.Errorf("step %d: logs %q, want %q", i, gotLogs, s.wantLogs)
				}
			}
		})
	}
}

// beforeMarker sends a marker status and returns every notification queued
// before it: the socket has one receive queue, so whatever the code under
// test sent before this call is among them.
func beforeMarker(t *testing.T, msgs <-chan string) []string {
	t.Helper()
	if err := Status("marker"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		select {
		case m := <-msgs:
			if m == "STATUS=marker" {
				return got
			}
			got = append(got, m)
		case <-time.After(hangGuard):
			t.Fatalf("marker not received within %v; got %q", hangGuard, got)
		}
	}
}

func drain(ch <-chan string) []string {
	var out []string
	for {
		select {
		case m := <-ch:
			out = append(out, m)
		default:
			return out
		}
	}
}

func TestRunWatchdogDisabled(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := []struct {
		name, usec, wpid string
		wantErr          bool
		noSocket         bool
	}{
		{"no WATCHDOG_USEC", "", "", false, false},
		{"no NOTIFY_SOCKET", "200000", pid, false, true},
		{"watchdog for another process", "200000", strconv.Itoa(os.Getpid() + 1), false, false},
		{"malformed WATCHDOG_USEC", "soon", pid, true, false},
		{"zero WATCHDOG_USEC", "0", pid, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, msgs := sdnotifytest.Listen(t)
			t.Setenv("NOTIFY_SOCKET", path)
			t.Setenv("WATCHDOG_USEC", tt.usec)
			t.Setenv("WATCHDOG_PID", tt.wpid)
			done := make(chan error, 1)
			// ctx never ends: a disabled watchdog must return by itself.
			if tt.noSocket {
				os.Unsetenv("NOTIFY_SOCKET") // restored by t.Setenv's cleanup
			}
			go func() { done <- RunWatchdog(context.Background(), time.Now, nil) }()
			select {
			case err := <-done:
				if (err != nil) != tt.wantErr {
					t.Fatalf("RunWatchdog = %v, want error %v", err, tt.wantErr)
				}
			case <-time.After(hangGuard):
				t.Fatal("RunWatchdog did not return with the watchdog disabled")
			}
			t.Setenv("NOTIFY_SOCKET", path)
			if got := beforeMarker(t, msgs); len(got) != 0 {
				t.Errorf("disabled watchdog sent %q", got)
			}
		})
	}
}

// TestRunWatchdogSocket runs the real thing against a fake NOTIFY_SOCKET
// with a 200ms watchdog: pings while the heartbeat is fresh, none while it
// is stuck in the past (a wedged loop), pings again once it moves.
func TestRunWatchdogSocket(t *testing.T) {
	path, msgs := sdnotifytest.Listen(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	wedgedAt := time.Now().Add(-time.Hour)
	var wedged atomic.Bool
	heartbeat := func() time.Time {
		if wedged.Load() {
			return wedgedAt
		}
		return time.Now()
	}
	log, logs := newLogCapture()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunWatchdog(ctx, heartbeat, log) }()

	for range 3 {
		sdnotifytest.WaitFor(t, msgs, hangGuard, "WATCHDOG=1")
	}

	wedged.Store(true)
	waitLog(t, logs, msgWedged)
	// Every ping sent before the decision is queued ahead of this marker
	// (one socket, one queue), so anything after it was sent while wedged.
	beforeMarker(t, msgs)
	// 600ms is 12 check periods of 50ms.
	for _, m := range sdnotifytest.Collect(msgs, 600*time.Millisecond) {
		if sdnotifytest.Has(m, "WATCHDOG=1") {
			t.Fatalf("watchdog ping %q sent while the loop was wedged", m)
		}
	}

	wedged.Store(false)
	sdnotifytest.WaitFor(t, msgs, hangGuard, "WATCHDOG=1")
	waitLog(t, logs, msgResumed)

	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunWatchdog after cancel = %v, want context.Canceled", err)
	}
}
