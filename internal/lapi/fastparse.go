package lapi

// The hand parser for the list elements LAPI really sends: a flat object
// whose keys are the model's json names in lower case, with plain ASCII
// strings (no escapes), integer ids, bools, nulls, and unknown keys with any
// value. It reads the element once, straight from the stream's window, and
// validates what it reads as strictly as encoding/json (scan.go). It
// declines (scanSlow) anything else, and the element is then validated by
// skipValue and decoded by encoding/json, so the hand parser only has to be
// right on what it accepts: for that input it does what json.Unmarshal into
// wireDecision does (later keys win, null resets a field, unknown keys are
// ignored).
//
// Why: decoding 100k elements with encoding/json costs one reflective walk
// and one string allocation per field; this parser allocates nothing for a
// typical decision: the value and duration stay in the window for the
// normalizer to parse, and the repeated strings (origin, scenario, scope,
// type) are looked up in the interning table without allocating.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/bits"
)

// maxFastIDDigits: ids with more digits go to encoding/json, which decides
// whether they fit an int64.
const maxFastIDDigits = 18

// element is one list element being decoded, in a wire struct reused from
// element to element.
type element struct {
	n    *normalizer
	w    wireDecision
	null bool
	// the last interned value of each shared field: a blocklist repeats
	// them in every element, and comparing is cheaper than hashing
	last [numShared]string
	run  runMemo
}

// The shared fields: origin, scenario, scope and type, which a blocklist's
// elements all have alike.
const (
	sharedOrigin = iota
	sharedScenario
	sharedScope
	sharedType
	numShared
)

func (w *wireDecision) shared(k int) *jsonString {
	return [numShared]*jsonString{&w.Origin, &w.Scenario, &w.Scope, &w.Type}[k]
}

// maxRun bounds the run the element parser keeps.
const maxRun = 1024

// runMemo is the last element's first run of consecutive shared members
// (`"origin":"lists","scenario":"lists:x","scope":"Ip","type":"ban"` in
// LAPI's key order): its bytes, from the first key's quote to the end of
// the last value, and the fields it set. The bytes decide what parsing
// them does, so an element holding the same bytes at the start of a member
// gets the same fields without parsing them: one comparison instead of
// four keys and four values.
type runMemo struct {
	b    []byte
	set  [numShared]bool
	vals [numShared]jsonString
}

// replay applies the run if b, at the start of a member, begins with it,
// and returns its length (0 if not).
func (m *runMemo) replay(b []byte, w *wireDecision) int {
	if len(m.b) == 0 || len(b) < len(m.b) || b[1] != m.b[1] || !bytes.Equal(b[:len(m.b)], m.b) {
		return 0
	}
	for k, set := range m.set {
		if set {
			*w.shared(k) = m.vals[k]
		}
	}
	return len(m.b)
}

// keep records run, followed by what came before the next member or the
// closing brace, which set the fields in set to their values in w.
func (m *runMemo) keep(run []byte, set [numShared]bool, w *wireDecision) {
	run = trimRun(run)
	if len(run) > maxRun {
		return
	}
	m.b = append(m.b[:0], run...)
	m.set = set
	for k := range numShared {
		m.vals[k] = *w.shared(k)
	}
}

// decodeSlow decodes b, one element that skipValue has validated, with
// encoding/json.
func (e *element) decodeSlow(b []byte) error {
	e.w = wireDecision{}
	p := &e.w
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	e.null = p == nil
	return nil
}

