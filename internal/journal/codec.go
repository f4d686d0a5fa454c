package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/bits"
	"net/netip"
	"time"
)

// Wire format of one journal value (an event or the snapshot), version 2:
//
//	byte    version (2)
//	byte    flags (bit 0: full; bit 1: every new decision carries its since)
//	varint  base: the smallest Until in the batch, unix milliseconds
//	varint  at: when the value was written (append or compaction time),
//	        unix milliseconds; 0 = unknown
//	uvarint number of strings, then each: uvarint length, bytes
//	uvarint number of new decisions, then each:
//	        prefix, uvarint (until - base) ms, uvarint origin, scenario, type, scope (string indices)
//	        [with flag bit 1: uvarint since: 0 = unknown, else zigzag(at - since) + 1]
//	uvarint number of deleted keys, then each: prefix, uvarint type, scope
//	4 bytes CRC-32C (little endian) of everything before it
//
// Version 1 is the same without "at" and without bit 1; it still decodes,
// with every since unknown. An event carries its append time once ("at"):
// replaying it gives each decision new to the view since = at, exactly as
// Append did. The snapshot carries each decision's since, because it folds
// events of many times together.
//
// A prefix is one tag byte — the prefix length for IPv4 (0..32), 64 + the
// length for IPv6 (64..192) — followed by only the ceil(bits/8) leading
// address bytes: prefixes are masked, so the rest is zero. Origins, scenarios,
// types and scopes repeat thousands of times in a batch, so each is written
// once in the string table. bbolt keeps no checksum of values, hence the CRC:
// a flipped bit must read as corruption, not as a different ban.
//
// Version 3 is the snapshot's (events stay version 2). A blocklist of a
// million decisions, written in key order, has consecutive or close
// addresses sharing one origin, scenario, type, scope and expiry; version 3
// writes each decision as what changed since the one before it:
//
//	byte    version (3)
//	byte    flags: always 1 (full)
//	varint  base, varint at, string table: as in version 2
//	uvarint number of decisions, then each:
//	        byte head: bit 0 tag, bit 1 until, bit 2 origin and scenario,
//	                   bit 3 type and scope, bit 4 since: as the previous
//	                   decision (never set on the first);
//	                   bit 5: the address is whole, not a delta
//	        [tag byte, as in version 2]
//	        address: with bit 5, the ceil(bits/8) leading bytes, as in
//	                 version 2; else uvarint of the network number (the
//	                 address shifted right past its host bits) minus that
//	                 of the previous decision with the same tag (0 before
//	                 the first), so that the next /32 or /64 costs 1 byte
//	        [uvarint (until - base) ms]
//	        [uvarint origin, scenario (string indices)]
//	        [uvarint type, scope (string indices)]
//	        [uvarint since, coded as in version 2]
//	4 bytes CRC-32C, as in version 2
//
// There are no deleted keys. A blocklist decision takes 2 bytes: head and
// delta. The encoder writes a whole address where the delta would be
// longer, would not fit in 64 bits, or would be negative (keys out of
// order; the decoder does not care).
const (
	codecVersion    = 2 // events
	codecVersionV1  = 1
	snapshotVersion = 3
	flagFull        = 1 << 0
	flagSince       = 1 << 1

	tagV6 = 64
	// Smallest possible encodings, used to bound counts read from garbage so
	// that a corrupt count cannot make the decoder allocate gigabytes.
	minNewLen = 1 + 1 + 4
	minDelLen = 1 + 2
)

