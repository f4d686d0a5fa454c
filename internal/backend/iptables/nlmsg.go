package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Netlink and nfnetlink framing. The encoder is our own, not
// vishvananda's RtAttr tree, because batches of 1000 entries are built on
// the hot path and must be checked against the 16-bit nested length.

const (
	nlaFNested    = 1 << 15
	nlaFNetOrder  = 1 << 14
	nlaTypeMask   = ^uint16(nlaFNested | nlaFNetOrder)
	nlmsgHdrLen   = 16
	nfgenHdrLen   = 4
	maxNestedSize = 0xffff // nla_len is 16 bits

	nfnlSubsysIPSet   = 6
	nfnlSubsysNFTable = 10
	nftMsgGetGen      = 16
	nftaGenID         = 1
)

// errAttrTooLong is returned when a nested attribute would not fit its
// 16-bit length field; the batcher splits messages before this happens.
var errAttrTooLong = errors.New("netlink attribute longer than 65535 bytes")

// msgBuilder builds one netlink message: header, nfgenmsg, attributes.
type msgBuilder struct {
	b      []byte
	nested []int // offsets of open nests
	err    error
}

// newMsg starts a message of the given type and flags with an nfgenmsg
// header for family (NFPROTO_*/AF_*), version 0, resource id 0.
func newMsg(typ, flags uint16, family uint8) *msgBuilder {
	return newMsgIn(make([]byte, 0, 256), typ, flags, family)
}

// newMsgIn is newMsg writing into buf's storage, so a caller sending many
// large messages one after the other (a million entries in 1000-entry
// batches) reuses one buffer instead of allocating each.
func newMsgIn(buf []byte, typ, flags uint16, family uint8) *msgBuilder {
	m := &msgBuilder{b: append(buf[:0], make([]byte, nlmsgHdrLen+nfgenHdrLen)...)}
	binary.NativeEndian.PutUint16(m.b[4:], typ)
	binary.NativeEndian.PutUint16(m.b[6:], flags)
	m.b[16] = family
	m.b[17] = 0 // NFNETLINK_V0
	return m
}

func align4(n int) int { return (n + 3) &^ 3 }

func (m *msgBuilder) attr(typ uint16, data []byte) {
	start := len(m.b)
	l := 4 + len(data)
	m.b = append(m.b, 0, 0, 0, 0)
	binary.NativeEndian.PutUint16(m.b[start:], uint16(l))
	binary.NativeEndian.PutUint16(m.b[start+2:], typ)
	m.b = append(m.b, data...)
	for len(m.b) < start+align4(l) {
		m.b = append(m.b, 0)
	}
}

func (m *msgBuilder) u8(typ uint16, v uint8) { m.attr(typ, []byte{v}) }

// u32be writes a big-endian u32 flagged NLA_F_NET_BYTEORDER, as ipset
// requires for timeouts, sizes and addresses.
func (m *msgBuilder) u32be(typ uint16, v uint32) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	m.attr(typ|nlaFNetOrder, b[:])
}

// u32host writes a host-order u32 (ipset's LINENO is host order: the kernel
// copies it back verbatim in its error reply).
func (m *msgBuilder) u32host(typ uint16, v uint32) {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	m.attr(typ, b[:])
}

func (m *msgBuilder) str(typ uint16, s string) {
	b := make([]byte, len(s)+1)
	copy(b, s)
	m.attr(typ, b)
}

// begin opens a nested attribute; end closes the innermost one.
func (m *msgBuilder) begin(typ uint16) {
	m.nested = append(m.nested, len(m.b))
	m.b = append(m.b, 0, 0, 0, 0)
	binary.NativeEndian.PutUint16(m.b[len(m.b)-2:], typ|nlaFNested)
}

func (m *msgBuilder) end() {
	start := m.nested[len(m.nested)-1]
	m.nested = m.nested[:len(m.nested)-1]
	l := len(m.b) - start
	if l > maxNestedSize {
		m.err = errAttrTooLong
		return
	}
	binary.NativeEndian.PutUint16(m.b[start:], uint16(l))
}

// size is the current message length in bytes.
func (m *msgBuilder) size() int { return len(m.b) }

// finish fills in the total length and sequence number.
func (m *msgBuilder) finish(seq uint32) ([]byte, error) {
	if m.err != nil {
		return nil, m.err
	}
	if len(m.nested) != 0 {
		return nil, errors.New("netlink message has an unclosed nested attribute")
	}
	binary.NativeEndian.PutUint32(m.b[0:], uint32(len(m.b)))
	binary.NativeEndian.PutUint32(m.b[8:], seq)
	return m.b, nil
}

// nlAttr is one parsed attribute; typ keeps the flag bits.
type nlAttr struct {
	typ  uint16
	data []byte
}

func (a nlAttr) kind() uint16 { return a.typ & nlaTypeMask }

// parseAttrs splits an attribute stream; it stops at the first malformed
// attribute and reports it.
func parseAttrs(b []byte) ([]nlAttr, error) {
	var out []nlAttr
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:])
		if l < 4 || l > len(b) {
			return out, fmt.Errorf("malformed netlink attribute (len %d, %d bytes left)", l, len(b))
		}
		out = append(out, nlAttr{typ: typ, data: b[4:l]})
		if align4(l) >= len(b) {
			break
		}
		b = b[align4(l):]
	}
	return out, nil
}

// nlMessage is one received netlink message.
type nlMessage struct {
	typ     uint16
	flags   uint16
	seq     uint32
	payload []byte // after the nlmsghdr
}

func parseMessages(b []byte) ([]nlMessage, error) {
	var out []nlMessage
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b))
		if l < nlmsgHdrLen || l > len(b) {
			return out, fmt.Errorf("malformed netlink message (len %d, %d bytes left)", l, len(b))
		}
		out = append(out, nlMessage{
			typ:     binary.NativeEndian.Uint16(b[4:]),
			flags:   binary.NativeEndian.Uint16(b[6:]),
			seq:     binary.NativeEndian.Uint32(b[8:]),
			payload: b[nlmsgHdrLen:l],
		})
		if align4(l) >= len(b) {
			break
		}
		b = b[align4(l):]
	}
	return out, nil
}

// nlError is a negative errno from an NLMSG_ERROR reply, with the echoed
// request (ipset puts the failing entry's line number in it).
type nlError struct {
	errno int32
	echo  []byte // the original request's payload after its nlmsghdr, if echoed
}

func parseNlError(payload []byte) (nlError, error) {
	if len(payload) < 4 {
		return nlError{}, errors.New("short NLMSG_ERROR")
	}
	e := nlError{errno: int32(binary.NativeEndian.Uint32(payload))}
	if len(payload) >= 4+nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(payload[4:]))
		if l >= nlmsgHdrLen && 4+l <= len(payload) {
			e.echo = payload[4+nlmsgHdrLen : 4+l]
		}
	}
	return e, nil
}

const (
	nlmsgError = unix.NLMSG_ERROR
	nlmsgDone  = unix.NLMSG_DONE
)
