package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// errCorrupt marks a journal that cannot be trusted: Open moves it aside
// (or, read-only, reports it as ErrCorrupt).
var errCorrupt = ErrCorrupt

// Open opens (or creates) the journal at opts.Path and rebuilds the view:
// snapshot, then events in order, dropping what expired by opts.Now.
//
// If another process holds the file, Open fails after opts.Timeout with an
// error wrapping ErrLocked. If the file is corrupt (not a bbolt file,
// truncated, bad checksums, a record that does not decode, inconsistent
// metadata), Open never fails on it: it renames the file to
// "<path>.corrupt-<UTC time>", logs at ERROR, starts an empty journal and
// reports the new name through Recovered. Other errors (permissions, disk)
// are returned: moving the file would not fix them.
func Open(opts Options) (*Journal, error) {
	if opts.Path == "" {
		return nil, errors.New("journal open: empty path")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.CompactEvery <= 0 {
		opts.CompactEvery = DefaultCompactEvery
	}
	log := opts.Logger.With("component", "journal")
	if opts.ReadOnly {
		// Inspection must not change anything: no directory, no layout, no
		// moving a corrupt file aside.
		return openLoad(opts, log)
	}
	j, err := openWritable(opts, log)
	if err != nil && opts.KeepUnwritable && !errors.Is(err, ErrLocked) {
		return openUnwritable(opts, log, err)
	}
	if err != nil {
		return nil, err
	}
	j.file = fileState{pageSize: j.db.Info().PageSize}
	j.recordFile()
	return j, nil
}

// openWritable is Open's read-write path.
func openWritable(opts Options, log *slog.Logger) (*Journal, error) {
	if err := ensureDir(filepath.Dir(opts.Path), log); err != nil {
		return nil, err
	}
	j, err := openLoad(opts, log)
	if err == nil {
		if fi, serr := os.Stat(opts.Path); serr == nil && fi.Mode().Perm()&0o077 != 0 {
			// bbolt's mode applies only at creation; an older file may be looser.
			log.Warn("journal file is readable by others", "path", opts.Path, "mode", fi.Mode().Perm().String())
		}
		return j, nil
	}
	if !errors.Is(err, errCorrupt) {
		return nil, err
	}
	aside := asideName(opts.Path, opts.Now())
	if rerr := os.Rename(opts.Path, aside); rerr != nil {
		return nil, fmt.Errorf("journal open: move corrupt %s aside (%w): %w", opts.Path, err, rerr)
	}
	log.Error("journal corrupt, moved aside; starting empty, a full resync is needed",
		"path", opts.Path, "moved_to", aside, "err", err)
	j, err2 := openLoad(opts, log)
	if err2 != nil {
		return nil, fmt.Errorf("journal open fresh %s after moving corrupt file to %s: %w", opts.Path, aside, err2)
	}
	j.recovered = aside
	return j, nil
}

// ensureDir creates dir 0700 when missing. An existing directory is left
// as it is (it may be shared, e.g. /var/lib), but a group- or
// world-writable one is worth a warning: others could replace the journal.
func ensureDir(dir string, log *slog.Logger) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("journal open: create directory: %w", err)
		}
		// MkdirAll is subject to umask; make the leaf exactly 0700.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("journal open: chmod directory: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("journal open: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("journal open: %s is not a directory", dir)
	case fi.Mode().Perm()&0o022 != 0:
		log.Warn("journal directory is group or world writable", "dir", dir, "mode", fi.Mode().Perm().String())
	}
	return nil
}

// openLoad opens the bbolt file and rebuilds the view. Corruption, in any of
// its shapes, comes back wrapping errCorrupt.
func openLoad(opts Options, log *slog.Logger) (*Journal, error) {
	db, err := openDB(opts.Path, opts.Timeout, opts.ReadOnly)
	if err != nil {
		return nil, err
	}
	j := newJournal(opts, log)
	j.db = db
	if err := j.load(); err != nil {
		if cerr := db.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close: %w", cerr))
		}
		return nil, fmt.Errorf("journal open %s: %w", opts.Path, err)
	}
	return j, nil
}

// newJournal is a Journal with an empty view and no file.
func newJournal(opts Options, log *slog.Logger) *Journal {
	return &Journal{
		path:     opts.Path,
		timeout:  opts.Timeout,
		now:      opts.Now,
		log:      log,
		every:    opts.CompactEvery,
		readOnly: opts.ReadOnly,
		origins:  make(map[string]int),
		view:     newView(newStrtab()),
	}
}

// openDB is bolt.Open with its failures sorted: a lock timeout is
// ErrLocked, environment trouble (permissions, disk, fds) is returned as
// is, and anything else about the content is errCorrupt.
func openDB(path string, timeout time.Duration, readOnly bool) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer guard(&err)
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, ReadOnly: readOnly})
	switch {
	case err == nil:
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("journal %s: %w", path, ErrLocked)
	case isEnvError(err):
		return nil, fmt.Errorf("journal open %s: %w", path, err)
	default:
		// ErrInvalid, ErrChecksum, ErrVersionMismatch, "file size too
		// small" (unwrapped), short reads: the bytes are bad.
		return nil, fmt.Errorf("%w: %s: %w", errCorrupt, path, err)
	}
	return db, nil
}

