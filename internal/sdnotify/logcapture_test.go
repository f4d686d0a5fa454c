package sdnotify

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

// chanHandler sends every log message to a channel, so a test can wait for
// "this decision has been taken" instead of sleeping.
type chanHandler struct{ ch chan string }

func (h chanHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h chanHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.ch <- r.Message:
	default: // a test that stops reading must not wedge the code under test
	}
	return nil
}
func (h chanHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h chanHandler) WithGroup(string) slog.Handler      { return h }

func newLogCapture() (*slog.Logger, <-chan string) {
	ch := make(chan string, 256)
	return slog.New(chanHandler{ch}), ch
}

// waitLog waits for a log message with the given text.
func waitLog(t *testing.T, logs <-chan string, msg string) {
	t.Helper()
	deadline := time.NewTimer(hangGuard)
	defer deadline.Stop()
	for {
		select {
		case m := <-logs:
			if m == msg {
				return
			}
		case <-deadline.C:
			t.Fatalf("no log %q within %v", msg, hangGuard)
		}
	}
}