// The bits of a version 3 decision's head byte.
const (
	sameTag = 1 << iota
	sameUntil
	sameLabel // origin and scenario
	sameCombo // type and scope
	sameSince
	wholeAddr
	headBits   = 1<<iota - 1
	sameBits   = headBits &^ wholeAddr
	tagLimit   = tagV6 + 128 + 1 // tags are below it
	minSnapLen = 1               // a head alone: same tag, a whole /0
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errDecode is wrapped by every decoding failure; Open treats it as
// corruption of the journal file.
var errDecode = errors.New("decode journal record")

// untilMS is the journal's time resolution: milliseconds since the epoch.
func untilMS(t time.Time) int64 { return t.UnixMilli() }

// msTime turns stored milliseconds back into a time, in UTC.
func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// validPrefix reports why p cannot be journaled, or nil.
func validPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("invalid prefix %v", p)
	}
	if p != p.Masked() {
		return fmt.Errorf("prefix %v is not masked", p)
	}
	return nil
}

// record is a decision in encoder-neutral form: the view stores exactly this
// (strings interned), and the encoder writes it.
type record struct {
	prefix                       netip.Prefix
	until                        int64 // unix ms
	origin, scenario, typ, scope string
	// since is when the bouncer first received the decision (unix ms, 0 =
	// unknown). In an event it is the event's append time: the view keeps
	// an older since when the key is already there (see View.upsert).
	since int64
}

// encoder builds one value. Strings go to a table written before the body,
// so the body is built first in its own buffer. The caller supplies the
// base (smallest Until) up front so that deltas can be written in one pass.
type encoder struct {
	full   bool
	base   int64
	at     int64
	strIdx map[string]uint64
	strs   []string
	news   []byte
	nNew   int
	dels   []byte
	nDel   int
}

func newEncoder(full bool, base, at int64, sizeHint int) *encoder {
	return &encoder{
		full:   full,
		base:   base,
		at:     at,
		strIdx: make(map[string]uint64),
		news:   make([]byte, 0, sizeHint*14),
	}
}

func (e *encoder) str(s string) uint64 {
	if i, ok := e.strIdx[s]; ok {
		return i
	}
	i := uint64(len(e.strs))
	e.strIdx[s] = i
	e.strs = append(e.strs, s)
	return i
}

func (e *encoder) addNew(r record) {
	e.news = appendNew(e.news, r.prefix, r.until, e.base,
		e.str(r.origin), e.str(r.scenario), e.str(r.typ), e.str(r.scope))
	e.nNew++
}

// appendNew appends a new decision without its since: prefix, until
// relative to base, and the string indices.
func appendNew(b []byte, p netip.Prefix, until, base int64, origin, scenario, typ, scope uint64) []byte {
	b = appendPrefix(b, p)
	// Unsigned wrap-around keeps this exact even for absurd times.
	b = binary.AppendUvarint(b, uint64(until)-uint64(base))
	b = binary.AppendUvarint(b, origin)
	b = binary.AppendUvarint(b, scenario)
	b = binary.AppendUvarint(b, typ)
	return binary.AppendUvarint(b, scope)
}

func (e *encoder) addDel(k Key) {
	e.dels = appendPrefix(e.dels, k.Prefix)
	e.dels = binary.AppendUvarint(e.dels, e.str(k.Type))
	e.dels = binary.AppendUvarint(e.dels, e.str(k.Scope))
	e.nDel++
}

// finish assembles the value: header, string table, bodies, CRC.
func (e *encoder) finish() []byte {
	flags := byte(0)
	if e.full {
		flags |= flagFull
	}
	out := make([]byte, 0, headerSize(e.strs)+len(e.news)+len(e.dels)+2*binary.MaxVarintLen64+4)
	out = appendHeader(out, codecVersion, flags, e.base, e.at, e.strs)
	out = binary.AppendUvarint(out, uint64(e.nNew))
	out = append(out, e.news...)
	out = binary.AppendUvarint(out, uint64(e.nDel))
	out = append(out, e.dels...)
	return appendCRC(out)
}

// headerSize bounds the size of appendHeader's output.
func headerSize(strs []string) int {
	size := 2 + 3*binary.MaxVarintLen64
	for _, s := range strs {
		size += binary.MaxVarintLen64 + len(s)
	}
	return size
}

