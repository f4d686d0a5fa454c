package sdnotify

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// RunWatchdog feeds systemd's watchdog (WatchdogSec= in the unit) for as
// long as the enforcer loop is alive, and stops feeding it when the loop
// wedges, so systemd kills the process (SIGABRT by default: Go then dumps
// every goroutine's stack to the journal) and Restart= starts a fresh one.
// The kernel keeps the bans meanwhile: a killed process removes nothing.
//
// heartbeat returns when the loop last went round (heal.Enforcer.Heartbeat;
// zero means "not yet"). The loop counts as alive when the heartbeat is
// younger than half the watchdog interval, or when it has changed since the
// previous check. The second rule makes a wall-clock step harmless: the
// heartbeat is wall time and the bouncer starts before NTP has synced, so
// a forward step would otherwise make a healthy loop look hours old; a wedged
// loop never changes its heartbeat, so it still stops the pings. The loop
// goes round at least every heal.interval, which must therefore stay well
// under half of WatchdogSec.
//
// Pings are sent every quarter interval (the first at once), not every half
// as sd_watchdog_enabled(3) suggests: with half, a single withheld or lost
// ping leaves exactly one interval between two pings and systemd may already
// fire; with a quarter, one slow check is survived. A wedged loop is killed
// at most interval/2 + interval + interval/4 after its last heartbeat.
//
// It returns nil at once when the watchdog is disabled (WATCHDOG_USEC unset,
// WATCHDOG_PID names another process, or NOTIFY_SOCKET unset), an error when WATCHDOG_USEC is
// malformed, and ctx.Err() when ctx ends. A failed ping is logged, not
// returned: systemd's own deadline is the consequence, and ending the daemon
// over a notification would be worse than the restart the watchdog gives.
func RunWatchdog(ctx context.Context, heartbeat func() time.Time, logger *slog.Logger) error {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return fmt.Errorf("systemd watchdog: %w", err)
	}
	if interval <= 0 || !Enabled() {
		return nil
	}
	t := time.NewTicker(interval / 4)
	defer t.Stop()
	w := newWatchdog(interval, heartbeat, send, logger)
	w.log.Info("systemd watchdog enabled", "interval", interval, "ping_every", interval/4, "max_heartbeat_age", w.maxAge)
	return w.run(ctx, t.C)
}

// watchdog is RunWatchdog's state, split out so tests can drive it with a
// fake clock, tick channel and notifier.
type watchdog struct {
	interval  time.Duration
	maxAge    time.Duration // a heartbeat younger than this is fresh
	heartbeat func() time.Time
	notify    func(state string) error
	now       func() time.Time
	log       *slog.Logger

	started     time.Time // first check: a loop not started yet is not late before maxAge
	prev        time.Time // heartbeat seen at the previous check
	withholding bool      // the last check withheld its ping
	sendFailing bool      // the last ping could not be sent
}

func newWatchdog(interval time.Duration, heartbeat func() time.Time, notify func(string) error, logger *slog.Logger) *watchdog {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &watchdog{
		interval:  interval,
		maxAge:    interval / 2,
		heartbeat: heartbeat,
		notify:    notify,
		now:       time.Now,
		log:       logger.With("component", "watchdog"),
	}
}

// run checks once at once, then on every tick, until ctx ends.
func (w *watchdog) run(ctx context.Context, tick <-chan time.Time) error {
	for {
		w.check()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick:
		}
	}
}

// check sends one WATCHDOG=1 if the loop is alive and reports whether it
// did. It logs once when pings start being withheld and once when they
// resume, never on every tick.
func (w *watchdog) check() bool {
	hb := w.heartbeat()
	if w.started.IsZero() {
		w.started = w.now()
	}
	if hb.IsZero() && w.now().Sub(w.started) < w.maxAge {
		// Boot is still enforcing the journal: nothing to ping for yet,
		// and nothing to warn about unless it takes longer than a loop
		// may stay silent.
		return false
	}
	changed := !hb.IsZero() && !hb.Equal(w.prev)
	w.prev = hb
	age := w.now().Sub(hb)
	// A heartbeat in the future (the clock stepped back) gives no age to
	// trust; only a change then proves the loop is alive.
	fresh := !hb.IsZero() && age >= 0 && age < w.maxAge
	if !fresh && !changed {
		if !w.withholding {
			w.withholding = true
			if hb.IsZero() {
				w.log.Warn("enforcer loop has not started: withholding watchdog pings", "max_age", w.maxAge, "interval", w.interval)
			} else {
				w.log.Warn("enforcer loop looks wedged: withholding watchdog pings, systemd will restart us",
					"heartbeat", hb, "age", age.Round(time.Millisecond), "max_age", w.maxAge, "interval", w.interval)
			}
		}
		return false
	}
	if w.withholding {
		w.withholding = false
		w.log.Info("enforcer loop alive again: watchdog pings resumed", "heartbeat", hb, "age", age.Round(time.Millisecond))
	}
	if err := w.notify(daemon.SdNotifyWatchdog); err != nil {
		if !w.sendFailing {
			w.sendFailing = true
			w.log.Warn("watchdog ping failed", "err", err)
		}
		return false
	}
	if w.sendFailing {
		w.sendFailing = false
		w.log.Info("watchdog pings get through again")
	}
	return true
}
