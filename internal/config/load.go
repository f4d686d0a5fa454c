package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/spf13/viper"
)

// Result is what Load returns.
type Result struct {
	// Config is the validated configuration; nil when Load fails.
	Config *Config
	// Warnings are problems that do not stop the bouncer, such as unknown
	// (probably misspelt) keys. Load returns them even when it fails,
	// because a misspelt key often explains a missing one.
	Warnings []string
	// Merged is the file with its .local overlay merged in, variables
	// expanded and alias keys renamed, as viper decoded it (keys
	// lower-cased). The api_key value is masked: print it freely.
	Merged map[string]any
}

// layer is one parsed file: the main one or its .local overlay.
type layer struct {
	path     string
	settings map[string]any
	keys     []string
	unset    []string
}

// Load reads the YAML file at path and, if it exists, path+".local"
// merged over it, the way crowdsec-firewall-bouncer does. `${VAR}` and
// `$VAR` are expanded in the text of each file through lookupEnv (nil
// means an empty environment); like upstream, a variable that is not set
// is left as written. Load touches nothing but those two files.
//
// On error the Result, when not nil, still holds the warnings. Errors
// about values are *KeyError, joined, and match ErrInvalid.
func Load(path string, lookupEnv func(string) (string, bool)) (*Result, error) {
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	layers, err := readLayers(path, lookupEnv)
	if err != nil {
		return nil, err
	}

	res := &Result{}
	v := viper.New()
	var unset []string
	for _, l := range layers {
		for _, w := range unknownKeys(l.keys) {
			res.Warnings = append(res.Warnings, l.path+": "+w)
		}
		if err := resolveAliases(l.settings); err != nil {
			return res, fmt.Errorf("config %s: %w", l.path, err)
		}
		if err := v.MergeConfigMap(l.settings); err != nil {
			return res, fmt.Errorf("merge config %s: %w", l.path, err)
		}
		unset = append(unset, l.unset...)
	}
	settings := v.AllSettings()

	d := &decoder{m: settings, unset: unset}
	cfg, warnings := build(d)
	res.Warnings = append(res.Warnings, warnings...)
	res.Warnings = append(res.Warnings, unexpandedWarnings(d, settings)...)
	res.Merged = redact(settings)
	if len(d.errs) > 0 {
		return res, fmt.Errorf("config %s: %w", path, errors.Join(d.errs...))
	}
	res.Config = cfg
	return res, nil
}

// MaxFileBytes bounds each configuration file (and its .local overlay):
// 1 MiB. A real one is a few KiB; the bound keeps a wrong path (a log, a
// device, a FIFO that never ends) from being read into memory whole.
const MaxFileBytes = 1 << 20

// ErrTooLarge is returned (wrapped, naming the file) when a configuration
// file is larger than MaxFileBytes.
var ErrTooLarge = errors.New("config file larger than 1 MiB")

// readLayer reads, expands and parses one file.
func readLayer(path string, lookupEnv func(string) (string, bool)) (*layer, error) {
	raw, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	text, unset := expand(string(raw), lookupEnv)
	// viper only picks a parser from the file extension, which a .local
	// file defeats: name the type and feed it the text.
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader([]byte(text))); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	return &layer{path: path, settings: v.AllSettings(), keys: v.AllKeys(), unset: unset}, nil
}

// readBounded reads path, failing with ErrTooLarge past MaxFileBytes.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	if len(raw) > MaxFileBytes {
		return nil, fmt.Errorf("read config %s: %w (%d bytes)", path, ErrTooLarge, MaxFileBytes)
	}
	return raw, nil
}

// expand replaces ${NAME} and $NAME by their values, with upstream's
// semantics (go-cs-lib csstring.StrictExpand): an unset variable is left
// as written and reported in unset. Unlike upstream, substituted values
// are not scanned again, so a secret containing '$' arrives intact.
func expand(s string, lookup func(string) (string, bool)) (out string, unset []string) {
	var b strings.Builder
	miss := func(name string) {
		for _, u := range unset {
			if u == name {
				return
			}
		}
		unset = append(unset, name)
	}
	for i := 0; i < len(s); {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			i++
			continue
		}
		var name string
		var end int // index just past the reference
		if s[i+1] == '{' {
			j := strings.IndexByte(s[i+2:], '}')
			if j < 0 {
				b.WriteString(s[i:])
				break
			}
			name, end = s[i+2:i+2+j], i+3+j
		} else {
			end = i + 1
			for end < len(s) && isNameChar(s[end]) {
				end++
			}
			name = s[i+1 : end]
		}
		if name == "" {
			b.WriteByte('$')
			i++
			continue
		}
		if val, ok := lookup(name); ok {
			b.WriteString(val)
		} else {
			b.WriteString(s[i:end])
			miss(name)
		}
		i = end
	}
	return b.String(), unset
}

func isNameChar(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// resolveAliases renames alias keys to the key Load reads, within one
// file, so that a .local overlay may use either spelling to override the
// main file. Both spellings with different values in one file is an error.
func resolveAliases(m map[string]any) error {
	var errs []error
	for _, alias := range sortedKeys(aliases) {
		canon := aliases[alias]
		av, hasAlias := m[alias]
		if !hasAlias {
			continue
		}
		delete(m, alias)
		if cv, hasCanon := m[canon]; hasCanon && fmt.Sprint(cv) != fmt.Sprint(av) {
			errs = append(errs, &KeyError{Key: alias, Msg: fmt.Sprintf(
				"%s conflicts with %s: %s; these keys are aliases, keep one",
				show(alias, av), canon, show(canon, cv))})
			continue
		}
		m[canon] = av
	}
	return errors.Join(errs...)
}

// unexpandedWarnings warns about values still holding a reference to an
// unset variable, for keys that decoded without error.
func unexpandedWarnings(d *decoder, settings map[string]any) []string {
	if len(d.unset) == 0 {
		return nil
	}
	failed := map[string]bool{}
	for _, err := range d.errs {
		var ke *KeyError
		if errors.As(err, &ke) {
			failed[ke.Key] = true
		}
	}
	var out []string
	walkStrings(settings, "", func(key, s string) {
		if !knownKeys[key] || failed[key] {
			return
		}
		if name := d.unsetIn(s); name != "" {
			out = append(out, fmt.Sprintf("%s: environment variable %s is not set; %s left as is",
				key, name, show(key, s)))
		}
	})
	return out
}

// walkStrings calls fn for each string leaf (list items under their list's key).
func walkStrings(v any, key string, fn func(key, s string)) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range sortedKeys(x) {
			sub := k
			if key != "" {
				sub = key + "." + k
			}
			walkStrings(x[k], sub, fn)
		}
	case []any:
		for _, it := range x {
			walkStrings(it, key, fn)
		}
	case string:
		fn(key, x)
	}
}

// redact returns a deep copy of m with secret values masked.
func redact(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		switch x := v.(type) {
		case map[string]any:
			out[k] = redact(x)
		case []any:
			out[k] = append([]any(nil), x...)
		default:
			if secretKeys[k] && v != "" {
				v = mask
			}
			out[k] = v
		}
	}
	return out
}

// mask replaces secrets in dumps.
const mask = "********"

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// readLayers reads path and, when it exists, path.local on top of it.
func readLayers(path string, lookupEnv func(string) (string, bool)) ([]*layer, error) {
	main, err := readLayer(path, lookupEnv)
	if err != nil {
		return nil, err
	}
	layers := []*layer{main}
	local, err := readLayer(path+".local", lookupEnv)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		layers = append(layers, local)
	}
	return layers, nil
}
