package sdnotify

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/sdnotify/sdnotifytest"
)

// hangGuard bounds waits for datagrams; it is not a speed assertion.
const hangGuard = 10 * time.Second

func TestNotifications(t *testing.T) {
	tests := []struct {
		name string
		call func() error
		want map[string]string
	}{
		{"ready with status", func() error { return Ready("enforcing 3 bans") },
			map[string]string{"READY": "1", "STATUS": "enforcing 3 bans"}},
		{"ready alone", func() error { return Ready("") }, map[string]string{"READY": "1"}},
		{"status", func() error { return Status("hello") }, map[string]string{"STATUS": "hello"}},
		{"status newline cannot inject", func() error { return Status("a\nREADY=1\r\nb") },
			map[string]string{"STATUS": "a READY=1 b"}},
		{"stopping", Stopping, map[string]string{"STOPPING": "1", "STATUS": "stopping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, msgs := sdnotifytest.Listen(t)
			t.Setenv("NOTIFY_SOCKET", path)
			if !Enabled() {
				t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
			}
			if err := tt.call(); err != nil {
				t.Fatal(err)
			}
			got := sdnotifytest.Fields(<-msgs)
			if len(got) != len(tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s=%q, want %q (all: %q)", k, got[k], v, got)
				}
			}
		})
	}
}

func TestNotificationsWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if Enabled() {
		t.Fatal("Enabled() = true without NOTIFY_SOCKET")
	}
	for name, f := range map[string]func() error{
		"ready": func() error { return Ready("x") }, "status": func() error { return Status("x") }, "stopping": Stopping,
	} {
		if err := f(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: %v, want nil", name, err)
		}
	}
}

func TestNotificationsSocketGone(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "missing.sock"))
	if err := Ready("x"); err == nil {
		t.Fatal("Ready to a missing socket: nil error, want one")
	}
}