// isEnvError reports errors that come from the system rather than the
// file's bytes. Keep this the one place that sorts such errors.
func isEnvError(err error) bool {
	var errno syscall.Errno
	var perr *fs.PathError
	return errors.As(err, &errno) || errors.As(err, &perr)
}

// guard turns a panic — bbolt panics on some corrupt pages, and a fault on
// an mmapped page beyond a truncated file's end — into errCorrupt.
// SetPanicOnFault makes such a fault a recoverable panic on this goroutine.
func guard(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: panic: %v", errCorrupt, r)
	}
}

// load checks the file and rebuilds the view. It creates the layout in a
// new, empty file.
func (j *Journal) load() (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer guard(&err)
	fresh := false
	err = j.db.View(func(tx *bolt.Tx) error {
		fresh = tx.Bucket(bucketMeta) == nil && tx.Bucket(bucketEvents) == nil &&
			tx.Bucket(bucketSnapshot) == nil && tx.Bucket(bucketOrigins) == nil
		if fresh {
			return nil
		}
		return j.loadTx(tx)
	})
	if err != nil || !fresh || j.readOnly {
		return err
	}
	if err := j.db.Update(initLayout); err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	return nil
}

func initLayout(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketMeta, bucketEvents, bucketSnapshot, bucketOrigins} {
		if _, err := tx.CreateBucket(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return tx.Bucket(bucketMeta).Put(keyVersion, []byte{metaVersion})
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errCorrupt, fmt.Sprintf(format, args...))
}

func (j *Journal) loadTx(tx *bolt.Tx) error {
	// A truncated file must be caught before any page beyond its end is
	// touched: such a touch is a fault, not a panic, on other goroutines.
	fi, err := os.Stat(j.path)
	if err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if tx.Size() > fi.Size() {
		return corrupt("file is %d bytes, its meta says %d", fi.Size(), tx.Size())
	}
	meta, ev, snap, orig := tx.Bucket(bucketMeta), tx.Bucket(bucketEvents), tx.Bucket(bucketSnapshot), tx.Bucket(bucketOrigins)
	if meta == nil || ev == nil || snap == nil || orig == nil {
		return corrupt("missing bucket (meta %t, events %t, snapshot %t, origins %t)", meta != nil, ev != nil, snap != nil, orig != nil)
	}
	if v := meta.Get(keyVersion); len(v) != 1 || v[0] != metaVersion {
		return corrupt("layout version %x, want %d", v, metaVersion)
	}
	var snapSeq uint64
	if v := meta.Get(keySnapshotSeq); v != nil {
		if len(v) != 8 {
			return corrupt("snapshot seq is %d bytes", len(v))
		}
		snapSeq = binary.BigEndian.Uint64(v)
	}
	if err := j.loadOrigins(orig); err != nil {
		return err
	}
	now := untilMS(j.now())
	l := &viewLoader{v: j.view, now: now}
	if data := snap.Get(keySnapshot); data != nil {
		if err := decodeBatch(data, l); err != nil {
			return corrupt("snapshot: %v", err)
		}
	}
	last := snapSeq
	c := ev.Cursor()
	for k, data := c.First(); k != nil; k, data = c.Next() {
		if len(k) != 8 {
			return corrupt("event key of %d bytes", len(k))
		}
		seq := binary.BigEndian.Uint64(k)
		if seq <= last || seq > ev.Sequence() {
			return corrupt("event %d out of order (after %d, sequence %d)", seq, last, ev.Sequence())
		}
		last = seq
		if err := decodeBatch(data, l); err != nil {
			return corrupt("event %d: %v", seq, err)
		}
		j.events++
	}
	// Values were replayed at their own write time; drop what has expired
	// since, as loading at now would have.
	j.view.Expire(msTime(now))
	// bbolt keeps no checksums of its pages. Its consistency check walks
	// every page (cheap: a 100k journal is a few hundred pages) and catches
	// damage that would otherwise panic a later write on the enforcer's
	// goroutine, restart the process, and loop. It runs last because it
	// reads pages on its own goroutine, where a fault cannot be recovered:
	// the reads above, on this goroutine, have touched the tree first.
	var checkErr error
	for cerr := range tx.Check() {
		// Drain the channel: Check's goroutine holds the transaction.
		if checkErr == nil {
			checkErr = cerr
		}
	}
	if checkErr != nil {
		return corrupt("bbolt check: %v", checkErr)
	}
	return nil
}

func (j *Journal) loadOrigins(b *bolt.Bucket) error {
	seen := make(map[uint64]string)
	j.originSeq = int(b.Sequence())
	return b.ForEach(func(k, v []byte) error {
		idx, n := binary.Uvarint(v)
		if n != len(v) || idx >= b.Sequence() {
			return corrupt("origin %q has bad index %x (sequence %d)", k, v, b.Sequence())
		}
		if other, dup := seen[idx]; dup {
			return corrupt("origins %q and %q share index %d", other, k, idx)
		}
		seen[idx] = string(k)
		j.origins[string(k)] = int(idx)
		return nil
	})
}
