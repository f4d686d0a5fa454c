package lapi

// The streaming scanner under PullBatch: a byte window over the response
// body and a strict JSON validator that works on that window.
//
// Why not encoding/json: json.Decoder scans each list element once to find
// its end, decodeState scans it again to hand it to an Unmarshaler, and then
// the element parser reads it a third time; at 100k decisions the first two
// were 70% of a pull's CPU. Here the element parser (fastparse.go) reads
// each element once, straight from the window.
//
// How equivalence with encoding/json is kept: every function here accepts
// exactly JSON's grammar as encoding/json's scanner does (the same
// whitespace, escapes, number syntax and nesting limit; raw bytes >= 0x80 in
// strings are not checked, as there), and the parsers that act on what they
// read either do what json.Unmarshal would do or send the element to
// json.Unmarshal (after this validator has found its end).

import (
	"fmt"
	"io"
)

// errSyntax is returned (wrapped, with the offset) when the response is not
// valid JSON, where encoding/json would return a *json.SyntaxError.
var errSyntax = fmt.Errorf("%w: not valid JSON", ErrMalformedResponse)

// maxDepth is encoding/json's nesting limit, counted as the model decoder
// counts it: from the top-level object, which is depth 1.
const maxDepth = 10000

// Depths of the stream's containers as the model decoder counts them.
const (
	topDepth     = 1 // the response object
	listDepth    = 2 // the new and deleted arrays
	elementDepth = 3 // a decision object
)

// minWindow is the window's initial size: large enough that few elements
// straddle a refill and that a read can take more than the transport's
// buffer holds (at 1x readBufferSize a 100k pull took 15% longer, at 4x no
// less than at 2x), small enough to stay in cache.
const minWindow = 2 * readBufferSize

// scanStatus is a scan's outcome on the bytes the window holds so far.
type scanStatus uint8

const (
	scanOK   scanStatus = iota
	scanMore            // the window ends before the scan could decide
	scanBad             // not JSON: the error is at the returned index
	scanSlow            // the element parser declines: validate and use encoding/json
)

// window holds the unconsumed part of the body, buf[pos:]. Scans run on it
// and are repeated from the start of their value after a refill, which
// doubles the bytes available so that a large value is rescanned only a
// logarithmic number of times.
type window struct {
	r   io.Reader
	buf []byte
	pos int
	off int64 // body offset of buf[0], for error messages
	err error // the reader's error (io.EOF at the end), once it returned one
}

// more reads into the window, keeping buf[pos:], until it holds at least
// twice the had bytes that were not enough and at least one more. It returns
// false when the reader has nothing more.
func (w *window) more(had int) bool {
	if w.err != nil {
		return false
	}
	if w.pos > 0 {
		k := copy(w.buf, w.buf[w.pos:])
		w.off += int64(w.pos)
		w.buf, w.pos = w.buf[:k], 0
	}
	want := max(2*had, had+1)
	for len(w.buf) < want {
		if len(w.buf) == cap(w.buf) {
			nb := make([]byte, len(w.buf), max(2*cap(w.buf), minWindow, want))
			copy(nb, w.buf)
			w.buf = nb
		}
		k, err := w.r.Read(w.buf[len(w.buf):cap(w.buf)])
		w.buf = w.buf[:len(w.buf)+k]
		if err != nil {
			w.err = err
			break
		}
	}
	return len(w.buf) > had
}

// discard drops the whole window and reads the next bytes into it, for a
// value that is skipped without being held. It returns false when the
// reader has nothing more.
func (w *window) discard() bool {
	w.off += int64(len(w.buf))
	w.buf, w.pos = w.buf[:0], 0
	for w.err == nil {
		k, err := w.r.Read(w.buf[:cap(w.buf)])
		w.buf = w.buf[:k]
		if err != nil {
			w.err = err
		}
		if k > 0 {
			return true
		}
	}
	return false
}

// truncated is the error for a body that ends inside a value.
func (w *window) truncated() error {
	if w.err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return w.err
}

func (w *window) syntaxError(i int) error {
	return fmt.Errorf("%w: unexpected %q at byte %d", errSyntax, w.buf[i], w.off+int64(i))
}

// peek skips whitespace and returns the next byte without consuming it; at
// the end of the body it returns the reader's error (io.EOF).
func (w *window) peek() (byte, error) {
	for {
		w.pos = skipSpace(w.buf, w.pos)
		if w.pos < len(w.buf) {
			return w.buf[w.pos], nil
		}
		if !w.more(0) {
			return 0, w.err
		}
	}
}

// peekIn is peek inside the response object, where the end of the body is
// a truncation.
func (w *window) peekIn() (byte, error) {
	c, err := w.peek()
	if err != nil {
		return 0, w.truncated()
	}
	return c, nil
}

// expect consumes the byte c after optional whitespace.
func (w *window) expect(c byte) error {
	got, err := w.peekIn()
	if err != nil {
		return err
	}
	if got != c {
		return w.syntaxError(w.pos)
	}
	w.pos++
	return nil
}

// scanFunc scans one value at b[0] at the given depth and returns its length.
type scanFunc func(b []byte, depth int) (int, scanStatus)

// scan runs f at the current position, refilling the window as f asks, and
// returns the length of the value it accepted, which stays at buf[pos:] for
// the caller to consume.
func (w *window) scan(f scanFunc, depth int) (int, error) {
	for {
		k, st := f(w.buf[w.pos:], depth)
		switch st {
		case scanOK:
			return k, nil
		case scanMore:
			if !w.more(len(w.buf) - w.pos) {
				return 0, w.truncated()
			}
		default:
			return 0, w.syntaxError(w.pos + k)
		}
	}
}

