package testenv

import (
	"syscall"
	"testing"
)

// LimitFileSize makes every write that would grow a file beyond n bytes
// fail (EFBIG; Go ignores SIGXFSZ) until the returned function restores the
// limit, or the test ends: a disk that fills up, without root or a mount.
// The limit is process-wide, so tests using it must not run in parallel.
func LimitFileSize(t testing.TB, n uint64) (restore func()) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	done := false
	restore = func() {
		if done {
			return
		}
		done = true
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(restore)
	return restore
}
