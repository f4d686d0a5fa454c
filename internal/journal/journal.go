// Package journal is the bouncer's write-ahead log of ban decisions: every
// batch pulled from LAPI is committed (fsync) to a bbolt file before the
// kernel sees it, so that after a restart — or when someone flushes our
// chains and sets — the active set can be replayed without LAPI.
//
// The file holds a snapshot of the view plus the events appended since;
// compaction folds the events into a new snapshot so the file stays bounded.
// The view itself lives in memory (see View).
package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Defaults for Options fields left zero.
const (
	DefaultTimeout      = time.Second
	DefaultCompactEvery = 200
)

// Sentinel errors. Test with errors.Is; the returned errors wrap them with
// the operation and path.
var (
	// ErrLocked is returned by Open when another process holds the journal's
	// lock past Options.Timeout: most likely a second bouncer instance.
	ErrLocked = errors.New("locked by another process (is another cs-journal-bouncer running?)")
	// ErrInvalidDecision is returned by Append when a decision or deleted key
	// carries a prefix that is invalid or not masked; nothing is written.
	ErrInvalidDecision = errors.New("invalid decision")
	// ErrCorrupt is returned by a ReadOnly Open when the file cannot be
	// trusted (a read-write Open moves such a file aside instead).
	ErrCorrupt = errors.New("journal corrupt")
	// ErrReadOnly is returned by Append and Compact on a journal opened
	// with Options.ReadOnly.
	ErrReadOnly = errors.New("journal opened read-only")
	// ErrNotDurable is returned by Append when the batch is in the view but
	// not in the file (disk full, read-only, file damaged or replaced): the
	// caller must still enforce it, and Persist writes it later.
	ErrNotDurable = errors.New("journal not durable: the view is ahead of the file")
)

// Bucket and key names. The layout is versioned by metaVersion.
var (
	bucketMeta     = []byte("meta")
	bucketEvents   = []byte("events")   // big-endian uint64 seq -> encoded Batch
	bucketSnapshot = []byte("snapshot") // keySnapshot -> encoded full Batch
	bucketOrigins  = []byte("origins")  // origin name -> uvarint index

	keyVersion     = []byte("version")
	keySnapshotSeq = []byte("snapshot_seq") // last event seq folded into the snapshot
	keySnapshot    = []byte("view")
)

const metaVersion = 1

// Options configure Open.
type Options struct {
	// Path of the bbolt file. Its parent directory is created 0700 if
	// missing; the file is created 0600.
	Path string
	// Timeout bounds the wait for the file lock, so a second instance fails
	// fast with ErrLocked. Default DefaultTimeout.
	Timeout time.Duration
	// Now is the clock used for expiry; default time.Now.
	Now func() time.Time
	// Logger receives corruption reports and warnings; default discards.
	Logger *slog.Logger
	// CompactEvery is how many events may accumulate after the snapshot
	// before Append compacts. Default DefaultCompactEvery.
	CompactEvery int
	// ReadOnly opens the file for inspection (the journal CLI): a shared
	// lock, so it fails with ErrLocked while a daemon holds the file; no
	// directory or file is created, a corrupt file is reported (ErrCorrupt)
	// and left where it is, and Append and Compact fail with ErrReadOnly.
	ReadOnly bool
	// KeepUnwritable makes a read-write Open succeed when the file or its
	// directory cannot be written (read-only file system, disk full, an
	// unreadable or corrupt file that cannot be moved aside): it loads what
	// it can read, holds the lock, and returns a journal whose file lags
	// (PersistErr non-nil) until Persist manages to open it for writing.
	// Without it such an Open fails. ErrLocked always fails.
	KeepUnwritable bool
}