// appendHeader appends a value's version, flags, base, at and string table.
func appendHeader(out []byte, version, flags byte, base, at int64, strs []string) []byte {
	out = append(out, version, flags)
	out = binary.AppendVarint(out, base)
	out = binary.AppendVarint(out, at)
	out = binary.AppendUvarint(out, uint64(len(strs)))
	for _, s := range strs {
		out = binary.AppendUvarint(out, uint64(len(s)))
		out = append(out, s...)
	}
	return out
}

func appendCRC(b []byte) []byte {
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// uvarintLen is the length of binary.AppendUvarint(nil, x).
func uvarintLen(x uint64) int {
	n := 1
	for ; x >= 0x80; x >>= 7 {
		n++
	}
	return n
}

// sinceCode packs since relative to at: 0 is unknown, and a since after at
// (a clock that stepped back) still round-trips through the zigzag.
func sinceCode(at, since int64) uint64 {
	if since == 0 {
		return 0
	}
	d := at - since
	return uint64(d<<1^d>>63) + 1
}

// sinceDecode undoes sinceCode.
func sinceDecode(at int64, c uint64) int64 {
	if c == 0 {
		return 0
	}
	c--
	d := int64(c>>1) ^ -int64(c&1)
	return at - d
}

func appendPrefix(b []byte, p netip.Prefix) []byte {
	bits := p.Bits()
	a := p.Addr()
	if a.Is4() {
		b = append(b, byte(bits))
		a4 := a.As4()
		return append(b, a4[:(bits+7)/8]...)
	}
	b = append(b, byte(tagV6+bits))
	a16 := a.As16()
	return append(b, a16[:(bits+7)/8]...)
}

// u128 is an IPv6 address, or a network number, as a number.
type u128 struct{ hi, lo uint64 }

// shr and shl shift by s <= 128; Go's shifts by 64 or more give 0, which
// makes s = 0 and s = 128 right without a case of their own.
func (a u128) shr(s uint) u128 {
	if s >= 64 {
		return u128{0, a.hi >> (s - 64)}
	}
	return u128{a.hi >> s, a.lo>>s | a.hi<<(64-s)}
}

func (a u128) shl(s uint) u128 {
	if s >= 64 {
		return u128{a.lo << (s - 64), 0}
	}
	return u128{a.hi<<s | a.lo>>(64-s), a.lo << s}
}

// keyAddr gives k's tag, its address as a number and the address width.
func keyAddr(k vkey) (tag byte, addr u128, width uint) {
	if k.v6 {
		return tagV6 + k.bits, u128{k.hi, k.lo}, 128
	}
	return k.bits, u128{0, k.lo & math.MaxUint32}, 32
}

// snapWriter appends version 3 decisions, each relative to the one before.
type snapWriter struct {
	base int64          // of untils: the snapshot's write time, below every until kept
	at   int64          // of since codes
	wire [][2]uint64    // pair index -> the string indices of its two strings
	n    int            // decisions written
	tag  byte           // of the previous decision
	prev vkey           // the previous decision
	val  vval           // its value
	last [tagLimit]u128 // by tag: the network number last written
}

func (w *snapWriter) append(b []byte, k vkey, val vval) []byte {
	tag, addr, width := keyAddr(k)
	net := addr.shr(width - uint(k.bits))
	var head byte
	if w.n > 0 {
		head = sameBits
		if tag != w.tag {
			head &^= sameTag
		}
		if val.until != w.val.until {
			head &^= sameUntil
		}
		if val.label != w.val.label {
			head &^= sameLabel
		}
		if k.combo != w.prev.combo {
			head &^= sameCombo
		}
		if val.since != w.val.since {
			head &^= sameSince
		}
	}
	lo, borrow := bits.Sub64(net.lo, w.last[tag].lo, 0)
	hi, borrow := bits.Sub64(net.hi, w.last[tag].hi, borrow)
	whole := (int(k.bits) + 7) / 8
	if borrow != 0 || hi != 0 || uvarintLen(lo) > whole {
		head |= wholeAddr
	}
	b = append(b, head)
	if head&sameTag == 0 {
		b = append(b, tag)
	}
	if head&wholeAddr != 0 {
		var a [16]byte
		binary.BigEndian.PutUint64(a[:8], addr.hi)
		binary.BigEndian.PutUint64(a[8:], addr.lo)
		b = append(b, a[16-width/8:][:whole]...)
	} else {
		b = binary.AppendUvarint(b, lo)
	}
	if head&sameUntil == 0 {
		b = binary.AppendUvarint(b, uint64(val.until)-uint64(w.base))
	}
	if head&sameLabel == 0 {
		l := w.wire[val.label] // (origin, scenario)
		b = binary.AppendUvarint(binary.AppendUvarint(b, l[0]), l[1])
	}
	if head&sameCombo == 0 {
		c := w.wire[k.combo] // (scope, type)
		b = binary.AppendUvarint(binary.AppendUvarint(b, c[1]), c[0])
	}
	if head&sameSince == 0 {
		b = binary.AppendUvarint(b, sinceCode(w.at, val.since))
	}
	w.n, w.tag, w.prev, w.val, w.last[tag] = w.n+1, tag, k, val, net
	return b
}

// decodeSnapshot decodes version 3 decisions into h; r is past the string
// table, and failures are left in r.err.
func decodeSnapshot(r *reader, base, at int64, str func() string, h decodeHandler) {
	n := r.count(minSnapLen)
	if r.err != nil {
		return
	}
	h.full(n)
	var (
		last [tagLimit]u128
		tag  byte
		rec  record
	)
	for i := range n {
		head := r.byte()
		if head&^headBits != 0 || i == 0 && head&sameBits != 0 {
			r.err = fmt.Errorf("bad head %#x for decision %d", head, i)
		}
		if head&sameTag == 0 {
			tag = r.byte()
			if tag > 32 && tag < tagV6 || tag >= tagLimit {
				r.err = fmt.Errorf("bad prefix tag %d", tag)
			}
		}
		if r.err != nil {
			return
		}
		width, plen := uint(32), uint(tag)
		if tag >= tagV6 {
			width, plen = 128, uint(tag-tagV6)
		}
		var addr, net u128
		if head&wholeAddr != 0 {
			var a [16]byte
			copy(a[16-width/8:], r.bytes(int(plen+7)/8))
			addr = u128{binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])}
			net = addr.shr(width - plen)
			if net.shl(width-plen) != addr {
				r.err = fmt.Errorf("address %x/%d is not masked", a, plen)
			}
		} else {
			var carry uint64
			net.lo, carry = bits.Add64(last[tag].lo, r.uvarint(), 0)
			net.hi, carry = bits.Add64(last[tag].hi, 0, carry)
			if carry != 0 || net.shr(plen) != (u128{}) {
				r.err = fmt.Errorf("address delta overflows a /%d", plen)
			}
			addr = net.shl(width - plen)
		}
		last[tag] = net
		rec.prefix = vkey{hi: addr.hi, lo: addr.lo, bits: uint8(plen), v6: width == 128}.prefix()
		if head&sameUntil == 0 {
			rec.until = int64(uint64(base) + r.uvarint())
		}
		if head&sameLabel == 0 {
			rec.origin, rec.scenario = str(), str()
		}
		if head&sameCombo == 0 {
			rec.typ, rec.scope = str(), str()
		}
		if head&sameSince == 0 {
			rec.since = sinceDecode(at, r.uvarint())
		}
		if r.err != nil {
			return
		}
		h.add(rec)
	}
}

