package iptables

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// ipset over netlink (NFNL_SUBSYS_IPSET). Constants follow
// include/uapi/linux/netfilter/ipset/ip_set.h.
const (
	ipsetProtocol = 6 // the kernel accepts 6..7; 6 is understood by every kernel with protocol 7

	ipsetCmdCreate  = 2
	ipsetCmdDestroy = 3
	ipsetCmdFlush   = 4
	ipsetCmdRename  = 5
	ipsetCmdSwap    = 6
	ipsetCmdList    = 7
	ipsetCmdAdd     = 9
	ipsetCmdDel     = 10
	ipsetCmdType    = 13

	attrProtocol = 1
	attrSetName  = 2
	attrTypeName = 3
	attrSetName2 = attrTypeName
	attrRevision = 4
	attrFamily   = 5
	attrFlags    = 6
	attrData     = 7
	attrADT      = 8
	attrLineNo   = 9

	cadtIP       = 1
	cadtCIDR     = 3
	cadtTimeout  = 6
	cadtLineNo   = 9
	createHash   = 18
	createMaxEl  = 19
	kernElements = 24

	ipaddrV4 = 1
	ipaddrV6 = 2

	flagListSetName = 1 << 1
	flagListHeader  = 1 << 2

	nfprotoIPv4 = 2
	nfprotoIPv6 = 10

	// maxTimeout is the kernel's IPSET_MAX_TIMEOUT ((UINT_MAX>>1)/1000 s);
	// larger values are silently capped by the kernel, so we cap first and
	// know what we asked for.
	maxTimeout = 2147483

	// batchEntries bounds entries per ADD/DEL message (NOTES: ≈1000 is the
	// sweet spot); batchBytes keeps the ADT nest under its 16-bit length.
	batchEntries = 1000
	batchBytes   = 60000

	ipsetErrPrivate  = 4096
	ipsetErrTypeSpec = 4352
)

// ipsetErrNames maps ipset's private errnos to the words ipset(8) prints.
var ipsetErrNames = map[int32]string{
	ipsetErrPrivate + 1:  "protocol error",
	ipsetErrPrivate + 2:  "set type not supported",
	ipsetErrPrivate + 3:  "max number of sets reached",
	ipsetErrPrivate + 4:  "set is in use by a rule (busy)",
	ipsetErrPrivate + 5:  "second set does not exist",
	ipsetErrPrivate + 6:  "set types or families differ",
	ipsetErrPrivate + 7:  "element exists",
	ipsetErrPrivate + 8:  "invalid cidr",
	ipsetErrPrivate + 9:  "invalid netmask",
	ipsetErrPrivate + 10: "invalid family",
	ipsetErrPrivate + 11: "set has no timeout support",
	ipsetErrPrivate + 12: "set is referenced",
	ipsetErrPrivate + 13: "invalid ipv4 address",
	ipsetErrPrivate + 14: "invalid ipv6 address",
	ipsetErrPrivate + 15: "counters not supported",
	ipsetErrPrivate + 16: "comments not supported",
	ipsetErrTypeSpec:     "set is full (maxelem reached)",
}

// KernelError is a failure the kernel reported for one ipset or nftables
// request. Line is the 1-based index, within the request, of the entry the
// kernel rejected (0 when not known).
type KernelError struct {
	Op    string
	Set   string
	Errno int32
	Line  int
}

// Error implements error.
func (e *KernelError) Error() string {
	msg, ok := ipsetErrNames[e.Errno]
	if !ok {
		msg = unix.Errno(e.Errno).Error()
	}
	s := fmt.Sprintf("ipset %s %s: %s", e.Op, e.Set, msg)
	if e.Line > 0 {
		s += fmt.Sprintf(" (entry %d of the batch)", e.Line)
	}
	return s
}

