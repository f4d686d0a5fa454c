package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/lapi"
)

// errNoLAPIAtBoot is returned when retry_initial_connect is false, LAPI is
// unreachable and the journal has nothing to enforce: upstream's behaviour.
var errNoLAPIAtBoot = errors.New("LAPI unreachable at start-up, retry_initial_connect is false and the journal is empty")

// decisionSource is LAPI's decision stream (*lapi.Client).
type decisionSource interface {
	PullBatch(ctx context.Context, startup bool, opts lapi.NormalizeOptions, now func() time.Time) (journal.Batch, []lapi.Rejection, lapi.Stats, error)
}

// batchSink is where pulled batches go (*heal.Enforcer).
type batchSink interface {
	Submit(ctx context.Context, b journal.Batch, pulledAt time.Time) error
	SetLAPI(reachable bool, at time.Time, full bool)
	SetLAPIUnauthorized()
}

// puller drives the LAPI stream: a startup=true pull (retried with backoff
// while LAPI is down: the journal is enforced meanwhile), deltas every
// update_frequency, and a full startup=true resync every full_resync_interval
// (±10 %, so a fleet restarted together does not pull its whole blocklist
// from one LAPI in the same minute) and after every failed pull, because
// LAPI hard-deletes some decisions without listing them and the delta
// cursor may have moved while we were away.
type puller struct {
	client      decisionSource
	enf         batchSink
	log         *slog.Logger
	norm        lapi.NormalizeOptions
	every       time.Duration
	fullEvery   time.Duration
	retryBoot   bool
	emptyAtBoot bool
	rejected    counts

	// Injected for tests; zero values use the real clock.
	now    func() time.Time
	sleep  func(ctx context.Context, d time.Duration) error
	ticks  <-chan time.Time
	jitter func() float64 // uniform in [-1, 1)

	// resolve, when set, returns addresses no ban may cover (LAPI's own);
	// the first pull calls it once (resolveOnce), whichever goroutine
	// pulls first: the boot pull or a resync of the heal ladder.
	resolve     func(ctx context.Context) []netip.Prefix
	resolveOnce sync.Once

	// preload, when the backend offers one (backend.Preloader), loads a
	// full pull into the kernel while it downloads; it returns nil when it
	// cannot (before the boot is done).
	preload func(ctx context.Context) backend.Preload

	// seen holds the normalization rejections already logged and counted,
	// so an hourly full resync does not report the same decision again.
	seen map[rejectionKey]bool
}

// rejectionKey identifies a refused decision across pulls.
type rejectionKey struct {
	value, scope, typ, origin, reason string
	deleted                           bool
}

func keyOf(r lapi.Rejection) rejectionKey {
	return rejectionKey{r.Value, r.Scope, r.Type, r.Origin, r.Reason, r.Deleted}
}

// counts is a goroutine-safe counter by key (rejections by reason, read by
// the metrics scrape).
type counts struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (c *counts) add(k string) { c.addN(k, 1) }

func (c *counts) addN(k string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]uint64{}
	}
	c.m[k] += uint64(n)
}

func (c *counts) snapshot() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

func (p *puller) init() {
	if p.now == nil {
		p.now = time.Now
	}
	if p.sleep == nil {
		p.sleep = sleep
	}
	if p.jitter == nil {
		p.jitter = func() float64 { return 2*rand.Float64() - 1 }
	}
	if p.seen == nil {
		p.seen = map[rejectionKey]bool{}
	}
}

// fullDue returns the wait until the next full resync: the interval ±10 %.
func (p *puller) fullDue() time.Duration {
	return p.fullEvery + time.Duration(p.jitter()*float64(p.fullEvery)/10)
}

func (p *puller) run(ctx context.Context) error {
	p.init()
	if err := p.boot(ctx); err != nil {
		return err
	}
	nextFull := p.now().Add(p.fullDue())
	ticks := p.ticks
	if ticks == nil {
		t := time.NewTicker(p.every)
		defer t.Stop()
		ticks = t.C
	}
	needFull := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticks:
		}
		full := needFull || (p.fullEvery > 0 && !p.now().Before(nextFull))
		if err := p.pull(ctx, full); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p.warnFailed("LAPI pull failed, enforcing from the journal", err, "full", full)
			needFull = true
			continue
		}
		needFull = false
		if full {
			nextFull = p.now().Add(p.fullDue())
		}
	}
}

