package config

import (
	"fmt"
	"sort"
	"strings"
)

// topKeys are the top-level keys read by Load: upstream's (its code and
// its example file), go-cs-bouncer's, and ours.
var topKeys = []string{
	// go-cs-bouncer (LAPI client)
	"api_url", "api_key", "cert_path", "key_path", "ca_cert_path",
	"insecure_skip_verify", "retry_initial_connect", "update_frequency",
	"scopes", "origins", "scenarios_containing", "scenarios_not_containing",
	// upstream firewall bouncer
	"mode", "supported_decisions_types",
	"log_mode", "log_dir", "log_level", "log_max_size", "log_max_backups",
	"log_max_age", "log_compression",
	"disable_ipv4", "disable_ipv6", "deny_action", "deny_log", "deny_log_prefix",
	"blacklists_ipv4", "blacklists_ipv6", "ipset_type", "ipset_size",
	"ipset_disable_timeouts", "iptables_chains", "iptables_v4_chains",
	"iptables_v6_chains", "iptables_add_rule_comments", "nftables_hooks",
	// ours
	"log_format", "journal_path", "on_shutdown", "full_resync_interval",
}

// sectionKeys are the keys of the nested sections Load reads.
var sectionKeys = map[string][]string{
	"prometheus": {"enabled", "listen_addr", "listen_port"},
	"nftables": {
		"ipv4.enabled", "ipv4.set-only", "ipv4.table", "ipv4.chain", "ipv4.priority",
		"ipv6.enabled", "ipv6.set-only", "ipv6.table", "ipv6.chain", "ipv6.priority",
	},
	"heal": {"interval", "deep_interval", "max_replay_attempts", "backoff_initial", "backoff_max", "fight_window", "free_repairs"},
}

// ignoredKeys are upstream keys for its other modes, or deprecated ones it
// ignores itself; accepted without a word so a file moves unchanged.
var ignoredKeys = map[string]bool{
	"pf": true, "pid_dir": true, "daemonize": true,
}

// aliases maps a second spelling to the key Load reads. Upstream's code
// reads log_max_files and compress_logs while its example file writes
// log_max_backups and log_compression (which upstream then ignores);
// both spellings work here.
var aliases = map[string]string{
	"log_max_files": "log_max_backups",
	"compress_logs": "log_compression",
}

// knownKeys is every dotted key accepted, for lookups and suggestions.
var knownKeys = func() map[string]bool {
	m := map[string]bool{}
	for _, k := range topKeys {
		m[k] = true
	}
	for sec, ks := range sectionKeys {
		for _, k := range ks {
			m[sec+"."+k] = true
		}
	}
	for k := range aliases {
		m[k] = true
	}
	return m
}()

// unknownKeys returns a warning for each key in keys (viper's flattened,
// lower-cased AllKeys) that Load neither reads nor deliberately ignores.
func unknownKeys(keys []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, k := range keys {
		top, _, nested := strings.Cut(k, ".")
		if ignoredKeys[top] || knownKeys[k] {
			continue
		}
		if _, isSection := sectionKeys[top]; isSection && !nested {
			continue // an empty section
		}
		if knownKeys[top] {
			continue // a scalar key given a map: decoding reports it
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		msg := fmt.Sprintf("unknown key %q", k)
		if s := suggest(k); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		out = append(out, msg)
	}
	sort.Strings(out)
	return out
}

// suggest returns the known key closest to k, if close enough to be a typo.
func suggest(k string) string {
	best, bestD := "", -1
	for cand := range knownKeys {
		d := editDistance(k, cand)
		if bestD < 0 || d < bestD || (d == bestD && cand < best) {
			best, bestD = cand, d
		}
	}
	// a third of the key's length: "deny_actoin" (1) and "ipset_sise" (1)
	// qualify, "foo" does not pull in "mode".
	if limit := max(1, len(k)/3); bestD <= limit {
		return best
	}
	return ""
}

// editDistance is the optimal-string-alignment distance: Levenshtein plus
// transposition of adjacent characters, the commonest typo.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
