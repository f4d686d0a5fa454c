package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	gnft "github.com/google/nftables"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// Members lists what each of our sets holds: a full element dump. For a
// set of ranges it reports every wanted prefix the kernel's outermost
// ranges cover (nested prefixes are enforced by their cover), so the deep
// verify compares like with like.
func (b *Backend) Members(ctx context.Context) (map[backend.SetKey][]netip.Prefix, error) {
	out := map[backend.SetKey][]netip.Prefix{}
	for _, f := range b.fams {
		keys := b.setKeys(f)
		for _, k := range keys {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			name := b.SetName(k)
			slots := []slot{{fam: f, name: name}}
			if f.cfg.SetOnly {
				if f.userSet == nil {
					if err := b.findUserSet(b.conn, f); err != nil {
						return nil, err
					}
				}
				slots[0].interval = f.userSet.Interval
			} else {
				slots = append(slots, slot{fam: f, name: rangesName(name), interval: true})
			}
			var ps []netip.Prefix
			for _, s := range slots {
				got, err := b.dump(b.conn, s)
				if err != nil {
					return nil, err
				}
				if m := b.mirrors[s.name]; s.interval && m != nil {
					got = m.covered(got)
				}
				ps = append(ps, got...)
			}
			out[k] = ps
		}
	}
	return out, nil
}

// setKeys lists the logical sets of a family.
func (b *Backend) setKeys(f *family) []backend.SetKey {
	if f.cfg.SetOnly {
		return []backend.SetKey{{V6: f.v6}}
	}
	var out []backend.SetKey
	for _, o := range b.originList() {
		out = append(out, backend.SetKey{Origin: o, V6: f.v6})
	}
	return out
}

// dump reads one set's elements as prefixes.
func (b *Backend) dump(conn *gnft.Conn, s slot) ([]netip.Prefix, error) {
	set := b.setRef(s)
	if set == nil {
		return nil, fmt.Errorf("set %s: not found", s.name)
	}
	els, err := conn.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("list elements of %s: %w", s.name, err)
	}
	if !s.interval {
		out := make([]netip.Prefix, 0, len(els))
		for _, e := range els {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		return out, nil
	}
	var out []netip.Prefix
	for _, iv := range intervals(els) {
		out = append(out, rangeToPrefixes(iv.first, iv.last)...)
	}
	return out, nil
}

// Counters reads member counts (a full dump per set: nf_tables keeps no
// count) and our named counters, on a netlink connection of its own so it
// may run beside the enforcer. It only reads names and configuration
// fixed at New and SetOrigins time.
func (b *Backend) Counters(ctx context.Context) (backend.Counters, error) {
	var out backend.Counters
	conn, err := newConn()
	if err != nil {
		return out, err
	}
	for _, f := range b.fams {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		if err := b.familyCounters(conn, f, &out); err != nil {
			return out, err
		}
	}
	slices.SortFunc(out.Sets, func(a, c backend.SetCounters) int { return strings.Compare(a.Name, c.Name) })
	return out, nil
}

func (b *Backend) familyCounters(conn *gnft.Conn, f *family, out *backend.Counters) error {
	if f.cfg.SetOnly {
		g := &family{v6: f.v6, cfg: f.cfg, keyType: f.keyType, tfam: f.tfam}
		if err := b.findUserSet(conn, g); err != nil {
			return nil // nothing of ours to count yet
		}
		ps, err := b.dump(conn, slot{fam: g, name: g.cfg.SetName, interval: g.userSet.Interval})
		if err != nil {
			return err
		}
		out.Sets = append(out.Sets, backend.SetCounters{Name: g.cfg.SetName, Key: backend.SetKey{V6: f.v6},
			Family: familyName(f.v6), Shared: true, Members: len(ps)})
		return nil
	}
	out.Rules = true
	objs, err := conn.GetObjects(f.table)
	if err != nil {
		return nil // table gone: Verify reports it; nothing to count
	}
	ctr := map[string]*gnft.CounterObj{}
	for _, o := range objs {
		if c, ok := o.(*gnft.CounterObj); ok {
			ctr[c.Name] = c
		}
	}
	fc := backend.FamilyCounters{Family: familyName(f.v6), V6: f.v6}
	if c := ctr[processed]; c != nil {
		fc.Packets, fc.Bytes = c.Packets, c.Bytes
	}
	out.Families = append(out.Families, fc)
	for _, k := range b.setKeys(f) {
		name := b.SetName(k)
		sc := backend.SetCounters{Name: name, Key: k, Family: familyName(f.v6)}
		for _, s := range []slot{{fam: f, name: name}, {fam: f, name: rangesName(name), interval: true}} {
			ps, err := b.dump(conn, s)
			if err != nil {
				continue // missing set: Verify reports it
			}
			sc.Members += len(ps)
		}
		if c := ctr[name]; c != nil {
			sc.Packets, sc.Bytes = c.Packets, c.Bytes
		}
		out.Sets = append(out.Sets, sc)
	}
	return nil
}
