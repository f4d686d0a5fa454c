package sdnotify

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/sdnotify/sdnotifytest"
)

func TestFormatStatus(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	tests := []struct {
		name string
		h    heal.Health
		want string
	}{
		{"before boot", heal.Health{},
			"starting: nothing enforced yet; LAPI not reached yet; no repairs; 0 failing replays"},
		{"journal only, LAPI down", heal.Health{Enforcing: true, ActiveEntries: 100000},
			"enforcing 100000 bans (journal only); LAPI not reached yet; no repairs; 0 failing replays"},
		{"one ban, LAPI reachable but no pull yet", heal.Health{Enforcing: true, ActiveEntries: 1, LAPIReachable: true},
			"enforcing 1 ban (journal only); LAPI reachable, no pull yet; no repairs; 0 failing replays"},
		{"steady state with a repair", heal.Health{
			Enforcing: true, ActiveEntries: 100000, LAPIReachable: true,
			LastPull: ago(3 * time.Second), LastFullResync: ago(5 * time.Hour),
			LastRepair: ago(2*time.Minute + 30*time.Second), LastRepairDrift: []string{"jump", "set"},
			LastRepairTook: 120*time.Millisecond + 400*time.Microsecond, Repairs: 4,
		}, "enforcing 100000 bans; LAPI reachable, last pull 3s ago, full resync 5h ago; " +
			"last repair 2m ago (jump,set) in 120ms, 4 in total; 0 failing replays"},
		{"LAPI lost, replays failing, backing off", heal.Health{
			Enforcing: true, ActiveEntries: 7, LastPull: ago(3 * 24 * time.Hour),
			LastRepair: ago(500 * time.Millisecond), LastRepairTook: 1234 * time.Millisecond, Repairs: 1,
			BackingOff: true, ConsecutiveFailures: 2, ReplayFailures: 5,
		}, "enforcing 7 bans; LAPI unreachable, last pull 3d ago; last repair just now in 1.23s; " +
			"backing off: drift keeps coming back; 2 failing replays (5 since start)"},
		{"one failing replay, fast repair, clock stepped back", heal.Health{
			Enforcing: true, ActiveEntries: 2, LAPIReachable: true, LastPull: now.Add(time.Minute),
			LastRepair: ago(59 * time.Second), LastRepairDrift: []string{"chain"}, LastRepairTook: 850 * time.Microsecond,
			Repairs: 1, ConsecutiveFailures: 1, ReplayFailures: 1,
		}, "enforcing 2 bans; LAPI reachable, last pull just now; last repair 59s ago (chain) in 850µs; 1 failing replay"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FormatStatus(tt.h, now); got != tt.want {
				t.Errorf("FormatStatus =\n  %q\nwant\n  %q", got, tt.want)
			}
		})
	}
}

func TestStatusLoopStep(t *testing.T) {
	errSend := errors.New("send failed")
	type step struct {
		text     string
		sendErr  error
		wantSent bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first text is sent, repeats are not", []step{
			{text: "a", wantSent: true}, {text: "a"}, {text: "a"}, {text: "b", wantSent: true}, {text: "a", wantSent: true},
		}},
		{"empty first text is still sent", []step{{text: "", wantSent: true}, {text: ""}}},
		{"a failed send is retried with the same text", []step{
			{text: "a", sendErr: errSend}, {text: "a", wantSent: true}, {text: "a"},
		}},
		{"newlines are folded before comparing", []step{{text: "a\nb", wantSent: true}, {text: "a b"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var text string
			var sendErr error
			var got []string
			s := newStatusLoop(func() string { return text }, func(s string) error {
				if sendErr != nil {
					return sendErr
				}
				got = append(got, s)
				return nil
			}, nil)
			for i, st := range tt.steps {
				text, sendErr = st.text, st.sendErr
				before := len(got)
				if sent := s.step(); sent != st.wantSent || (len(got) > before) != st.wantSent {
					t.Errorf("step %d (%q): step() = %v, sent %d, want %v", i, st.text, sent, len(got)-before, st.wantSent)
				}
			}
		})
	}
}

// TestRunStatusSocket: a changed text reaches the socket, an unchanged one
// is not repeated.
func TestRunStatusSocket(t *testing.T) {
	path, msgs := sdnotifytest.Listen(t)
	t.Setenv("NOTIFY_SOCKET", path)
	var text atomic.Value
	text.Store("enforcing 1 ban")
	looked := make(chan struct{}, 64)
	status := func() string {
		select {
		case looked <- struct{}{}:
		default:
		}
		return text.Load().(string)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunStatus(ctx, 10*time.Millisecond, status, nil) }()

	if m := <-msgs; m != "STATUS=enforcing 1 ban" {
		t.Fatalf("first status %q", m)
	}
	// Let the loop look at the unchanged text several times.
	for range 5 {
		<-looked
	}
	text.Store("enforcing 2 bans")
	if m := sdnotifytest.WaitFor(t, msgs, hangGuard, "STATUS="); m != "STATUS=enforcing 2 bans" {
		t.Fatalf("after a change got %q: the unchanged text was sent again", m)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunStatus after cancel = %v, want context.Canceled", err)
	}
}

func TestRunStatusDisabledAndInvalid(t *testing.T) {
	tests := []struct {
		name    string
		socket  bool
		every   time.Duration
		wantErr bool
	}{
		{"no NOTIFY_SOCKET", false, time.Second, false},
		{"no NOTIFY_SOCKET, bad interval ignored", false, 0, false},
		{"zero interval", true, 0, true},
		{"negative interval", true, -time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NOTIFY_SOCKET", "")
			if tt.socket {
				path, _ := sdnotifytest.Listen(t)
				t.Setenv("NOTIFY_SOCKET", path)
			}
			done := make(chan error, 1)
			go func() { done <- RunStatus(context.Background(), tt.every, func() string { return "x" }, nil) }()
			select {
			case err := <-done:
				if (err != nil) != tt.wantErr {
					t.Fatalf("RunStatus = %v, want error %v", err, tt.wantErr)
				}
			case <-time.After(hangGuard):
				t.Fatal("RunStatus did not return")
			}
		})
	}
}
