package admin

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/fake"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/heal"
)

// The daemon's service answers through a running enforcer loop, over the
// socket, and reports drift the fake kernel really has.
func TestAdminDaemonService(t *testing.T) {
	now := func() time.Time { return t0.Add(time.Minute) }
	j := testJournal(t, dec("192.0.2.10/32", "cscli", time.Hour))
	be := fake.New(now)
	ticks := make(chan time.Time) // never ticks: no repair behind the test's back
	enf := heal.New(heal.Config{}, heal.Deps{Journal: j, Backend: be, Logger: slog.New(slog.DiscardHandler), Now: now, Ticks: ticks})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := enf.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- enf.Run(ctx) }()
	defer func() {
		cancel()
		<-runErr
	}()

	path, _ := serve(t, NewDaemonService(enf, j, now))
	c := NewClient(path)
	st, err := c.Stats(t.Context())
	if err != nil || st.Active != 1 {
		t.Fatalf("Stats = %+v, %v", st, err)
	}
	sh, err := c.Show(t.Context(), netip.MustParsePrefix("192.0.2.10/32"))
	if err != nil || !sh.Blocked() || !sh.Matches[0].Since.Equal(t0) {
		t.Fatalf("Show = %+v, %v", sh, err)
	}
	if rep, err := c.Verify(t.Context()); err != nil || !rep.OK() {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
	if ch, err := c.Check(t.Context()); err != nil || !ch.Clean {
		t.Fatalf("Check before the fault = %+v, %v", ch, err)
	}
	be.RemoveMember(backend.SetKey{Origin: 0}, netip.MustParsePrefix("192.0.2.10/32"))
	ch, err := c.Check(t.Context())
	if err != nil || ch.Clean || !strings.Contains(ch.Drift[len(ch.Drift)-1].Detail, "192.0.2.10/32") {
		t.Fatalf("Check after the fault = %+v, %v", ch, err)
	}
	if be.Has(0, netip.MustParsePrefix("192.0.2.10/32")) {
		t.Fatal("Check repaired the kernel")
	}
}
