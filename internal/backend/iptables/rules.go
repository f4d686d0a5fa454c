package iptables

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// commandRunner runs one external command with stdin; the seam lets unit
// tests check the scripts without a kernel.
type commandRunner interface {
	run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error)
}

const (
	// cmdTimeout bounds every iptables-save and iptables-restore run. The
	// enforcer loop waits for them, and systemd's watchdog (WatchdogSec=30s,
	// pings withheld once the loop is 15 s quiet) must keep seeing it go
	// round: a hung tool is killed and the failure goes to the repair
	// ladder instead of wedging the loop. Either tool takes milliseconds
	// when nothing blocks it.
	cmdTimeout = 10 * time.Second
	// lockWait bounds iptables-restore's wait for the xtables lock
	// (iptables-legacy serialises on it; iptables-nft accepts the flag and
	// ignores it). Shorter than cmdTimeout, so a held lock ends with the
	// tool's own message rather than a kill.
	lockWait = 5 * time.Second
)

// execRunner runs the iptables tools with a deadline, in their own process
// group so that a timed-out wrapper script takes its children with it.
// kids, when set, records their pids so that the nf_tables event monitor
// knows their commits were ours.
type execRunner struct {
	log     *slog.Logger
	timeout time.Duration // 0 means cmdTimeout
	kids    *backend.Children
}

func (r execRunner) run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	timeout := cmp.Or(r.timeout, cmdTimeout)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A grandchild still holding our pipes must not keep Wait blocked.
	cmd.WaitDelay = time.Second
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
	if err == nil {
		return stdout.Bytes(), nil
	}
	line := strings.TrimSpace(name + " " + strings.Join(args, " "))
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		r.logger().Warn("external command timed out and was killed", "cmd", line, "timeout", timeout)
		return stdout.Bytes(), fmt.Errorf("%s: %w after %s", line, context.DeadlineExceeded, timeout)
	}
	msg := strings.TrimSpace(stderr.String())
	if lockTimedOut(msg) {
		r.logger().Warn("xtables lock wait timed out: another program holds the lock", "cmd", line, "wait", lockWait)
	}
	return stdout.Bytes(), fmt.Errorf("%s: %w: %s", line, err, msg)
}

func (r execRunner) logger() *slog.Logger {
	if r.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.log
}

