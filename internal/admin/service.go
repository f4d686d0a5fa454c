package admin

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// Service answers the admin questions. The daemon's (NewDaemonService), the
// offline one (NewOfflineService) and the socket Client all implement it,
// so the CLI does not care where its answers come from.
type Service interface {
	// Stats summarizes the journal.
	Stats(ctx context.Context) (Stats, error)
	// Show lists the active decisions covering target.
	Show(ctx context.Context, target netip.Prefix) (Show, error)
	// List returns every active decision, sorted (also `journal export`).
	List(ctx context.Context) ([]Entry, error)
	// Verify checks the journal file's integrity.
	Verify(ctx context.Context) (journal.VerifyReport, error)
	// Check compares the kernel with the journal once, without repairing.
	Check(ctx context.Context) (Check, error)
}

// ErrNoCheck is returned by Check of an offline service built without a
// kernel check.
var ErrNoCheck = errors.New("no kernel check available")

// inspector implements Service over a journal. run executes a read where it
// is consistent with the journal's writer; check reads the kernel.
type inspector struct {
	j     *journal.Journal
	now   func() time.Time
	run   func(ctx context.Context, fn func()) error
	check func(ctx context.Context) (backend.Drift, error)
}

// NewDaemonService is the daemon's Service: every read runs inside the
// enforcer loop (Enforcer.Do), serialized with batches and repairs, and
// Check is Enforcer.Check. enf must be running (Run) while it is used;
// now defaults to time.Now.
func NewDaemonService(enf *heal.Enforcer, j *journal.Journal, now func() time.Time) Service {
	return &inspector{
		j:   j,
		now: orNow(now),
		run: func(ctx context.Context, fn func()) error {
			return enf.Do(ctx, func(context.Context) { fn() })
		},
		check: enf.Check,
	}
}

// NewOfflineService is the Service of a process that owns j alone (the CLI
// with no daemon running; open j with Options.ReadOnly). check is typically
// heal.Enforcer.CheckOffline; nil makes Check fail with ErrNoCheck.
func NewOfflineService(j *journal.Journal, check func(ctx context.Context) (backend.Drift, error), now func() time.Time) Service {
	return &inspector{
		j:     j,
		now:   orNow(now),
		run:   func(_ context.Context, fn func()) error { fn(); return nil },
		check: check,
	}
}

func orNow(now func() time.Time) func() time.Time {
	if now == nil {
		return time.Now
	}
	return now
}

func (s *inspector) Stats(ctx context.Context) (st Stats, err error) {
	err = s.run(ctx, func() { st = StatsOf(s.j, s.now()) })
	return st, err
}

func (s *inspector) Show(ctx context.Context, target netip.Prefix) (sh Show, err error) {
	err = s.run(ctx, func() { sh = ShowOf(s.j, target, s.now()) })
	return sh, err
}

func (s *inspector) List(ctx context.Context) (es []Entry, err error) {
	err = s.run(ctx, func() { es = ListOf(s.j, s.now()) })
	return es, err
}

func (s *inspector) Verify(ctx context.Context) (rep journal.VerifyReport, err error) {
	if rerr := s.run(ctx, func() { rep, err = s.j.Verify() }); rerr != nil {
		return rep, rerr
	}
	return rep, err
}

func (s *inspector) Check(ctx context.Context) (Check, error) {
	if s.check == nil {
		return Check{}, ErrNoCheck
	}
	d, err := s.check(ctx)
	if err != nil {
		return Check{}, err
	}
	return CheckOf(d), nil
}

// CheckOf converts a backend drift report.
func CheckOf(d backend.Drift) Check {
	c := Check{Clean: d.None(), Drift: make([]DriftItem, 0, len(d.Kinds))}
	for i, k := range d.Kinds {
		it := DriftItem{Kind: k}
		if i < len(d.Details) {
			it.Detail = d.Details[i]
		}
		c.Drift = append(c.Drift, it)
	}
	return c
}
