package journal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Durability. The view in memory is what the bouncer enforces; the file is
// its durable copy. When a write fails — disk full, read-only, I/O error,
// or the file changed under us — the batch still goes into the view
// (Append returns ErrNotDurable) and the file lags. While it lags no event
// is appended (the file misses batches, an event on top of it would be
// wrong); Persist instead writes the whole view as one snapshot, so a single
// successful write restores durability, however long the outage. What the
// file lags is lost only if the process stops before that write.
//
// The file changing under us is the dangerous case: bbolt reads its pages
// through a memory map and panics on garbage, or faults on a page beyond
// a truncated end. So before every write transaction the file at the path
// is compared with what we last wrote: the same inode, not shorter, and the
// same two meta pages (bbolt rewrites one of them at every commit, so any
// other writer that touched them shows). A panic inside the transaction
// (damage elsewhere in the file) is recovered too. Either way the file is
// moved aside ("<path>.corrupt-<UTC time>"), a new one is created — and
// locked, so a second instance still fails fast — and the view is written
// into it.

// errFileChanged marks a file that is no longer what we wrote: replaced,
// removed, truncated, overwritten. The remedy is moving it aside.
var errFileChanged = errors.New("journal file changed under the daemon")

// fileState identifies the file as we last wrote it.
type fileState struct {
	dev, ino uint64
	size     int64
	pageSize int
	metas    []byte // the first two pages, bbolt's meta pages
}

// readFileState reads the state of the file now at path.
func readFileState(path string, pageSize int) (fileState, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileState{}, err
	}
	defer f.Close() // flock is per open file: closing this fd keeps bbolt's lock
	fi, err := f.Stat()
	if err != nil {
		return fileState{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileState{}, fmt.Errorf("stat %s: no inode information", path)
	}
	s := fileState{dev: st.Dev, ino: st.Ino, size: fi.Size(), pageSize: pageSize, metas: make([]byte, 2*pageSize)}
	n, err := f.ReadAt(s.metas, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return fileState{}, err
	}
	s.metas = s.metas[:n]
	return s, nil
}

// recordFile notes the file's state after our write.
func (j *Journal) recordFile() {
	ps := j.file.pageSize
	if j.db != nil {
		ps = j.db.Info().PageSize
	}
	s, err := readFileState(j.path, ps)
	if err != nil {
		// The next check will find a difference and rewrite the file: noisy,
		// never unsafe.
		j.log.Warn("journal: cannot read back the file's state", "path", j.path, "err", err)
		return
	}
	j.file = s
}

// checkFile tells whether the file at the path is still the one we wrote.
func (j *Journal) checkFile() error {
	cur, err := readFileState(j.path, j.file.pageSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s was removed", errFileChanged, j.path)
	case err != nil:
		return fmt.Errorf("check file: %w", err)
	case cur.dev != j.file.dev || cur.ino != j.file.ino:
		return fmt.Errorf("%w: %s was replaced by another file", errFileChanged, j.path)
	case cur.size < j.file.size:
		return fmt.Errorf("%w: %s was truncated from %d to %d bytes", errFileChanged, j.path, j.file.size, cur.size)
	case !bytes.Equal(cur.metas, j.file.metas):
		return fmt.Errorf("%w: %s was overwritten (its meta pages changed)", errFileChanged, j.path)
	}
	return nil
}

// update runs fn in a write transaction on a file checked to be ours. A
// panic inside bbolt becomes an errFileChanged error; the handle is then
// dropped, as bbolt may hold its locks.
func (j *Journal) update(fn func(*bolt.Tx) error) (err error) {
	if j.db == nil {
		return fmt.Errorf("journal %s is not open for writing", j.path)
	}
	if err := j.checkFile(); err != nil {
		return err
	}
	db := j.db
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt panicked writing %s: %v", errFileChanged, j.path, r)
			j.db = nil
			// Close waits for bbolt's locks, which a panic may have left
			// held: never on this goroutine. Once closed, the mmap and the
			// file descriptor are released; if never, they leak (once per
			// damaged file).
			go func() { _ = db.Close() }()
		}
	}()
	if err := db.Update(fn); err != nil {
		return err
	}
	j.recordFile()
	return nil
}

// setLag records a failed write: the file is now behind the view.
func (j *Journal) setLag(err error) {
	j.failures++
	if j.lag == nil {
		j.lagSince = j.now()
	}
	j.lag = err
}

func (j *Journal) notDurable() error {
	return fmt.Errorf("journal append to %s: %w: %w", j.path, ErrNotDurable, j.lag)
}

// PersistErr returns nil while the file holds the view; otherwise why it
// does not (the last failed write). Stats says since when.
func (j *Journal) PersistErr() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lag
}

