// Package sdnotifytest is a fake systemd notify socket for tests: it receives
// the datagrams a process sends with sd_notify, whether that process is the
// test itself or a daemon binary started by an end-to-end test.
//
//	path, msgs := sdnotifytest.Listen(t)
//	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+path, "WATCHDOG_USEC=2000000")
//	...
//	sdnotifytest.WaitFor(t, msgs, 10*time.Second, "READY=1")
package sdnotifytest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// maxSockPath is the usable length of sockaddr_un.sun_path on Linux (108
// bytes with the terminating NUL).
const maxSockPath = 107

// Listen opens a unixgram socket in a temporary directory and returns its
// path (the value for NOTIFY_SOCKET) and a channel that yields every
// datagram received, one notification per value, e.g. "READY=1\nSTATUS=x".
// The socket is closed and the channel closed at the end of the test. It
// does not set NOTIFY_SOCKET: use t.Setenv for an in-process test, or the
// child's environment for a binary.
func Listen(t testing.TB) (path string, msgs <-chan string) {
	t.Helper()
	dir := t.TempDir()
	path = filepath.Join(dir, "notify.sock")
	if len(path) > maxSockPath {
		// A long TMPDIR or test name; fall back to a short private dir.
		d, err := os.MkdirTemp("", "sdn")
		if err != nil {
			t.Fatalf("sdnotifytest: temp dir: %v", err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		path = filepath.Join(d, "n.sock")
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("sdnotifytest: listen %s: %v", path, err)
	}
	ch := make(chan string, 1024)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer close(ch)
		buf := make([]byte, 64<<10)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("sdnotifytest: read %s: %v", path, err)
				}
				return
			}
			select {
			case ch <- string(buf[:n]):
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(done)
		_ = conn.Close()
		<-finished
	})
	return path, ch
}

// Fields splits one notification into its assignments: "READY=1\nSTATUS=x"
// gives {"READY": "1", "STATUS": "x"}. A later duplicate key wins.
func Fields(msg string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(msg, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// Has reports whether msg contains the assignment kv (e.g. "READY=1") as one
// of its lines, or, when kv ends with "=", any assignment of that key (e.g.
// "STATUS=").
func Has(msg, kv string) bool {
	for _, line := range strings.Split(msg, "\n") {
		if line == kv || (strings.HasSuffix(kv, "=") && strings.HasPrefix(line, kv)) {
			return true
		}
	}
	return false
}

// WaitFor reads msgs until a notification that Has kv arrives and returns
// it, discarding the ones before. It fails the test when timeout passes or
// the socket closes first; the timeout is a hang guard, not an assertion
// about speed, so make it generous.
func WaitFor(t testing.TB, msgs <-chan string, timeout time.Duration, kv string) string {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var seen []string
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("sdnotifytest: socket closed before %q; got %q", kv, seen)
			}
			if Has(m, kv) {
				return m
			}
			seen = append(seen, m)
		case <-deadline.C:
			t.Fatalf("sdnotifytest: no %q within %v; got %q", kv, timeout, seen)
		}
	}
}

// Collect returns every notification that arrives within d. Use it to
// assert that something was not sent during a window.
func Collect(msgs <-chan string, d time.Duration) []string {
	var got []string
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return got
			}
			got = append(got, m)
		case <-deadline.C:
			return got
		}
	}
}
