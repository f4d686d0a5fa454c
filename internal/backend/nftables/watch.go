package nftables

import "github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"

var _ backend.NFTWatcher = (*Backend)(nil)

// NFTObjects implements backend.NFTWatcher: our tables, whole. Our own
// writes come from this process's threads, which the monitor recognizes
// without help (no child process writes for us). In set-only mode the table
// is the administrator's and only our set in it is ours; the monitor cannot
// tell a set from its table, so that family is left to the verify tick and
// the deep verify.
func (b *Backend) NFTObjects() backend.NFTObjects {
	var o backend.NFTObjects
	for _, f := range b.fams {
		if f.cfg.SetOnly {
			continue
		}
		o.Tables = append(o.Tables, backend.NFTTable{Family: uint8(f.tfam), Name: f.cfg.Table})
	}
	return o
}
