package backend

import (
	"errors"
	"fmt"
	"strconv"
)

// Upstream's defaults for the keys that name kernel objects or shape the
// rules. They are here, once, because two layers use them: internal/config
// fills them in for a key the file leaves out, and each backend for a zero
// field of its Config (callers other than the daemon: tests, tools). They
// must stay upstream's so that a migrated host keeps its sets, tables and
// chains.
const (
	// DefaultSetName4 is blacklists_ipv4's default.
	DefaultSetName4 = "crowdsec-blacklists"
	// DefaultSetName6 is blacklists_ipv6's default.
	DefaultSetName6 = "crowdsec6-blacklists"
	// DefaultDenyAction is deny_action's default.
	DefaultDenyAction = "DROP"
	// DefaultDenyLogPrefix is deny_log_prefix's default. Upstream's code
	// sets "crowdsec drop: " when the key is empty (its example file's
	// comment says "crowdsec: ", but the code is what runs).
	DefaultDenyLogPrefix = "crowdsec drop: "
	// DefaultIPSetType is ipset_type's default, as the kernel names it
	// (upstream's "nethash").
	DefaultIPSetType = "hash:net"
	// DefaultIPSetSize is ipset_size's default (the sets' maxelem).
	DefaultIPSetSize = 131072
	// DefaultNFTTable4 and DefaultNFTTable6 are nftables.ipv4.table's and
	// nftables.ipv6.table's defaults.
	DefaultNFTTable4, DefaultNFTTable6 = "crowdsec", "crowdsec6"
	// DefaultNFTChain4 and DefaultNFTChain6 are nftables.ipv4.chain's and
	// nftables.ipv6.chain's defaults.
	DefaultNFTChain4, DefaultNFTChain6 = "crowdsec-chain", "crowdsec6-chain"
	// DefaultNFTHook is nftables_hooks' default, a list of this one hook.
	DefaultNFTHook = "input"
)

// ErrInvalidConfig is matched by every *ConfigError: a backend's New was
// given a value its kernel cannot take.
var ErrInvalidConfig = errors.New("invalid backend configuration")

// ConfigError reports a value a backend cannot use. Key is the upstream
// configuration key the value comes from, so that the user, who only
// knows the file, is told which line to fix.
//
// Rules about the file (key types, enumerations the file format defines,
// defaults) live in internal/config; rules about a kernel (name lengths,
// characters, which deny actions it can do) live in the backend and are
// reported with this type. Each rule lives in exactly one of the two.
type ConfigError struct {
	// Key is the upstream key, e.g. "deny_log_prefix" or
	// "nftables.ipv4.table".
	Key string
	// Value is the offending value.
	Value any
	// Why says what is wrong, as a predicate of the value ("is longer
	// than ...").
	Why string
}

// Error implements error, in internal/config's format: `key: "value" why`.
func (e *ConfigError) Error() string {
	v := fmt.Sprint(e.Value)
	if s, ok := e.Value.(string); ok {
		v = strconv.Quote(s)
	}
	return e.Key + ": " + v + " " + e.Why
}

// Is makes every ConfigError match ErrInvalidConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// ConfigErrors collects ConfigErrors so that New reports every bad value
// at once, as the config loader does.
type ConfigErrors []error

// Add records that key's value v is not usable, and why.
func (es *ConfigErrors) Add(key string, v any, why string, args ...any) {
	*es = append(*es, &ConfigError{Key: key, Value: v, Why: fmt.Sprintf(why, args...)})
}

// Err returns the errors joined, or nil when there are none.
func (es ConfigErrors) Err() error { return errors.Join(es...) }
