package journal

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

func manyDecisions(n int, origin string) []Decision {
	ds := make([]Decision, n)
	for i := range ds {
		ds[i] = dec(fmt.Sprintf("198.18.%d.%d/32", i/256, i%256), time.Hour, origin)
	}
	return ds
}

func requireNotDurable(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrNotDurable) {
		t.Fatalf("Append = %v, want ErrNotDurable", err)
	}
}

// A disk that fills: every batch still reaches the view, nothing is
// written while the file lags, and one Persist restores durability.
func TestWriteFailureKeepsView(t *testing.T) {
	j := openTest(t)
	a := dec("192.0.2.1/32", time.Hour, "crowdsec")
	if err := j.Append(Batch{New: []Decision{a}}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(j.opts.Path)
	if err != nil {
		t.Fatal(err)
	}
	restore := testenv.LimitFileSize(t, uint64(fi.Size()))

	big := manyDecisions(5000, "crowdsec")
	requireNotDurable(t, j.Append(Batch{New: big}))
	if got := j.View().Len(); got != 1+len(big) {
		t.Fatalf("view holds %d after a failed write, want %d", got, 1+len(big))
	}
	st := j.Stats()
	if st.WriteError == "" || st.WriteFailures != 1 || !st.NotDurableSince.Equal(t0) {
		t.Fatalf("stats after a failed write: %+v", st)
	}
	c := dec("192.0.2.3/32", time.Hour, "crowdsec")
	requireNotDurable(t, j.Append(Batch{New: []Decision{c}}))
	if st := j.Stats(); st.WriteFailures != 1 {
		t.Fatalf("a lagging journal wrote an event: %d failures, want 1", st.WriteFailures)
	}
	if err := j.Persist(); err == nil {
		t.Fatal("Persist succeeded with the disk still full")
	}
	// A new origin while lagging gets its index in memory.
	d := dec("192.0.2.4/32", time.Hour, "lists:new")
	ch, err := appendChanges(j.Journal, Batch{Full: true, New: []Decision{a, d}})
	requireNotDurable(t, err)
	if len(ch.Added) != 2 || len(ch.Removed) != len(big)+1 {
		t.Fatalf("changes of a lagging full batch: %d added, %d removed", len(ch.Added), len(ch.Removed))
	}
	idx, ok := j.OriginIndex("lists:new")
	if !ok {
		t.Fatal("new origin has no index while lagging")
	}

	restore()
	if err := j.Persist(); err != nil {
		t.Fatalf("Persist with space back: %v", err)
	}
	if err := j.PersistErr(); err != nil {
		t.Fatalf("PersistErr after Persist: %v", err)
	}
	if st := j.Stats(); st.WriteError != "" || !st.NotDurableSince.IsZero() || st.WriteFailures != 2 {
		t.Fatalf("stats after Persist: %+v", st)
	}
	j.reopen(t)
	diffMaps(t, "reopened after Persist", viewMap(j.View()), mapOf(a, d))
	if got, ok := j.OriginIndex("lists:new"); !ok || got != idx {
		t.Fatalf("origin index after reopen = %d, %t; want %d", got, ok, idx)
	}
	// Durable again: the next batch is an ordinary event.
	e := dec("192.0.2.5/32", time.Hour, "lists:new")
	if err := j.Append(Batch{New: []Decision{e}}); err != nil {
		t.Fatal(err)
	}
	j.reopen(t)
	diffMaps(t, "reopened after a later append", viewMap(j.View()), mapOf(a, d, e))
}

// The file changed under the daemon: never a panic; the file is moved aside
// and rewritten from the view, and still locked against a second instance.
func TestFileChangedWhileRunning(t *testing.T) {
	random := func(n int) []byte {
		r := rand.New(rand.NewPCG(3, 4))
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	tests := []struct {
		name   string
		aside  bool // a file is left to move aside
		mangle func(t *testing.T, path string)
	}{
		{"overwritten in place with random bytes", true, func(t *testing.T, path string) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, random(int(fi.Size())), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"data pages overwritten, meta pages kept", true, func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(random(int(fi.Size())-2*4096), 2*4096); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated to zero", true, func(t *testing.T, path string) {
			if err := os.Truncate(path, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated by half", true, func(t *testing.T, path string) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, fi.Size()/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"replaced by another file", true, func(t *testing.T, path string) {
			other := path + ".new"
			if err := os.WriteFile(other, []byte("not a journal"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(other, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"removed", false, func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := openTest(t)
			before := manyDecisions(300, "crowdsec") // several pages
			if err := j.Append(Batch{Full: true, New: before}); err != nil {
				t.Fatal(err)
			}
			tt.mangle(t, j.opts.Path)
			a := dec("192.0.2.1/32", time.Hour, "lists:x")
			err := j.Append(Batch{New: []Decision{a}})
			if errors.Is(err, ErrNotDurable) {
				// Damage bbolt reported as an error rather than a panic is
				// rewritten by the next Persist.
				err = j.Persist()
			}
			if err != nil {
				t.Fatalf("after the file changed: %v\n%s", err, j.logs)
			}
			st := j.Stats()
			if st.Rewrites != 1 || st.WriteError != "" {
				t.Fatalf("stats: %+v", st)
			}
			asides, _ := filepath.Glob(j.opts.Path + ".corrupt-*")
			if want := map[bool]int{true: 1, false: 0}[tt.aside]; len(asides) != want {
				t.Fatalf("moved-aside files: %v, want %d", asides, want)
			}
			if _, err := Open(Options{Path: j.opts.Path, Timeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
				t.Fatalf("second Open of the rewritten file = %v, want ErrLocked", err)
			}
			j.reopen(t)
			diffMaps(t, "reopened", viewMap(j.View()), mapOf(append(before, a)...))
			if j.Recovered() != "" {
				t.Fatalf("rewritten file found corrupt at reopen (moved to %s)", j.Recovered())
			}
		})
	}
}

// A journal whose file cannot even be created still opens with
// KeepUnwritable, holds the lock, enforces from memory, and becomes
// durable once the disk allows.
func TestKeepUnwritable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	opts := Options{Path: path, Timeout: 50 * time.Millisecond, Now: (&clock{t: t0}).Now, KeepUnwritable: true}
	restore := testenv.LimitFileSize(t, 0)
	if _, err := Open(Options{Path: path, Timeout: opts.Timeout}); err == nil {
		t.Fatal("Open without KeepUnwritable succeeded on an unwritable file")
	}
	j, err := Open(opts)
	if err != nil {
		t.Fatalf("Open with KeepUnwritable: %v", err)
	}
	defer j.Close()
	if j.PersistErr() == nil {
		t.Fatal("PersistErr is nil on an unwritable journal")
	}
	if _, err := Open(opts); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	a := dec("192.0.2.1/32", time.Hour, "crowdsec")
	requireNotDurable(t, j.Append(Batch{New: []Decision{a}}))
	if _, ok := j.View().Get(a.Key()); !ok {
		t.Fatal("view lacks the batch")
	}
	restore()
	if err := j.Persist(); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	if j2.PersistErr() != nil {
		t.Fatalf("reopened journal lags: %v", j2.PersistErr())
	}
	diffMaps(t, "reopened", viewMap(j2.View()), mapOf(a))
}
