package nftables

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Our rules carry an nft comment (rule userdata) starting with ruleMark:
// that is how a restart, a kill -9 or a second instance finds them instead
// of adding duplicates. The rest of the comment spells the rule, so a
// configuration change (deny_action, deny_log) shows as a different
// comment and Ensure replaces the rule.
const ruleMark = "cs-journal-bouncer: "

// processed names the counter of all traffic entering our chains, as
// upstream names it (fw_bouncer_processed_*).
const processed = "processed"

// ownSets lists the sets our own table must hold for the declared origins:
// per origin, the set of single addresses (upstream's name and flags) and
// the interval set of its ranges.
func (b *Backend) ownSets(f *family) []*gnft.Set {
	var out []*gnft.Set
	for _, o := range b.originList() {
		name := b.SetName(b.SetKeyOf(o, f.v6))
		out = append(out, b.setObj(f, name, false), b.setObj(f, rangesName(name), true))
	}
	return out
}

// setObj describes one of our sets.
func (b *Backend) setObj(f *family, name string, interval bool) *gnft.Set {
	return &gnft.Set{
		Table: f.table, Name: name, KeyType: f.keyType, KeyByteOrder: binaryutil.BigEndian,
		Interval: interval, HasTimeout: !b.cfg.DisableTimeouts,
	}
}

// sameSet reports whether an existing set has the flags we need.
func sameSet(have, want *gnft.Set) bool {
	return have.KeyType.Name == want.KeyType.Name && have.Interval == want.Interval &&
		have.HasTimeout == want.HasTimeout && !have.IsMap && !have.Constant
}

// chainObj describes our base chain for a hook.
func (b *Backend) chainObj(f *family, hook string) *gnft.Chain {
	prio := gnft.ChainPriority(int32(f.cfg.Priority))
	policy := gnft.ChainPolicyAccept
	return &gnft.Chain{
		Name: f.cfg.Chain + "-" + hook, Table: f.table, Type: gnft.ChainTypeFilter,
		Hooknum: hooks[hook], Priority: &prio, Policy: &policy,
	}
}

// sameChain reports whether an existing chain is the base chain we need.
func sameChain(have, want *gnft.Chain) bool {
	return have.Type == want.Type && have.Hooknum != nil && *have.Hooknum == *want.Hooknum &&
		have.Priority != nil && *have.Priority == *want.Priority
}

// wantRule is one rule of ours, with the comment that identifies it.
type wantRule struct {
	comment []byte
	exprs   []expr.Any
}

// ownRules lists the rules of each of our chains, in order: the
// "processed" counter, then per origin a rule per set (singles, ranges),
// both counting into the origin's named counter. An origin whose set
// holds a preload has none until the replay that follows it.
func (b *Backend) ownRules(f *family) []wantRule {
	rules := []wantRule{{
		comment: comment(ruleMark + "counter name " + processed),
		exprs:   []expr.Any{&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: processed}},
	}}
	for _, o := range b.originList() {
		name := b.SetName(b.SetKeyOf(o, f.v6))
		if b.isPending(f, name) {
			continue // its rules come with the replay, once the journal has the batch
		}
		for _, set := range []string{name, rangesName(name)} {
			rules = append(rules, b.denyRule(f, set, name))
		}
	}
	return rules
}

// denyRule matches the source address against set, counts into counter,
// optionally logs, and drops or rejects.
func (b *Backend) denyRule(f *family, set, counter string) wantRule {
	off, n := uint32(12), uint32(4) // IPv4 header: saddr
	if f.v6 {
		off, n = 8, 16
	}
	ex := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: set},
		&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: counter},
	}
	text := fmt.Sprintf("saddr @%s counter name %s", set, counter)
	if b.cfg.DenyLog {
		ex = append(ex, &expr.Log{Key: 1 << unix.NFTA_LOG_PREFIX, Data: []byte(b.cfg.DenyLogPrefix)})
		text += fmt.Sprintf(" log prefix %q", b.cfg.DenyLogPrefix)
	}
	if b.cfg.DenyAction == "REJECT" {
		// admin-prohibited in each family's own ICMP code space (upstream
		// sends ICMPv4's code in ip6 tables too).
		code := uint8(13) // ICMP_PKT_FILTERED
		if f.v6 {
			code = uint8(1) // ICMPV6_ADM_PROHIBITED
		}
		ex = append(ex, &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: code})
		text += " reject admin-prohibited"
	} else {
		ex = append(ex, &expr.Verdict{Kind: expr.VerdictDrop})
		text += " drop"
	}
	return wantRule{comment: comment(ruleMark + text), exprs: ex}
}

// comment encodes a rule comment as nft does, so `nft list` shows it.
// The kernel caps rule userdata at 256 bytes: a longer text is replaced
// by a hash of it, still starting with ruleMark.
func comment(text string) []byte {
	if len(text) > 240 {
		h := fnv.New64a()
		h.Write([]byte(text))
		text = fmt.Sprintf("%s%x", ruleMark, h.Sum64())
	}
	return userdata.AppendString(nil, userdata.TypeComment, text)
}

// ours reports whether a kernel rule is one of ours.
func ours(r *gnft.Rule) bool {
	c, ok := userdata.GetString(r.UserData, userdata.TypeComment)
	return ok && strings.HasPrefix(c, ruleMark)
}

// indexRule returns the index of the wanted rule with r's comment, or -1.
func indexRule(want []wantRule, r *gnft.Rule) int {
	for i, w := range want {
		if bytes.Equal(w.comment, r.UserData) {
			return i
		}
	}
	return -1
}

// ownedSetName reports whether a set name in our table is one we create.
func (f *family) ownedSetName(name string) bool {
	return strings.HasPrefix(name, f.cfg.SetName+"-")
}

// commentText decodes a rule comment for messages.
func commentText(ud []byte) string {
	s, _ := userdata.GetString(ud, userdata.TypeComment)
	return s
}