// scan parses the element at b[0] and returns its length. It returns
// scanMore when b ends first (the caller refills and calls again from the
// start) and scanSlow for anything it does not handle, never scanBad: the
// validator decides what is an error.
func (e *element) scan(b []byte) (int, scanStatus) {
	if len(b) == 0 {
		return 0, scanMore
	}
	switch b[0] {
	case 'n': // null: the model's nil decision
		i, st := literal(b, 0, "null")
		e.null = st == scanOK
		return i, fast(st)
	case '{':
	default:
		return 0, scanSlow
	}
	e.null = false
	e.w = wireDecision{}
	w := &e.w
	i := skipSpace(b, 1)
	if i >= len(b) {
		return i, scanMore
	}
	if b[i] == '}' {
		return i + 1, scanOK
	}
	// The element's first run of shared members is replayed or kept for
	// the next element; a run kept mid-element is kept even if the element
	// turns out incomplete or slow: its bytes alone decide what it sets.
	runStart, kept := -1, false
	var runSet [numShared]bool
	for {
		var st scanStatus
		if k := e.run.replay(b[i:], w); k > 0 {
			i, kept = i+k, true
		} else {
			start, shared := i, -1
			if i, shared, st = e.member(b, i); st != scanOK {
				return i, st
			}
			switch {
			case kept:
			case shared >= 0:
				if runStart < 0 {
					runStart = start
				}
				runSet[shared] = true
			case runStart >= 0:
				e.run.keep(b[runStart:start], runSet, w)
				kept = true
			}
		}
		var done bool
		if i, done, st = afterMember(b, i, '}', scanSlow); st != scanOK || done {
			if st == scanOK && !kept && runStart >= 0 {
				e.run.keep(b[runStart:i-1], runSet, w) // the run went on to the '}'
			}
			return i, st
		}
	}
}

// trimRun drops the spaces and comma after a run's last value, which ends
// in neither.
func trimRun(run []byte) []byte {
	for len(run) > 0 {
		switch run[len(run)-1] {
		case ' ', '\t', '\n', '\r', ',':
			run = run[:len(run)-1]
		default:
			return run
		}
	}
	return run
}

// member parses the member at b[i] into the wire struct and returns the
// index after its value and which shared field it set (-1 for none).
func (e *element) member(b []byte, i int) (int, int, scanStatus) {
	w := &e.w
	key, j, st := plainString(b, i)
	if st != scanOK {
		return j, -1, st
	}
	i = skipSpace(b, j)
	if i >= len(b) {
		return i, -1, scanMore
	}
	if b[i] != ':' {
		return i, -1, scanSlow
	}
	i = skipSpace(b, i+1)
	shared := -1
	switch string(key) {
	case "duration":
		i, st = e.stringField(b, i, &w.Duration, nil)
	case "value":
		i, st = e.stringField(b, i, &w.Value, nil)
	case "origin":
		shared = sharedOrigin
	case "scenario":
		shared = sharedScenario
	case "scope":
		shared = sharedScope
	case "type":
		shared = sharedType
	case "simulated":
		i, st = boolField(b, i, &w.Simulated)
	case "id":
		i, st = intField(b, i)
	case "uuid", "until":
		i, st = anyStringField(b, i)
	default:
		if knownKey(key) {
			// another spelling of a field: encoding/json's case folding
			return i, -1, scanSlow
		}
		i, st = skipValue(b, i, elementDepth)
		st = fast(st)
	}
	if shared >= 0 {
		i, st = e.stringField(b, i, w.shared(shared), &e.last[shared])
	}
	return i, shared, st
}

// fast turns the validator's scanBad into the element parser's scanSlow.
func fast(st scanStatus) scanStatus {
	if st == scanBad {
		return scanSlow
	}
	return st
}

// wireNames are the json names of wireDecision's fields.
var wireNames = [...]string{"duration", "origin", "scenario", "scope", "type", "value", "simulated", "id", "uuid", "until"}

// knownKey reports whether the ASCII key matches a field of wireDecision
// case-insensitively, as encoding/json matches keys (for ASCII its folding
// is ASCII case folding).
func knownKey(key []byte) bool {
	for _, name := range wireNames {
		if asciiEqualFold(key, name) {
			return true
		}
	}
	return false
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// plainString returns the contents of the string at b[i] and the index after
// it; it declines (scanSlow) all but printable ASCII without escapes, the
// only strings whose bytes are their value.
func plainString(b []byte, i int) (s []byte, next int, st scanStatus) {
	if i >= len(b) {
		return nil, i, scanMore
	}
	if b[i] != '"' {
		return nil, i, scanSlow
	}
	j := i + 1
	// eight bytes at a time: most strings end within one or two words
	for ; j+8 <= len(b); j += 8 {
		if m := specialBytes(binary.LittleEndian.Uint64(b[j:])); m != 0 {
			j += bits.TrailingZeros64(m) / 8
			if b[j] == '"' {
				return b[i+1 : j], j + 1, scanOK
			}
			return nil, j, scanSlow
		}
	}
	for ; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, scanOK
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, j, scanSlow
		}
	}
	return nil, len(b), scanMore
}

