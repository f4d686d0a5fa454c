package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// stuckService never answers Check until the request is abandoned: a
// wedged daemon.
type stuckService struct{ fakeService }

func (stuckService) Check(ctx context.Context) (Check, error) {
	<-ctx.Done()
	return Check{}, ctx.Err()
}

func TestClientTimesOut(t *testing.T) {
	path, _ := serve(t, &stuckService{})
	c := NewClient(path)
	c.timeout = 200 * time.Millisecond
	_, err := c.Check(t.Context())
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), "did not answer within 200ms") {
		t.Fatalf("Check on a wedged daemon = %v, want a timeout that says so", err)
	}
	if _, err := c.Stats(t.Context()); err != nil {
		t.Fatalf("Stats on the same daemon = %v", err)
	}
}

const helperEnv = "ADMIN_TEST_LISTEN_AS_NOBODY"

// TestMain turns the test binary into a listener when helperEnv is set:
// TestClientRefusesUntrustedSocket runs it as uid 65534 to get a listener
// owned by another user.
func TestMain(m *testing.M) {
	if path := os.Getenv(helperEnv); path != "" {
		listenForever(path)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// listenForever accepts and closes connections on path until the listener
// fails (the parent kills the process).
func listenForever(path string) {
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_ = c.Close()
	}
}

// TestClientRefusesUntrustedSocket: a socket file owned by another user,
// or a listener running as another user behind a root-owned file, is
// refused before any request, and is not mistaken for "no daemon" (which
// would make the CLI read the journal instead).
func TestClientRefusesUntrustedSocket(t *testing.T) {
	testenv.RequireRoot(t)
	const nobody = 65534
	path, _ := serve(t, &fakeService{})
	if err := os.Chown(path, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	_, err := NewClient(path).Stats(t.Context())
	if !errors.Is(err, ErrUntrustedSocket) || errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("socket file owned by nobody: %v", err)
	}
	if err := os.Chown(path, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(path).Stats(t.Context()); err != nil {
		t.Fatalf("socket owned by root again: %v", err)
	}

	// A listener running as nobody; its file handed to root afterwards.
	// t.TempDir's parents are 0700: nobody needs a directory of its own,
	// and a copy of the test binary it may run.
	dir, err := os.MkdirTemp("", "admin-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(dir, "helper")
	if err := os.WriteFile(helper, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.sock")
	cmd := exec.Command(helper)
	cmd.Env = append(os.Environ(), helperEnv+"="+other)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		// The file appears at bind, before listen: wait for a connection
		// to be accepted, not for the file.
		if c, err := net.Dial("unix", other); err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("helper never listened (can uid 65534 run the test binary?)")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.Chown(other, 0, 0); err != nil {
		t.Fatal(err)
	}
	_, err = NewClient(other).Stats(t.Context())
	if !errors.Is(err, ErrUntrustedSocket) || !strings.Contains(err.Error(), "runs as uid 65534") {
		t.Fatalf("listener running as nobody: %v", err)
	}
}
