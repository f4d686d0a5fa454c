package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrInvalid is wrapped by every error about a key's value or a missing
// required key (each is a *KeyError): the file was read but is wrong.
var ErrInvalid = errors.New("invalid configuration")

// ErrUnsupportedMode is wrapped by the *KeyError for a mode upstream has
// (nftables, pf) that cs-journal-bouncer does not implement yet.
var ErrUnsupportedMode = errors.New("mode not supported yet")

// KeyError reports one bad or missing key. Its message names the key and
// the offending value (never the value of api_key).
type KeyError struct {
	// Key is the dotted key, e.g. "deny_action" or "heal.interval".
	Key string
	// Msg says what is wrong, including the value.
	Msg string
	// err is the sentinel matched by errors.Is besides ErrInvalid.
	err error
}

// Error implements error.
func (e *KeyError) Error() string { return e.Key + ": " + e.Msg }

// Is makes every KeyError match ErrInvalid, and ErrUnsupportedMode when set.
func (e *KeyError) Is(target error) bool {
	return target == ErrInvalid || (e.err != nil && target == e.err)
}

// secretKeys are keys whose values never appear in errors or dumps.
var secretKeys = map[string]bool{"api_key": true}

// decoder reads typed values out of the merged settings map and collects
// one error per bad key, so that a user sees every problem at once.
type decoder struct {
	m     map[string]any
	unset []string // env vars referenced but not set, for hints
	errs  []error
}

// lookup finds a dotted key; a nil value counts as absent (YAML `key:`).
func (d *decoder) lookup(key string) (any, bool) {
	var cur any = d.m
	for _, part := range strings.Split(key, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, cur != nil
}

// show formats a value for an error message, hiding secrets.
func show(key string, v any) string {
	if secretKeys[key] {
		return `"********"`
	}
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprint(v)
}

// fail records an error for key; msg should include show(key, value).
// When the value still holds a `${VAR}` whose variable is unset, it says
// so, because that is then the likely cause.
func (d *decoder) fail(key string, v any, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if s, ok := v.(string); ok {
		if name := d.unsetIn(s); name != "" {
			msg += fmt.Sprintf(" (environment variable %s is not set)", name)
		}
	}
	d.errs = append(d.errs, &KeyError{Key: key, Msg: msg})
}

// unsetIn returns the first unset variable referenced in s, or "".
func (d *decoder) unsetIn(s string) string {
	for _, name := range d.unset {
		if strings.Contains(s, "${"+name+"}") || containsDollarName(s, name) {
			return name
		}
	}
	return ""
}

// containsDollarName reports whether s holds $name not followed by
// another name character (so $API does not match $API_KEY).
func containsDollarName(s, name string) bool {
	needle := "$" + name
	for i := strings.Index(s, needle); i >= 0; {
		end := i + len(needle)
		if end == len(s) || !isNameChar(s[end]) {
			return true
		}
		next := strings.Index(s[end:], needle)
		if next < 0 {
			return false
		}
		i = end + next
	}
	return false
}

// str reads a string key. Upstream decodes with yaml.v2, which turns any
// scalar into a string field, so numbers and booleans are accepted too.
func (d *decoder) str(key, def string) string {
	v, ok := d.lookup(key)
	if !ok {
		return def
	}
	switch x := v.(type) {
	case string:
		return x
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(x)
	}
	d.fail(key, v, "%s is not a string", show(key, v))
	return def
}

// yamlV1Bools are the YAML 1.1 booleans yaml.v2 (upstream) accepts and
// yaml.v3 (viper) leaves as strings.
var yamlV1Bools = map[string]bool{
	"y": true, "yes": true, "on": true, "true": true,
	"n": false, "no": false, "off": false, "false": false,
}

// boolean reads a bool key.
func (d *decoder) boolean(key string, def bool) bool {
	v, ok := d.lookup(key)
	if !ok {
		return def
	}
	switch x := v.(type) {
	case bool:
		return x
	case string:
		if b, ok := yamlV1Bools[strings.ToLower(x)]; ok {
			return b
		}
	}
	d.fail(key, v, "%s is not a boolean (true or false)", show(key, v))
	return def
}

// integer reads an int key; integer strings are accepted for the sake of
// `${VAR}` values someone quoted.
func (d *decoder) integer(key string, def int) int {
	v, ok := d.lookup(key)
	if !ok {
		return def
	}
	switch x := v.(type) {
	case int:
		return x
	case int64:
		return int(x)
	case uint64:
		if x <= uint64(^uint(0)>>1) {
			return int(x)
		}
	case string:
		if n, err := strconv.Atoi(strings.TrimSpace(x)); err == nil {
			return n
		}
	}
	d.fail(key, v, "%s is not an integer", show(key, v))
	return def
}

// duration reads a Go duration string ("10s", "1h30m").
func (d *decoder) duration(key string, def time.Duration) time.Duration {
	v, ok := d.lookup(key)
	if !ok {
		return def
	}
	if s, ok := v.(string); ok {
		if dur, err := time.ParseDuration(strings.TrimSpace(s)); err == nil {
			return dur
		}
	} else if n, ok := v.(int); ok && n == 0 {
		return 0 // a bare 0 is unambiguous
	}
	d.fail(key, v, "%s is not a duration (use a unit, e.g. 10s, 5m, 1h)", show(key, v))
	return def
}

// strs reads a list of scalars. set is false when the key is absent or
// null, so callers can tell "not configured" from "configured empty".
func (d *decoder) strs(key string) (list []string, set bool) {
	v, ok := d.lookup(key)
	if !ok {
		return nil, false
	}
	items, ok := v.([]any)
	if !ok {
		d.fail(key, v, "%s is not a list (write one item per line, each starting with \"- \")", show(key, v))
		return nil, false
	}
	list = make([]string, 0, len(items))
	for i, it := range items {
		switch x := it.(type) {
		case string:
			list = append(list, x)
		case int, int64, uint64, float64, bool:
			list = append(list, fmt.Sprint(x))
		default:
			d.fail(fmt.Sprintf("%s[%d]", key, i), it, "%s is not a string", show(key, it))
		}
	}
	return list, true
}

// oneOf checks that norm (raw normalised by the caller) is in allowed; the
// error shows raw, as the user wrote it.
func (d *decoder) oneOf(key, raw, norm string, allowed ...string) bool {
	for _, a := range allowed {
		if norm == a {
			return true
		}
	}
	d.fail(key, raw, "%s is not one of %s", show(key, raw), strings.Join(allowed, ", "))
	return false
}
