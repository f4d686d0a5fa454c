package lapi

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"
)

// go-cs-bouncer and crowdsec's apiclient log through logrus' standard logger,
// a process global we cannot inject into. We route it into our slog logger
// instead of letting it print its own format to stderr, and cap it at Info:
// at Debug apiclient dumps whole responses (100k decisions) and at Trace it
// dumps requests, including the X-Api-Key header.
var (
	libLogOnce   sync.Once
	libLogTarget atomic.Pointer[slog.Logger]
)

// routeLibraryLogs sends logrus' standard logger to l (the latest client's
// logger wins: there is one global to route).
func routeLibraryLogs(l *slog.Logger) {
	libLogTarget.Store(l)
	libLogOnce.Do(func() {
		std := logrus.StandardLogger()
		std.SetOutput(io.Discard)
		std.SetLevel(logrus.InfoLevel)
		std.AddHook(slogHook{})
	})
}

// slogHook forwards logrus entries. Library Info chatter ("Using API key
// auth") goes to Debug; its errors go to Warn, because every error that
// matters is also returned to us and logged once by our caller.
type slogHook struct{}

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (slogHook) Fire(e *logrus.Entry) error {
	l := libLogTarget.Load()
	if l == nil {
		return nil
	}
	lvl := slog.LevelDebug
	if e.Level <= logrus.WarnLevel {
		lvl = slog.LevelWarn
	}
	ctx := e.Context
	if ctx == nil {
		ctx = context.Background()
	}
	if !l.Enabled(ctx, lvl) {
		return nil
	}
	args := make([]any, 0, 2+2*len(e.Data))
	args = append(args, "message", e.Message)
	for k, v := range e.Data {
		args = append(args, k, v)
	}
	l.Log(ctx, lvl, "client library", args...)
	return nil
}