const (
	ones = 0x0101010101010101
	high = 0x8080808080808080
)

// specialBytes sets the high bit of each byte of x (little-endian) that
// ends or spoils a plain string: '"', '\\', a control character or a byte
// >= 0x80. A byte above the first flagged one may be flagged wrongly (a
// borrow), never the first, which is all plainString looks at.
func specialBytes(x uint64) uint64 {
	q := x ^ (ones * '"')
	s := x ^ (ones * '\\')
	return ((q-ones)&^q | (s-ones)&^s | (x-ones*0x20)&^x | x) & high
}

// stringField sets a string field from null or a plain string. With a
// last, the string is interned: compared with last, else looked up
// without allocating and stored once per distinct value; without, it is
// left in the window.
func (e *element) stringField(b []byte, i int, dst *jsonString, last *string) (int, scanStatus) {
	if i < len(b) && b[i] == 'n' {
		j, st := literal(b, i, "null")
		if st == scanOK {
			*dst = jsonString{}
		}
		return j, fast(st)
	}
	s, next, st := plainString(b, i)
	if st != scanOK {
		return next, st
	}
	if last != nil {
		if *last != string(s) {
			v, hit := e.n.strs[string(s)]
			if !hit {
				v = string(s)
				e.n.strs[v] = v
			}
			*last = v
		}
		*dst = jsonString{s: *last, ok: true}
	} else {
		*dst = jsonString{b: s, ok: true}
	}
	return next, scanOK
}

// boolField accepts true, false and null (the model's nil, false to the
// rules).
func boolField(b []byte, i int, dst *jsonBool) (int, scanStatus) {
	if i >= len(b) {
		return i, scanMore
	}
	var lit string
	switch b[i] {
	case 't':
		lit = "true"
	case 'f':
		lit = "false"
	case 'n':
		lit = "null"
	default:
		return i, scanSlow
	}
	j, st := literal(b, i, lit)
	if st == scanOK {
		*dst = jsonBool(lit == "true")
	}
	return j, fast(st)
}

// intField accepts null or an integer short enough to fit an int64; the id
// is not kept. Fractions, exponents and long integers go to encoding/json:
// they are type errors or need its range check.
func intField(b []byte, i int) (int, scanStatus) {
	if i >= len(b) {
		return i, scanMore
	}
	if b[i] == 'n' {
		j, st := literal(b, i, "null")
		return j, fast(st)
	}
	j := i
	if b[j] == '-' {
		if j++; j >= len(b) {
			return j, scanMore
		}
	}
	start := j
	switch {
	case b[j] == '0':
		j++
	case isDigit(b[j]):
		j = skipDigits(b, j)
	default:
		return j, scanSlow
	}
	if j-start > maxFastIDDigits {
		return j, scanSlow
	}
	if j >= len(b) {
		return j, scanMore // the number may go on
	}
	if c := b[j]; c == '.' || c == 'e' || c == 'E' || isDigit(c) {
		return j, scanSlow // a float (encoding/json's type error) or a leading zero
	}
	return j, scanOK
}

// anyStringField accepts null or any valid string, keeping nothing.
func anyStringField(b []byte, i int) (int, scanStatus) {
	if i >= len(b) {
		return i, scanMore
	}
	var st scanStatus
	switch b[i] {
	case 'n':
		i, st = literal(b, i, "null")
	case '"':
		i, st = skipString(b, i)
	default:
		return i, scanSlow
	}
	return i, fast(st)
}
