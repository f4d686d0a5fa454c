package sdnotify

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
)

// RunStatus keeps the STATUS= line of `systemctl status` current: it sends
// status() at once, then looks again every `every` and sends only when the
// text changed, so systemd receives at most one line per `every` and none
// while nothing changes. FormatStatus makes a good status func.
//
// It returns nil at once when NOTIFY_SOCKET is unset, an error when every is
// not positive, and ctx.Err() when ctx ends. A failed send is logged once
// (and once more when sends work again), not returned: a stale status line is
// not worth stopping the bouncer for.
func RunStatus(ctx context.Context, every time.Duration, status func() string, logger *slog.Logger) error {
	if !Enabled() {
		return nil
	}
	if every <= 0 {
		return fmt.Errorf("systemd status: interval %v is not positive", every)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	return newStatusLoop(status, Status, logger).run(ctx, t.C)
}

// statusLoop is RunStatus's state, split out for tests.
type statusLoop struct {
	status      func() string
	notify      func(status string) error
	log         *slog.Logger
	last        string // last text systemd accepted
	sent        bool   // last is meaningful
	sendFailing bool
}

func newStatusLoop(status func() string, notify func(string) error, logger *slog.Logger) *statusLoop {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &statusLoop{status: status, notify: notify, log: logger.With("component", "sdnotify")}
}

func (s *statusLoop) run(ctx context.Context, tick <-chan time.Time) error {
	for {
		s.step()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick:
		}
	}
}

// step sends the current text if it differs from the last one sent, and
// reports whether it sent.
func (s *statusLoop) step() bool {
	text := oneLine(s.status())
	if s.sent && text == s.last {
		return false
	}
	if err := s.notify(text); err != nil {
		if !s.sendFailing {
			s.sendFailing = true
			s.log.Warn("systemd status update failed", "err", err)
		}
		return false // s.last unchanged: retry on the next tick
	}
	if s.sendFailing {
		s.sendFailing = false
		s.log.Info("systemd status updates get through again")
	}
	s.last, s.sent = text, true
	return true
}

// FormatStatus renders the enforcer's health as one line for `systemctl
// status`, most important first, e.g.
//
//	enforcing 100000 bans; LAPI reachable, last pull 3s ago; last repair 2m ago (jump,set) in 120ms, 4 in total; 0 failing replays
//
// Ages are coarse (seconds, minutes, hours, days) so the line changes
// rarely; now is passed in so tests and callers control the clock.
func FormatStatus(h heal.Health, now time.Time) string {
	parts := make([]string, 0, 5)

	switch {
	case !h.Enforcing:
		parts = append(parts, "starting: nothing enforced yet")
	case h.LastPull.IsZero():
		// Enforced from the journal alone: LAPI has not answered since start.
		parts = append(parts, fmt.Sprintf("enforcing %s (journal only)", plural(h.ActiveEntries, "ban")))
	default:
		parts = append(parts, "enforcing "+plural(h.ActiveEntries, "ban"))
	}

	var lapi string
	switch {
	case h.LastPull.IsZero() && h.LAPIReachable:
		lapi = "LAPI reachable, no pull yet"
	case h.LastPull.IsZero():
		lapi = "LAPI not reached yet"
	case h.LAPIReachable:
		lapi = "LAPI reachable, last pull " + ago(now, h.LastPull)
	default:
		lapi = "LAPI unreachable, last pull " + ago(now, h.LastPull)
	}
	if !h.LastFullResync.IsZero() {
		lapi += ", full resync " + ago(now, h.LastFullResync)
	}
	parts = append(parts, lapi)

	if h.LastRepair.IsZero() {
		parts = append(parts, "no repairs")
	} else {
		r := "last repair " + ago(now, h.LastRepair)
		if len(h.LastRepairDrift) > 0 {
			r += " (" + strings.Join(h.LastRepairDrift, ",") + ")"
		}
		r += " in " + took(h.LastRepairTook)
		if h.Repairs > 1 {
			r += fmt.Sprintf(", %d in total", h.Repairs)
		}
		parts = append(parts, r)
	}
	if h.BackingOff {
		parts = append(parts, "backing off: drift keeps coming back")
	}

	replays := plural(h.ConsecutiveFailures, "failing replay")
	if h.ReplayFailures > h.ConsecutiveFailures {
		replays += fmt.Sprintf(" (%d since start)", h.ReplayFailures)
	}
	parts = append(parts, replays)
	return strings.Join(parts, "; ")
}

// plural formats "1 ban", "2 bans", "0 bans".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// ago formats how long before now t was, coarsely: "3s ago", "2m ago",
// "5h ago", "3d ago". A t after now (a clock step) reads "just now".
func ago(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
	}
}

// took formats a duration with precision that matters to a person: "120ms",
// "1.25s", "850µs".
func took(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(time.Microsecond).String()
	}
}
