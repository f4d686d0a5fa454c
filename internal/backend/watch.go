package backend

import (
	"net/netip"
	"os/exec"
	"slices"
	"sync"
)

// NFTWatcher is implemented by backends whose objects live, wholly or in
// part, in nf_tables (nftables mode, and iptables mode on iptables-nft).
// The kernel announces every change to nf_tables over netlink, so a change
// monitor can wake the enforcer the moment one of our objects is deleted
// instead of at its next verify tick. A backend without it (ipset, whose
// changes send no events) relies on the tick alone.
type NFTWatcher interface {
	// NFTObjects describes what to watch. The description is read once,
	// when the monitor starts, and must not depend on the origins: name
	// whole tables or chains, not per-origin objects inside them.
	NFTObjects() NFTObjects
}

// EventPauser is offered by a change monitor to a backend that writes many
// set elements at once. While anyone listens to nf_tables events, the
// kernel builds one notification per element it adds or deletes: with a
// listener, a 100k-element commit took 0.3–1.6 s instead of 0.13–0.16 s
// (kernel 6.18). A paused monitor has left the event group, so the kernel
// builds none. Resume takes the number of transactions the backend
// committed while paused: the monitor compares it with nf_tables'
// generation counter and, when anyone else committed meanwhile, reports a
// Deep change, so nothing that happened while it was deaf goes unchecked.
type EventPauser interface {
	PauseEvents() (resume func(ownCommits int))
}

// QuietWriter is implemented by backends that pause a change monitor around
// their large writes.
type QuietWriter interface {
	SetEventPauser(EventPauser)
}

// NFTObjects names our nf_tables objects. Families are NFPROTO values
// (2 ip, 10 ip6, 1 inet).
type NFTObjects struct {
	// Tables are ours entirely: deleting one, or any chain, rule, set or
	// set element in it, is drift.
	Tables []NFTTable
	// Chains are ours inside a table we share (iptables-nft's filter
	// table): deleting one, a rule in it, or its table is drift.
	Chains []NFTChain
	// Hooks are chains we do not own that hold our jump rules: a rule
	// deleted from one may have been our jump, so it is worth a verify.
	Hooks []NFTChain
	// OwnWrite reports whether a commit announced with this process id
	// was ours — made by a child process the backend ran (iptables-restore).
	// Commits from threads of our own process are recognized without it.
	// Nil when the backend runs no such children. Safe for concurrent use.
	OwnWrite func(pid uint32) bool
}

// NFTTable is one nf_tables table.
type NFTTable struct {
	Family uint8
	Name   string
}

// NFTChain is one chain of one nf_tables table.
type NFTChain struct {
	Family uint8
	Table  string
	Chain  string
}

// Change is what a change monitor tells the enforcer: a hint that some of
// our kernel objects changed under us, never a verdict — the enforcer
// verifies before it repairs, so a hint about a change that was ours, or
// already undone, costs one cheap verify and no repair.
type Change struct {
	// Objects describes what was deleted ("chain ip filter CROWDSEC_CHAIN",
	// ...), for logs; at most MaxChangeObjects are kept.
	Objects []string
	// Elements lists members deleted from our sets, by kernel set name,
	// so that they can be put back one by one: a fast verify cannot see a
	// missing member when the backend does not count them.
	Elements map[string][]netip.Prefix
	// Deep is set when changes may have been missed or not understood
	// (events lost to a socket overrun, elements that could not be
	// decoded): every set must be compared member by member.
	Deep bool
	// Refill is set when another program's commit deleted one of our sets
	// (or the table holding them) or more of their members than
	// MaxChangeElements: what the sets held is gone wholesale, and a replay
	// refills them faster than a member-by-member comparison would. The
	// monitor knows the commit was not ours; lost events never set it (our
	// own replay can overrun the socket, and replaying on that would loop).
	Refill bool
}

// MaxChangeObjects caps Change.Objects, and MaxChangeElements the sum of
// Change.Elements; beyond it a change turns Deep.
const (
	MaxChangeObjects  = 8
	MaxChangeElements = 4096
)

// Empty reports whether the change carries nothing to act on.
func (c Change) Empty() bool {
	return len(c.Objects) == 0 && len(c.Elements) == 0 && !c.Deep && !c.Refill
}

// Merge folds o into c, keeping the caps: c then describes both.
func (c *Change) Merge(o Change) {
	c.Deep = c.Deep || o.Deep
	c.Refill = c.Refill || o.Refill
	for _, s := range o.Objects {
		if len(c.Objects) < MaxChangeObjects && !slices.Contains(c.Objects, s) {
			c.Objects = append(c.Objects, s)
		}
	}
	n := 0
	for _, ps := range c.Elements {
		n += len(ps)
	}
	for set, ps := range o.Elements {
		if n+len(ps) > MaxChangeElements {
			c.Deep = true
			continue
		}
		if c.Elements == nil {
			c.Elements = map[string][]netip.Prefix{}
		}
		c.Elements[set] = append(c.Elements[set], ps...)
		n += len(ps)
	}
}

// Children remembers the process ids of the last children a backend ran,
// so that their commits are recognized as ours (NFTObjects.OwnWrite).
// The zero value is ready to use; it is safe for concurrent use.
type Children struct {
	mu   sync.Mutex
	pids [64]uint32
	next int
}

// Start starts cmd and records its pid. The lock is held from before the
// fork until the pid is recorded, so an Own call about a commit the child
// made meanwhile waits for the record instead of missing it.
func (c *Children) Start(cmd *exec.Cmd) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	c.pids[c.next%len(c.pids)] = uint32(cmd.Process.Pid)
	c.next++
	return nil
}

// Own reports whether pid is one of the recorded children.
func (c *Children) Own(pid uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return pid != 0 && slices.Contains(c.pids[:], pid)
}
