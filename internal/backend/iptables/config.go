// Package iptables enforces the journal's view with ipset sets filled over
// batched netlink and, in iptables mode, one chain of match rules installed
// with iptables-restore. It implements backend.Backend for the upstream
// bouncer's "iptables" and "ipset" modes.
package iptables

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// Modes.
const (
	// ModeIPTables: per-origin sets, our chain, match rules and jump rules.
	ModeIPTables = "iptables"
	// ModeIPSet: only fill the configured sets; the user's own rules use them.
	ModeIPSet = "ipset"
)

// Set types as the kernel names them.
const (
	SetTypeNet = "hash:net"
	SetTypeIP  = "hash:ip"
)

// DefaultChain is our chain in the filter table, as upstream names it. It
// is no configuration key: only tests set Config.Chain.
const DefaultChain = "CROWDSEC_CHAIN"

const (
	// maxSetName is IPSET_MAXNAMELEN-1.
	maxSetName = 31
	// maxOrigin bounds origin indexes so that "<name>-<origin>-t" is
	// checked once, in New.
	maxOrigin       = 9999
	originSuffixLen = len("-9999-t")
	// maxChainName is iptables' limit (XT_EXTENSION_MAXNAMELEN-1).
	maxChainName = 28
	// maxLogPrefix is the LOG target's limit (29 characters).
	maxLogPrefix = 29
)

// Sentinel errors.
var (
	// ErrInvalidEntry is returned (joined, after the valid entries were
	// applied) for entries the set cannot hold: wrong family, a prefix
	// length of 0 in hash:net, a range in hash:ip. Use Backend.Validate to
	// filter beforehand.
	// It wraps backend.ErrRejected: the enforcer reports such entries once
	// and does not retry them.
	ErrInvalidEntry = fmt.Errorf("entry not valid for the set: %w", backend.ErrRejected)
	// ErrSetNotFound is matched by kernel errors about a set that does not
	// exist (someone destroyed it): run Ensure and Replay.
	ErrSetNotFound = errors.New("ipset does not exist")
	// ErrSetFull is matched when a set reached its maxelem (ipset_size).
	ErrSetFull = fmt.Errorf("ipset is full: %w", backend.ErrSetFull)
	// ErrSetBusy is matched when a set cannot be destroyed because a rule
	// (ours or someone else's) still references it.
	ErrSetBusy = errors.New("ipset is in use")
	// ErrSetMismatch is returned when a set with our name exists with a
	// different type or family than configured; the backend will not
	// destroy it on its own.
	ErrSetMismatch = errors.New("existing ipset has a different type or family")
)

// Config configures the backend. Field comments give the upstream
// configuration key, which New's *backend.ConfigError names. Values come
// canonical (internal/config resolves upstream's aliases and letter case);
// a zero field takes upstream's default (backend.Default*).
type Config struct {
	// Mode is "iptables" (default) or "ipset" (mode).
	Mode        string
	DisableIPv4 bool // disable_ipv4
	DisableIPv6 bool // disable_ipv6
	// SetName4 is blacklists_ipv4 (default crowdsec-blacklists). In
	// iptables mode the per-origin sets are SetName4+"-"+origin; in ipset
	// mode it is the one set.
	SetName4 string
	// SetName6 is blacklists_ipv6 (default crowdsec6-blacklists).
	SetName6 string
	// SetType is ipset_type as the kernel names it: "hash:net" (default)
	// or "hash:ip".
	SetType string
	// MaxElem is ipset_size (default 131072).
	MaxElem int
	// DisableTimeouts is ipset_disable_timeouts: sets get no timeout
	// support and entries stay until deleted.
	DisableTimeouts bool
	// Chains4 and Chains6 are iptables_v4_chains and iptables_v6_chains,
	// which default to iptables_chains: the chains that jump to
	// ours (INPUT, FORWARD, DOCKER-USER...). A user chain that does not
	// exist yet is skipped; Ensure adds the jump once it appears.
	Chains4, Chains6 []string
	// Chain is our chain in the filter table (default DefaultChain); no
	// configuration key sets it.
	Chain string
	// DenyAction is deny_action, upper case: DROP (default), REJECT,
	// TARPIT or LOG.
	DenyAction string
	// DenyLog is deny_log: a LOG rule before each deny rule.
	DenyLog bool
	// DenyLogPrefix is deny_log_prefix (default
	// backend.DefaultDenyLogPrefix).
	DenyLogPrefix string
	// RuleComments is iptables_add_rule_comments: a comment naming the
	// origin on each match rule.
	RuleComments bool
	// Logger receives the backend's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock used to turn Until into timeouts; nil means time.Now.
	Now func() time.Time
}

// denyActions are the deny_action values this backend can do: each is an
// iptables target (TARPIT needs xtables-addons, found out at Ensure).
var denyActions = []string{"DROP", "REJECT", "TARPIT", "LOG"}

