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

import "encoding/json"

// maxFastIDDigits: ids with more digits go to encoding/json, which decides
// whether they fit an int64.
const maxFastIDDigits = 18

// element is one list element being decoded, in a wire struct reused from
// element to element.
type element struct {
	n    *normalizer
	w    wireDecision
	null bool
	// the last interned origin, scenario, scope and type: a blocklist
	// repeats them in every element, and comparing is cheaper than hashing
	last struct{ origin, scenario, scope, typ string }
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
	for {
		key, j, st := plainString(b, i)
		if st != scanOK {
			return j, st
		}
		i = skipSpace(b, j)
		if i >= len(b) {
			return i, scanMore
		}
		if b[i] != ':' {
			return i, scanSlow
		}
		i = skipSpace(b, i+1)
		switch string(key) {
		case "duration":
			i, st = e.stringField(b, i, &w.Duration, nil)
		case "value":
			i, st = e.stringField(b, i, &w.Value, nil)
		case "origin":
			i, st = e.stringField(b, i, &w.Origin, &e.last.origin)
		case "scenario":
			i, st = e.stringField(b, i, &w.Scenario, &e.last.scenario)
		case "scope":
			i, st = e.stringField(b, i, &w.Scope, &e.last.scope)
		case "type":
			i, st = e.stringField(b, i, &w.Type, &e.last.typ)
		case "simulated":
			i, st = boolField(b, i, &w.Simulated)
		case "id":
			i, st = intField(b, i)
		case "uuid", "until":
			i, st = anyStringField(b, i)
		default:
			if knownKey(key) {
				// another spelling of a field: encoding/json's case folding
				return i, scanSlow
			}
			i, st = skipValue(b, i, elementDepth)
			st = fast(st)
		}
		if st != scanOK {
			return i, st
		}
		var done bool
		if i, done, st = afterMember(b, i, '}', scanSlow); st != scanOK || done {
			return i, st
		}
	}
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
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, scanOK
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, j, scanSlow
		}
	}
	return nil, len(b), scanMore
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
