package heal

import (
	"context"
	"fmt"
	"iter"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/fake"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// stagedFake is the fake backend preparing its replay while the journal is
// written (backend.StagedReplayer); onReady runs once ready has returned,
// before anything is enforced.
type stagedFake struct {
	*fake.Backend
	calls   int
	onReady func()
}

var _ backend.StagedReplayer = (*stagedFake)(nil)

func (s *stagedFake) ReplayWhen(ctx context.Context, active iter.Seq[backend.Entry], ready func() error) error {
	s.calls++
	if err := ready(); err != nil {
		return err
	}
	if s.onReady != nil {
		s.onReady()
	}
	return s.Backend.Replay(ctx, active)
}

// newStagedRig is a started rig whose backend is a stagedFake.
func newStagedRig(t *testing.T) (*rig, *stagedFake) {
	var s *stagedFake
	r := newRigOn(t, Config{}, func(f *fake.Backend) backend.Backend {
		s = &stagedFake{Backend: f}
		return s
	})
	r.start()
	return r, s
}

func blocklist(n int) []journal.Decision {
	out := make([]journal.Decision, n)
	for i := range out {
		out[i] = ban(fmt.Sprintf("198.18.%d.%d/32", i/256, i%256), "lists:x", time.Hour)
	}
	return out
}

// A full pull is enforced through the staged replay, and only once its
// snapshot is on disk: a copy of the file taken when ready returns holds it.
func TestFullBatchEnforcedAfterSnapshotWritten(t *testing.T) {
	r, s := newStagedRig(t)
	ds := blocklist(3000)
	s.onReady = func() {
		data, err := os.ReadFile(r.j.Path())
		if err != nil {
			t.Error(err)
			return
		}
		cp := filepath.Join(t.TempDir(), "copy.db")
		if err := os.WriteFile(cp, data, 0o600); err != nil {
			t.Error(err)
			return
		}
		j, err := journal.Open(journal.Options{Path: cp, Now: r.clk.Now, ReadOnly: true})
		if err != nil {
			t.Error(err)
			return
		}
		defer j.Close()
		if n := j.View().Len(); n != len(ds) {
			t.Errorf("on disk when ready returned: %d entries, want %d", n, len(ds))
		}
	}
	r.submit(journal.Batch{Full: true, New: ds})
	if s.calls != 1 {
		t.Fatalf("ReplayWhen called %d times for one full batch, want 1", s.calls)
	}
	o, _ := r.j.OriginIndex("lists:x")
	k := r.be.SetKeyOf(o, false).Origin
	for _, d := range []journal.Decision{ds[0], ds[len(ds)-1]} {
		if !r.be.Has(k, d.Prefix) {
			t.Fatalf("%s not enforced", d.Prefix)
		}
	}
	// A delta goes through Apply, not a replay.
	r.submit(journal.Batch{New: []journal.Decision{ban("192.0.2.1/32", "lists:x", time.Hour)}})
	if s.calls != 1 {
		t.Fatalf("a delta batch replayed (%d calls)", s.calls)
	}
}

// A snapshot that cannot be written does not hold the replay back: the
// pull is enforced from memory, the lag is reported, the loop goes on.
func TestFullBatchEnforcedWhenSnapshotFails(t *testing.T) {
	r, s := newStagedRig(t)
	r.submit(journal.Batch{New: []journal.Decision{ban("192.0.2.1/32", "crowdsec", time.Hour)}})
	fi, err := os.Stat(r.j.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer testenv.LimitFileSize(t, uint64(fi.Size()))()
	ready := false
	s.onReady = func() { ready = true }
	ds := blocklist(5000)
	r.submit(journal.Batch{Full: true, New: ds})
	if !ready || r.j.PersistErr() == nil {
		t.Fatalf("ready returned %v, journal lag %v: want the replay to go on and the lag reported", ready, r.j.PersistErr())
	}
	o, _ := r.j.OriginIndex("lists:x")
	if !r.be.Has(r.be.SetKeyOf(o, false).Origin, ds[len(ds)-1].Prefix) {
		t.Fatal("full batch not enforced after its snapshot failed")
	}
	if err := r.enf.Do(context.Background(), func(context.Context) {}); err != nil {
		t.Fatalf("loop not running: %v", err)
	}
}