// Journal is an open journal file plus its in-memory view. Its methods are
// safe for concurrent use, but the design has one owner — the enforcer
// goroutine — calling Append and Compact; others only read (Stats).
type Journal struct {
	mu       sync.Mutex // serializes writers and guards the fields below
	db       *bolt.DB   // nil while the file cannot be opened for writing
	path     string
	timeout  time.Duration
	now      func() time.Time
	log      *slog.Logger
	every    int
	readOnly bool
	view     *View
	// origins and originSeq change under mu and omu both, so that readers
	// holding only omu (Origins, OriginIndex) are not held up by a
	// snapshot being written under mu (AppendFull).
	omu       sync.RWMutex
	origins   map[string]int
	originSeq int // next origin index
	events    int // events stored after the snapshot
	recovered string

	// The file as we last wrote (or loaded) it, to notice it changing
	// under us before bbolt reads its mmapped pages.
	file fileState
	// lockFile holds the lock while db is nil (see Options.KeepUnwritable).
	lockFile *os.File
	// lag is why the file is behind the view (nil: durable), since when,
	// and how many writes failed since Open.
	lag      error
	lagSince time.Time
	failures uint64
	rewrites uint64 // files moved aside and rewritten while running
}

// Recovered returns, when Open found the journal corrupt, the path the bad
// file was moved to; otherwise "". A caller seeing it should log loudly,
// count it, and force a full LAPI resync: the view started empty.
func (j *Journal) Recovered() string { return j.recovered }

// View returns the in-memory active set. Append updates it in place.
func (j *Journal) View() *View { return j.view }

// Path returns the journal file's path.
func (j *Journal) Path() string { return j.path }

// OriginIndex returns the stable index assigned to origin by the first
// Append that carried it. Indices are 0, 1, 2, … in order of first sight,
// persisted, and never reused, so kernel set names derived from them stay
// the same across restarts.
func (j *Journal) OriginIndex(origin string) (int, bool) {
	j.omu.RLock()
	defer j.omu.RUnlock()
	i, ok := j.origins[origin]
	return i, ok
}

// Origins returns a copy of the origin → index map.
func (j *Journal) Origins() map[string]int {
	j.omu.RLock()
	defer j.omu.RUnlock()
	out := make(map[string]int, len(j.origins))
	for k, v := range j.origins {
		out[k] = v
	}
	return out
}

