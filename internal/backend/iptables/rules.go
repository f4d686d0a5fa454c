package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// commandRunner runs one external command with stdin; the seam lets unit
// tests check the scripts without a kernel.
type commandRunner interface {
	run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
}

// execRunner runs real commands; kids, when set, records their pids so
// that the nf_tables event monitor knows their commits were ours.
type execRunner struct{ kids *backend.Children }

func (r execRunner) run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := cmd.Start
	if r.kids != nil {
		start = func() error { return r.kids.Start(cmd) }
	}
	err := start()
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// builtinChains exist in the filter table even before iptables-nft
// creates the table; a jump from them is always expected.
var builtinChains = map[string]bool{"INPUT": true, "FORWARD": true, "OUTPUT": true}

// tableState is the part of `iptables-save -t filter` we look at.
type tableState struct {
	chains map[string]bool
	// rules per chain, each a token list without the leading "-A CHAIN".
	rules map[string][][]string
}

func (s tableState) hasChain(c string) bool { return builtinChains[c] || s.chains[c] }

// parseSave reads iptables-save output for the filter table.
func parseSave(out string) tableState {
	st := tableState{chains: map[string]bool{}, rules: map[string][][]string{}}
	inFilter := false
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			inFilter = line == "*filter"
		case !inFilter:
		case strings.HasPrefix(line, ":"):
			if name, _, ok := strings.Cut(line[1:], " "); ok {
				st.chains[name] = true
			}
		case strings.HasPrefix(line, "-A "):
			toks := tokenize(line)
			if len(toks) >= 2 {
				st.rules[toks[1]] = append(st.rules[toks[1]], toks[2:])
			}
		}
	}
	return st
}

// tokenize splits a rule line the way iptables-restore does: whitespace
// separated, double quotes group, backslash escapes the next character.
// Comparing tokens makes our check independent of iptables-save's quoting.
func tokenize(line string) []string {
	var toks []string
	var cur strings.Builder
	inTok, quoted, escaped := false, false, false
	for _, r := range line {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped, inTok = true, true
		case r == '"':
			quoted = !quoted
			inTok = true
		case (r == ' ' || r == '\t') && !quoted:
			if inTok {
				toks = append(toks, cur.String())
				cur.Reset()
				inTok = false
			}
		default:
			cur.WriteRune(r)
			inTok = true
		}
	}
	if inTok {
		toks = append(toks, cur.String())
	}
	return toks
}

// quote renders a token for a restore script.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"\\'") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// rulesetFor computes the rules our chain must hold, in order, for one
// family and the given origins (sorted by the caller).
func (b *Backend) rulesetFor(v6 bool, origins []int) [][]string {
	var out [][]string
	for _, o := range origins {
		set := b.setName(backend.SetKey{Origin: o, V6: v6})
		match := []string{"-m", "set", "--match-set", set, "src"}
		if b.cfg.RuleComments {
			match = append(match, "-m", "comment", "--comment", "CrowdSec: origin "+b.originName(o))
		}
		logTarget := []string{"-j", "LOG", "--log-prefix", b.cfg.DenyLogPrefix}
		if b.cfg.DenyLog && b.cfg.DenyAction != "LOG" {
			out = append(out, slices.Concat(match, logTarget))
		}
		var target []string
		switch b.cfg.DenyAction {
		case "REJECT":
			with := "icmp-port-unreachable"
			if v6 {
				with = "icmp6-port-unreachable"
			}
			target = []string{"-j", "REJECT", "--reject-with", with}
		case "LOG":
			target = logTarget
		default:
			target = []string{"-j", b.cfg.DenyAction}
		}
		out = append(out, slices.Concat(match, target))
	}
	return out
}

// originName is the name used in rule comments, sanitized so that it
// survives iptables' quoting and its 256-byte comment limit.
func (b *Backend) originName(o int) string {
	n := b.originNames[o]
	if n == "" {
		return fmt.Sprint(o)
	}
	clean := strings.Map(func(r rune) rune {
		if r > ' ' && r <= '~' && r != '"' && r != '\\' && r != '\'' {
			return r
		}
		return '_'
	}, n)
	if len(clean) > 200 {
		clean = clean[:200]
	}
	return clean
}

// jumpRule is the exact jump rule we own in each hooked chain.
func (b *Backend) jumpRule() []string { return []string{"-j", b.cfg.Chain} }

