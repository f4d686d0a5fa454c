package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigTestFlag: -t reports the file's errors (internal/config) and
// the kernel's (the backend's New) alike, as "config <path>: key: value
// why", and exits 1; the daemon's start runs the same check before run.
func TestConfigTestFlag(t *testing.T) {
	const base = "api_url: http://127.0.0.1:8080/\napi_key: k\n"
	long := strings.Repeat("x", 25)
	tests := []struct {
		name, text string
		want       string // a line of stderr after "config <path>: "; "" means valid
	}{
		{"valid iptables", "mode: iptables\n", ""},
		{"valid nftables", "mode: nftables\n", ""},
		{"nftables takes a prefix iptables could not", "mode: nftables\ndeny_log: true\ndeny_log_prefix: this prefix is far too long for iptables\n", ""},
		{"file rule", "mode: iptables\ndeny_action: DORP\n", `deny_action: "DORP" is not one of DROP, REJECT, TARPIT, LOG`},
		{"ipset name", "mode: iptables\nblacklists_ipv4: " + long + "\n",
			`blacklists_ipv4: "` + long + `" is 25 characters long; at most 24 are allowed (ipset names have at most 31, and mode iptables appends "-<origin>-t")`},
		{"same ipset names", "mode: ipset\nblacklists_ipv4: a\nblacklists_ipv6: a\n",
			`blacklists_ipv6: "a" is the same as blacklists_ipv4; an ipset holds one family, the families need two sets`},
		{"ipset size", "mode: ipset\nipset_size: -5\n", `ipset_size: -5 is not an ipset maxelem (1-2147483647)`},
		{"iptables log prefix", "mode: iptables\ndeny_log_prefix: this prefix is far too long for iptables\n",
			`deny_log_prefix: "this prefix is far too long for iptables" is not an iptables --log-prefix (at most 29 characters, without quotes, backslashes or newlines)`},
		{"iptables chain", "mode: iptables\niptables_v6_chains: [\"A CHAIN\"]\n",
			`iptables_chains: "A CHAIN" is not a valid iptables chain name: only printable ASCII without spaces, quotes or backslashes`},
		{"nftables deny action", "mode: nftables\ndeny_action: tarpit\n", `deny_action: "TARPIT" is not supported in mode nftables (DROP or REJECT)`},
		{"nftables table", "mode: nftables\nnftables:\n  ipv6:\n    table: \"my table\"\n",
			`nftables.ipv6.table: "my table" must not contain spaces, quotes or control characters`},
		{"nftables priority", "mode: nftables\nnftables:\n  ipv4:\n    priority: 3000000000\n",
			`nftables.ipv4.priority: 3000000000 is outside the 32-bit range of nftables priorities`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "crowdsec-firewall-bouncer.yaml")
			if err := os.WriteFile(path, []byte(base+tt.text), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errOut bytes.Buffer
			code := realMain([]string{"-c", path, "-t"}, &out, &errOut)
			if tt.want == "" {
				if code != 0 || out.String() != "config "+path+" is valid\n" {
					t.Fatalf("-t exit %d, stdout %q, stderr %q; want valid", code, out.String(), errOut.String())
				}
				return
			}
			if code != 1 {
				t.Fatalf("-t exit %d, want 1 (stderr %q)", code, errOut.String())
			}
			want := "cs-journal-bouncer: config " + path + ": " + tt.want + "\n"
			if errOut.String() != want {
				t.Errorf("stderr =\n%q\nwant\n%q", errOut.String(), want)
			}
		})
	}
}
