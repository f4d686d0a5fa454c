package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/lapi"
)

// errNoLAPIAtBoot is returned when retry_initial_connect is false, LAPI is
// unreachable and the journal has nothing to enforce: upstream's behaviour.
var errNoLAPIAtBoot = errors.New("LAPI unreachable at start-up, retry_initial_connect is false and the journal is empty")

// puller drives the LAPI stream: a startup=true pull (retried with backoff
// while LAPI is down: the journal is enforced meanwhile), deltas every
// update_frequency, and a full startup=true resync every full_resync_interval
// and after every failed pull, because LAPI hard-deletes some decisions
// without listing them and the delta cursor may have moved while we were away.
type puller struct {
	client      *lapi.Client
	enf         *heal.Enforcer
	log         *slog.Logger
	norm        lapi.NormalizeOptions
	every       time.Duration
	fullEvery   time.Duration
	retryBoot   bool
	emptyAtBoot bool
	rejected    counts
}

// counts is a goroutine-safe counter by key (rejections by reason, read by
// the metrics scrape).
type counts struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (c *counts) add(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]uint64{}
	}
	c.m[k]++
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

func (p *puller) run(ctx context.Context) error {
	backoff := time.Second
	const maxBackoff = 30 * time.Second
	first := true
	for {
		if err := p.pull(ctx, true); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if first && !p.retryBoot && p.emptyAtBoot {
				return fmt.Errorf("%w: %w", errNoLAPIAtBoot, err)
			}
			p.log.Warn(pullFailure(err, "LAPI unreachable, enforcing from the journal"), "err", err, "retry_in", backoff)
			first = false
			if err := sleep(ctx, backoff); err != nil {
				return err
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		break
	}
	lastFull := time.Now()
	t := time.NewTicker(p.every)
	defer t.Stop()
	needFull := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		full := needFull || (p.fullEvery > 0 && time.Since(lastFull) >= p.fullEvery)
		if err := p.pull(ctx, full); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p.log.Warn(pullFailure(err, "LAPI pull failed, enforcing from the journal"), "full", full, "err", err)
			needFull = true
			continue
		}
		needFull = false
		if full {
			lastFull = time.Now()
		}
	}
}

// pull fetches one batch and hands it to the enforcer.
func (p *puller) pull(ctx context.Context, full bool) error {
	at := time.Now()
	b, err := p.batch(ctx, full)
	if err != nil {
		p.enf.SetLAPI(false, time.Time{}, false)
		return err
	}
	p.enf.SetLAPI(true, at, full)
	added, deleted := len(b.New), len(b.Deleted)
	if err := p.enf.Submit(ctx, b, at); err != nil {
		return fmt.Errorf("apply batch: %w", err)
	}
	if added+deleted > 0 || full {
		p.log.Info("pulled decisions", "full", full, "new", added, "deleted", deleted, "took", time.Since(at).Round(time.Millisecond))
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
	return p.batchWithin(ctx, full, pullTimeout)
}

func (p *puller) batchWithin(ctx context.Context, full bool, timeout time.Duration) (journal.Batch, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Decoded as it streams in: 100k decisions never exist as API models.
	b, rejected, _, err := p.client.PullBatch(ctx, full, p.norm, time.Now)
	if errors.Is(err, lapi.ErrTimeout) {
		p.log.Warn("LAPI pull timed out", "full", full, "limit", timeout, "err", err)
	}
	if err != nil {
		return journal.Batch{}, err
	}
	for _, r := range rejected {
		p.log.Warn("rejected decision", "value", r.Value, "scope", r.Scope, "type", r.Type, "origin", r.Origin, "reason", r.Reason)
		p.rejected.add(r.Reason)
	}
	return b, nil
}

// fullBatch is the heal ladder's resync: LAPI's whole active set.
func (p *puller) fullBatch(ctx context.Context) (journal.Batch, error) {
	return p.batchWithin(ctx, true, resyncTimeout)
}

// pullFailure is the log message for a failed pull: a refused key is the
// operator's to fix and a malformed answer is LAPI's bug, neither is LAPI
// being unreachable.
func pullFailure(err error, otherwise string) string {
	switch {
	case errors.Is(err, lapi.ErrUnauthorized):
		return "LAPI rejected our API key, enforcing from the journal"
	case errors.Is(err, lapi.ErrMalformedResponse):
		return "LAPI answer not trusted, enforcing from the journal"
	}
	return otherwise
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