// Is lets errors.Is match the package sentinels.
func (e *KernelError) Is(target error) bool {
	switch target {
	case ErrSetNotFound:
		return e.Errno == int32(unix.ENOENT)
	case ErrSetFull:
		return e.Errno == ipsetErrTypeSpec
	case ErrSetBusy:
		return e.Errno == ipsetErrPrivate+4 || e.Errno == int32(unix.EBUSY)
	}
	return false
}

// nlSocket is a NETLINK_NETFILTER socket used strictly request/response
// from one goroutine.
type nlSocket struct {
	fd  int
	seq uint32
	buf []byte
}

func openSocket() (*nlSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("bind netfilter netlink socket: %w", err)
	}
	// A kernel that never answers must not hang the enforcer forever.
	tv := unix.Timeval{Sec: 30}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("set netlink receive timeout: %w", err)
	}
	return &nlSocket{fd: fd, seq: uint32(time.Now().UnixNano()), buf: make([]byte, 256*1024)}, nil
}

func (s *nlSocket) close() error { return unix.Close(s.fd) }

// roundTrip sends one request and reads until its ACK/error or, for dumps,
// NLMSG_DONE. It returns the data messages. A kernel error comes back as an
// nlError value for the caller to turn into a KernelError.
func (s *nlSocket) roundTrip(ctx context.Context, m *msgBuilder) ([]nlMessage, *nlError, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	s.seq++
	seq := s.seq
	b, err := m.finish(seq)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, nil, fmt.Errorf("netlink send: %w", err)
	}
	var out []nlMessage
	for {
		if err := s.wait(ctx); err != nil {
			return nil, nil, err
		}
		n, _, rflags, _, err := unix.Recvmsg(s.fd, s.buf, nil, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, nil, fmt.Errorf("netlink receive: %w", err)
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return nil, nil, errors.New("netlink receive: reply truncated")
		}
		msgs, err := parseMessages(s.buf[:n])
		if err != nil {
			return nil, nil, fmt.Errorf("netlink receive: %w", err)
		}
		for _, msg := range msgs {
			if msg.seq != seq {
				continue // a late reply to an earlier, abandoned request
			}
			switch msg.typ {
			case nlmsgDone:
				return out, nil, nil
			case nlmsgError:
				e, err := parseNlError(msg.payload)
				if err != nil {
					return nil, nil, err
				}
				if e.errno == 0 {
					return out, nil, nil
				}
				e.errno = -e.errno
				return out, &e, nil
			default:
				// The payload is copied: s.buf is reused by the next read.
				msg.payload = append([]byte(nil), msg.payload...)
				out = append(out, msg)
			}
		}
	}
}

// pollStep bounds one wait for a netlink reply, so a cancelled context is
// noticed within it even when the kernel never answers.
const pollStep = 100 * time.Millisecond

// wait blocks until a reply is readable or ctx ends. The kernel may still
// answer an abandoned request later: roundTrip skips replies by sequence
// number.
func (s *nlSocket) wait(ctx context.Context) error {
	fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		step := pollStep
		if dl, ok := ctx.Deadline(); ok {
			step = min(step, max(time.Until(dl), time.Millisecond))
		}
		n, err := unix.Poll(fds, int(step/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("netlink poll: %w", err)
		}
		if n > 0 {
			return nil
		}
	}
}

// ipsetMsg starts an ipset request for cmd on set name (if any).
func ipsetMsg(cmd uint16, flags uint16, name string) *msgBuilder {
	return ipsetMsgIn(make([]byte, 0, 256), cmd, flags, name)
}

// ipsetMsgIn is ipsetMsg reusing buf's storage (see newMsgIn).
func ipsetMsgIn(buf []byte, cmd uint16, flags uint16, name string) *msgBuilder {
	m := newMsgIn(buf, nfnlSubsysIPSet<<8|cmd, flags, unix.AF_INET)
	m.u8(attrProtocol, ipsetProtocol)
	if name != "" {
		m.str(attrSetName, name)
	}
	return m
}

