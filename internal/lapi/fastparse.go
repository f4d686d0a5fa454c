package lapi

// The hand parser for the list elements LAPI really sends: a flat object
// whose keys are the model's json names in lower case, with plain ASCII
// strings (no escapes), integer ids, bools and nulls. It gives up (returns
// false) on anything else, and encoding/json then decodes the element, so
// the hand parser only has to be right on what it accepts: for that input it
// does what json.Unmarshal into wireDecision does (later keys win, null
// resets a field). Its input is a value the Decoder has already validated.
//
// Why: decoding 100k elements with encoding/json costs one reflective walk
// and one string allocation per field; this parser allocates only the value
// and duration strings and looks the repeated strings (origin, scenario,
// scope, type) up in the interning table without allocating.

// maxFastIDDigits: ids with more digits go to encoding/json, which decides
// whether they fit an int64.
const maxFastIDDigits = 18

// parseFast fills e from b, or returns false and leaves the element to
// encoding/json.
func (e *element) parseFast(b []byte) bool {
	i := skipSpace(b, 0)
	if i < len(b) && b[i] == 'n' { // null: the model's nil decision
		e.null = true
		return true
	}
	if i >= len(b) || b[i] != '{' {
		return false
	}
	e.null = false
	e.w = wireDecision{}
	w := &e.w
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return true
	}
	for {
		key, j, ok := plainString(b, i)
		if !ok {
			return false
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipSpace(b, i+1)
		switch string(key) {
		case "duration":
			i, ok = e.stringField(b, i, &w.Duration, false)
		case "value":
			i, ok = e.stringField(b, i, &w.Value, false)
		case "origin":
			i, ok = e.stringField(b, i, &w.Origin, true)
		case "scenario":
			i, ok = e.stringField(b, i, &w.Scenario, true)
		case "scope":
			i, ok = e.stringField(b, i, &w.Scope, true)
		case "type":
			i, ok = e.stringField(b, i, &w.Type, true)
		case "simulated":
			i, ok = boolField(b, i, &w.Simulated)
		case "id":
			i, ok = intField(b, i)
		case "uuid", "until":
			i, ok = anyStringField(b, i)
		default:
			// other spellings need encoding/json's case folding, and
			// unknown keys may hold any value
			return false
		}
		if !ok {
			return false
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return true
		default:
			return false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString returns the contents of the string at b[i] and the index after
// it; ok is false unless it is a string of ASCII without escapes, the only
// kind whose bytes are its value.
func plainString(b []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c >= 0x80:
			return nil, i, false
		}
	}
	return nil, i, false
}

// isNull reports whether b[i:] starts with the literal null.
func isNull(b []byte, i int) bool {
	return len(b)-i >= 4 && string(b[i:i+4]) == "null"
}

// stringField sets a string field; interned strings are looked up without
// allocating and stored once per distinct value.
func (e *element) stringField(b []byte, i int, dst *jsonString, intern bool) (int, bool) {
	if isNull(b, i) {
		*dst = jsonString{}
		return i + 4, true
	}
	s, next, ok := plainString(b, i)
	if !ok {
		return i, false
	}
	if intern {
		v, hit := e.n.strs[string(s)]
		if !hit {
			v = string(s)
			e.n.strs[v] = v
		}
		*dst = jsonString{s: v, ok: true}
	} else {
		*dst = jsonString{s: string(s), ok: true}
	}
	return next, true
}

func boolField(b []byte, i int, dst *jsonBool) (int, bool) {
	switch {
	case len(b)-i >= 4 && string(b[i:i+4]) == "true":
		*dst = true
		return i + 4, true
	case len(b)-i >= 5 && string(b[i:i+5]) == "false":
		*dst = false
		return i + 5, true
	case isNull(b, i):
		*dst = false
		return i + 4, true
	}
	return i, false
}

// intField accepts null or an integer short enough to fit an int64; the id
// is not kept.
func intField(b []byte, i int) (int, bool) {
	if isNull(b, i) {
		return i + 4, true
	}
	j := i
	if j < len(b) && b[j] == '-' {
		j++
	}
	start := j
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	if j == start || j-start > maxFastIDDigits {
		return i, false
	}
	if j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E') {
		return i, false // a float: encoding/json's type error
	}
	return j, true
}

// anyStringField accepts null or any string (escapes included), keeping
// nothing.
func anyStringField(b []byte, i int) (int, bool) {
	if isNull(b, i) {
		return i + 4, true
	}
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, true
		}
	}
	return i, false
}
