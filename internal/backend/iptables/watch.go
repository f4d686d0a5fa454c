package iptables

import (
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

var _ backend.NFTWatcher = (*Backend)(nil)

// NFTObjects implements backend.NFTWatcher. On iptables-nft our chain and
// the jumps to it live in nf_tables' filter tables (ip and ip6), so their
// deletion is announced there: our chain, and every chain holding a jump,
// are watched. Our ipsets are not nf_tables objects and send no events; in
// ipset mode there is nothing to watch. With iptables-legacy nothing is
// announced and the verify tick does all the work.
func (b *Backend) NFTObjects() backend.NFTObjects {
	var o backend.NFTObjects
	if b.cfg.Mode != ModeIPTables {
		return o
	}
	for _, v6 := range b.families() {
		fam := uint8(nfprotoIPv4)
		if v6 {
			fam = nfprotoIPv6
		}
		o.Chains = append(o.Chains, backend.NFTChain{Family: fam, Table: "filter", Chain: b.cfg.Chain})
		for _, h := range b.hooks(v6) {
			o.Hooks = append(o.Hooks, backend.NFTChain{Family: fam, Table: "filter", Chain: h})
		}
	}
	o.OwnWrite = b.kids.Own
	return o
}
