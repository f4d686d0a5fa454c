package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"syscall"

	"go.yaml.in/yaml/v3"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
)

// Signals other than SIGINT/SIGTERM must not stop the daemon: systemd's
// Restart=on-failure treats a death by SIGHUP or SIGPIPE as a clean exit and
// would not restart it, leaving the journal unenforced after the next fault.
//
//   - SIGPIPE is ignored. Go already turns it into EPIPE for every fd but
//     stdout and stderr; on those, a write after the reader went away
//     (journald restarted, `| tee` killed) would kill the process. Ignored,
//     the write fails with EPIPE and the log line is lost, nothing else. The
//     iptables tools we run inherit the ignored SIGPIPE; we read their
//     output to the end, so it changes nothing for them.
//   - SIGHUP re-reads and checks the configuration file and says what a
//     restart would change; it applies nothing live. Every key feeds a
//     component built once at start (backend layout, LAPI client, journal,
//     heal timings, logger), and rebuilding one while the enforcer owns the
//     kernel is the kind of change that can lift bans; a restart is safe
//     instead (the journal is enforced without waiting for LAPI).

// hangup carries SIGHUPs, caught from process start so one that arrives
// during boot is handled afterwards instead of killing the daemon.
type hangup struct {
	sig  <-chan os.Signal
	path string // the config file to re-read
}

// catchSignals ignores SIGPIPE and starts catching SIGHUP; stop releases
// SIGHUP (the process ends soon after).
func catchSignals(cfgPath string) (h hangup, stop func()) {
	signal.Ignore(syscall.SIGPIPE)
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGHUP)
	return hangup{sig: c, path: cfgPath}, func() { signal.Stop(c) }
}

// onHangup answers each SIGHUP until ctx ends. It never fails: a bad file
// on disk is reported, the running configuration stays.
func onHangup(ctx context.Context, h hangup, running *config.Config, log *slog.Logger) error {
	log = log.With("component", "signals")
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.sig:
		}
		res, err := config.Load(h.path, os.LookupEnv)
		if err != nil {
			log.Error("SIGHUP: the configuration on disk is invalid; still running with the one loaded at start (a restart would fail)",
				"config", h.path, "err", err)
			continue
		}
		changed, err := changedKeys(running, res.Config)
		switch {
		case err != nil:
			log.Error("SIGHUP: cannot compare the configurations", "err", err)
		case len(changed) == 0:
			log.Info("SIGHUP: configuration re-read, valid and unchanged; nothing to do", "config", h.path)
		default:
			log.Warn("SIGHUP: configuration re-read and valid, but nothing is applied live: restart the service to apply it",
				"config", h.path, "changed", changed)
		}
	}
}

// changedKeys lists the dotted keys whose effective value differs. It
// compares the -T dump of both (defaults filled, aliases resolved), plus
// the api_key that dump masks.
func changedKeys(a, b *config.Config) ([]string, error) {
	fa, err := flatDump(a)
	if err != nil {
		return nil, err
	}
	fb, err := flatDump(b)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(fa)) {
		if !reflect.DeepEqual(fa[k], fb[k]) {
			out = append(out, k)
		}
	}
	for k := range fb {
		if _, ok := fa[k]; !ok {
			out = append(out, k)
		}
	}
	if a.APIKey != b.APIKey {
		out = append(out, "api_key")
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func flatDump(c *config.Config) (map[string]any, error) {
	var buf bytes.Buffer
	if err := c.Dump(&buf); err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(buf.Bytes(), &doc); err != nil {
		return nil, fmt.Errorf("read back config dump: %w", err)
	}
	out := map[string]any{}
	flatten("", doc, out)
	return out, nil
}

func flatten(prefix string, m map[string]any, out map[string]any) {
	for k, v := range m {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok {
			flatten(key, sub, out)
			continue
		}
		out[key] = v
	}
}
