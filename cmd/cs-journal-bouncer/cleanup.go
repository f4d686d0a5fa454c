package main

// `cs-journal-bouncer [-c FILE] cleanup` removes every kernel object of
// ours (rules, chains, tables, sets) for the configured mode. The package
// runs it when it is removed: the service itself is configured with
// on_shutdown: keep so that a restart or an upgrade never leaves a window,
// which means that stopping it leaves the bans in the kernel on purpose.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
)

// cleanupTimeout bounds the whole removal: it runs from a maintainer
// script, which must not hang dpkg.
const cleanupTimeout = time.Minute

// runCleanup removes our kernel objects and reports what it did. It reads
// the same config as the daemon (so it knows the mode, chain and set
// names), never the journal: set names follow from the config alone.
// Exit codes: 0 removed (or nothing was there), 1 config unreadable or a
// removal failed, 2 usage.
func runCleanup(args []string, cfgPath string, stdout, stderr io.Writer) int {
	if len(args) != 0 {
		fmt.Fprintf(stderr, "cleanup: unexpected arguments %q\n", args)
		return 2
	}
	res, err := config.Load(cfgPath, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "cs-journal-bouncer cleanup: %v\n", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	be, err := newBackend(res.Config, log)
	if err != nil {
		fmt.Fprintf(stderr, "cs-journal-bouncer cleanup: backend: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if err := be.Close(ctx, false); err != nil {
		fmt.Fprintf(stderr, "cs-journal-bouncer cleanup: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "cs-journal-bouncer: removed our firewall rules and sets (mode %s)\n", res.Config.Mode)
	return 0
}
