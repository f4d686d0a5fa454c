package dryrun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func entry(p string, origin int) backend.Entry {
	return backend.Entry{Prefix: netip.MustParsePrefix(p), Origin: origin, Until: t0.Add(time.Hour)}
}

func newDry(t *testing.T, cfg Config) (*Backend, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	cfg.Now = func() time.Time { return t0 }
	return New(cfg), &logs
}

// The model follows every write, so Verify and Members agree with what was
// logged and nothing looks like drift.
func TestDryRunModelIsConsistent(t *testing.T) {
	ctx := context.Background()
	b, logs := newDry(t, Config{})
	b.SetOrigins(backend.Origins{0: "crowdsec", 1: "cscli"})
	if d, _ := b.Verify(ctx, map[backend.SetKey]int{{Origin: 0}: 0}); d.None() {
		t.Fatal("Verify before Ensure found nothing missing")
	}
	if err := b.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	var big []backend.Entry
	for i := range 1000 {
		big = append(big, entry(fmt.Sprintf("198.18.%d.%d/32", i/256, i%256), 0))
	}
	if err := b.Replay(ctx, slices.Values(big)); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, backend.Delta{Add: []backend.Entry{entry("2001:db8::1/128", 1)}, Del: []backend.Entry{big[0]}}); err != nil {
		t.Fatal(err)
	}
	want := map[backend.SetKey]int{{Origin: 0}: 999, {Origin: 1, V6: true}: 1, {Origin: 0, V6: true}: 0, {Origin: 1}: 0}
	if d, err := b.Verify(ctx, want); err != nil || !d.None() {
		t.Fatalf("Verify after writes: %v %v", d, err)
	}
	want[backend.SetKey{Origin: 0}] = 1000
	if d, _ := b.Verify(ctx, want); d.None() {
		t.Fatal("Verify missed a deleted member (count 999 < 1000)")
	}
	m, _ := b.Members(ctx)
	if len(m[backend.SetKey{Origin: 0}]) != 999 || len(m[backend.SetKey{Origin: 1, V6: true}]) != 1 {
		t.Fatalf("members %d/%d, want 999/1", len(m[backend.SetKey{Origin: 0}]), len(m[backend.SetKey{Origin: 1, V6: true}]))
	}
	out := logs.String()
	for _, s := range []string{"would replace", "entries=1000", "and 997 more", "would add", "2001:db8::1/128 in crowdsec6-blacklists-1", "would delete"} {
		if !strings.Contains(out, s) {
			t.Errorf("logs lack %q:\n%s", s, out)
		}
	}
}

func TestDryRunRejectsLikeABackend(t *testing.T) {
	b, _ := newDry(t, Config{DisableIPv6: true})
	b.SetOrigins(backend.Origins{0: "crowdsec"})
	_ = b.Ensure(context.Background())
	err := b.Apply(context.Background(), backend.Delta{Add: []backend.Entry{entry("192.0.2.1/32", 0), entry("2001:db8::1/128", 0)}})
	rs, rest := backend.Rejected(err)
	if rest != nil || len(rs) != 1 || rs[0].Reason != "family_disabled" || !errors.Is(err, backend.ErrRejected) {
		t.Fatalf("Apply with IPv6 disabled: rejected %v, rest %v", rs, rest)
	}
}

// Under the enforcer, a dry run enforces the journal "in memory" and its
// verify passes stay clean: no spurious repairs.
func TestDryRunUnderTheEnforcer(t *testing.T) {
	clk := t0
	now := func() time.Time { return clk }
	j, err := journal.Open(journal.Options{Path: filepath.Join(t.TempDir(), "j.db"), Now: now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	b, logs := newDry(t, Config{})
	ticks := make(chan time.Time)
	enf := heal.New(heal.Config{}, heal.Deps{Journal: j, Backend: b, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: now, Ticks: ticks})
	if err := j.Append(journal.Batch{New: []journal.Decision{{Prefix: netip.MustParsePrefix("192.0.2.7/32"), Until: t0.Add(time.Hour),
		Origin: "crowdsec", Scenario: "s", Type: "ban", Scope: journal.ScopeIP}}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := enf.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- enf.Run(ctx) }()
	for range 3 {
		ticks <- t0
	}
	if err := enf.Submit(ctx, journal.Batch{New: []journal.Decision{{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Until: t0.Add(time.Hour),
		Origin: "cscli", Scenario: "s", Type: "ban", Scope: journal.ScopeRange}}}, t0); err != nil {
		t.Fatal(err)
	}
	ticks <- t0
	_ = enf.Submit(ctx, journal.Batch{}, t0) // the tick is done once this returns
	h := enf.Health()
	if h.Repairs != 0 || !h.LastVerifyOK {
		t.Fatalf("dry run drifted: repairs %d, last verify ok %v", h.Repairs, h.LastVerifyOK)
	}
	if !strings.Contains(logs.String(), "203.0.113.0/24") {
		t.Fatalf("the added range is not logged:\n%s", logs.String())
	}
	cancel()
	<-done
}