const (
	flagsAck  = unix.NLM_F_REQUEST | unix.NLM_F_ACK
	flagsDump = unix.NLM_F_REQUEST | unix.NLM_F_DUMP
)

// do runs a request and converts a kernel error into *KernelError.
func (s *nlSocket) do(ctx context.Context, op, set string, m *msgBuilder) ([]nlMessage, error) {
	msgs, nerr, err := s.roundTrip(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("ipset %s %s: %w", op, set, err)
	}
	if nerr != nil {
		ke := &KernelError{Op: op, Set: set, Errno: nerr.errno}
		ke.Line = echoedLineNo(nerr.echo)
		return nil, ke
	}
	return msgs, nil
}

// echoedLineNo reads the top-level LINENO the kernel rewrote in the echoed
// request to name the failing entry of a batch.
func echoedLineNo(echo []byte) int {
	if len(echo) < nfgenHdrLen {
		return 0
	}
	attrs, _ := parseAttrs(echo[nfgenHdrLen:])
	for _, a := range attrs {
		if a.kind() == attrLineNo && len(a.data) == 4 {
			return int(binary.NativeEndian.Uint32(a.data))
		}
	}
	return 0
}

// setSpec describes a set to create (and what an existing one must match).
type setSpec struct {
	typ      string // hash:net or hash:ip
	family   uint8  // nfprotoIPv4 / nfprotoIPv6
	revision uint8
	hashSize uint32
	maxElem  uint32
	timeout  bool
}

// setInfo is what a header-only list reports about an existing set.
type setInfo struct {
	typ      string
	family   uint8
	revision uint8
	hashSize uint32
	maxElem  uint32
	timeout  bool
	elements uint32
}

func buildCreate(name string, sp setSpec) *msgBuilder {
	m := ipsetMsg(ipsetCmdCreate, flagsAck|unix.NLM_F_CREATE|unix.NLM_F_EXCL, name)
	m.str(attrTypeName, sp.typ)
	m.u8(attrRevision, sp.revision)
	m.u8(attrFamily, sp.family)
	m.begin(attrData)
	if sp.hashSize > 0 {
		m.u32be(createHash, sp.hashSize)
	}
	if sp.maxElem > 0 {
		m.u32be(createMaxEl, sp.maxElem)
	}
	if sp.timeout {
		// Default timeout 0: entries without a timeout are permanent, and
		// the set accepts per-entry timeouts.
		m.u32be(cadtTimeout, 0)
	}
	m.end()
	return m
}

func (s *nlSocket) create(ctx context.Context, name string, sp setSpec) error {
	_, err := s.do(ctx, "create", name, buildCreate(name, sp))
	return err
}

func (s *nlSocket) simple(ctx context.Context, op string, cmd uint16, name string) error {
	_, err := s.do(ctx, op, name, ipsetMsg(cmd, flagsAck, name))
	return err
}

func (s *nlSocket) destroy(ctx context.Context, name string) error {
	return retryBusy(ctx, func() error { return s.simple(ctx, "destroy", ipsetCmdDestroy, name) })
}

// retryBusy retries op while the kernel answers EBUSY because another
// process is dumping the set (`ipset list` holds a reference for the length
// of its dump, and swap and destroy refuse meanwhile). A set still
// referenced by a rule stays busy: after about a second the error is returned.
func retryBusy(ctx context.Context, op func() error) error {
	wait := time.Millisecond
	deadline := time.Now().Add(time.Second)
	for {
		err := op()
		var ke *KernelError
		if err == nil || !errors.As(err, &ke) || ke.Errno != int32(unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 5*time.Millisecond)
	}
}

// rename gives set from the name to; the kernel refuses while a rule
// references the set.
func (s *nlSocket) rename(ctx context.Context, from, to string) error {
	m := ipsetMsg(ipsetCmdRename, flagsAck, from)
	m.str(attrSetName2, to)
	_, err := s.do(ctx, "rename", from+" "+to, m)
	return err
}

