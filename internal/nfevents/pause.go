package nfevents

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

var _ backend.EventPauser = (*Monitor)(nil)

// pausedChange is what the enforcer hears when anyone else committed to
// nf_tables while the monitor was paused: it checks everything.
var pausedChange = backend.Change{Deep: true,
	Objects: []string{"nf_tables changed while events were paused for our own write"}}

// PauseEvents leaves the nf_tables event group until the returned function
// is called with the number of transactions the caller committed meanwhile
// (see backend.EventPauser). It does nothing before Run has subscribed or
// after it returned: nothing is being watched then.
//
// The generation is read before leaving and after rejoining, so a commit
// that raced with either edge counts as foreign: the worst case is one
// needless deep verify, never a missed change.
func (m *Monitor) PauseEvents() func(ownCommits int) {
	m.sockMu.Lock()
	f := m.file
	m.sockMu.Unlock()
	if f == nil {
		return func(int) {}
	}
	before, gerr := generation()
	if err := membership(f, unix.NETLINK_DROP_MEMBERSHIP); err != nil {
		// Still listening: the write costs more and nothing is missed.
		m.log.Debug("cannot pause nf_tables events", "err", err)
		return func(int) {}
	}
	return func(own int) {
		if err := membership(f, unix.NETLINK_ADD_MEMBERSHIP); err != nil {
			// Deaf from now on: stop Run, which says so in the log; the
			// verify tick is what is left.
			m.sockMu.Lock()
			m.rejoinErr = fmt.Errorf("rejoin the nf_tables event group after our write: %w", err)
			m.sockMu.Unlock()
			_ = f.SetReadDeadline(time.Now())
			return
		}
		after, err := generation()
		if gerr != nil || err != nil || after-before != uint32(own) {
			m.publish(pausedChange)
		}
	}
}

// membership joins or leaves (op) the nf_tables group on the monitor's
// socket. Control keeps the descriptor valid while it runs, even if Run
// closes the file meanwhile.
func membership(f *os.File, op int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, op, groupNFTables)
	}); err != nil {
		return err
	}
	return serr
}

// generation returns nf_tables' generation counter, which every committed
// transaction raises by one.
func generation() (uint32, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return 0, fmt.Errorf("nf_tables generation: %w", err)
	}
	defer conn.Close()
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("nf_tables generation: %w", err)
	}
	for _, msg := range msgs {
		if len(msg.Data) < 4 {
			continue
		}
		as, err := parseAttrs(msg.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("nf_tables generation: %w", err)
		}
		if id := find(as, unix.NFTA_GEN_ID); len(id) == 4 {
			return binary.BigEndian.Uint32(id), nil
		}
	}
	return 0, fmt.Errorf("nf_tables generation: %w: no generation id in the answer", errMalformed)
}
