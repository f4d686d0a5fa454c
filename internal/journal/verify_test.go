package journal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestReadOnlyOpen(t *testing.T) {
	j := openTest(t)
	a := dec("192.0.2.10/32", time.Hour, "cscli")
	if err := j.Append(Batch{New: []Decision{a}}); err != nil {
		t.Fatal(err)
	}
	// While the writer holds the file, a read-only open is refused.
	ro := j.opts
	ro.ReadOnly = true
	if _, err := Open(ro); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-only open beside the writer = %v, want ErrLocked", err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(ro.Path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(ro)
	if err != nil {
		t.Fatalf("read-only open: %v", err)
	}
	if got, ok := r.View().Since(a.Key()); !ok || !got.Equal(t0) {
		t.Fatalf("Since = %v, %v", got, ok)
	}
	if err := r.Append(Batch{New: []Decision{dec("192.0.2.11/32", time.Hour, "cscli")}}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Append on read-only = %v, want ErrReadOnly", err)
	}
	if err := r.Compact(); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Compact on read-only = %v, want ErrReadOnly", err)
	}
	rep, err := r.Verify()
	if err != nil || !rep.OK() || rep.Events != 1 || rep.EventDecisions != 1 {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(ro.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("read-only open changed the file")
	}
	j.Journal, err = Open(j.opts) // for the cleanup's Close
	if err != nil {
		t.Fatal(err)
	}
}

func TestReadOnlyMissingAndCorrupt(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "sub", "journal.db")
	if _, err := Open(Options{Path: missing, ReadOnly: true}); err == nil {
		t.Fatal("read-only open of a missing file succeeded")
	}
	if _, err := os.Stat(filepath.Dir(missing)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read-only open created the directory: %v", err)
	}
	bad := filepath.Join(dir, "bad.db")
	if err := os.WriteFile(bad, bytes.Repeat([]byte{0xa5}, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Path: bad, ReadOnly: true}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read-only open of garbage = %v, want ErrCorrupt", err)
	}
	if _, err := os.Stat(bad); err != nil {
		t.Fatalf("corrupt file moved: %v", err)
	}
}

func TestVerifyFindsBadEvent(t *testing.T) {
	j := openTest(t)
	if err := j.Append(Batch{New: []Decision{dec("192.0.2.10/32", time.Hour, "cscli")}}); err != nil {
		t.Fatal(err)
	}
	if rep, err := j.Verify(); err != nil || !rep.OK() {
		t.Fatalf("Verify of a good journal = %+v, %v", rep, err)
	}
	// Overwrite the event with garbage through bbolt, as a bit flip would.
	if err := j.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEvents).Put(seqKey(1), []byte{2, 0, 0, 0, 1, 2, 3, 4})
	}); err != nil {
		t.Fatal(err)
	}
	rep, err := j.Verify()
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || len(rep.Problems) != 1 {
		t.Fatalf("Verify = %+v, want one problem", rep)
	}
	// Restore a valid value so the cleanup's integrity check is about bbolt.
	if err := j.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketEvents).Delete(seqKey(1)) }); err != nil {
		t.Fatal(err)
	}
}