// lockTimedOut recognises iptables' message when its --wait for the
// xtables lock ran out ("Another app is currently holding the xtables
// lock. Stopped waiting after 5s.").
func lockTimedOut(stderr string) bool {
	return strings.Contains(stderr, "holding the xtables lock")
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

// LogChain is the chain that holds the LOG rule and the deny rule when
// deny_log is on: upstream's name and layout (each set's match rule jumps
// to it), which users' scripts and dashboards refer to. It is one per
// family table, like our chain.
const LogChain = "CROWDSEC_LOG"

// ruleset is what our chains must hold for one family.
type ruleset struct {
	// match is our chain's rules in order: one per origin's set.
	match [][]string
	// log is LogChain's rules; nil when deny_log is off (LogChain is then
	// neither created nor checked).
	log [][]string
}

// matchTarget is the target of our match rules: LogChain with deny_log,
// else the deny action itself.
func (b *Backend) matchTarget() string {
	if b.cfg.DenyLog {
		return LogChain
	}
	return b.cfg.DenyAction
}

// denyTarget is the deny action's "-j ..." for one family.
func (b *Backend) denyTarget(v6 bool) []string {
	switch b.cfg.DenyAction {
	case "REJECT":
		with := "icmp-port-unreachable"
		if v6 {
			with = "icmp6-port-unreachable"
		}
		return []string{"-j", "REJECT", "--reject-with", with}
	case "LOG":
		return b.logTarget()
	default:
		return []string{"-j", b.cfg.DenyAction}
	}
}

func (b *Backend) logTarget() []string {
	return []string{"-j", "LOG", "--log-prefix", b.cfg.DenyLogPrefix}
}

// rulesetFor computes the rules our chains must hold, in order, for one
// family and the given origins (sorted by the caller). Like upstream: each
// set's rule carries the comment "CrowdSec: <origin>" when comments are on;
// with deny_log it jumps to LogChain, which logs then denies (with
// deny_action LOG it only logs, once).
func (b *Backend) rulesetFor(v6 bool, origins []int) ruleset {
	var rs ruleset
	target := b.denyTarget(v6)
	if b.cfg.DenyLog {
		rs.log = [][]string{b.logTarget()}
		if b.cfg.DenyAction != "LOG" {
			rs.log = append(rs.log, target)
		}
		target = []string{"-j", LogChain}
	}
	for _, o := range origins {
		set := b.setName(backend.SetKey{Origin: o, V6: v6})
		if _, foreign := b.mismatch[set]; foreign {
			// Another program's set holds our name (see mismatch.go): a rule
			// of ours must not enforce its contents, and a set of the other
			// family would make iptables-restore refuse the whole script.
			continue
		}
		match := []string{"-m", "set", "--match-set", set, "src"}
		if b.cfg.RuleComments {
			match = append(match, "-m", "comment", "--comment", "CrowdSec: "+b.originName(o))
		}
		rs.match = append(rs.match, slices.Concat(match, target))
	}
	return rs
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
// into the desired state, or "" if nothing needs doing. A chain of ours is
// rewritten atomically (":CHAIN" flushes it in --noflush mode) only when
// its rules differ; LogChain is declared before the rules that jump to it.
// Jumps are inserted at position 1 where missing and duplicates of our
// exact jump are removed. A LogChain left over while deny_log is off is
// left alone here (Close removes it).
func planEnsure(st tableState, chain string, want ruleset, hooks []string, jump []string) string {
	var decl, rules strings.Builder
	rewrite := func(c string, rs [][]string) {
		if st.chains[c] && rulesEqual(st.rules[c], rs) {
			return
		}
		fmt.Fprintf(&decl, ":%s - [0:0]\n", c)
		for _, r := range rs {
			rules.WriteString("-A " + c + " " + joinQuoted(r) + "\n")
		}
	}
	if want.log != nil {
		rewrite(LogChain, want.log)
	}
	rewrite(chain, want.match)
	for _, h := range hooks {
		if !st.hasChain(h) {
			continue
		}
		n := countRule(st.rules[h], jump)
		for ; n > 1; n-- {
			rules.WriteString("-D " + h + " " + joinQuoted(jump) + "\n")
		}
		if n == 0 {
			rules.WriteString("-I " + h + " 1 " + joinQuoted(jump) + "\n")
		}
	}
	if decl.Len()+rules.Len() == 0 {
		return ""
	}
	return "*filter\n" + decl.String() + rules.String() + "COMMIT\n"
}

// planRemove returns the script deleting our jumps, flushing and deleting
// our chain and LogChain; "" if none of it exists. Only rules exactly equal
// to our jump are deleted. A LogChain that another chain's rule still jumps
// to (a user's script) is flushed but kept: deleting it would fail the
// whole script and leave our chain in place.
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
	if st.chains[LogChain] {
		fmt.Fprintf(&sb, "-F %s\n", LogChain)
		if !st.jumpedToFrom(LogChain, chain, LogChain) {
			fmt.Fprintf(&sb, "-X %s\n", LogChain)
		}
	}
	if sb.Len() == 0 {
		return ""
	}
	return "*filter\n" + sb.String() + "COMMIT\n"
}

// jumpedToFrom reports whether a rule in a chain other than those excluded
// jumps (-j) or goes (-g) to target.
func (s tableState) jumpedToFrom(target string, excluded ...string) bool {
	for c, rules := range s.rules {
		if slices.Contains(excluded, c) {
			continue
		}
		for _, r := range rules {
			for i := 0; i+1 < len(r); i++ {
				if (r[i] == "-j" || r[i] == "-g") && r[i+1] == target {
					return true
				}
			}
		}
	}
	return false
}

// checkRules reports chain, jump and rule drift for one family: our chain,
// then LogChain when deny_log is on (flushed or deleted is drift like ours),
// then the jumps.
func checkRules(d *backend.Drift, family string, st tableState, chain string, want ruleset, hooks []string, jump []string) {
	check := func(c string, rs [][]string) {
		if !st.chains[c] {
			d.Add("chain", fmt.Sprintf("%s: chain %s is missing", family, c))
		} else if !rulesEqual(st.rules[c], rs) {
			d.Add("rule", fmt.Sprintf("%s: chain %s holds %d rules, want %d (or they differ)", family, c, len(st.rules[c]), len(rs)))
		}
	}
	check(chain, want.match)
	if want.log != nil {
		check(LogChain, want.log)
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
	_, err := b.runner.run(ctx, []byte(script), restoreCmd(v6), "--noflush", "--wait", fmt.Sprint(int(lockWait/time.Second)))
	if err != nil {
		if b.cfg.DenyAction == "TARPIT" && strings.Contains(err.Error(), "TARPIT") {
			return fmt.Errorf("deny_action TARPIT needs the xt_TARPIT target (xtables-addons), which this kernel/iptables lacks: %w", err)
		}
		return fmt.Errorf("apply %s rules: %w", familyName(v6), err)
	}
	return nil
}