func scanAnyValue(b []byte, depth int) (int, scanStatus) { return skipValue(b, 0, depth) }
func scanString(b []byte, _ int) (int, scanStatus)       { return skipString(b, 0) }
func scanNull(b []byte, _ int) (int, scanStatus)         { return literal(b, 0, "null") }

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// skipValue validates the value at b[i], inside containers that reach depth,
// and returns the index after it. Numbers need the byte after them to end:
// they never end a body we accept.
func skipValue(b []byte, i, depth int) (int, scanStatus) {
	if i >= len(b) {
		return i, scanMore
	}
	switch c := b[i]; {
	case c == '{':
		return skipObject(b, i, depth+1)
	case c == '[':
		return skipArray(b, i, depth+1)
	case c == '"':
		return skipString(b, i)
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || isDigit(c):
		return skipNumber(b, i)
	}
	return i, scanBad
}

// enter steps into the object or array at b[i], which is at depth: done is
// true when there is nothing more to scan in it (it is empty, too deep, or
// b ends first), with i and st the result for the caller.
func enter(b []byte, i, depth int, closer byte) (next int, done bool, st scanStatus) {
	if depth > maxDepth {
		return i, true, scanBad
	}
	i = skipSpace(b, i+1)
	if i >= len(b) {
		return i, true, scanMore
	}
	if b[i] == closer {
		return i + 1, true, scanOK
	}
	return i, false, scanOK
}

// skipObject validates the object at b[i], which is at depth.
func skipObject(b []byte, i, depth int) (int, scanStatus) {
	i, done, st := enter(b, i, depth, '}')
	if done {
		return i, st
	}
	for {
		if i, st = skipString(b, i); st != scanOK {
			return i, st
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return i, scanMore
		}
		if b[i] != ':' {
			return i, scanBad
		}
		if i, st = skipValue(b, skipSpace(b, i+1), depth); st != scanOK {
			return i, st
		}
		if i, done, st = afterMember(b, i, '}', scanBad); st != scanOK || done {
			return i, st
		}
	}
}

// skipArray validates the array at b[i], which is at depth.
func skipArray(b []byte, i, depth int) (int, scanStatus) {
	i, done, st := enter(b, i, depth, ']')
	if done {
		return i, st
	}
	for {
		if i, st = skipValue(b, i, depth); st != scanOK {
			return i, st
		}
		if i, done, st = afterMember(b, i, ']', scanBad); st != scanOK || done {
			return i, st
		}
	}
}

// skipString validates the string at b[i]: no control characters, only
// JSON's escapes. Other bytes, invalid UTF-8 included, are accepted as
// encoding/json accepts them (it replaces invalid UTF-8 when decoding).
func skipString(b []byte, i int) (int, scanStatus) {
	if i >= len(b) {
		return i, scanMore
	}
	if b[i] != '"' {
		return i, scanBad
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, scanOK
		case c < 0x20:
			return j, scanBad
		case c == '\\':
			if j+1 >= len(b) {
				return j, scanMore
			}
			switch b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j++
			case 'u':
				for k := j + 2; k < j+6; k++ {
					if k >= len(b) {
						return k, scanMore
					}
					if !isHex(b[k]) {
						return k, scanBad
					}
				}
				j += 5
			default:
				return j + 1, scanBad
			}
		}
	}
	return len(b), scanMore
}

func isHex(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// skipNumber validates the number at b[i]: -?(0|[1-9][0-9]*)(.[0-9]+)?
// ([eE][+-]?[0-9]+)?, which ends only at a byte that cannot continue it.
func skipNumber(b []byte, i int) (int, scanStatus) {
	j := i
	if b[j] == '-' {
		j++
	}
	if j >= len(b) {
		return j, scanMore
	}
	switch c := b[j]; {
	case c == '0':
		j++
	case isDigit(c):
		j = skipDigits(b, j)
	default:
		return j, scanBad
	}
	if j >= len(b) {
		return j, scanMore
	}
	if b[j] == '.' {
		if j++; j >= len(b) {
			return j, scanMore
		}
		if !isDigit(b[j]) {
			return j, scanBad
		}
		if j = skipDigits(b, j); j >= len(b) {
			return j, scanMore
		}
	}
	if b[j] == 'e' || b[j] == 'E' {
		if j++; j >= len(b) {
			return j, scanMore
		}
		if b[j] == '+' || b[j] == '-' {
			if j++; j >= len(b) {
				return j, scanMore
			}
		}
		if !isDigit(b[j]) {
			return j, scanBad
		}
		if j = skipDigits(b, j); j >= len(b) {
			return j, scanMore
		}
	}
	return j, scanOK
}

func skipDigits(b []byte, j int) int {
	for j < len(b) && isDigit(b[j]) {
		j++
	}
	return j
}

// literal validates the literal lit (true, false, null) at b[i]. What
// follows it is the caller's to check.
func literal(b []byte, i int, lit string) (int, scanStatus) {
	for k := range len(lit) {
		if i+k >= len(b) {
			return i + k, scanMore
		}
		if b[i+k] != lit[k] {
			return i + k, scanBad
		}
	}
	return i + len(lit), scanOK
}

// afterMember steps over what follows a member at b[i] (spaces first): a
// comma and the spaces after it (done false), or the closer (done true).
// Anything else yields bad, which callers choose (scanBad, or scanSlow to
// leave the element to the exact path).
func afterMember(b []byte, i int, closer byte, bad scanStatus) (int, bool, scanStatus) {
	i = skipSpace(b, i)
	if i >= len(b) {
		return i, false, scanMore
	}
	switch b[i] {
	case ',':
		return skipSpace(b, i+1), false, scanOK
	case closer:
		return i + 1, true, scanOK
	default:
		return i, false, bad
	}
}
