// Package sdnotify tells systemd how the bouncer is doing: READY=1 once the
// journal is enforced, STOPPING=1 on the way out, a human-readable STATUS=
// line for `systemctl status`, and WATCHDOG=1 pings that are sent only while
// the enforcer loop is demonstrably alive, so a wedged loop gets the process
// killed and restarted by systemd (WatchdogSec= in the unit).
//
// Every function is a no-op returning nil when NOTIFY_SOCKET is unset, so the
// daemon runs the same way outside systemd. The protocol itself is
// github.com/coreos/go-systemd/v22/daemon; this package only decides what to
// send and when.
//
// Wiring, in the daemon after Enforcer.Boot:
//
//	if err := sdnotify.Ready("enforcing from journal"); err != nil {
//		log.Warn("systemd notify failed", "err", err)
//	}
//	g.Go(func() error { return sdnotify.RunWatchdog(gctx, enf.Heartbeat, log) })
//	g.Go(func() error {
//		return sdnotify.RunStatus(gctx, 5*time.Second, func() string {
//			return sdnotify.FormatStatus(enf.Health(), time.Now())
//		}, log)
//	})
//	err = g.Wait() // both return ctx.Err() on shutdown, like enf.Run
//	if err := sdnotify.Stopping(); err != nil { ... }
package sdnotify

import (
	"fmt"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Enabled reports whether systemd asked for notifications (NOTIFY_SOCKET is
// set). When false every function of this package does nothing.
func Enabled() bool { return os.Getenv("NOTIFY_SOCKET") != "" }

// Ready tells systemd that start-up is complete (READY=1), with status as
// the first STATUS= line; an empty status sends READY=1 alone. Call it once
// the journal is enforced in the kernel: Type=notify units count as started
// only then, so units ordered after us start with the bans in place.
func Ready(status string) error {
	state := daemon.SdNotifyReady
	if status != "" {
		state += "\nSTATUS=" + oneLine(status)
	}
	return send(state)
}

// Stopping tells systemd that the daemon is shutting down (STOPPING=1), so
// `systemctl status` shows "deactivating" while the rules are removed or
// kept, rather than a running service that no longer answers.
func Stopping() error {
	return send(daemon.SdNotifyStopping + "\nSTATUS=stopping")
}

// Status replaces the free-form STATUS= line shown by `systemctl status`.
func Status(status string) error {
	return send("STATUS=" + oneLine(status))
}

// send writes one notification datagram; a missing NOTIFY_SOCKET is not an
// error (we are not run by systemd, or not as Type=notify).
func send(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		// Name only the first assignment: STATUS= text can be long.
		first, _, _ := strings.Cut(state, "\n")
		return fmt.Errorf("sd_notify %s to %q: %w", first, os.Getenv("NOTIFY_SOCKET"), err)
	}
	return nil
}

// oneLine keeps a status on one line: the notify protocol is newline-separated
// assignments, so a newline in free text (a scenario name, an error string)
// would otherwise inject e.g. READY=1 or WATCHDOG=1.
func oneLine(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }), " ")
}