func (s *nlSocket) flush(ctx context.Context, name string) error {
	return s.simple(ctx, "flush", ipsetCmdFlush, name)
}

func (s *nlSocket) swap(ctx context.Context, a, b string) error {
	return retryBusy(ctx, func() error {
		m := ipsetMsg(ipsetCmdSwap, flagsAck, a)
		m.str(attrSetName2, b)
		_, err := s.do(ctx, "swap", a+" "+b, m)
		return err
	})
}

// maxRevision asks the kernel for the newest revision of a set type.
func (s *nlSocket) maxRevision(ctx context.Context, typ string, family uint8) (uint8, error) {
	m := ipsetMsg(ipsetCmdType, flagsAck, "")
	m.str(attrTypeName, typ)
	m.u8(attrFamily, family)
	msgs, err := s.do(ctx, "type", typ, m)
	if err != nil {
		return 0, err
	}
	for _, msg := range msgs {
		attrs, err := parseAttrs(msg.payload[nfgenHdrLen:])
		if err != nil {
			return 0, fmt.Errorf("ipset type %s: %w", typ, err)
		}
		for _, a := range attrs {
			if a.kind() == attrRevision && len(a.data) >= 1 {
				return a.data[0], nil
			}
		}
	}
	return 0, fmt.Errorf("ipset type %s: kernel reply has no revision", typ)
}

// header lists one set header-only: type, family, sizes and member count,
// without dumping members (NOTES: well under a millisecond at 100k).
func (s *nlSocket) header(ctx context.Context, name string) (setInfo, error) {
	m := ipsetMsg(ipsetCmdList, flagsDump, name)
	m.u32be(attrFlags, flagListHeader)
	msgs, err := s.do(ctx, "list", name, m)
	if err != nil {
		return setInfo{}, err
	}
	var si setInfo
	for _, msg := range msgs {
		if err := parseSetHeader(msg.payload, &si); err != nil {
			return setInfo{}, fmt.Errorf("ipset list %s: %w", name, err)
		}
	}
	if si.typ == "" {
		return setInfo{}, &KernelError{Op: "list", Set: name, Errno: int32(unix.ENOENT)}
	}
	return si, nil
}

