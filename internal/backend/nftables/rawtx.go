package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// rawTx is one nf_tables transaction whose element messages are encoded
// here rather than by the library, for Replay: the library builds each
// element from a handful of small allocations (a 100k replay spent 40–70 ms
// there, a quarter of the whole), this writes each element straight into
// its message. Only set flushes and element adds are needed here.
type rawTx struct {
	msgs []netlink.Message
}

// nlaNested marks a nested attribute, as the kernel expects for lists.
const nlaNested = unix.NLA_F_NESTED

// appendAttr appends one netlink attribute (length, type, data, padding).
func appendAttr(b []byte, typ uint16, data ...[]byte) []byte {
	n := 4
	for _, d := range data {
		n += len(d)
	}
	b = binary.NativeEndian.AppendUint16(b, uint16(n))
	b = binary.NativeEndian.AppendUint16(b, typ)
	for _, d := range data {
		b = append(b, d...)
	}
	for ; n%4 != 0; n++ {
		b = append(b, 0)
	}
	return b
}

func cstr(s string) []byte { return append([]byte(s), 0) }

// header starts a message body: the nfgenmsg of the table's family.
func header(s *gnft.Set) []byte {
	return []byte{byte(s.Table.Family), unix.NFNETLINK_V0, 0, 0}
}

func (tx *rawTx) add(typ int, flags netlink.HeaderFlags, data []byte) {
	tx.msgs = append(tx.msgs, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags},
		Data:   data,
	})
}

// flushSet queues the removal of every element of s.
func (tx *rawTx) flushSet(s *gnft.Set) {
	b := header(s)
	b = appendAttr(b, unix.NFTA_SET_ELEM_LIST_TABLE, cstr(s.Table.Name))
	b = appendAttr(b, unix.NFTA_SET_ELEM_LIST_SET, cstr(s.Name))
	tx.add(unix.NFT_MSG_DELSETELEM, netlink.Request|netlink.Acknowledge, b)
}

// addElements queues one message adding els to s (at most perMsg of
// them: the element list is one attribute with a 16-bit length). It has
// the writer's op signature.
func (tx *rawTx) addElements(s *gnft.Set, els []gnft.SetElement) error {
	list := make([]byte, 0, len(els)*40)
	var item, key []byte
	for i, e := range els {
		item = item[:0]
		if e.IntervalEnd {
			item = appendAttr(item, unix.NFTA_SET_ELEM_FLAGS, binary.BigEndian.AppendUint32(nil, unix.NFT_SET_ELEM_INTERVAL_END))
		}
		key = appendAttr(key[:0], unix.NFTA_DATA_VALUE, e.Key)
		item = appendAttr(item, unix.NFTA_SET_ELEM_KEY|nlaNested, key)
		if s.HasTimeout && e.Timeout != 0 {
			item = appendAttr(item, unix.NFTA_SET_ELEM_TIMEOUT, binary.BigEndian.AppendUint64(nil, uint64(e.Timeout.Milliseconds())))
		}
		list = appendAttr(list, uint16(i+1)|nlaNested, item)
	}
	if len(list)+4 > 0xffff {
		return fmt.Errorf("set %s: %d elements do not fit one netlink attribute", s.Name, len(els))
	}
	b := header(s)
	b = appendAttr(b, unix.NFTA_SET_ELEM_LIST_TABLE, cstr(s.Table.Name))
	b = appendAttr(b, unix.NFTA_SET_ELEM_LIST_SET, cstr(s.Name))
	b = appendAttr(b, unix.NFTA_SET_ELEM_LIST_ELEMENTS|nlaNested, list)
	tx.add(unix.NFT_MSG_NEWSETELEM, netlink.Request|netlink.Acknowledge|netlink.Create, b)
	return nil
}

