// Package nfevents watches nf_tables for deletions of our objects — tables,
// chains, rules, sets, set elements, and rules in the chains that hold our
// jumps — and tells the enforcer at once, instead of at its next verify
// tick. It reads a raw NETLINK_NETFILTER socket subscribed to the
// NFNLGRP_NFTABLES group: only deletions and commit markers are decoded,
// additions are skipped on their header, so our own 100k-element replay
// costs little to watch.
//
// What is ours comes from the backend (backend.NFTWatcher); which commits
// were ours comes from the commit marker (NEWGEN), which names the
// committing thread: a thread of this process, or a child process the
// backend ran. Events are hints: the enforcer verifies before repairing,
// so a misattributed commit costs one verify, never a wrong repair.
package nfevents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// ErrNothingToWatch is returned by New when the backend names no nf_tables
// objects (ipset mode): there are no events to wait for.
var ErrNothingToWatch = errors.New("no nf_tables objects to watch")

const (
	groupNFTables = 7 // NFNLGRP_NFTABLES
	// recvBuffer is the socket buffer (the kernel doubles it). The kernel
	// queues a commit's events when the commit ends, all at once, so the
	// buffer must hold a whole commit: our own 100k-element replay sends
	// ≈100k element messages, which overran an 8 MB buffer and cost a
	// deep verify after every replay.
	recvBuffer = 32 << 20
)

// Monitor turns nf_tables events into backend.Change values.
type Monitor struct {
	log  *slog.Logger
	f    *filter
	own  func(pid uint32) bool
	self func(pid uint32) bool

	mu      sync.Mutex
	pending backend.Change
	ready   chan struct{} // one token while pending holds something

	// sockMu guards the subscribed socket (nil outside Run) for
	// PauseEvents, and the error of a failed rejoin, which ends Run.
	sockMu    sync.Mutex
	file      *os.File
	rejoinErr error
}

// New builds a monitor for the objects a backend names. It does not open
// the socket: Run does.
func New(o backend.NFTObjects, log *slog.Logger) (*Monitor, error) {
	f := newFilter(o)
	if f.empty() {
		return nil, ErrNothingToWatch
	}
	own := o.OwnWrite
	if own == nil {
		own = func(uint32) bool { return false }
	}
	return &Monitor{log: log.With("component", "nfevents"), f: f, own: own, self: ourThread,
		ready: make(chan struct{}, 1)}, nil
}

// ourThread reports whether tid is a thread of this process. The kernel
// names the committing thread, not the process, and a Go program commits
// from whichever thread runs the goroutine.
func ourThread(tid uint32) bool {
	_, err := os.Stat("/proc/self/task/" + strconv.FormatUint(uint64(tid), 10))
	return err == nil
}

// Run subscribes and sends each foreign deletion of ours to out until ctx
// ends (it then returns nil). Changes arriving while the receiver is busy
// merge into one, so a burst becomes one wake and a slow receiver never
// stalls the socket. A socket overrun loses events: it is sent as a Deep
// change and watching goes on.
func (m *Monitor) Run(ctx context.Context, out chan<- backend.Change) error {
	f, err := subscribe()
	if err != nil {
		return err
	}
	m.sockMu.Lock()
	m.file = f
	m.sockMu.Unlock()
	defer func() {
		m.sockMu.Lock()
		m.file = nil
		m.sockMu.Unlock()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rerr := make(chan error, 1)
	go func() { rerr <- m.read(f) }()
	go func() {
		<-ctx.Done()
		_ = f.SetReadDeadline(time.Now()) // wakes the reader
	}()
	m.log.Debug("watching nf_tables events")
	for {
		select {
		case <-ctx.Done():
			err := <-rerr
			cerr := f.Close()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = nil
			}
			return errors.Join(err, cerr)
		case err := <-rerr:
			_ = f.Close()
			m.sockMu.Lock()
			if m.rejoinErr != nil {
				err = m.rejoinErr
			}
			m.sockMu.Unlock()
			return fmt.Errorf("nf_tables events: %w", err)
		case <-m.ready:
			c := m.take()
			if c.Empty() {
				continue // taken with an earlier token
			}
			select {
			case out <- c:
			case <-ctx.Done():
			}
		}
	}
}

// subscribe opens a non-blocking netlink socket in the NFNLGRP_NFTABLES
// group, wrapped in an *os.File so reads wait in Go's poller (no thread,
// no CPU while idle) and a deadline can end them.
func subscribe() (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	fail := func(what string, err error) (*os.File, error) {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail("bind netfilter netlink socket", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, groupNFTables); err != nil {
		return fail("join the nf_tables event group", err)
	}
	// A bigger buffer makes overruns rare; FORCE needs CAP_NET_ADMIN, which
	// we have, and the plain option is the fallback.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, recvBuffer); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, recvBuffer)
	}
	return os.NewFile(uintptr(fd), "nf_tables events"), nil
}

// read receives until the file's deadline or a fatal error.
func (m *Monitor) read(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	t := newTxn(m.f)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return err
		case errors.Is(rerr, unix.ENOBUFS):
			m.overrun(t)
			continue
		case errors.Is(rerr, unix.EINTR):
			continue
		case rerr != nil:
			return fmt.Errorf("receive: %w", rerr)
		case n > len(buf):
			// A datagram larger than the buffer was cut: treat as lost.
			m.overrun(t)
			continue
		}
		if err := split(buf[:n], t.full, func(msg message) { m.handle(t, msg) }); err != nil {
			m.log.Warn("unreadable nf_tables event, checking everything", "err", err)
			m.overrun(t)
		}
	}
}

// handle feeds one message to the transaction in progress and, on its
// commit marker, publishes what it deleted unless the commit was ours.
func (m *Monitor) handle(t *txn, msg message) {
	if msg.typ != msgNewGen {
		t.add(msg)
		return
	}
	if !t.relevant() {
		return
	}
	c := t.change()
	if m.self(msg.pid) || m.own(msg.pid) {
		return
	}
	m.publish(c)
}

// overrun reports lost events: whatever the partial transaction held, and
// that anything may have changed. Whose the transaction was is unknown (its
// commit marker may be what was lost), so it never asks for a refill: at a
// million bans our own replay is what overruns the socket.
func (m *Monitor) overrun(t *txn) {
	c := t.change()
	c.Refill = false
	c.Merge(backend.Change{Deep: true, Objects: []string{"nf_tables events lost (socket overrun)"}})
	m.log.Warn("nf_tables events lost, checking everything")
	m.publish(c)
}

func (m *Monitor) publish(c backend.Change) {
	m.mu.Lock()
	m.pending.Merge(c)
	m.mu.Unlock()
	select {
	case m.ready <- struct{}{}:
	default: // a wake is already due; it will carry this too
	}
}

func (m *Monitor) take() backend.Change {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.pending
	m.pending = backend.Change{}
	return c
}