// normalized returns a copy with defaults filled in, or every value the
// kernel cannot take as joined *backend.ConfigError. The caller's Config
// is not modified.
func (c Config) normalized() (Config, error) {
	var errs backend.ConfigErrors
	switch c.Mode {
	case "":
		c.Mode = ModeIPTables
	case ModeIPTables, ModeIPSet:
	default:
		errs.Add("mode", c.Mode, "is not a mode of this backend (iptables or ipset)")
	}
	c.SetName4 = cmp.Or(c.SetName4, backend.DefaultSetName4)
	c.SetName6 = cmp.Or(c.SetName6, backend.DefaultSetName6)
	c.SetType = cmp.Or(c.SetType, backend.DefaultIPSetType)
	c.MaxElem = cmp.Or(c.MaxElem, backend.DefaultIPSetSize)
	c.Chain = cmp.Or(c.Chain, DefaultChain)
	c.DenyAction = cmp.Or(c.DenyAction, backend.DefaultDenyAction)
	c.DenyLogPrefix = cmp.Or(c.DenyLogPrefix, backend.DefaultDenyLogPrefix)
	c.checkSets(&errs)
	if c.Mode == ModeIPTables {
		c.checkChains(&errs)
	}
	if !slices.Contains(denyActions, c.DenyAction) {
		errs.Add("deny_action", c.DenyAction, "is not an action of mode %s (%s)", c.Mode, strings.Join(denyActions, ", "))
	}
	if len(c.DenyLogPrefix) > maxLogPrefix || strings.ContainsAny(c.DenyLogPrefix, "\"\\\n\r") {
		errs.Add("deny_log_prefix", c.DenyLogPrefix,
			"is not an iptables --log-prefix (at most %d characters, without quotes, backslashes or newlines)", maxLogPrefix)
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
	c.Chains4 = slices.Clone(c.Chains4)
	c.Chains6 = slices.Clone(c.Chains6)
	return c, nil
}

// checkSets checks the set names against ipset's name limit less the
// suffixes the backend appends, and the set type and size.
func (c Config) checkSets(errs *backend.ConfigErrors) {
	limit, room := maxSetName-originSuffixLen, `"-<origin>-t"`
	if c.Mode == ModeIPSet {
		limit, room = maxSetName-len("-t"), `"-t"`
	}
	for _, kv := range [][2]string{{"blacklists_ipv4", c.SetName4}, {"blacklists_ipv6", c.SetName6}} {
		switch {
		case !printable(kv[1]):
			errs.Add(kv[0], kv[1], "is not an ipset name: only printable ASCII without spaces, quotes or backslashes")
		case len(kv[1]) > limit:
			errs.Add(kv[0], kv[1], "is %d characters long; at most %d are allowed (ipset names have at most %d, and mode %s appends %s)",
				len(kv[1]), limit, maxSetName, c.Mode, room)
		}
	}
	// ipset names are global: one name cannot hold both families.
	if !c.DisableIPv4 && !c.DisableIPv6 && c.SetName4 == c.SetName6 {
		errs.Add("blacklists_ipv6", c.SetName6, "is the same as blacklists_ipv4; an ipset holds one family, the families need two sets")
	}
	if c.SetType != SetTypeNet && c.SetType != SetTypeIP {
		errs.Add("ipset_type", c.SetType, "is not a set type of this backend (%s or %s)", SetTypeNet, SetTypeIP)
	}
	if c.MaxElem < 1 || c.MaxElem > math.MaxInt32 {
		errs.Add("ipset_size", c.MaxElem, "is not an ipset maxelem (1-%d)", math.MaxInt32)
	}
}

// checkChains checks our chain and the chains jumping to it against
// iptables' chain-name rules. A name in both families is reported once.
func (c Config) checkChains(errs *backend.ConfigErrors) {
	if err := validChain(c.Chain); err != nil {
		errs.Add("chain", c.Chain, "is not a valid iptables chain name: %v", err)
	}
	seen := map[string]bool{}
	for _, ch := range slices.Concat(c.Chains4, c.Chains6) {
		if seen[ch] {
			continue
		}
		seen[ch] = true
		if err := validChain(ch); err != nil {
			errs.Add("iptables_chains", ch, "is not a valid iptables chain name: %v", err)
		} else if ch == c.Chain {
			errs.Add("iptables_chains", ch, "is our own chain; it cannot jump to itself")
		}
	}
}

// printable reports whether s is a non-empty name of printable ASCII
// without spaces, quotes or backslashes, which ipset and iptables-restore
// take without quoting.
func printable(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r > '~' || r == '"' || r == '\'' || r == '\\' {
			return false
		}
	}
	return true
}

func validChain(s string) error {
	switch {
	case !printable(s):
		return errors.New("only printable ASCII without spaces, quotes or backslashes")
	case len(s) > maxChainName:
		return fmt.Errorf("longer than iptables' %d characters", maxChainName)
	case strings.HasPrefix(s, "-") || strings.HasPrefix(s, "!"):
		return errors.New("must not start with a dash or an exclamation mark")
	}
	return nil
}
