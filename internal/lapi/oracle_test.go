package lapi

// The reference decoders the tests compare the streaming path with:
// LAPI's own models through go-cs-bouncer's client (Pull + Normalize), and
// the element scanner alone (parseFast). The daemon uses only PullBatch.

import (
	"context"
	"fmt"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// Pull fetches one stream response: with startup=true LAPI's whole active set
// (and the deleted decisions it still stores), otherwise what changed since
// this key's previous pull. A pull that fails because ctx ended is not
// counted as a LAPI failure: that is our shutdown, not LAPI's health.
//
// Pull decodes into LAPI's model and checks nothing of the response's
// shape (an empty body is an empty response); the daemon pulls with
// PullBatch, which does.
func (c *Client) Pull(ctx context.Context, startup bool) (*models.DecisionsStreamResponse, error) {
	opts := c.opts // a copy: concurrent pulls must not race on Startup
	opts.Startup = startup
	c.requests.Add(1)
	data, resp, err := c.api.Decisions.GetStream(ctx, opts)
	if resp != nil && resp.Response != nil && resp.Response.Body != nil {
		// apiclient closes it too; closing again is harmless and keeps us
		// correct if that ever changes.
		_ = resp.Response.Body.Close()
	}
	if err != nil {
		if ctx.Err() == nil {
			c.failures.Add(1)
		}
		return nil, fmt.Errorf("pull decisions stream (startup=%v): %w", startup, err)
	}
	if data == nil {
		// an empty body decodes to nothing; treat it as an empty response
		data = &models.DecisionsStreamResponse{}
	}
	return data, nil
}

// Normalize turns one stream response into a journal batch. A bad decision is
// rejected alone; the rest of the batch is kept. New decisions expire at
// now + their remaining duration. Batch.Full is left for the caller to set.
func Normalize(resp *models.DecisionsStreamResponse, opts NormalizeOptions, now time.Time) (journal.Batch, []Rejection) {
	b, rej, _ := NormalizeWithStats(resp, opts, now)
	return b, rej
}

// NormalizeWithStats is Normalize that also reports what it skipped on
// purpose, for metrics.
func NormalizeWithStats(resp *models.DecisionsStreamResponse, opts NormalizeOptions, now time.Time) (journal.Batch, []Rejection, Stats) {
	if resp == nil {
		return journal.Batch{}, nil, Stats{}
	}
	n := newNormalizer(opts)
	n.now = now
	n.startList(false, len(resp.New))
	for _, d := range resp.New {
		n.addModel(d)
	}
	n.startList(true, len(resp.Deleted))
	for _, d := range resp.Deleted {
		n.addModel(d)
	}
	return n.result()
}

// addModel adapts one of LAPI's models to fields and adds it.
func (n *normalizer) addModel(d *models.Decision) {
	if d == nil {
		n.add(nil)
		return
	}
	f := fields{
		Duration:  optString(d.Duration),
		Origin:    optString(d.Origin),
		Scenario:  optString(d.Scenario),
		Scope:     optString(d.Scope),
		Type:      optString(d.Type),
		Value:     optString(d.Value),
		Simulated: jsonBool(d.Simulated != nil && *d.Simulated),
	}
	n.add(&f)
}

func optString(p *string) jsonString {
	if p == nil {
		return jsonString{}
	}
	return jsonString{s: *p, ok: true}
}

// parseFast fills e from b, one whole value with optional whitespace around
// it, or returns false and leaves the element to encoding/json.
func (e *element) parseFast(b []byte) bool {
	i := skipSpace(b, 0)
	k, st := e.scan(b[i:])
	return st == scanOK && skipSpace(b, i+k) == len(b)
}
