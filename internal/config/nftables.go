package config

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// maxNFTName is the kernel's limit for table, chain and set names
// (NFT_NAME_MAXLEN 256 bytes including the NUL).
const maxNFTName = 255

// buildNFTables reads upstream's nftables keys. They are always decoded
// (so a typo is reported whatever the mode) and cross-checked only in
// mode nftables, where they matter.
func buildNFTables(d *decoder, c *Config) {
	c.NFTables.IPv4 = nftFamily(d, "nftables.ipv4", !c.DisableIPv4, defaultNFTTable4, defaultNFTChain4)
	c.NFTables.IPv6 = nftFamily(d, "nftables.ipv6", !c.DisableIPv6, defaultNFTTable6, defaultNFTChain6)

	hooks, set := d.strs("nftables_hooks")
	if !set || len(hooks) == 0 {
		hooks = []string{defaultNFTHook}
	}
	c.NFTablesHooks = nil
	for i, h := range hooks {
		key := fmt.Sprintf("nftables_hooks[%d]", i)
		norm := strings.ToLower(strings.TrimSpace(h))
		switch {
		case !slices.Contains(NFTablesHooks, norm):
			d.fail(key, h, "%s is not a hook; use one of %s", show(key, h), strings.Join(NFTablesHooks, ", "))
		case slices.Contains(c.NFTablesHooks, norm):
			d.fail(key, h, "%s is listed twice", show(key, h))
		default:
			c.NFTablesHooks = append(c.NFTablesHooks, norm)
		}
	}

	if c.Mode != ModeNFTables {
		return
	}
	if !c.NFTables.IPv4.Enabled && !c.NFTables.IPv6.Enabled {
		d.errs = append(d.errs, &KeyError{Key: "nftables.ipv6.enabled",
			Msg: "false together with nftables.ipv4.enabled: false (or disable_ipv4/disable_ipv6) leaves nothing to enforce"})
	}
	if c.DenyAction != "DROP" && c.DenyAction != "REJECT" {
		d.fail("deny_action", c.DenyAction, "%s is not supported in mode nftables (DROP or REJECT)", show("deny_action", c.DenyAction))
	}
}

// nftFamily reads one nftables.ipvX section.
func nftFamily(d *decoder, prefix string, enabled bool, table, chain string) NFTablesFamily {
	f := NFTablesFamily{
		Enabled: d.boolean(prefix+".enabled", enabled),
		SetOnly: d.boolean(prefix+".set-only", false),
		Table:   nftName(d, prefix+".table", table, 0),
		// the chain name gets "-<hook>" appended; postrouting is the longest
		Chain:    nftName(d, prefix+".chain", chain, len("-postrouting")),
		Priority: d.integer(prefix+".priority", 0),
	}
	if f.Priority < math.MinInt32 || f.Priority > math.MaxInt32 {
		d.fail(prefix+".priority", f.Priority, "%d is outside the 32-bit range of nftables priorities", f.Priority)
		f.Priority = 0
	}
	return f
}

// nftName reads a table or chain name; reserve is what the backend appends.
func nftName(d *decoder, key, def string, reserve int) string {
	name := d.str(key, def)
	switch {
	case name == "":
		return def
	case len(name) > maxNFTName-reserve:
		d.fail(key, name, "%s is %d characters long; at most %d are allowed", show(key, name), len(name), maxNFTName-reserve)
	case strings.ContainsAny(name, " \t\n\"'\x00"):
		d.fail(key, name, "%s must not contain spaces or quotes", show(key, name))
	}
	return name
}