func parseSetHeader(payload []byte, si *setInfo) error {
	if len(payload) < nfgenHdrLen {
		return errors.New("short ipset reply")
	}
	attrs, err := parseAttrs(payload[nfgenHdrLen:])
	if err != nil {
		return err
	}
	for _, a := range attrs {
		switch a.kind() {
		case attrTypeName:
			si.typ = cString(a.data)
		case attrFamily:
			if len(a.data) > 0 {
				si.family = a.data[0]
			}
		case attrRevision:
			if len(a.data) > 0 {
				si.revision = a.data[0]
			}
		case attrData:
			inner, err := parseAttrs(a.data)
			if err != nil {
				return err
			}
			for _, d := range inner {
				if len(d.data) != 4 {
					continue
				}
				v := binary.BigEndian.Uint32(d.data)
				switch d.kind() {
				case createHash:
					si.hashSize = v
				case createMaxEl:
					si.maxElem = v
				case cadtTimeout:
					si.timeout = true
				case kernElements:
					si.elements = v
				}
			}
		}
	}
	return nil
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// listNames returns the names of all sets in this network namespace.
func (s *nlSocket) listNames(ctx context.Context) ([]string, error) {
	var msgs []nlMessage
	// A dump answers EBUSY while another one, or a swap or destroy, is
	// under way (another program's `ipset list`): ride it out as for swaps.
	err := retryBusy(ctx, func() error {
		m := ipsetMsg(ipsetCmdList, flagsDump, "")
		m.u32be(attrFlags, flagListSetName)
		var err error
		msgs, err = s.do(ctx, "list", "(all)", m)
		return err
	})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, msg := range msgs {
		if len(msg.payload) < nfgenHdrLen {
			continue
		}
		attrs, err := parseAttrs(msg.payload[nfgenHdrLen:])
		if err != nil {
			return nil, fmt.Errorf("ipset list: %w", err)
		}
		for _, a := range attrs {
			if a.kind() == attrSetName {
				names = append(names, cString(a.data))
			}
		}
	}
	return names, nil
}

// members dumps every member of a set. It is slow at 100k (≈0.25 s):
// deep verify only.
func (s *nlSocket) members(ctx context.Context, name string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := s.dump(ctx, name, func(e kEntry) { out = append(out, e.prefix()) })
	return out, err
}

// entries dumps every member of a set with its remaining timeout, to copy
// the set into a larger one.
func (s *nlSocket) entries(ctx context.Context, name string) ([]kEntry, error) {
	var out []kEntry
	err := s.dump(ctx, name, func(e kEntry) { out = append(out, e) })
	return out, err
}

func (s *nlSocket) dump(ctx context.Context, name string, fn func(kEntry)) error {
	msgs, err := s.do(ctx, "list", name, ipsetMsg(ipsetCmdList, flagsDump, name))
	if err != nil {
		return err
	}
	for _, msg := range msgs {
		if len(msg.payload) < nfgenHdrLen {
			continue
		}
		attrs, err := parseAttrs(msg.payload[nfgenHdrLen:])
		if err != nil {
			return fmt.Errorf("ipset list %s: %w", name, err)
		}
		for _, a := range attrs {
			if a.kind() != attrADT {
				continue
			}
			entries, err := parseAttrs(a.data)
			if err != nil {
				return fmt.Errorf("ipset list %s: %w", name, err)
			}
			for _, e := range entries {
				ke, err := parseKEntry(e.data)
				if err != nil {
					return fmt.Errorf("ipset list %s: %w", name, err)
				}
				fn(ke)
			}
		}
	}
	return nil
}

// parseEntry decodes one IPSET_ATTR_DATA nest (ADT entry) into a prefix.
func parseEntry(b []byte) (netip.Prefix, error) {
	e, err := parseKEntry(b)
	return e.prefix(), err
}

// parseKEntry decodes one ADT entry: prefix and remaining timeout.
func parseKEntry(b []byte) (kEntry, error) {
	attrs, err := parseAttrs(b)
	if err != nil {
		return kEntry{}, err
	}
	var addr netip.Addr
	var timeout uint32
	cidr := -1
	for _, a := range attrs {
		switch a.kind() {
		case cadtIP:
			ips, err := parseAttrs(a.data)
			if err != nil {
				return kEntry{}, err
			}
			for _, ip := range ips {
				if a, ok := netip.AddrFromSlice(ip.data); ok {
					addr = a
				}
			}
		case cadtCIDR:
			if len(a.data) > 0 {
				cidr = int(a.data[0])
			}
		case cadtTimeout:
			if len(a.data) == 4 {
				timeout = binary.BigEndian.Uint32(a.data)
			}
		}
	}
	if !addr.IsValid() {
		return kEntry{}, errors.New("ipset entry without an address")
	}
	if cidr < 0 {
		cidr = addr.BitLen()
	}
	p, err := addr.Prefix(cidr)
	return newKEntry(p, timeout, 0), err
}

// kEntry is one validated entry ready for the wire. It holds no pointer
// (netip.Addr does): a million of them are 28 MB the GC never scans.
type kEntry struct {
	addr    [16]byte // IPv4 in the last four bytes
	bits    uint8
	v4      bool
	timeout uint32 // seconds; used only when the set has timeouts
	origin  int32  // the entry's origin index, to report a rejection
}

func newKEntry(p netip.Prefix, timeout uint32, origin int) kEntry {
	return kEntry{addr: p.Addr().As16(), bits: uint8(p.Bits()), v4: p.Addr().Is4(), timeout: timeout, origin: int32(origin)}
}

// prefix returns the entry's prefix.
func (e kEntry) prefix() netip.Prefix {
	a := netip.AddrFrom16(e.addr)
	if e.v4 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(e.bits))
}

