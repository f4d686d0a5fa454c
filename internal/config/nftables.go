package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// buildNFTables reads upstream's nftables keys. They are always decoded
// (so a typo is reported whatever the mode) and cross-checked only in
// mode nftables, where they matter. Which deny actions nftables can do is
// the backend's rule.
func buildNFTables(d *decoder, c *Config) {
	c.NFTables.IPv4 = nftFamily(d, "nftables.ipv4", !c.DisableIPv4, backend.DefaultNFTTable4, backend.DefaultNFTChain4)
	c.NFTables.IPv6 = nftFamily(d, "nftables.ipv6", !c.DisableIPv6, backend.DefaultNFTTable6, backend.DefaultNFTChain6)

	hooks, set := d.strs("nftables_hooks")
	if !set || len(hooks) == 0 {
		hooks = []string{backend.DefaultNFTHook}
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
}

// nftFamily reads one nftables.ipvX section. Name lengths and characters
// and the priority's range are the kernel's limits: the backend's New
// checks them.
func nftFamily(d *decoder, prefix string, enabled bool, table, chain string) NFTablesFamily {
	return NFTablesFamily{
		Enabled:  d.boolean(prefix+".enabled", enabled),
		SetOnly:  d.boolean(prefix+".set-only", false),
		Table:    cmp.Or(d.str(prefix+".table", ""), table),
		Chain:    cmp.Or(d.str(prefix+".chain", ""), chain),
		Priority: d.integer(prefix+".priority", 0),
	}
}