// encodeBatch encodes b as one value appended at at (unix ms). It fails on
// a prefix the view could not hold (invalid or not masked), so nothing
// unreadable is ever written.
func encodeBatch(b Batch, at int64) ([]byte, error) {
	var base int64
	for i, d := range b.AllNew() {
		if u := untilMS(d.Until); i == 0 || u < base {
			base = u
		}
	}
	e := newEncoder(b.Full, base, at, b.NewLen())
	for i, d := range b.AllNew() {
		if err := validPrefix(d.Prefix); err != nil {
			return nil, fmt.Errorf("new decision %d: %w", i, err)
		}
		e.addNew(recordOf(d, at))
	}
	for i, k := range b.Deleted {
		if err := validPrefix(k.Prefix); err != nil {
			return nil, fmt.Errorf("deleted key %d: %w", i, err)
		}
		e.addDel(k)
	}
	return e.finish(), nil
}

// decodeHandler receives a decoded value piece by piece, so that a 100k
// snapshot goes straight into the view without a []Decision in between.
// Strings passed to it come from the value's string table: one string per
// distinct value, already shared between all decisions of the record.
type decodeHandler interface {
	full(n int) // a full record of n new decisions follows
	// at gives the value's write time (unix ms, 0 = unknown), before any add.
	at(ms int64)
	add(r record)
	del(k Key)
}

