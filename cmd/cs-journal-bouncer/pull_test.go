package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/apiclient"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/lapi"
)

// fakeLAPI answers pulls from a script: one error (nil: success) and the
// rejections per call, in order; past the script every pull succeeds.
type fakeLAPI struct {
	mu      sync.Mutex
	errs    []error
	rejects [][]lapi.Rejection
	fulls   []bool
}

func (f *fakeLAPI) PullBatch(_ context.Context, startup bool, opts lapi.NormalizeOptions, _ func() time.Time) (journal.Batch, []lapi.Rejection, lapi.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := len(f.fulls)
	f.fulls = append(f.fulls, startup)
	if opts.OnNew != nil { // one decision accepted before the pull ends
		opts.OnNew(netip.MustParsePrefix("192.0.2.1/32"), time.Unix(0, 0), "cscli")
	}
	var rs []lapi.Rejection
	if i < len(f.rejects) {
		rs = f.rejects[i]
	}
	if i < len(f.errs) && f.errs[i] != nil {
		return journal.Batch{}, nil, lapi.Stats{}, f.errs[i]
	}
	return journal.Batch{Full: startup}, rs, lapi.Stats{}, nil
}

func (f *fakeLAPI) pulls() []bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]bool(nil), f.fulls...)
}

// fakeSink records what the puller tells the enforcer.
type fakeSink struct {
	mu           sync.Mutex
	submits      int
	unauthorized bool
	reachable    bool
}

func (s *fakeSink) Submit(context.Context, journal.Batch, time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.submits++
	return nil
}
func (s *fakeSink) SetLAPI(reachable bool, _ time.Time, _ bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reachable, s.unauthorized = reachable, false
}
func (s *fakeSink) SetLAPIUnauthorized() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reachable, s.unauthorized = false, true
}

type pullRig struct {
	p      *puller
	src    *fakeLAPI
	sink   *fakeSink
	ticks  chan time.Time
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
	logs   *syncBuilder
}

func newPullRig(src *fakeLAPI) *pullRig {
	r := &pullRig{src: src, sink: &fakeSink{}, ticks: make(chan time.Time), now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), logs: &syncBuilder{}}
	r.p = &puller{
		client: src, enf: r.sink, log: slog.New(slog.NewTextHandler(r.logs, nil)),
		every: 10 * time.Second, fullEvery: time.Hour, retryBoot: true,
		now: func() time.Time { r.mu.Lock(); defer r.mu.Unlock(); return r.now },
		sleep: func(_ context.Context, d time.Duration) error {
			r.mu.Lock()
			r.sleeps = append(r.sleeps, d)
			r.mu.Unlock()
			return nil
		},
		ticks:  r.ticks,
		jitter: func() float64 { return 0 },
	}
	return r
}

func (r *pullRig) advance(d time.Duration) { r.mu.Lock(); r.now = r.now.Add(d); r.mu.Unlock() }

// start runs the puller and returns a stop that waits for it to end.
func (r *pullRig) start(t *testing.T) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.p.run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	// tick counts pulls before it sends: the boot pull must be counted
	// already, or tick would take it for the tick's.
	for deadline := time.Now().Add(10 * time.Second); len(r.src.pulls()) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no boot pull")
		}
	}
	return stop
}

// syncBuilder is a log sink safe to read while the puller writes.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (r *pullRig) tick(t *testing.T) {
	t.Helper()
	n := len(r.src.pulls())
	r.ticks <- r.now
	deadline := time.Now().Add(10 * time.Second)
	for len(r.src.pulls()) == n {
		if time.Now().After(deadline) {
			t.Fatal("tick did not pull")
		}
		time.Sleep(time.Millisecond)
	}
}

var errDown = errors.New("connection refused")

// forbidden is the error the API client returns for LAPI's answer to a
// wrong key: HTTP 403 {"message":"access forbidden"}.
func forbidden() error {
	m := "access forbidden"
	er := &apiclient.ErrorResponse{}
	er.Message = &m
	return fmt.Errorf("pull decisions stream (startup=true): %w", er)
}

func TestPullerFullResyncInterval(t *testing.T) {
	r := newPullRig(&fakeLAPI{})
	r.start(t)
	r.tick(t)     // the loop took a tick: the boot pull has scheduled the next full one
	for range 6 { // 6 × 10 min: only the last reaches the hour
		r.advance(10 * time.Minute)
		r.tick(t)
	}
	got := r.src.pulls()
	want := []bool{true, false, false, false, false, false, false, true}
	if len(got) != len(want) {
		t.Fatalf("pulls %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("pulls %v, want %v (full at boot and after an hour)", got, want)
		}
	}
}

// A failed delta makes the next pull a full one.
func TestPullerFullAfterFailure(t *testing.T) {
	r := newPullRig(&fakeLAPI{errs: []error{nil, errDown}})
	r.start(t)
	r.tick(t)
	r.tick(t)
	if got := r.src.pulls(); len(got) != 3 || got[1] || !got[2] {
		t.Fatalf("pulls %v, want boot, failed delta, then a full pull", got)
	}
}

