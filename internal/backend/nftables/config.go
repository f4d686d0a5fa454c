package nftables

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	gnft "github.com/google/nftables"
)

// Defaults, matching the upstream bouncer's.
const (
	DefaultTable4     = "crowdsec"
	DefaultTable6     = "crowdsec6"
	DefaultChain4     = "crowdsec-chain"
	DefaultChain6     = "crowdsec6-chain"
	DefaultSetName4   = "crowdsec-blacklists"
	DefaultSetName6   = "crowdsec6-blacklists"
	DefaultDenyAction = "DROP"
	DefaultLogPrefix  = "crowdsec drop: "
	DefaultHook       = "input"
)

// maxName is the kernel's limit for table, chain, set and object names
// (NFT_NAME_MAXLEN, 256 bytes with the NUL).
const maxName = 255

// maxLogPrefix is the kernel's log prefix limit (NF_LOG_PREFIXLEN-1).
const maxLogPrefix = 127

// hooks maps nftables_hooks values to netfilter hook numbers.
var hooks = map[string]*gnft.ChainHook{
	"prerouting":  gnft.ChainHookPrerouting,
	"input":       gnft.ChainHookInput,
	"forward":     gnft.ChainHookForward,
	"output":      gnft.ChainHookOutput,
	"postrouting": gnft.ChainHookPostrouting,
}

// ErrInvalidConfig is returned by New when a configuration value is not
// usable; the message names the key and the value.
var ErrInvalidConfig = errors.New("invalid backend configuration")

// Family configures one address family: nftables.ipv4 or nftables.ipv6
// plus blacklists_ipv4/blacklists_ipv6.
type Family struct {
	// Enabled is nftables.ipvX.enabled.
	Enabled bool
	// SetOnly is nftables.ipvX.set-only: fill SetName in the
	// administrator's table Table and create nothing else.
	SetOnly bool
	// Table is nftables.ipvX.table (a table of family ip or ip6; in
	// set-only mode an inet table of that name is used when there is no
	// ip/ip6 one).
	Table string
	// Chain is nftables.ipvX.chain; our base chains are Chain-<hook>.
	Chain string
	// Priority is nftables.ipvX.priority.
	Priority int
	// SetName is blacklists_ipvX: our sets are SetName-<origin> (the one
	// set SetName in set-only mode).
	SetName string
}

// Config configures the backend.
type Config struct {
	IPv4, IPv6 Family
	// Hooks is nftables_hooks (default [input]).
	Hooks []string
	// DenyAction is deny_action: DROP (default) or REJECT.
	DenyAction string
	// DenyLog is deny_log: log matching packets before the verdict.
	DenyLog bool
	// DenyLogPrefix is deny_log_prefix.
	DenyLogPrefix string
	// DisableTimeouts (ipset_disable_timeouts) creates sets without
	// per-element timeouts; entries stay until the enforcer deletes them.
	DisableTimeouts bool
	// Logger receives the backend's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock turning Until into timeouts; nil means time.Now.
	Now func() time.Time
}

// normalized returns a copy with defaults filled in, or an error naming
// the bad key. The caller's Config is not modified.
func (c Config) normalized() (Config, error) {
	bad := func(key string, val any, why string) error {
		return fmt.Errorf("%w: %s %q: %s", ErrInvalidConfig, key, fmt.Sprint(val), why)
	}
	if !c.IPv4.Enabled && !c.IPv6.Enabled {
		return c, fmt.Errorf("%w: nftables.ipv4.enabled and nftables.ipv6.enabled are both false: nothing to enforce", ErrInvalidConfig)
	}
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&c.IPv4.Table, DefaultTable4)
	def(&c.IPv6.Table, DefaultTable6)
	def(&c.IPv4.Chain, DefaultChain4)
	def(&c.IPv6.Chain, DefaultChain6)
	def(&c.IPv4.SetName, DefaultSetName4)
	def(&c.IPv6.SetName, DefaultSetName6)
	def(&c.DenyAction, DefaultDenyAction)
	def(&c.DenyLogPrefix, DefaultLogPrefix)
	for _, f := range []struct {
		key string
		f   Family
	}{{"nftables.ipv4", c.IPv4}, {"nftables.ipv6", c.IPv6}} {
		for _, kv := range [][2]string{{".table", f.f.Table}, {".chain", f.f.Chain}, {" blacklists", f.f.SetName}} {
			if err := validName(kv[1]); err != nil {
				return c, bad(f.key+kv[0], kv[1], err.Error())
			}
		}
		if f.f.Priority < math.MinInt32 || f.f.Priority > math.MaxInt32 {
			return c, bad(f.key+".priority", f.f.Priority, "outside the 32-bit range")
		}
	}
	if len(c.Hooks) == 0 {
		c.Hooks = []string{DefaultHook}
	}
	c.Hooks = slices.Clone(c.Hooks)
	for i, h := range c.Hooks {
		c.Hooks[i] = strings.ToLower(h)
		if hooks[c.Hooks[i]] == nil {
			return c, bad("nftables_hooks", h, "not one of prerouting, input, forward, output, postrouting")
		}
		if slices.Contains(c.Hooks[:i], c.Hooks[i]) {
			return c, bad("nftables_hooks", h, "listed twice")
		}
	}
	c.DenyAction = strings.ToUpper(c.DenyAction)
	if c.DenyAction != "DROP" && c.DenyAction != "REJECT" {
		return c, bad("deny_action", c.DenyAction, "must be DROP or REJECT in mode nftables")
	}
	if len(c.DenyLogPrefix) > maxLogPrefix {
		return c, bad("deny_log_prefix", c.DenyLogPrefix, fmt.Sprintf("longer than %d characters", maxLogPrefix))
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

func validName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > maxName-len("-postrouting"):
		return fmt.Errorf("longer than %d characters", maxName-len("-postrouting"))
	case strings.ContainsAny(s, "\x00\n\"' \t"):
		return errors.New("must not contain spaces, quotes or control characters")
	}
	return nil
}