// Persist makes the file hold the view again after writes failed: it
// reopens the file for writing if needed, moves it aside if it changed
// under us (creating and locking a new one), and writes the whole view as
// the snapshot in one transaction. It returns nil at once when the file is
// not behind. On failure the file still lags; call again later (with
// backoff: each attempt encodes the whole view).
func (j *Journal) Persist() error {
	if j.readOnly {
		return fmt.Errorf("journal persist %s: %w", j.path, ErrReadOnly)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.persistLocked(untilMS(j.now()))
}

func (j *Journal) persistLocked(now int64) error {
	if j.lag == nil {
		return nil
	}
	if err := j.rewrite(now); err != nil {
		j.setLag(err)
		return fmt.Errorf("journal persist %s: %w", j.path, err)
	}
	j.log.Info("journal durable again: the file holds the view", "path", j.path,
		"entries", j.view.Len(), "lagged_for", j.now().Sub(j.lagSince).Round(time.Millisecond))
	j.lag, j.lagSince, j.events = nil, time.Time{}, 0
	return nil
}

// rewrite writes the view and every origin to the file, getting a usable
// file first.
func (j *Journal) rewrite(now int64) error {
	changed := j.lag
	if !errors.Is(changed, errFileChanged) {
		changed = nil
		if j.db == nil {
			if err := j.openForWrite(); errors.Is(err, errCorrupt) {
				changed = err
			} else if err != nil {
				return err
			}
		}
		if changed == nil {
			if err := j.checkFile(); errors.Is(err, errFileChanged) {
				changed = err
			}
		}
	}
	if changed != nil {
		if err := j.replaceFile(changed); err != nil {
			return err
		}
	}
	j.view.mu.RLock()
	data := j.view.encode(now)
	j.view.mu.RUnlock()
	origins := make(map[string]int, len(j.origins))
	for k, v := range j.origins {
		origins[k] = v
	}
	return j.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			if err := initLayout(tx); err != nil {
				return err
			}
		}
		if err := writeSnapshot(tx, data); err != nil {
			return err
		}
		return j.putOrigins(tx, origins)
	})
}

// openForWrite opens the file at the path read-write, for a journal that
// ran without (Options.KeepUnwritable, or a handle dropped after a panic).
func (j *Journal) openForWrite() error {
	if _, err := os.Lstat(j.path); errors.Is(err, fs.ErrNotExist) {
		return j.replaceFile(nil)
	}
	// Our own lock on the file would block bbolt's: hand it over.
	j.releaseLock()
	db, err := openDB(j.path, j.timeout, false)
	if err != nil {
		if lerr := j.holdLock(); lerr != nil {
			err = errors.Join(err, lerr)
		}
		return err
	}
	j.db = db
	return nil
}

// replaceFile moves whatever is at the path aside and creates a new,
// locked, empty file there. cause is why (nil: there was no file).
func (j *Journal) replaceFile(cause error) error {
	aside := ""
	if _, err := os.Lstat(j.path); err == nil {
		aside = asideName(j.path, j.now())
		if err := os.Rename(j.path, aside); err != nil {
			return fmt.Errorf("move %s aside (%w): %w", j.path, cause, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	db, err := openDB(j.path, j.timeout, false)
	if err != nil {
		return fmt.Errorf("create %s: %w", j.path, err)
	}
	if old := j.db; old != nil {
		if err := old.Close(); err != nil {
			j.log.Warn("journal: closing the replaced file failed", "path", aside, "err", err)
		}
	}
	j.releaseLock()
	j.db = db
	j.file = fileState{pageSize: db.Info().PageSize}
	j.recordFile()
	if cause != nil {
		j.rewrites++
		j.log.Error("journal file changed under the daemon: moved aside, rewriting it from memory",
			"path", j.path, "moved_to", aside, "err", cause)
	}
	return nil
}

// asideName is where a bad file at path is moved.
func asideName(path string, now time.Time) string {
	aside := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if _, err := os.Lstat(aside); err == nil {
		aside = fmt.Sprintf("%s-%d", aside, now.UnixNano())
	}
	return aside
}

// holdLock takes the exclusive lock bbolt would, on the file (or, when
// there is none, its directory), while no bbolt handle holds it: a second
// instance still fails with ErrLocked.
func (j *Journal) holdLock() error {
	if j.lockFile != nil {
		return nil
	}
	target := j.path
	if _, err := os.Lstat(target); err != nil {
		target = filepath.Dir(j.path)
	}
	f, err := os.Open(target)
	if err != nil {
		return fmt.Errorf("lock %s: %w", target, err)
	}
	deadline := time.Now().Add(j.timeout)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			j.lockFile = f
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.Close()
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return fmt.Errorf("journal %s: %w", j.path, ErrLocked)
	}
	return fmt.Errorf("lock %s: %w", target, err)
}

func (j *Journal) releaseLock() {
	if j.lockFile != nil {
		_ = j.lockFile.Close() // closing the only fd releases the flock
		j.lockFile = nil
	}
}

// openUnwritable is Open's Options.KeepUnwritable path: cause is why the
// read-write open failed. It loads what it can read and holds the lock.
func openUnwritable(opts Options, log *slog.Logger, cause error) (*Journal, error) {
	ro := opts
	ro.ReadOnly = true
	j, err := openLoad(ro, log)
	switch {
	case err == nil:
		j.file = fileState{pageSize: j.db.Info().PageSize}
		j.recordFile()
		if cerr := j.db.Close(); cerr != nil {
			log.Warn("journal: closing the read-only handle failed", "path", opts.Path, "err", cerr)
		}
		j.db = nil
	case errors.Is(err, ErrLocked):
		return nil, err
	default:
		// Nothing readable either: enforce what LAPI sends, from memory.
		log.Error("journal cannot be read either: starting empty", "path", opts.Path, "err", err)
		j = newJournal(opts, log)
	}
	j.readOnly = false
	if err := j.holdLock(); errors.Is(err, ErrLocked) {
		return nil, err
	} else if err != nil {
		log.Warn("journal: cannot lock; a second instance would not be stopped", "path", opts.Path, "err", err)
	}
	j.setLag(cause)
	j.failures = 0 // the open is not a failed write; retries count
	log.Error("journal cannot be written: enforcing it from memory; decisions received until it can are lost on a restart",
		"path", opts.Path, "entries", j.view.Len(), "err", cause)
	return j, nil
}