// boot is the first full pull, retried with backoff while LAPI is down.
func (p *puller) boot(ctx context.Context) error {
	backoff := time.Second
	const maxBackoff = 30 * time.Second
	for first := true; ; first = false {
		err := p.pull(ctx, true)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if first && !p.retryBoot && p.emptyAtBoot {
			if lapi.Unauthorized(err) {
				return fmt.Errorf("%w: %w", lapi.ErrUnauthorized, err)
			}
			return fmt.Errorf("%w: %w", errNoLAPIAtBoot, err)
		}
		p.warnFailed("LAPI unreachable, enforcing from the journal", err, "retry_in", backoff)
		if err := p.sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// warnFailed logs a failed pull, saying so when LAPI refused our key: that
// is an operator's job, not a network outage.
func (p *puller) warnFailed(msg string, err error, args ...any) {
	switch {
	case lapi.Unauthorized(err):
		// "rejected our API key" is what operators grep for.
		msg = "LAPI rejected our API key (HTTP 401/403: it rejects our API key or certificate), enforcing from the journal: fix api_key"
	case errors.Is(err, lapi.ErrMalformedResponse):
		// LAPI's bug or a proxy's, not an outage: trusting it would empty
		// the firewall.
		msg = "LAPI answer not trusted, enforcing from the journal"
	}
	p.log.Warn(msg, append(args, "err", err)...)
}

// pull fetches one batch and hands it to the enforcer.
func (p *puller) pull(ctx context.Context, full bool) error {
	at := p.now()
	b, err := p.batch(ctx, full)
	if err != nil {
		if lapi.Unauthorized(err) {
			p.enf.SetLAPIUnauthorized()
		} else {
			p.enf.SetLAPI(false, time.Time{}, false)
		}
		return err
	}
	fetched := p.now()
	p.enf.SetLAPI(true, at, full)
	added, deleted := b.NewLen(), len(b.Deleted)
	if err := p.enf.Submit(ctx, b, at); err != nil {
		return fmt.Errorf("apply batch: %w", err)
	}
	if added+deleted > 0 || full {
		// fetch is LAPI's answer and its decoding; the rest is the
		// journal and the kernel.
		p.log.Info("pulled decisions", "full", full, "new", added, "deleted", deleted,
			"took", p.now().Sub(at).Round(time.Millisecond), "fetch", fetched.Sub(at).Round(time.Millisecond))
	}
	return nil
}

// pullTimeout bounds one pull: the API client has no timeout of its own.
// A startup pull of 100k decisions takes about a second on a local LAPI.
const pullTimeout = 2 * time.Minute

// resyncTimeout bounds the heal ladder's resync, which runs inside the
// enforcer loop: it must stay well under the systemd watchdog (30s), which
// stops being fed while the loop is busy.
const resyncTimeout = 15 * time.Second

func (p *puller) batch(ctx context.Context, full bool) (journal.Batch, error) {
	if !full || p.preload == nil {
		return p.batchWithin(ctx, full, pullTimeout, nil)
	}
	// The preload starts with the first decision: by then the boot has
	// usually made our tables (without them there is nothing to load into).
	var pl backend.Preload
	started := false
	b, err := p.batchWithin(ctx, full, pullTimeout, func(pfx netip.Prefix, until time.Time, origin string) {
		if !started {
			started = true
			pl = p.preload(ctx)
		}
		if pl != nil {
			pl.Add(pfx, until, origin)
		}
	})
	if pl != nil {
		pl.Finish(err == nil)
	}
	return b, err
}

// batchWithin pulls within timeout; onNew, when set, sees each new
// decision as it is accepted.
func (p *puller) batchWithin(ctx context.Context, full bool, timeout time.Duration, onNew func(netip.Prefix, time.Time, string)) (journal.Batch, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p.resolveOnce.Do(func() {
		if p.resolve != nil {
			p.norm.Protected = append(p.norm.Protected, p.resolve(ctx)...)
		}
	})
	norm := p.norm
	norm.OnNew = onNew
	// Decoded as it streams in: 100k decisions never exist as API models.
	b, rejected, _, err := p.client.PullBatch(ctx, full, norm, time.Now)
	if err != nil {
		if errors.Is(err, lapi.ErrTimeout) {
			p.log.Warn("LAPI pull timed out", "full", full, "limit", timeout, "err", err)
		}
		return journal.Batch{}, err
	}
	p.noteRejected(rejected, full)
	return b, nil
}

// noteRejected logs and counts each refused decision once. A full pull
// lists every decision LAPI holds: what it no longer refuses is forgotten,
// so a decision that comes back is reported again.
func (p *puller) noteRejected(rs []lapi.Rejection, full bool) {
	if p.seen == nil {
		p.seen = map[rejectionKey]bool{}
	}
	prev := p.seen
	if full {
		p.seen = make(map[rejectionKey]bool, len(rs))
	}
	for _, r := range rs {
		k := keyOf(r)
		known := prev[k] || p.seen[k]
		p.seen[k] = true
		if known {
			continue
		}
		p.log.Warn("rejected decision", "value", r.Value, "scope", r.Scope, "type", r.Type, "origin", r.Origin, "reason", r.Reason)
		p.rejected.add(r.Reason)
	}
}

// fullBatch is the heal ladder's resync: LAPI's whole active set.
func (p *puller) fullBatch(ctx context.Context) (journal.Batch, error) {
	return p.batchWithin(ctx, true, resyncTimeout, nil)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