// commit sends the transaction on a fresh socket and waits for every
// message's acknowledgement; the kernel applies all of it or none.
func (tx *rawTx) commit() error {
	if len(tx.msgs) == 0 {
		return nil
	}
	conn, err := dialRaw()
	if err != nil {
		return err
	}
	defer conn.Close()
	batch := make([]netlink.Message, 0, len(tx.msgs)+2)
	edge := func(t int) netlink.Message {
		return netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(t), Flags: netlink.Request},
			Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}}
	}
	batch = append(batch, edge(unix.NFNL_MSG_BATCH_BEGIN))
	batch = append(batch, tx.msgs...)
	batch = append(batch, edge(unix.NFNL_MSG_BATCH_END))
	if _, err := conn.SendMessages(batch); err != nil {
		return fmt.Errorf("send transaction: %w", err)
	}
	for acked := 0; acked < len(tx.msgs); {
		msgs, err := conn.Receive()
		if err != nil {
			return err // the kernel's error for the failing message
		}
		acked += len(msgs)
	}
	return nil
}

// dialRaw opens a netlink socket with the buffers of newConn.
func dialRaw() (*netlink.Conn, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("nftables connection: %w", err)
	}
	if err := setBuffers(conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// addrMsg builds one element message of single addresses, each encoded
// straight into the message: no SetElement and no allocation per element
// (for a 100k replay or preload, the per-element encoding is a large share
// of the user time, beside the kernel's).
type addrMsg struct {
	set   *gnft.Set
	b     []byte
	list  int // offset of the element list attribute's header
	n     int
	key16 bool
}

// addrMsgSize is the buffer an address message starts with: perMsg IPv6
// elements with timeouts, and the headers.
const addrMsgSize = perMsg*48 + 256

func newAddrMsg(s *gnft.Set) *addrMsg {
	m := &addrMsg{set: s, key16: s.KeyType.Bytes == 16}
	m.reset()
	return m
}

func (m *addrMsg) reset() {
	b := make([]byte, 0, addrMsgSize)
	b = append(b, header(m.set)...)
	b = appendAttr(b, unix.NFTA_SET_ELEM_LIST_TABLE, cstr(m.set.Table.Name))
	b = appendAttr(b, unix.NFTA_SET_ELEM_LIST_SET, cstr(m.set.Name))
	m.list = len(b)
	m.b = append(b, 0, 0, 0, 0) // the list's header, written by done
	m.n = 0
}

// put appends one address with its timeout (zero: none, or the set has
// no timeouts). The attributes are those rawTx.addElements writes.
func (m *addrMsg) put(a netip.Addr, to time.Duration) {
	m.n++
	klen := 4
	if m.key16 {
		klen = 16
	}
	item := 4 + 4 + 4 + klen // item, KEY (nested), DATA_VALUE, address
	withTimeout := m.set.HasTimeout && to != 0
	if withTimeout {
		item += 4 + 8
	}
	b := m.b
	b = binary.NativeEndian.AppendUint16(b, uint16(item))
	b = binary.NativeEndian.AppendUint16(b, uint16(m.n)|nlaNested)
	b = binary.NativeEndian.AppendUint16(b, uint16(4+4+klen))
	b = binary.NativeEndian.AppendUint16(b, unix.NFTA_SET_ELEM_KEY|nlaNested)
	b = binary.NativeEndian.AppendUint16(b, uint16(4+klen))
	b = binary.NativeEndian.AppendUint16(b, unix.NFTA_DATA_VALUE)
	if m.key16 {
		a16 := a.As16()
		b = append(b, a16[:]...)
	} else {
		a4 := a.As4()
		b = append(b, a4[:]...)
	}
	if withTimeout {
		b = binary.NativeEndian.AppendUint16(b, 4+8)
		b = binary.NativeEndian.AppendUint16(b, unix.NFTA_SET_ELEM_TIMEOUT)
		b = binary.BigEndian.AppendUint64(b, uint64(to.Milliseconds()))
	}
	m.b = b
}

// done queues the message, if it holds any element, on tx and starts a
// new one.
func (m *addrMsg) done(tx *rawTx) {
	if m.n == 0 {
		return
	}
	binary.NativeEndian.PutUint16(m.b[m.list:], uint16(len(m.b)-m.list))
	binary.NativeEndian.PutUint16(m.b[m.list+2:], unix.NFTA_SET_ELEM_LIST_ELEMENTS|nlaNested)
	tx.add(unix.NFT_MSG_NEWSETELEM, netlink.Request|netlink.Acknowledge|netlink.Create, m.b)
	m.reset()
}
