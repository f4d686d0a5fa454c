package nftables

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	gnft "github.com/google/nftables"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
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

// Config configures the backend. Field comments give the upstream
// configuration key, which New's *backend.ConfigError names. Values come
// canonical (internal/config lower-cases hooks and upper-cases the deny
// action); a zero field takes upstream's default (backend.Default*).
type Config struct {
	IPv4, IPv6 Family
	// Hooks is nftables_hooks (default [input]).
	Hooks []string
	// DenyAction is deny_action: DROP (default) or REJECT; nftables has
	// no TARPIT, and LOG alone is not offered.
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

// normalized returns a copy with defaults filled in, or every value the
// kernel cannot take as joined *backend.ConfigError. The caller's Config
// is not modified.
func (c Config) normalized() (Config, error) {
	var errs backend.ConfigErrors
	c.IPv4 = c.IPv4.normalized("nftables.ipv4", "blacklists_ipv4",
		backend.DefaultNFTTable4, backend.DefaultNFTChain4, backend.DefaultSetName4, &errs)
	c.IPv6 = c.IPv6.normalized("nftables.ipv6", "blacklists_ipv6",
		backend.DefaultNFTTable6, backend.DefaultNFTChain6, backend.DefaultSetName6, &errs)
	c.Hooks = slices.Clone(c.Hooks)
	if len(c.Hooks) == 0 {
		c.Hooks = []string{backend.DefaultNFTHook}
	}
	for i, h := range c.Hooks {
		if hooks[h] == nil {
			errs.Add(fmt.Sprintf("nftables_hooks[%d]", i), h, "is not a hook of this backend (prerouting, input, forward, output, postrouting)")
		}
	}
	c.DenyAction = cmp.Or(c.DenyAction, backend.DefaultDenyAction)
	if c.DenyAction != "DROP" && c.DenyAction != "REJECT" {
		errs.Add("deny_action", c.DenyAction, "is not supported in mode nftables (DROP or REJECT)")
	}
	c.DenyLogPrefix = cmp.Or(c.DenyLogPrefix, backend.DefaultDenyLogPrefix)
	if len(c.DenyLogPrefix) > maxLogPrefix {
		errs.Add("deny_log_prefix", c.DenyLogPrefix, "is longer than nftables' %d characters", maxLogPrefix)
	}
	if err := errs.Err(); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// normalized fills one family's defaults and checks its names against
// the kernel's limit and its priority against the kernel's 32 bits.
func (f Family) normalized(prefix, setKey, table, chain, set string, errs *backend.ConfigErrors) Family {
	f.Table = cmp.Or(f.Table, table)
	f.Chain = cmp.Or(f.Chain, chain)
	f.SetName = cmp.Or(f.SetName, set)
	for _, kv := range [][2]string{{prefix + ".table", f.Table}, {prefix + ".chain", f.Chain}, {setKey, f.SetName}} {
		if err := validName(kv[1]); err != nil {
			errs.Add(kv[0], kv[1], "%v", err)
		}
	}
	if f.Priority < math.MinInt32 || f.Priority > math.MaxInt32 {
		errs.Add(prefix+".priority", f.Priority, "is outside the 32-bit range of nftables priorities")
	}
	return f
}

// validName checks a table, chain or set name. The backend appends
// "-<hook>" to chain names, "-postrouting" the longest; the same room is
// kept in every name.
func validName(s string) error {
	switch {
	case len(s) > maxName-len("-postrouting"):
		return fmt.Errorf("is %d characters long; at most %d are allowed", len(s), maxName-len("-postrouting"))
	case strings.ContainsAny(s, "\x00\n\"' \t"):
		return errors.New("must not contain spaces, quotes or control characters")
	}
	return nil
}