// planEnsure returns the iptables-restore --noflush script that turns st
// into the desired state, or "" if nothing needs doing. Our chain is
// rewritten atomically (":CHAIN" flushes it in --noflush mode) only when
// its rules differ; jumps are inserted at position 1 where missing and
// duplicates of our exact jump are removed.
func planEnsure(st tableState, chain string, want [][]string, hooks []string, jump []string) string {
	var sb strings.Builder
	if !st.chains[chain] || !rulesEqual(st.rules[chain], want) {
		fmt.Fprintf(&sb, ":%s - [0:0]\n", chain)
		for _, r := range want {
			sb.WriteString("-A " + chain + " " + joinQuoted(r) + "\n")
		}
	}
	for _, h := range hooks {
		if !st.hasChain(h) {
			continue
		}
		n := countRule(st.rules[h], jump)
		for ; n > 1; n-- {
			sb.WriteString("-D " + h + " " + joinQuoted(jump) + "\n")
		}
		if n == 0 {
			sb.WriteString("-I " + h + " 1 " + joinQuoted(jump) + "\n")
		}
	}
	if sb.Len() == 0 {
		return ""
	}
	return "*filter\n" + sb.String() + "COMMIT\n"
}

// planRemove returns the script deleting our jumps, flushing and deleting
// our chain; "" if none of it exists. Only rules exactly equal to our jump
// are deleted.
func planRemove(st tableState, chain string, hooks []string, jump []string) string {
	var sb strings.Builder
	seen := map[string]bool{}
	for _, h := range hooks {
		if seen[h] || !st.hasChain(h) {
			continue
		}
		seen[h] = true
		for range countRule(st.rules[h], jump) {
			sb.WriteString("-D " + h + " " + joinQuoted(jump) + "\n")
		}
	}
	if st.chains[chain] {
		fmt.Fprintf(&sb, "-F %s\n-X %s\n", chain, chain)
	}
	if sb.Len() == 0 {
		return ""
	}
	return "*filter\n" + sb.String() + "COMMIT\n"
}

// checkRules reports chain, jump and rule drift for one family.
func checkRules(d *backend.Drift, family string, st tableState, chain string, want [][]string, hooks []string, jump []string) {
	if !st.chains[chain] {
		d.Add("chain", fmt.Sprintf("%s: chain %s is missing", family, chain))
	} else if !rulesEqual(st.rules[chain], want) {
		d.Add("rule", fmt.Sprintf("%s: chain %s holds %d rules, want %d (or they differ)", family, chain, len(st.rules[chain]), len(want)))
	}
	for _, h := range hooks {
		if st.hasChain(h) && countRule(st.rules[h], jump) == 0 {
			d.Add("jump", fmt.Sprintf("%s: chain %s has no jump to %s", family, h, chain))
		}
	}
}

func rulesEqual(have, want [][]string) bool {
	return slices.EqualFunc(have, want, slices.Equal[[]string])
}

func countRule(rules [][]string, r []string) int {
	n := 0
	for _, have := range rules {
		if slices.Equal(have, r) {
			n++
		}
	}
	return n
}

func joinQuoted(toks []string) string {
	q := make([]string, len(toks))
	for i, t := range toks {
		q[i] = quote(t)
	}
	return strings.Join(q, " ")
}

// Binaries per family.
func saveCmd(v6 bool) string {
	if v6 {
		return "ip6tables-save"
	}
	return "iptables-save"
}

func restoreCmd(v6 bool) string {
	if v6 {
		return "ip6tables-restore"
	}
	return "iptables-restore"
}

func familyName(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

// readTable runs one iptables-save for the filter table.
func (b *Backend) readTable(ctx context.Context, v6 bool) (tableState, error) {
	out, err := b.runner.run(ctx, nil, saveCmd(v6), "-t", "filter")
	if err != nil {
		return tableState{}, fmt.Errorf("read %s filter table: %w", familyName(v6), err)
	}
	return parseSave(string(out)), nil
}

// restore applies a script with one iptables-restore --noflush.
func (b *Backend) restore(ctx context.Context, v6 bool, script string) error {
	_, err := b.runner.run(ctx, []byte(script), restoreCmd(v6), "--noflush", "--wait")
	if err != nil {
		if b.cfg.DenyAction == "TARPIT" && strings.Contains(err.Error(), "TARPIT") {
			return fmt.Errorf("deny_action TARPIT needs the xt_TARPIT target (xtables-addons), which this kernel/iptables lacks: %w", err)
		}
		return fmt.Errorf("apply %s rules: %w", familyName(v6), err)
	}
	return nil
}