// decodeBatch checks the CRC and decodes data into h.
func decodeBatch(data []byte, h decodeHandler) error {
	if len(data) < 4 {
		return fmt.Errorf("%w: %d bytes is too short", errDecode, len(data))
	}
	body, sum := data[:len(data)-4], binary.LittleEndian.Uint32(data[len(data)-4:])
	if got := crc32.Checksum(body, crcTable); got != sum {
		return fmt.Errorf("%w: checksum %08x, want %08x", errDecode, got, sum)
	}
	return decodeBody(body, h)
}

// decodeBody decodes a value without its CRC trailer. It never panics and
// never allocates more than a small multiple of len(data), whatever the input.
func decodeBody(data []byte, h decodeHandler) error {
	r := reader{b: data}
	version := r.byte()
	if r.err == nil && (version < codecVersionV1 || version > snapshotVersion) {
		return r.fail(fmt.Errorf("unknown version %d", version))
	}
	flags := r.byte()
	switch {
	case version == snapshotVersion && flags != flagFull:
		return r.fail(fmt.Errorf("snapshot flags %#x", flags))
	case version == codecVersion && flags&^(flagFull|flagSince) != 0,
		version == codecVersionV1 && flags&^flagFull != 0:
		return r.fail(fmt.Errorf("unknown flags %#x", flags))
	}
	base := r.varint()
	var at int64
	if version != codecVersionV1 {
		at = r.varint()
	}
	h.at(at)
	nStr := r.count(1)
	strs := make([]string, 0, nStr)
	for range nStr {
		n := r.count(1)
		strs = append(strs, string(r.bytes(n)))
	}
	if r.err != nil {
		return r.fail(nil)
	}
	str := func() string {
		i := r.uvarint()
		if r.err == nil && i >= uint64(len(strs)) {
			r.err = fmt.Errorf("string index %d out of %d", i, len(strs))
		}
		if r.err != nil {
			return ""
		}
		return strs[i]
	}
	if version == snapshotVersion {
		decodeSnapshot(&r, base, at, str, h)
		return r.end()
	}
	nNew := r.count(minNewLen)
	if r.err != nil {
		return r.fail(nil)
	}
	if flags&flagFull != 0 {
		h.full(nNew)
	}
	for range nNew {
		var rec record
		rec.prefix = r.prefix()
		rec.until = int64(uint64(base) + r.uvarint())
		rec.origin, rec.scenario, rec.typ, rec.scope = str(), str(), str(), str()
		rec.since = at
		if flags&flagSince != 0 {
			rec.since = sinceDecode(at, r.uvarint())
		}
		if r.err != nil {
			return r.fail(nil)
		}
		h.add(rec)
	}
	nDel := r.count(minDelLen)
	for range nDel {
		var k Key
		k.Prefix = r.prefix()
		k.Type, k.Scope = str(), str()
		if r.err != nil {
			return r.fail(nil)
		}
		h.del(k)
	}
	return r.end()
}

