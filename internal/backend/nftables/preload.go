package nftables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

var _ backend.Preloader = (*Backend)(nil)

// preloadTx is how many element messages one preload transaction carries
// (about 10k elements): large enough that the kernel's per-transaction
// cost is small, small enough that the kernel starts early and the last
// transaction after the download's end is short.
const preloadTx = 8

// loaded is a set a preload created and filled. n counts the elements
// the kernel accepted; ok is false when a load into it failed, and the
// replay must refill it.
type loaded struct {
	n  int
	ok bool
}

// preload loads a full pull's single addresses into the sets of origins
// not declared yet (Range decisions and known origins are left to the
// replay). Element messages are encoded on the decoding goroutine and
// committed by a second one, so the kernel inserts while the pull decodes.
type preload struct {
	b      *Backend
	ctx    context.Context
	exists map[setID]*gnft.Set // our tables' sets when the preload started
	// matched holds the sets a rule of our tables looks up; read once,
	// when an existing set of a new origin is met.
	matched map[setID]bool
	sets    map[setID]*preloadSet
	// The set of the last Add: a blocklist sends 100k decisions of one
	// origin in a row.
	last    *preloadSet
	lastOf  string
	lastV6  bool
	hasLast bool
	tx      *rawTx
	msgs    int
	txs     chan *rawTx
	done    chan struct{}
	resume  func(int) // nil until the change monitor is paused

	mu      sync.Mutex // guards what the committer writes
	commits int
	err     error
}

// preloadSet is one set being loaded; nil in preload.sets for an origin
// whose set is not ours to load.
type preloadSet struct {
	origin string
	a      *addrMsg
	n      int
}

// Preload implements backend.Preloader. Only our own tables are loaded
// into, and only sets of undeclared origins that no rule matches: new
// ones, or one a preload killed before its replay left behind.
func (b *Backend) Preload(ctx context.Context) backend.Preload {
	exists := map[setID]*gnft.Set{}
	conn, err := newConn() // b.conn belongs to the enforcer's goroutine
	if err != nil {
		return nil
	}
	defer conn.CloseLasting()
	for _, f := range b.fams {
		if f.cfg.SetOnly {
			return nil // the administrator's rules match that set already
		}
		sets, err := conn.GetSets(f.table)
		if err != nil {
			return nil // no table yet: Ensure has not run, nothing to load into
		}
		for _, s := range sets {
			exists[setID{f.v6, s.Name}] = s
		}
	}
	p := &preload{b: b, ctx: ctx, exists: exists, sets: map[setID]*preloadSet{},
		txs: make(chan *rawTx, 2), done: make(chan struct{}), tx: &rawTx{}}
	go p.commit()
	return p
}

// commit sends the transactions Add queues, one at a time, in order; after
// a failure it sends no more.
func (p *preload) commit() {
	defer close(p.done)
	for tx := range p.txs {
		p.mu.Lock()
		failed := p.err != nil
		p.mu.Unlock()
		if failed {
			continue
		}
		err := tx.commit()
		if err == nil {
			err = p.ctx.Err()
		}
		p.mu.Lock()
		p.commits += committed(err)
		if p.err == nil {
			p.err = err
		}
		p.mu.Unlock()
	}
}

// Add implements backend.Preload.
func (p *preload) Add(pfx netip.Prefix, until time.Time, origin string) {
	if !pfx.IsSingleIP() || !pfx.IsValid() {
		return // ranges go to interval sets, which the replay fills
	}
	v6 := pfx.Addr().Is6()
	s := p.last
	if !p.hasLast || origin != p.lastOf || v6 != p.lastV6 {
		s = p.set(origin, v6)
		p.last, p.lastOf, p.lastV6, p.hasLast = s, origin, v6, true
	}
	if s == nil {
		return
	}
	to, ok := p.b.timeout(s.a.set, until, p.b.cfg.Now())
	if !ok {
		return
	}
	s.n++
	if s.a.put(pfx.Addr(), to); s.a.n >= perMsg {
		s.a.done(p.tx)
		if p.msgs++; p.msgs >= preloadTx {
			p.send()
		}
	}
}

// set returns the set an origin's addresses of one family are loaded
// into, creating it; nil when it is not ours to load.
func (p *preload) set(origin string, v6 bool) *preloadSet {
	f := p.b.fam(v6)
	if f == nil {
		return nil
	}
	name := f.cfg.SetName + "-" + originKey(0, origin, true)
	key := setID{v6, name}
	if s, seen := p.sets[key]; seen {
		return s
	}
	p.sets[key] = nil
	if p.b.declared(origin) {
		return nil // the replay refills it: a rule matches it
	}
	set := p.b.setObj(f, name, false)
	// A set of an undeclared origin that no rule matches is what a
	// preload killed before its replay leaves: it is loaded again, flushed
	// first. One a rule matches, or with other flags, is left to the
	// replay and Ensure.
	have, reuse := p.exists[key]
	if reuse && (!sameSet(have, set) || p.isMatched(key)) {
		return nil
	}
	if p.resume == nil {
		// From the first set on, the kernel would build one event per
		// element for the change monitor.
		p.resume = p.b.quiet(quietAbove)
	}
	if reuse {
		p.tx.flushSet(set) // before its first element, in the same transaction
	} else if !p.create(set) {
		return nil
	}
	s := &preloadSet{origin: origin, a: newAddrMsg(set)}
	p.sets[key] = s
	return s
}

// create makes set, in a transaction of its own.
func (p *preload) create(set *gnft.Set) bool {
	conn, err := newConn()
	if err != nil {
		p.fail(err)
		return false
	}
	defer conn.CloseLasting()
	if err := conn.AddSet(set, nil); err != nil {
		p.fail(fmt.Errorf("preload: add set %s: %w", set.Name, err))
		return false
	}
	if err := conn.Flush(); err != nil {
		p.fail(fmt.Errorf("preload: create set %s: %w", set.Name, err))
		return false
	}
	p.mu.Lock()
	p.commits++
	p.mu.Unlock()
	return true
}

// isMatched reports whether a rule in our tables looks up the set; when
// the rules cannot be read it answers yes (the set is left alone).
func (p *preload) isMatched(id setID) bool {
	if p.matched == nil {
		m, err := p.b.lookups()
		if err != nil {
			return true
		}
		p.matched = m
	}
	return p.matched[id]
}

// send hands the open transaction to the committer and opens a new one.
func (p *preload) send() {
	if len(p.tx.msgs) > 0 {
		p.txs <- p.tx
	}
	p.tx, p.msgs = &rawTx{}, 0
}

func (p *preload) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

// Finish implements backend.Preload. With keep, the loaded sets wait for
// the replay (see ReplayWhen); without, they are removed.
func (p *preload) Finish(keep bool) {
	for _, s := range p.sets {
		if s != nil {
			s.a.done(p.tx)
		}
	}
	p.send()
	close(p.txs)
	<-p.done
	p.mu.Lock()
	commits, err := p.commits, p.err
	p.mu.Unlock()
	if !keep {
		commits += p.remove()
	}
	if p.resume != nil {
		p.resume(commits)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		p.b.log.Warn("preload failed: the replay fills the sets", "err", err)
	}
	if !keep {
		return
	}
	// Under the lock SetOrigins takes: an origin declared meanwhile (a
	// resync of the repair ladder journaled it) may have rules already,
	// so its set is an ordinary one, which the replay refills.
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	sets, n := 0, 0
	for key, s := range p.sets {
		if s != nil && !p.b.declaredLocked(s.origin) {
			p.b.pending[key] = &loaded{n: s.n, ok: err == nil}
			sets, n = sets+1, n+s.n
		}
	}
	p.b.log.Debug("preloaded", "sets", sets, "entries", n, "ok", err == nil)
}

// remove deletes the sets the preload created; it returns the number of
// transactions committed (0 or 1).
func (p *preload) remove() int {
	conn, err := newConn()
	if err != nil {
		p.b.log.Warn("preload: cannot remove its sets", "err", err)
		return 0
	}
	defer conn.CloseLasting()
	n := 0
	for _, s := range p.sets {
		if s != nil {
			conn.DelSet(s.a.set)
			n++
		}
	}
	if n == 0 {
		return 0
	}
	if err := conn.Flush(); err != nil {
		p.b.log.Warn("preload: cannot remove its sets", "err", err)
		return 0
	}
	return 1
}

// declared reports whether origin is one the enforcer declared.
func (b *Backend) declared(origin string) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.declaredLocked(origin)
}

// declaredLocked is declared with b.mu held.
func (b *Backend) declaredLocked(origin string) bool {
	for _, o := range b.origins {
		if o == origin {
			return true
		}
	}
	return false
}

// lookups returns the sets the rules of our tables look up. It reads the
// kernel on a connection of its own: b.conn belongs to the enforcer.
func (b *Backend) lookups() (map[setID]bool, error) {
	conn, err := newConn()
	if err != nil {
		return nil, err
	}
	defer conn.CloseLasting()
	out := map[setID]bool{}
	for _, f := range b.fams {
		chains, err := conn.ListChainsOfTableFamily(f.tfam)
		if err != nil {
			return nil, err
		}
		for _, c := range chains {
			if c.Table.Name != f.table.Name {
				continue
			}
			rules, err := conn.GetRules(f.table, c)
			if err != nil {
				return nil, err
			}
			for _, r := range rules {
				for _, e := range r.Exprs {
					if l, ok := e.(*expr.Lookup); ok {
						out[setID{f.v6, l.SetName}] = true
					}
				}
			}
		}
	}
	return out, nil
}

// setID names one of our sets: the two families' tables may hold sets
// of the same name.
type setID struct {
	v6   bool
	name string
}

// isPending reports whether a set holds a preload waiting for its replay:
// no rule may match it before (Ensure leaves its origin's rules out).
func (b *Backend) isPending(f *family, set string) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	_, ok := b.pending[setID{f.v6, set}]
	return ok
}

// takePending returns the preloaded sets of the declared origins and
// forgets them: whatever the replay does with them, the next Ensure gives
// them their rules. A set whose origin is not declared yet stays pending:
// a repair that runs before the pull's batch reaches the journal must not
// give it rules.
func (b *Backend) takePending() map[setID]*loaded {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[setID]*loaded{}
	for k, name := range b.names {
		id := setID{k.V6, name}
		if l, ok := b.pending[id]; ok {
			out[id] = l
			delete(b.pending, id)
		}
	}
	return out
}
