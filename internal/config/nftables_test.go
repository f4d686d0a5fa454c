package config

import (
	"reflect"
	"strings"
	"testing"
)

const nftMinimal = "mode: nftables\napi_url: http://127.0.0.1:8080/\napi_key: k\n"

func TestNFTablesKeys(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		want  NFTablesConfig
		hooks []string
	}{
		{"defaults", "", NFTablesConfig{
			IPv4: NFTablesFamily{Enabled: true, Table: "crowdsec", Chain: "crowdsec-chain"},
			IPv6: NFTablesFamily{Enabled: true, Table: "crowdsec6", Chain: "crowdsec6-chain"},
		}, []string{"input"}},
		{"upstream shipped file", "nftables:\n  ipv4:\n    enabled: true\n    set-only: false\n    table: crowdsec\n    chain: crowdsec-chain\n    priority: -10\n" +
			"  ipv6:\n    enabled: true\n    set-only: false\n    table: crowdsec6\n    chain: crowdsec6-chain\n    priority: -10\nnftables_hooks:\n  - input\n  - forward\n",
			NFTablesConfig{
				IPv4: NFTablesFamily{Enabled: true, Table: "crowdsec", Chain: "crowdsec-chain", Priority: -10},
				IPv6: NFTablesFamily{Enabled: true, Table: "crowdsec6", Chain: "crowdsec6-chain", Priority: -10},
			}, []string{"input", "forward"}},
		{"disable_ipv6 is the default of ipv6.enabled", "disable_ipv6: true\nnftables:\n  ipv4:\n    set-only: true\n    table: filter\nnftables_hooks: [Output]\n",
			NFTablesConfig{
				IPv4: NFTablesFamily{Enabled: true, SetOnly: true, Table: "filter", Chain: "crowdsec-chain"},
				IPv6: NFTablesFamily{Table: "crowdsec6", Chain: "crowdsec6-chain"},
			}, []string{"output"}},
		{"explicit enabled wins over disable_ipv4", "disable_ipv4: true\nnftables:\n  ipv4:\n    enabled: true\n",
			NFTablesConfig{
				IPv4: NFTablesFamily{Enabled: true, Table: "crowdsec", Chain: "crowdsec-chain"},
				IPv6: NFTablesFamily{Enabled: true, Table: "crowdsec6", Chain: "crowdsec6-chain"},
			}, []string{"input"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := mustLoad(t, nftMinimal+tt.extra, "", nil)
			if len(res.Warnings) != 0 {
				t.Errorf("warnings: %q", res.Warnings)
			}
			c := res.Config
			if c.Mode != ModeNFTables {
				t.Errorf("mode = %q", c.Mode)
			}
			if !reflect.DeepEqual(c.NFTables, tt.want) {
				t.Errorf("nftables =\n %+v\nwant\n %+v", c.NFTables, tt.want)
			}
			if !reflect.DeepEqual(c.NFTablesHooks, tt.hooks) {
				t.Errorf("hooks = %q, want %q", c.NFTablesHooks, tt.hooks)
			}
		})
	}
}

func TestNFTablesBadValues(t *testing.T) {
	tests := []struct {
		name, extra, want string
	}{
		{"unknown hook named", "nftables_hooks: [input, ingres]\n", `nftables_hooks[1]: "ingres" is not a hook; use one of prerouting, input, forward, output, postrouting`},
		{"hook twice", "nftables_hooks: [input, INPUT]\n", `nftables_hooks[1]: "INPUT" is listed twice`},
		{"both families disabled", "nftables:\n  ipv4:\n    enabled: false\n  ipv6:\n    enabled: false\n", "nftables.ipv6.enabled: false together with nftables.ipv4.enabled: false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, nftMinimal+tt.extra, ""), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	// an unknown hook is an error in every mode, not only nftables
	_, err := Load(writeConfig(t, minimal+"nftables_hooks: [bogus]\n", ""), nil)
	if err == nil || !strings.Contains(err.Error(), `"bogus" is not a hook`) {
		t.Errorf("iptables mode, bad hook: err = %v", err)
	}
}