// reader is a sticky-error cursor: after the first failure every read
// returns zero values, so decode loops stay free of error plumbing.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(err error) error {
	if r.err == nil {
		r.err = err
	}
	if r.err == nil {
		return nil
	}
	return fmt.Errorf("%w at byte %d: %w", errDecode, r.off, r.err)
}

// end is fail for a value read to its end: leftover bytes are an error.
func (r *reader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%d trailing bytes", len(r.b))
	}
	return r.fail(nil)
}

func (r *reader) short() {
	if r.err == nil {
		r.err = errors.New("unexpected end of record")
	}
}

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) < 1 {
		r.short()
		return 0
	}
	c := r.b[0]
	r.b, r.off = r.b[1:], r.off+1
	return c
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || len(r.b) < n {
		r.short()
		return nil
	}
	p := r.b[:n]
	r.b, r.off = r.b[n:], r.off+n
	return p
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("bad uvarint")
		return 0
	}
	r.b, r.off = r.b[n:], r.off+n
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errors.New("bad varint")
		return 0
	}
	r.b, r.off = r.b[n:], r.off+n
	return v
}

// count reads a length and checks that the remaining bytes could hold that
// many items of at least minLen bytes each.
func (r *reader) count(minLen int) int {
	v := r.uvarint()
	if r.err == nil && v > uint64(len(r.b)/minLen) {
		r.err = fmt.Errorf("count %d exceeds remaining %d bytes", v, len(r.b))
	}
	if r.err != nil {
		return 0
	}
	return int(v)
}

func (r *reader) prefix() netip.Prefix {
	tag := r.byte()
	if r.err != nil {
		return netip.Prefix{}
	}
	var (
		p    netip.Prefix
		bits = int(tag)
	)
	switch {
	case tag <= 32:
		var a [4]byte
		copy(a[:], r.bytes((bits+7)/8))
		p = netip.PrefixFrom(netip.AddrFrom4(a), bits)
	case tag >= tagV6 && tag <= tagV6+128:
		bits -= tagV6
		var a [16]byte
		copy(a[:], r.bytes((bits+7)/8))
		p = netip.PrefixFrom(netip.AddrFrom16(a), bits)
	default:
		r.err = fmt.Errorf("bad prefix tag %d", tag)
		return netip.Prefix{}
	}
	if r.err == nil && p != p.Masked() {
		r.err = fmt.Errorf("prefix %v is not masked", p)
	}
	return p
}

// recordOf is d as a record first received at since (unix ms).
func recordOf(d Decision, since int64) record {
	return record{d.Prefix, untilMS(d.Until), d.Origin, d.Scenario, d.Type, d.Scope, since}
}

// batchBuilder is the decodeHandler that yields a Batch (tests, tools).
type batchBuilder struct{ b Batch }

func (bb *batchBuilder) full(int) { bb.b.Full = true }
func (bb *batchBuilder) at(int64) {}
func (bb *batchBuilder) add(r record) {
	bb.b.New = append(bb.b.New, Decision{
		Prefix: r.prefix, Until: msTime(r.until),
		Origin: r.origin, Scenario: r.scenario, Type: r.typ, Scope: r.scope,
	})
}
func (bb *batchBuilder) del(k Key) { bb.b.Deleted = append(bb.b.Deleted, k) }

// DecodeBatch decodes one journal value (as stored in the events or
// snapshot bucket) into a Batch. It is exported for inspection tools and
// never panics on garbage: every malformed input yields an error.
// Until values come back at the journal's resolution (milliseconds, UTC).
func DecodeBatch(data []byte) (Batch, error) {
	var bb batchBuilder
	if err := decodeBatch(data, &bb); err != nil {
		return Batch{}, err
	}
	return bb.b, nil
}

// EncodeBatch encodes b the way Append stores it, with an unknown append
// time. It fails if a prefix is invalid or not masked.
func EncodeBatch(b Batch) ([]byte, error) { return encodeBatch(b, 0) }
