package journal

import (
	"bytes"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// t0 has millisecond precision and UTC location, so decisions built from it
// compare equal (==) to what the journal returns.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is an injectable Now.
type clock struct{ t time.Time }

func (c *clock) Now() time.Time { return c.t }

// logBuf captures a journal's log output for assertions.
type testJournal struct {
	*Journal
	opts  Options
	clock *clock
	logs  *bytes.Buffer
}

// openTest opens a journal in t.TempDir() with an injected clock and
// registers a cleanup that closes it and runs bbolt's integrity check on
// the file: every test ends with that check.
func openTest(t *testing.T, mod ...func(*Options)) *testJournal {
	t.Helper()
	c := &clock{t: t0}
	logs := &bytes.Buffer{}
	opts := Options{
		Path:    filepath.Join(t.TempDir(), "journal.db"),
		Timeout: 100 * time.Millisecond,
		Now:     c.Now,
		Logger:  slog.New(slog.NewTextHandler(logs, nil)),
	}
	for _, m := range mod {
		m(&opts)
	}
	j, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	tj := &testJournal{Journal: j, opts: opts, clock: c, logs: logs}
	t.Cleanup(func() {
		if err := tj.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		checkFile(t, opts.Path)
	})
	return tj
}

// reopen closes and opens the same file again with the same options.
func (tj *testJournal) reopen(t *testing.T) {
	t.Helper()
	if err := tj.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	j, err := Open(tj.opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	tj.Journal = j
}

// checkFile runs bbolt's consistency check on a closed journal file.
func checkFile(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Errorf("integrity check: open %s: %v", path, err)
		return
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for cerr := range tx.Check() {
			t.Errorf("integrity check %s: %v", path, cerr)
		}
		return nil
	})
	if err != nil {
		t.Errorf("integrity check %s: %v", path, err)
	}
}

func dec(prefix string, ttl time.Duration, origin string) Decision {
	p := netip.MustParsePrefix(prefix)
	scope := ScopeRange
	if p.IsSingleIP() {
		scope = ScopeIP
	}
	return Decision{Prefix: p, Until: t0.Add(ttl), Origin: origin, Scenario: "crowdsecurity/ssh-bf", Type: "ban", Scope: scope}
}

func viewMap(v *View) map[Key]Decision {
	m := make(map[Key]Decision)
	v.Each(func(d Decision) bool {
		m[d.Key()] = d
		return true
	})
	return m
}

func mapOf(ds ...Decision) map[Key]Decision {
	m := make(map[Key]Decision)
	for _, d := range ds {
		m[d.Key()] = d
	}
	return m
}

func diffMaps(t *testing.T, what string, got, want map[Key]Decision) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("%s: missing %v", what, k)
		} else if g != w {
			t.Errorf("%s: %v = %+v, want %+v", what, k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected %+v", what, g)
		}
	}
}

// Active returns the decisions still in force at now (Until > now), in no
// particular order: what a replay must put in the kernel.
func (v *View) Active(now time.Time) []Decision {
	v.mu.RLock()
	defer v.mu.RUnlock()
	t := untilMS(now)
	out := make([]Decision, 0, v.m.len())
	for k, val := range v.m.all {
		if val.until > t {
			out = append(out, v.decision(k, val))
		}
	}
	return out
}

// changes is what an Append did to the view, the way a caller deriving a
// kernel delta sees it: decisions inserted or changed (with a Full batch,
// the whole new view), with their new values, and decisions that left the
// view or moved to another origin, with their old values.
type changes struct{ Added, Removed []Decision }

// appendChanges appends b and reports its changes by comparing the view
// before and after.
func appendChanges(j *Journal, b Batch) (changes, error) {
	before := viewMap(j.View())
	err := j.Append(b)
	after := viewMap(j.View())
	var ch changes
	for k, old := range before {
		if nw, ok := after[k]; !ok || nw.Origin != old.Origin {
			ch.Removed = append(ch.Removed, old)
		}
	}
	for k, nw := range after {
		if old, ok := before[k]; b.Full || !ok || !sameDecision(old, nw) {
			ch.Added = append(ch.Added, nw)
		}
	}
	return ch, err
}

func sameDecision(a, b Decision) bool {
	return a.Prefix == b.Prefix && a.Until.Equal(b.Until) && a.Origin == b.Origin &&
		a.Scenario == b.Scenario && a.Type == b.Type && a.Scope == b.Scope
}