// Append makes b durable (one bbolt transaction, fsync on commit) and
// applies it to the view.
//
// A delta batch is stored as one event under the next sequence number. A
// Full batch (LAPI startup=true) becomes the new snapshot and all events are
// deleted, in the same transaction. New origins get their index in that
// transaction too. An empty delta batch is not written (LAPI polls return
// many). Decisions already expired at Now are not inserted (and remove the
// key they would replace).
//
// Errors: ErrInvalidDecision (and ErrReadOnly) leave the file and the view
// as they were. Any other failure wraps ErrNotDurable: the view — and so
// what the caller must enforce — has the batch, the file does not (see
// Persist).
func (j *Journal) Append(b Batch) error {
	if b.Full {
		persist, err := j.AppendFull(b)
		if err != nil {
			return err
		}
		return persist()
	}
	if err := validate(b); err != nil {
		return err
	}
	if b.Len() == 0 {
		return nil
	}
	if j.readOnly {
		return fmt.Errorf("journal append to %s: %w", j.path, ErrReadOnly)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	now := untilMS(j.now())
	lagging := j.lag != nil
	// Origins get their index in memory first: the kernel set names derive
	// from it, and the batch is enforced even when the write fails.
	j.appendDelta(b, now, j.newOrigins(b))
	return j.afterWrite(now, lagging)
}

// AppendFull is Append of a Full batch in two steps, so that the caller
// can prepare the kernel while the file is written: when it returns, the
// view and the origins hold b; persist writes the snapshot and returns
// what Append would have. persist must be called exactly once, from any
// goroutine. Until it returns, View and Origins can be read; the other
// methods wait.
func (j *Journal) AppendFull(b Batch) (persist func() error, err error) {
	if !b.Full {
		return nil, errors.New("journal AppendFull: not a full batch")
	}
	if err := validate(b); err != nil {
		return nil, err
	}
	if j.readOnly {
		return nil, fmt.Errorf("journal append to %s: %w", j.path, ErrReadOnly)
	}
	j.mu.Lock()
	now := untilMS(j.now())
	lagging := j.lag != nil
	added := j.newOrigins(b)
	v := j.view
	v.mu.Lock()
	v.replace(b, now)
	v.mu.Unlock()
	j.mergeOrigins(added)
	return func() error {
		defer j.mu.Unlock()
		j.writeFull(now, added)
		return j.afterWrite(now, lagging)
	}, nil
}

func validate(b Batch) error {
	for i, d := range b.AllNew() {
		if err := validPrefix(d.Prefix); err != nil {
			return fmt.Errorf("journal append: new decision %d: %w: %w", i, ErrInvalidDecision, err)
		}
	}
	for i, k := range b.Deleted {
		if err := validPrefix(k.Prefix); err != nil {
			return fmt.Errorf("journal append: deleted key %d: %w: %w", i, ErrInvalidDecision, err)
		}
	}
	return nil
}

// afterWrite ends an append under j.mu: a write that failed makes it
// ErrNotDurable, one that succeeded may compact.
func (j *Journal) afterWrite(now int64, lagging bool) error {
	if j.lag != nil {
		// A file found changed under us is moved aside and rewritten at
		// once; other failures (disk full, read-only) wait for Persist.
		if !lagging && errors.Is(j.lag, errFileChanged) && j.persistLocked(now) == nil {
			return nil
		}
		return j.notDurable()
	}
	if j.events >= j.every {
		// The batch is durable and applied: a failed compaction must not
		// fail it. Events stay, and the next Append tries again.
		if err := j.compactLocked(now); err != nil {
			j.log.Warn("journal compaction failed, will retry", "path", j.path, "events", j.events, "err", err)
			if errors.Is(err, errFileChanged) {
				j.setLag(err)
				if j.persistLocked(now) != nil {
					return j.notDurable()
				}
			}
		}
	}
	return nil
}

// write runs one transaction of an append unless the file already lags
// behind the view (then only Persist writes: the missing batches are not
// in the file, so an event on top of it would be wrong). A failure makes
// the file lag.
func (j *Journal) write(fn func(*bolt.Tx) error) bool {
	if j.lag != nil {
		return false
	}
	if err := j.update(fn); err != nil {
		j.setLag(err)
		return false
	}
	return true
}

func (j *Journal) appendDelta(b Batch, now int64, added map[string]int) {
	data, err := encodeBatch(b, now)
	if err != nil {
		// Encoding fails only on a decision the codec cannot hold; the view
		// still takes it, and Persist writes it in the snapshot's form.
		j.setLag(fmt.Errorf("encode: %w", err))
	}
	if j.write(func(tx *bolt.Tx) error {
		ev := tx.Bucket(bucketEvents)
		seq, err := ev.NextSequence()
		if err != nil {
			return fmt.Errorf("next sequence: %w", err)
		}
		if err := ev.Put(seqKey(seq), data); err != nil {
			return fmt.Errorf("put event %d (%d bytes): %w", seq, len(data), err)
		}
		return j.putOrigins(tx, added)
	}) {
		j.events++
	}
	j.mergeOrigins(added)

	v := j.view
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, d := range b.AllNew() {
		v.upsert(recordOf(d, now), now)
	}
	for _, key := range b.Deleted {
		if pk, ok := v.packKey(key); ok {
			v.m.del(pk)
		}
	}
}

// writeFull writes the view, which holds a full batch, as the snapshot.
func (j *Journal) writeFull(now int64, added map[string]int) {
	if j.lag != nil {
		return
	}
	v := j.view
	v.mu.RLock()
	data := v.encode(now)
	v.mu.RUnlock()
	if j.write(func(tx *bolt.Tx) error {
		if err := writeSnapshot(tx, data); err != nil {
			return err
		}
		return j.putOrigins(tx, added)
	}) {
		j.events = 0
	}
}

// writeSnapshot stores data as the snapshot and drops every event, keeping
// the sequence counter so event keys are never reused.
func writeSnapshot(tx *bolt.Tx, data []byte) error {
	ev := tx.Bucket(bucketEvents)
	seq := ev.Sequence()
	if err := tx.Bucket(bucketSnapshot).Put(keySnapshot, data); err != nil {
		return fmt.Errorf("put snapshot (%d bytes): %w", len(data), err)
	}
	if err := tx.Bucket(bucketMeta).Put(keySnapshotSeq, seqKey(seq)); err != nil {
		return fmt.Errorf("put snapshot seq: %w", err)
	}
	// Dropping the bucket frees its pages at once, cheaper than deleting
	// key by key.
	if err := tx.DeleteBucket(bucketEvents); err != nil {
		return fmt.Errorf("drop events: %w", err)
	}
	ev, err := tx.CreateBucket(bucketEvents)
	if err != nil {
		return fmt.Errorf("recreate events: %w", err)
	}
	if err := ev.SetSequence(seq); err != nil {
		return fmt.Errorf("restore event sequence: %w", err)
	}
	return nil
}

// newOrigins gives every origin of b's new decisions not yet known the next
// index, in memory only: mergeOrigins adopts them, putOrigins stores them.
func (j *Journal) newOrigins(b Batch) map[string]int {
	var added map[string]int
	for _, d := range b.AllNew() {
		if _, ok := j.origins[d.Origin]; ok {
			continue
		}
		if _, ok := added[d.Origin]; ok {
			continue
		}
		if added == nil {
			added = make(map[string]int)
		}
		added[d.Origin] = j.originSeq + len(added)
	}
	return added
}

// putOrigins stores origins and moves the bucket's sequence past them, so
// that a file rewritten from memory keeps every index.
func (j *Journal) putOrigins(tx *bolt.Tx, origins map[string]int) error {
	if len(origins) == 0 {
		return nil
	}
	ob := tx.Bucket(bucketOrigins)
	next := ob.Sequence()
	for name, idx := range origins {
		if err := ob.Put([]byte(name), binary.AppendUvarint(nil, uint64(idx))); err != nil {
			return fmt.Errorf("put origin %q: %w", name, err)
		}
		next = max(next, uint64(idx)+1)
	}
	if err := ob.SetSequence(next); err != nil {
		return fmt.Errorf("set origin sequence: %w", err)
	}
	return nil
}

func (j *Journal) mergeOrigins(added map[string]int) {
	j.omu.Lock()
	defer j.omu.Unlock()
	for k, v := range added {
		j.origins[k] = v
		j.originSeq = max(j.originSeq, v+1)
	}
}

// Compact writes the view (minus what expired by Now) as the new snapshot
// and deletes all events, in one transaction. Append calls it every
// Options.CompactEvery events; the in-memory view is not changed. On a
// journal whose file lags behind the view it is Persist.
func (j *Journal) Compact() error {
	if j.readOnly {
		return fmt.Errorf("journal compact %s: %w", j.path, ErrReadOnly)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	now := untilMS(j.now())
	if j.lag != nil {
		return j.persistLocked(now)
	}
	return j.compactLocked(now)
}

func (j *Journal) compactLocked(now int64) error {
	j.view.mu.RLock()
	data := j.view.encode(now)
	j.view.mu.RUnlock()
	if err := j.update(func(tx *bolt.Tx) error { return writeSnapshot(tx, data) }); err != nil {
		return fmt.Errorf("journal compact %s: %w", j.path, err)
	}
	j.events = 0
	return nil
}

// Close closes the file. The view stays readable. What the file lags
// behind the view is lost (Persist first to avoid it).
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	var errs []error
	if j.db != nil {
		if err := j.db.Close(); err != nil {
			errs = append(errs, err)
		}
		j.db = nil
	}
	if j.lockFile != nil {
		if err := j.lockFile.Close(); err != nil {
			errs = append(errs, err)
		}
		j.lockFile = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("journal close %s: %w", j.path, err)
	}
	return nil
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }
