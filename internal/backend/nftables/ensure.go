package nftables

import (
	"context"
	"errors"
	"fmt"

	gnft "github.com/google/nftables"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// ErrTableMissing is returned in set-only mode when the administrator's
// table does not exist: we never create it (their rules must reference
// our set), so Ensure fails until it appears.
var ErrTableMissing = errors.New("nftables table not found")

// ErrSetMismatch is returned in set-only mode when the set exists with a
// key type of the other family; it is the administrator's and stays.
var ErrSetMismatch = errors.New("existing nftables set has a different key type")

// kernelState is what one read of our table shows.
type kernelState struct {
	exists   bool
	sets     map[string]*gnft.Set
	chains   map[string]*gnft.Chain
	counters map[string]bool
}

// readTable reads our table's sets, chains and named counters: headers
// only, never set elements.
func (b *Backend) readTable(conn *gnft.Conn, f *family) (*kernelState, error) {
	st := &kernelState{sets: map[string]*gnft.Set{}, chains: map[string]*gnft.Chain{}, counters: map[string]bool{}}
	tables, err := conn.ListTablesOfFamily(f.tfam)
	if err != nil {
		return nil, fmt.Errorf("list %s tables: %w", familyName(f.v6), err)
	}
	for _, t := range tables {
		if t.Name == f.table.Name {
			st.exists = true
		}
	}
	if !st.exists {
		return st, nil
	}
	sets, err := conn.GetSets(f.table)
	if err != nil {
		return nil, fmt.Errorf("list sets of %s: %w", f.table.Name, err)
	}
	for _, s := range sets {
		st.sets[s.Name] = s
	}
	chains, err := conn.ListChainsOfTableFamily(f.tfam)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table.Name == f.table.Name {
			st.chains[c.Name] = c
		}
	}
	objs, err := conn.GetObjects(f.table)
	if err != nil {
		return nil, fmt.Errorf("list objects of %s: %w", f.table.Name, err)
	}
	for _, o := range objs {
		if c, ok := o.(*gnft.CounterObj); ok {
			st.counters[c.Name] = true
		}
	}
	return st, nil
}

// Ensure creates whatever of our tables, chains, rules, counters and sets
// is missing, in one transaction, and replaces those of ours that differ
// from the configuration. In set-only mode it only creates our set when
// missing. It never touches rules without our comment.
func (b *Backend) Ensure(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, f := range b.fams {
		var err error
		if f.cfg.SetOnly {
			err = b.ensureSetOnly(f)
		} else {
			err = b.ensureOwn(f)
		}
		if err != nil {
			return err
		}
	}
	if err := b.conn.Flush(); err != nil {
		b.forgetMirrors()
		return fmt.Errorf("nftables ensure: %w", err)
	}
	return nil
}

// ensureOwn queues what our own table lacks.
func (b *Backend) ensureOwn(f *family) error {
	st, err := b.readTable(b.conn, f)
	if err != nil {
		return err
	}
	b.conn.AddTable(f.table) // no-op when present (no NLM_F_EXCL)
	want := b.ownRules(f)

	// Sets with the wrong flags must go, and rules referencing them first.
	var replace []*gnft.Set
	for _, s := range b.ownSets(f) {
		have, ok := st.sets[s.Name]
		switch {
		case !ok:
			if err := b.conn.AddSet(s, nil); err != nil {
				return fmt.Errorf("add set %s: %w", s.Name, err)
			}
			b.mirrors[s.Name] = nil
		case !sameSet(have, s):
			b.log.Warn("replacing set with other flags", "set", s.Name)
			replace = append(replace, s)
		}
	}
	for _, name := range b.counterNames(f) {
		if !st.counters[name] {
			b.conn.AddObj(&gnft.CounterObj{Table: f.table, Name: name})
		}
	}
	// Replacing a set: first the chains whose rules reference it (deleting
	// a chain deletes its rules), then the set; both come back below.
	dropped := map[string]bool{}
	if len(replace) > 0 {
		for _, hook := range b.cfg.Hooks {
			if have, ok := st.chains[b.chainObj(f, hook).Name]; ok {
				b.conn.DelChain(have)
				dropped[have.Name] = true
			}
		}
	}
	for _, s := range replace {
		b.conn.DelSet(s)
		if err := b.conn.AddSet(s, nil); err != nil {
			return fmt.Errorf("add set %s: %w", s.Name, err)
		}
		b.mirrors[s.Name] = nil
	}
	for _, hook := range b.cfg.Hooks {
		c := b.chainObj(f, hook)
		have, ok := st.chains[c.Name]
		if ok && !dropped[c.Name] && sameChain(have, c) {
			if err := b.ensureRules(f, c, want); err != nil {
				return err
			}
			continue
		}
		if ok && !dropped[c.Name] { // hooked elsewhere: recreate
			b.conn.DelChain(have)
		}
		b.conn.AddChain(c)
		for i := range want {
			b.conn.AddRule(&gnft.Rule{Table: f.table, Chain: c, Exprs: want[i].exprs, UserData: want[i].comment})
		}
	}
	return nil
}

// ensureRules queues, for an existing chain of ours, the deletion of our
// stale rules and the addition of the missing ones. The processed counter
// goes first in the chain, the deny rules after it.
func (b *Backend) ensureRules(f *family, c *gnft.Chain, want []wantRule) error {
	rules, err := b.conn.GetRules(f.table, c)
	if err != nil {
		return fmt.Errorf("list rules of %s: %w", c.Name, err)
	}
	have := make([]bool, len(want))
	for _, r := range rules {
		if !ours(r) {
			continue
		}
		i := indexRule(want, r)
		if i < 0 || have[i] { // stale, or a duplicate
			if err := b.conn.DelRule(r); err != nil {
				return fmt.Errorf("delete stale rule in %s: %w", c.Name, err)
			}
			continue
		}
		have[i] = true
	}
	for i, w := range want {
		if have[i] {
			continue
		}
		r := &gnft.Rule{Table: f.table, Chain: c, Exprs: w.exprs, UserData: w.comment}
		if i == 0 {
			b.conn.InsertRule(r) // position 0: prepend
		} else {
			b.conn.AddRule(r)
		}
	}
	return nil
}

// counterNames lists our named counters: processed, one per origin.
func (b *Backend) counterNames(f *family) []string {
	out := []string{processed}
	for _, o := range b.originList() {
		out = append(out, b.SetName(b.SetKeyOf(o, f.v6)))
	}
	return out
}

// ensureSetOnly finds the administrator's table (ip/ip6, else inet) and
// creates our set in it when missing, with upstream's flags.
func (b *Backend) ensureSetOnly(f *family) error {
	if err := b.findUserSet(b.conn, f); err != nil && !errors.Is(err, errNoSet) {
		return err
	} else if err == nil {
		return nil
	}
	s := b.setObj(f, f.cfg.SetName, false)
	if err := b.conn.AddSet(s, nil); err != nil {
		return fmt.Errorf("add set %s: %w", s.Name, err)
	}
	f.userSet = s
	return nil
}

var errNoSet = errors.New("set not found")

// findUserSet locates the set-only table and set, recording them in f.
func (b *Backend) findUserSet(conn *gnft.Conn, f *family) error {
	f.table = nil
	for _, tf := range []gnft.TableFamily{f.tfam, gnft.TableFamilyINet} {
		tables, err := conn.ListTablesOfFamily(tf)
		if err != nil {
			return fmt.Errorf("list tables: %w", err)
		}
		for _, t := range tables {
			if t.Name == f.cfg.Table {
				f.table = t
				break
			}
		}
		if f.table != nil {
			break
		}
	}
	if f.table == nil {
		return fmt.Errorf("%w: %s table %q (set-only mode uses the administrator's table)", ErrTableMissing, familyName(f.v6), f.cfg.Table)
	}
	sets, err := conn.GetSets(f.table)
	if err != nil {
		return fmt.Errorf("list sets of %s: %w", f.table.Name, err)
	}
	for _, s := range sets {
		if s.Name != f.cfg.SetName {
			continue
		}
		if s.KeyType.Name != f.keyType.Name {
			return fmt.Errorf("%w: %s has %s, want %s", ErrSetMismatch, s.Name, s.KeyType.Name, f.keyType.Name)
		}
		s.Table = f.table
		f.userSet = s
		return nil
	}
	return errNoSet
}

// Verify checks cheaply that our objects exist as configured: table,
// base chains, our rules (by comment), sets and counters. Element counts
// are not compared (Limits().CountsMembers is false): an emptied set is
// found by the deep verify (Members).
func (b *Backend) Verify(ctx context.Context, _ map[backend.SetKey]int) (backend.Drift, error) {
	var d backend.Drift
	if err := ctx.Err(); err != nil {
		return d, err
	}
	for _, f := range b.fams {
		if f.cfg.SetOnly {
			if err := b.findUserSet(b.conn, f); errors.Is(err, ErrTableMissing) {
				d.Add("table", err.Error())
			} else if errors.Is(err, errNoSet) {
				d.Add("set", fmt.Sprintf("set %s missing from table %s", f.cfg.SetName, f.cfg.Table))
			} else if err != nil {
				return d, err
			}
			continue
		}
		if err := b.verifyOwn(f, &d); err != nil {
			return d, err
		}
	}
	return d, nil
}

func (b *Backend) verifyOwn(f *family, d *backend.Drift) error {
	st, err := b.readTable(b.conn, f)
	if err != nil {
		return err
	}
	if !st.exists {
		d.Add("table", fmt.Sprintf("table %s %s missing", familyName(f.v6), f.table.Name))
		return nil
	}
	for _, s := range b.ownSets(f) {
		if have, ok := st.sets[s.Name]; !ok {
			d.Add("set", "set "+s.Name+" missing")
		} else if !sameSet(have, s) {
			d.Add("set", "set "+s.Name+" has other flags")
		}
	}
	for _, name := range b.counterNames(f) {
		if !st.counters[name] {
			d.Add("rule", "counter "+name+" missing")
		}
	}
	want := b.ownRules(f)
	for _, hook := range b.cfg.Hooks {
		c := b.chainObj(f, hook)
		have, ok := st.chains[c.Name]
		if !ok || !sameChain(have, c) {
			d.Add("chain", fmt.Sprintf("chain %s missing or not hooked at %s priority %d", c.Name, hook, f.cfg.Priority))
			continue
		}
		rules, err := b.conn.GetRules(f.table, c)
		if err != nil {
			return fmt.Errorf("list rules of %s: %w", c.Name, err)
		}
		found := make([]bool, len(want))
		for _, r := range rules {
			if i := indexRule(want, r); i >= 0 {
				found[i] = true
			}
		}
		for i, ok := range found {
			if !ok {
				d.Add("rule", fmt.Sprintf("rule %q missing in %s", commentText(want[i].comment), c.Name))
			}
		}
	}
	return nil
}

// Close removes our objects unless keep. Our own table goes when it holds
// nothing but ours; otherwise only our chains, sets and counters go. In
// set-only mode our set is emptied (the administrator's rules may still
// reference it) and their table is never touched.
func (b *Backend) Close(ctx context.Context, keep bool) error {
	if keep {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, f := range b.fams {
		if f.cfg.SetOnly {
			if err := b.findUserSet(b.conn, f); err == nil {
				b.conn.FlushSet(f.userSet)
			} else if !errors.Is(err, errNoSet) && !errors.Is(err, ErrTableMissing) {
				return err
			}
			continue
		}
		if err := b.removeOwn(f); err != nil {
			return err
		}
	}
	b.forgetMirrors()
	if err := b.conn.Flush(); err != nil {
		return fmt.Errorf("nftables remove: %w", err)
	}
	return nil
}

func (b *Backend) removeOwn(f *family) error {
	st, err := b.readTable(b.conn, f)
	if err != nil || !st.exists {
		return err
	}
	ourChains := map[string]bool{}
	for _, hook := range b.cfg.Hooks {
		ourChains[b.chainObj(f, hook).Name] = true
	}
	foreign := false
	for name := range st.chains {
		foreign = foreign || !ourChains[name]
	}
	for name := range st.sets {
		foreign = foreign || !f.ownedSetName(name)
	}
	if !foreign {
		b.conn.DelTable(f.table)
		return nil
	}
	b.log.Warn("table holds objects of others; removing only ours", "table", f.table.Name)
	for name, c := range st.chains {
		if ourChains[name] {
			b.conn.DelChain(c)
		}
	}
	for name, s := range st.sets {
		if f.ownedSetName(name) {
			s.Table = f.table
			b.conn.DelSet(s)
		}
	}
	for name := range st.counters {
		if name == processed || f.ownedSetName(name) {
			b.conn.DeleteObject(&gnft.CounterObj{Table: f.table, Name: name})
		}
	}
	return nil
}
