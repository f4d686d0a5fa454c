package journal

import (
	"encoding/binary"
	"fmt"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// VerifyReport is what Verify found. The journal is sound when Problems is
// empty.
type VerifyReport struct {
	// Path is the journal file.
	Path string `json:"path"`
	// SnapshotDecisions is the number of decisions in the snapshot record.
	SnapshotDecisions int `json:"snapshot_decisions"`
	// Events is the number of events after the snapshot; EventDecisions
	// the new and deleted decisions they carry.
	Events         int `json:"events"`
	EventDecisions int `json:"event_decisions"`
	// Problems lists every integrity failure: bbolt's page check, layout,
	// event order, records that do not decode.
	Problems []string `json:"problems"`
}

// OK reports whether no problem was found.
func (r VerifyReport) OK() bool { return len(r.Problems) == 0 }

// counter is the decodeHandler that only counts.
type counter struct{ n int }

func (c *counter) full(int)        {}
func (c *counter) at(int64)        {}
func (c *counter) add(record)      { c.n++ }
func (c *counter) del(Key)         { c.n++ }
func (c *counter) reset() *counter { c.n = 0; return c }

// Verify checks the file without changing it: bbolt's consistency check of
// every page, the bucket layout, the order of events, and a full decode of
// the snapshot and of every event (CRC included). It keeps going after a
// problem so the report lists them all. The error is for a check that could
// not run at all (a closed journal); a corrupt file is a report with
// Problems, not an error.
//
// It runs in its own read transaction, so it may run beside Append; to see
// the same state as the view, run it where the journal's writer runs (the
// enforcer loop).
func (j *Journal) Verify() (rep VerifyReport, err error) {
	rep.Path = j.path
	rep.Problems = []string{}
	problem := func(format string, args ...any) {
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
	}
	j.mu.Lock()
	db := j.db
	j.mu.Unlock()
	if db == nil {
		return rep, fmt.Errorf("journal verify %s: not open (it cannot be written; the view is in memory only)", j.path)
	}
	err = db.View(func(tx *bolt.Tx) (err error) {
		// A damaged page may panic bbolt; report it instead of crashing the
		// daemon the CLI asked.
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if r := recover(); r != nil {
				problem("panic while reading the file: %v", r)
			}
		}()
		verifyTx(tx, &rep, problem)
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("journal verify %s: %w", j.path, err)
	}
	return rep, nil
}

func verifyTx(tx *bolt.Tx, rep *VerifyReport, problem func(string, ...any)) {
	for cerr := range tx.Check() {
		problem("bbolt check: %v", cerr)
	}
	meta, ev, snap := tx.Bucket(bucketMeta), tx.Bucket(bucketEvents), tx.Bucket(bucketSnapshot)
	if meta == nil || ev == nil || snap == nil || tx.Bucket(bucketOrigins) == nil {
		if meta == nil && ev == nil && snap == nil && tx.Bucket(bucketOrigins) == nil {
			return // never initialized: an empty journal
		}
		problem("missing bucket (meta %t, events %t, snapshot %t, origins %t)", meta != nil, ev != nil, snap != nil, tx.Bucket(bucketOrigins) != nil)
		return
	}
	if v := meta.Get(keyVersion); len(v) != 1 || v[0] != metaVersion {
		problem("layout version %x, want %d", v, metaVersion)
	}
	var c counter
	if data := snap.Get(keySnapshot); data != nil {
		if err := decodeBatch(data, c.reset()); err != nil {
			problem("snapshot: %v", err)
		}
		rep.SnapshotDecisions = c.n
	}
	var last uint64
	if v := meta.Get(keySnapshotSeq); len(v) == 8 {
		last = binary.BigEndian.Uint64(v)
	} else if v != nil {
		problem("snapshot seq is %d bytes", len(v))
	}
	cur := ev.Cursor()
	for k, data := cur.First(); k != nil; k, data = cur.Next() {
		rep.Events++
		if len(k) != 8 {
			problem("event key of %d bytes", len(k))
			continue
		}
		seq := binary.BigEndian.Uint64(k)
		if seq <= last || seq > ev.Sequence() {
			problem("event %d out of order (after %d, sequence %d)", seq, last, ev.Sequence())
		}
		last = seq
		if err := decodeBatch(data, c.reset()); err != nil {
			problem("event %d: %v", seq, err)
		}
		rep.EventDecisions += c.n
	}
}
