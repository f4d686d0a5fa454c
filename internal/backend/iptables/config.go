// Package iptables enforces the journal's view with ipset sets filled over
// batched netlink and, in iptables mode, one chain of match rules installed
// with iptables-restore. It implements backend.Backend for the upstream
// bouncer's "iptables" and "ipset" modes.
package iptables

import (
	"errors"
	"fmt"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"log/slog"
	"strings"
	"time"
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

// Defaults, matching the upstream bouncer's.
const (
	DefaultSetName4   = "crowdsec-blacklists"
	DefaultSetName6   = "crowdsec6-blacklists"
	DefaultMaxElem    = 131072
	DefaultChain      = "CROWDSEC_CHAIN"
	DefaultDenyAction = "DROP"
	DefaultLogPrefix  = "crowdsec: "
)

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
	// ErrInvalidConfig is returned by New when a configuration value is
	// not usable; the message names the key and the value.
	ErrInvalidConfig = errors.New("invalid backend configuration")
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
// configuration key.
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
	// SetType is ipset_type: "hash:net" (default, upstream "nethash") or
	// "hash:ip" ("iphash").
	SetType string
	// MaxElem is ipset_size (default 131072).
	MaxElem int
	// DisableTimeouts is ipset_disable_timeouts: sets get no timeout
	// support and entries stay until deleted.
	DisableTimeouts bool
	// Chains4 and Chains6 are iptables_chains: the chains that jump to
	// ours (INPUT, FORWARD, DOCKER-USER...). A user chain that does not
	// exist yet is skipped; Ensure adds the jump once it appears.
	Chains4, Chains6 []string
	// Chain is our chain in the filter table (default CROWDSEC_CHAIN).
	Chain string
	// DenyAction is deny_action: DROP (default), REJECT, TARPIT or LOG.
	DenyAction string
	// DenyLog is deny_log: a LOG rule before each deny rule.
	DenyLog bool
	// DenyLogPrefix is deny_log_prefix (default "crowdsec: ").
	DenyLogPrefix string
	// RuleComments is iptables_add_rule_comments: a comment naming the
	// origin on each match rule.
	RuleComments bool
	// Logger receives the backend's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock used to turn Until into timeouts; nil means time.Now.
	Now func() time.Time
}

// normalized returns a copy with defaults filled in and aliases resolved,
// or an error naming the bad key. The caller's Config is not modified.
func (c Config) normalized() (Config, error) {
	bad := func(key string, val any, why string) error {
		return fmt.Errorf("%w: %s %q: %s", ErrInvalidConfig, key, fmt.Sprint(val), why)
	}
	switch c.Mode {
	case "":
		c.Mode = ModeIPTables
	case ModeIPTables, ModeIPSet:
	default:
		return c, bad("mode", c.Mode, `must be "iptables" or "ipset"`)
	}
	if c.DisableIPv4 && c.DisableIPv6 {
		return c, fmt.Errorf("%w: disable_ipv4 and disable_ipv6 are both true: nothing to enforce", ErrInvalidConfig)
	}
	if c.SetName4 == "" {
		c.SetName4 = DefaultSetName4
	}
	if c.SetName6 == "" {
		c.SetName6 = DefaultSetName6
	}
	limit, room := maxSetName-originSuffixLen, `"-<origin>-t"`
	if c.Mode == ModeIPSet {
		limit, room = maxSetName-len("-t"), `"-t"`
	}
	for _, kv := range [][2]string{{"blacklists_ipv4", c.SetName4}, {"blacklists_ipv6", c.SetName6}} {
		if err := validName(kv[1]); err != nil {
			return c, bad(kv[0], kv[1], err.Error())
		}
		if len(kv[1]) > limit {
			return c, bad(kv[0], kv[1], fmt.Sprintf("longer than %d characters (ipset names are at most %d, and the backend appends %s)", limit, maxSetName, room))
		}
	}
	if !c.DisableIPv4 && !c.DisableIPv6 && c.SetName4 == c.SetName6 {
		return c, bad("blacklists_ipv6", c.SetName6, "must differ from blacklists_ipv4")
	}
	switch strings.ToLower(c.SetType) {
	case "", "nethash", SetTypeNet:
		c.SetType = SetTypeNet
	case "iphash", SetTypeIP:
		c.SetType = SetTypeIP
	default:
		return c, bad("ipset_type", c.SetType, `must be "nethash"/"hash:net" or "iphash"/"hash:ip"`)
	}
	switch {
	case c.MaxElem == 0:
		c.MaxElem = DefaultMaxElem
	case c.MaxElem < 0 || c.MaxElem > 1<<31-1:
		return c, bad("ipset_size", c.MaxElem, "must be between 1 and 2147483647")
	}
	if c.Chain == "" {
		c.Chain = DefaultChain
	}
	if c.Mode == ModeIPTables {
		if err := validChain(c.Chain); err != nil {
			return c, bad("chain", c.Chain, err.Error())
		}
		for _, ch := range append(append([]string(nil), c.Chains4...), c.Chains6...) {
			if err := validChain(ch); err != nil {
				return c, bad("iptables_chains", ch, err.Error())
			}
			if ch == c.Chain {
				return c, bad("iptables_chains", ch, "cannot jump from our own chain to itself")
			}
		}
	}
	c.DenyAction = strings.ToUpper(c.DenyAction)
	switch c.DenyAction {
	case "":
		c.DenyAction = DefaultDenyAction
	case "DROP", "REJECT", "TARPIT", "LOG":
	default:
		return c, bad("deny_action", c.DenyAction, "must be DROP, REJECT, TARPIT or LOG")
	}
	if c.DenyLogPrefix == "" {
		c.DenyLogPrefix = DefaultLogPrefix
	}
	if len(c.DenyLogPrefix) > maxLogPrefix || strings.ContainsAny(c.DenyLogPrefix, "\"\\\n\r") {
		return c, bad("deny_log_prefix", c.DenyLogPrefix, "at most 29 characters, without quotes, backslashes or newlines")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Chains4 = append([]string(nil), c.Chains4...)
	c.Chains6 = append([]string(nil), c.Chains6...)
	return c, nil
}

func validName(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	for _, r := range s {
		if r <= ' ' || r > '~' || r == '"' || r == '\'' || r == '\\' {
			return errors.New("only printable ASCII without spaces or quotes")
		}
	}
	return nil
}

func validChain(s string) error {
	if err := validName(s); err != nil {
		return err
	}
	if len(s) > maxChainName {
		return fmt.Errorf("longer than %d characters", maxChainName)
	}
	if strings.HasPrefix(s, "-") || strings.HasPrefix(s, "!") {
		return errors.New("must not start with a dash or an exclamation mark")
	}
	return nil
}