func TestPullerJitter(t *testing.T) {
	p := &puller{fullEvery: time.Hour}
	for _, c := range []struct {
		j    float64
		want time.Duration
	}{{-1, 54 * time.Minute}, {0, time.Hour}, {0.5, 63 * time.Minute}} {
		p.jitter = func() float64 { return c.j }
		if got := p.fullDue(); got != c.want {
			t.Errorf("jitter %v: full resync in %v, want %v", c.j, got, c.want)
		}
	}
	p.jitter = nil
	p.init()
	seen := map[time.Duration]bool{}
	for range 50 {
		d := p.fullDue()
		if d < 54*time.Minute || d > 66*time.Minute {
			t.Fatalf("full resync in %v: outside ±10%%", d)
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Fatal("the default jitter does not vary")
	}
}

func TestPullerBoot(t *testing.T) {
	for _, c := range []struct {
		name       string
		errs       []error
		retry      bool
		empty      bool
		wantErr    error
		wantSleeps []time.Duration
		wantLog    string
	}{
		{name: "retries with backoff", errs: []error{errDown, errDown, errDown}, retry: true, empty: true,
			wantSleeps: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}, wantLog: "LAPI unreachable"},
		{name: "no retry, empty journal: exit", errs: []error{errDown}, empty: true, wantErr: errNoLAPIAtBoot},
		{name: "no retry, journal enforces: keep trying", errs: []error{errDown}, wantSleeps: []time.Duration{time.Second}},
		{name: "key refused, no retry, empty journal: exit saying why", errs: []error{forbidden()}, empty: true, wantErr: lapi.ErrUnauthorized},
		{name: "key refused, retry: say so", errs: []error{forbidden()}, retry: true, empty: true,
			wantSleeps: []time.Duration{time.Second}, wantLog: "rejects our API key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newPullRig(&fakeLAPI{errs: c.errs})
			r.p.retryBoot, r.p.emptyAtBoot = c.retry, c.empty
			r.p.init()
			err := r.p.boot(context.Background())
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("boot = %v, want %v", err, c.wantErr)
			}
			if len(r.sleeps) != len(c.wantSleeps) {
				t.Fatalf("sleeps %v, want %v", r.sleeps, c.wantSleeps)
			}
			for i := range r.sleeps {
				if r.sleeps[i] != c.wantSleeps[i] {
					t.Fatalf("sleeps %v, want %v", r.sleeps, c.wantSleeps)
				}
			}
			if !strings.Contains(r.logs.String(), c.wantLog) {
				t.Fatalf("log lacks %q:\n%s", c.wantLog, r.logs)
			}
		})
	}
}

// A refused key shows in the enforcer's health as such, not as an outage,
// and a later success clears it.
func TestPullerUnauthorizedHealth(t *testing.T) {
	r := newPullRig(&fakeLAPI{errs: []error{nil, forbidden(), forbidden()}})
	r.start(t)
	state := func() (unauth, reachable bool) {
		r.sink.mu.Lock()
		defer r.sink.mu.Unlock()
		return r.sink.unauthorized, r.sink.reachable
	}
	r.tick(t)
	r.tick(t) // once the loop takes this tick, the previous pull is done
	if unauth, _ := state(); !unauth {
		t.Fatal("a 403 was not reported as a refused key")
	}
	r.tick(t)
	r.tick(t)
	if unauth, reachable := state(); unauth || !reachable {
		t.Fatal("a successful pull did not clear the refused-key state")
	}
}

// A decision normalization refuses is reported once, not at every full
// resync; once a full pull no longer lists it, it is forgotten.
func TestPullerRejectionsOnce(t *testing.T) {
	bad := lapi.Rejection{Value: "203.0.113.0/24", Scope: "Range", Type: "ban", Origin: "lists", Reason: "set_type"}
	r := newPullRig(&fakeLAPI{rejects: [][]lapi.Rejection{{bad, bad}, {bad}, {bad}, nil, {bad}}})
	r.p.fullEvery = time.Nanosecond // every pull after a clock step is full
	stop := r.start(t)
	r.tick(t) // a delta listing it again; and the boot pull is done
	for range 3 {
		r.advance(time.Second)
		r.tick(t)
	}
	// tick returns once its pull has started; the next one starts only
	// after it has finished, rejections noted.
	r.tick(t)
	stop()
	if got := r.p.rejected.snapshot()["set_type"]; got != 2 {
		t.Fatalf("counted %d, want 2 (once, then again after it left and came back)", got)
	}
	if n := strings.Count(r.logs.String(), "rejected decision"); n != 2 {
		t.Fatalf("logged %d times, want 2", n)
	}
}

// fakePreload records what the puller hands a backend's preload.
type fakePreload struct {
	adds     int
	finishes []bool
}

func (f *fakePreload) Add(netip.Prefix, time.Time, string) { f.adds++ }
func (f *fakePreload) Finish(keep bool)                    { f.finishes = append(f.finishes, keep) }

// Full pulls, and only they, go through the backend's preload, which is
// kept when the pull succeeds and dropped when it fails.
func TestPullerPreload(t *testing.T) {
	r := newPullRig(&fakeLAPI{errs: []error{nil, nil, errDown, errDown}})
	var mu sync.Mutex
	var pls []*fakePreload
	r.p.preload = func(context.Context) backend.Preload {
		mu.Lock()
		defer mu.Unlock()
		pl := &fakePreload{}
		pls = append(pls, pl)
		return pl
	}
	stop := r.start(t)
	r.tick(t) // delta
	r.tick(t) // failed delta
	r.tick(t) // full after the failure: fails too
	stop()
	if got := r.src.pulls(); !slices.Equal(got, []bool{true, false, false, true}) {
		t.Fatalf("pulls %v, want full, delta, delta, full", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(pls) != 2 {
		t.Fatalf("%d preloads for 2 full pulls", len(pls))
	}
	for i, want := range []bool{true, false} {
		if pls[i].adds != 1 || !slices.Equal(pls[i].finishes, []bool{want}) {
			t.Errorf("full pull %d: preload got %d adds and finishes %v, want 1 add and [%v]", i, pls[i].adds, pls[i].finishes, want)
		}
	}
}