// buildADT builds one ADD/DEL message for entries[first:], stopping at
// batchEntries or batchBytes; it returns the message and how many entries
// it holds. withCIDR is false for hash:ip, withTimeout only for ADD to a set
// with timeout support.
func buildADT(cmd uint16, name string, entries []kEntry, withCIDR, withTimeout bool) (*msgBuilder, int) {
	return buildADTIn(make([]byte, 0, 4096), cmd, name, entries, withCIDR, withTimeout)
}

// buildADTIn is buildADT writing into buf's storage.
func buildADTIn(buf []byte, cmd uint16, name string, entries []kEntry, withCIDR, withTimeout bool) (*msgBuilder, int) {
	// No NLM_F_EXCL: add of a present entry updates it, del of an absent
	// one is ignored (ipset -exist semantics), so repeats converge.
	m := ipsetMsgIn(buf, cmd, flagsAck, name)
	m.u32host(attrLineNo, 0) // asks the kernel to report the failing entry
	m.begin(attrADT)
	start := m.size()
	n := 0
	for n < len(entries) && n < batchEntries && m.size()-start < batchBytes {
		e := entries[n]
		m.begin(attrData)
		m.begin(cadtIP)
		if e.v4 {
			m.attr(ipaddrV4|nlaFNetOrder, e.addr[12:])
		} else {
			m.attr(ipaddrV6|nlaFNetOrder, e.addr[:])
		}
		m.end()
		if withCIDR {
			m.u8(cadtCIDR, e.bits)
		}
		if withTimeout {
			m.u32be(cadtTimeout, e.timeout)
		}
		m.u32host(cadtLineNo, uint32(n+1))
		m.end()
		n++
	}
	m.end()
	return m, n
}

// adt adds or deletes entries in batches. On a kernel error it stops and
// reports which entry (by index into entries) failed.
func (s *nlSocket) adt(ctx context.Context, cmd uint16, name string, entries []kEntry, withCIDR, withTimeout bool) error {
	op := "add"
	if cmd == ipsetCmdDel {
		op = "del"
	}
	// One buffer for every batch: each message is sent and acknowledged
	// before the next is built.
	buf := make([]byte, 0, batchBytes+4096)
	for done := 0; done < len(entries); {
		m, n := buildADTIn(buf, cmd, name, entries[done:], withCIDR, withTimeout)
		buf = m.b
		if _, err := s.do(ctx, op, name, m); err != nil {
			var ke *KernelError
			if errors.As(err, &ke) && ke.Line > 0 {
				return fmt.Errorf("%w: entry %s", err, entries[done+ke.Line-1].prefix())
			}
			return err
		}
		done += n
	}
	return nil
}

// ruleGen reads the nf_tables ruleset generation id (NFT_MSG_GETGEN): any
// change to any nftables rule, chain or table in this namespace bumps it,
// including iptables-nft's.
func (s *nlSocket) ruleGen(ctx context.Context) (uint32, error) {
	m := newMsg(nfnlSubsysNFTable<<8|nftMsgGetGen, flagsAck, unix.AF_UNSPEC)
	msgs, nerr, err := s.roundTrip(ctx, m)
	if err != nil {
		return 0, fmt.Errorf("nftables getgen: %w", err)
	}
	if nerr != nil {
		return 0, fmt.Errorf("nftables getgen: %w", unix.Errno(nerr.errno))
	}
	for _, msg := range msgs {
		if len(msg.payload) < nfgenHdrLen {
			continue
		}
		attrs, err := parseAttrs(msg.payload[nfgenHdrLen:])
		if err != nil {
			return 0, fmt.Errorf("nftables getgen: %w", err)
		}
		for _, a := range attrs {
			if a.kind() == nftaGenID && len(a.data) == 4 {
				return binary.BigEndian.Uint32(a.data), nil
			}
		}
	}
	return 0, errors.New("nftables getgen: no generation id in reply")
}
