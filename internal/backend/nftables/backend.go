package nftables

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
)

// MaxTimeout is the longest element timeout the backend sets. The kernel
// takes timeouts in milliseconds and refuses (ERANGE) any whose value in
// nanoseconds overflows 64 bits, about 213,503 days; measured on 6.18:
// 36,500 days accepted, 365,000 refused. Ten years keeps far from that
// edge; the enforcer re-adds the rare longer ban before it runs out.
const MaxTimeout = 10 * 365 * 24 * time.Hour

// sockBuf is the send and receive buffer forced on our netlink sockets. A
// transaction is one sendmsg, so the send buffer bounds its size (1M IPv4
// elements are ~40 MB), and the kernel queues one ack per message before
// we read any. These are limits, not allocations.
const sockBuf = 1 << 28

// Backend enforces entries with nf_tables sets and rules over netlink. One
// goroutine (the enforcer) owns it; only Counters may run concurrently,
// on a netlink connection of its own.
type Backend struct {
	cfg     Config
	log     *slog.Logger
	conn    *gnft.Conn // the enforcer's
	fams    []*family  // enabled families, IPv4 first
	mu      sync.RWMutex
	origins backend.Origins // guarded by mu: Counters reads it concurrently
	// names holds the kernel set name of each declared origin's sets
	// (SetOrigins replaces it whole, never changes it in place): the
	// per-entry path looks names up instead of building 100k strings.
	names map[backend.SetKey]string // guarded by mu
	// mirrors hold what our interval sets should hold, by kernel set name
	// (see intervals.go); nil entries are unknown and re-read from the kernel.
	mirrors map[string]*mirror
	// pending holds the sets a preload filled until the
	// next replay decides whether to keep their content; their rules wait
	// for it (ownRules). Guarded by mu.
	pending map[setID]*loaded
	// pauser, when a change monitor runs, is paused around large writes.
	pauser backend.EventPauser
	// addSetsTimeout: the kernel gives a present element the timeout of a
	// new add, so a refresh is one add rather than "add, delete, add".
	addSetsTimeout bool
}

var (
	_ backend.Backend        = (*Backend)(nil)
	_ backend.QuietWriter    = (*Backend)(nil)
	_ backend.StagedReplayer = (*Backend)(nil)
)

// quietAbove is the size of a write, in entries, from which it pauses the
// change monitor: below it the kernel's per-element notifications cost
// less than the pause's two generation reads.
const quietAbove = 1000

// SetEventPauser implements backend.QuietWriter. Call it before the
// enforcer starts.
func (b *Backend) SetEventPauser(p backend.EventPauser) { b.pauser = p }

// quiet pauses the change monitor for a write of n entries when that is
// worth it. Call the result with the number of transactions committed.
func (b *Backend) quiet(n int) (resume func(commits int)) {
	if b.pauser == nil || n < quietAbove {
		return func(int) {}
	}
	return b.pauser.PauseEvents()
}

// committed is what a commit's error says about how many transactions the
// kernel took: one, or none (nf_tables applies a batch whole or not at all).
func committed(err error) int {
	if err != nil {
		return 0
	}
	return 1
}

// family is one enabled address family's objects.
type family struct {
	v6      bool
	cfg     Family
	keyType gnft.SetDatatype
	tfam    gnft.TableFamily
	// table is our table, or in set-only mode the administrator's table as
	// found by Ensure (nil until then).
	table *gnft.Table
	// userSet describes the set found in set-only mode (flags decide
	// whether it takes ranges and timeouts); nil until Ensure.
	userSet *gnft.Set
}

// New validates cfg and returns a backend. It does not touch the kernel:
// tables, chains, rules and sets appear on Ensure.
func New(cfg Config) (*Backend, error) {
	c, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	conn, err := newConn()
	if err != nil {
		return nil, err
	}
	b := &Backend{
		cfg:     c,
		log:     c.Logger.With("component", "backend", "mode", "nftables"),
		conn:    conn,
		origins: backend.Origins{},
		mirrors: map[string]*mirror{},
		pending: map[setID]*loaded{},
		// Linux 6.10 added element timeout updates to nf_tables; before,
		// an add of a present element leaves its timeout as it was.
		addSetsTimeout: kernelAtLeast(6, 10),
	}
	if c.IPv4.Enabled {
		b.fams = append(b.fams, &family{cfg: c.IPv4, keyType: gnft.TypeIPAddr, tfam: gnft.TableFamilyIPv4})
	}
	if c.IPv6.Enabled {
		b.fams = append(b.fams, &family{v6: true, cfg: c.IPv6, keyType: gnft.TypeIP6Addr, tfam: gnft.TableFamilyIPv6})
	}
	for _, f := range b.fams {
		if !f.cfg.SetOnly {
			f.table = &gnft.Table{Name: f.cfg.Table, Family: f.tfam}
		}
	}
	return b, nil
}

// kernelAtLeast reports whether the running kernel's release is at least
// major.minor; false when it cannot tell.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return releaseAtLeast(unix.ByteSliceToString(u.Release[:]), major, minor)
}

func releaseAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// newConn returns a connection that dials a fresh netlink socket per
// operation (a failed batch leaves no stray acks behind) with large
// buffers, so that one transaction may hold a million elements.
func newConn() (*gnft.Conn, error) {
	c, err := gnft.New(gnft.WithSockOptions(setBuffers))
	if err != nil {
		return nil, fmt.Errorf("nftables connection: %w", err)
	}
	return c, nil
}

// setBuffers forces sockBuf send and receive buffers on a netlink socket.
func setBuffers(nc *netlink.Conn) error {
	raw, err := nc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, sockBuf); e != nil && serr == nil {
				serr = fmt.Errorf("setsockopt %d: %w", opt, e)
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

// SetOrigins declares the origins whose sets and rules must exist.
func (b *Backend) SetOrigins(o backend.Origins) {
	names := make(map[backend.SetKey]string, 2*len(o))
	for i, name := range o {
		for _, f := range b.fams {
			names[backend.SetKey{Origin: i, V6: f.v6}] = f.cfg.SetName + "-" + originKey(i, name, true)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.origins = maps.Clone(o)
	b.names = names
}

// setNames returns the current name table; callers may keep it for the
// length of one operation.
func (b *Backend) setNames() map[backend.SetKey]string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.names
}

// SetKeyOf names the set an origin's entries go to: one per origin and
// family, or one per family in set-only mode.
func (b *Backend) SetKeyOf(origin int, v6 bool) backend.SetKey {
	if f := b.fam(v6); f != nil && f.cfg.SetOnly {
		return backend.SetKey{V6: v6}
	}
	return backend.SetKey{Origin: origin, V6: v6}
}

// SetName returns the kernel name of a set: blacklists-<origin> as
// upstream names it (origin lists:NAME gives lists-NAME), or blacklists
// itself in set-only mode. Its ranges, if any, live in SetName+"-ranges".
func (b *Backend) SetName(k backend.SetKey) string {
	f := b.fam(k.V6)
	if f == nil {
		return ""
	}
	if f.cfg.SetOnly {
		return f.cfg.SetName
	}
	if name, ok := b.setNames()[k]; ok {
		return name
	}
	return f.cfg.SetName + "-" + originKey(k.Origin, "", false)
}

// rangesName is the interval set holding an origin's ranges.
func rangesName(set string) string { return set + "-ranges" }

// originKey turns an origin name into the set name suffix: "lists:x"
// becomes "lists-x" like upstream; characters nft would need quoted
// become "_". An undeclared origin (ok false) is named by its index.
func originKey(origin int, name string, ok bool) string {
	if !ok || name == "" {
		return "origin" + strconv.Itoa(origin)
	}
	name = strings.Replace(name, ":", "-", 1)
	return strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r == '.' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') {
			return r
		}
		return '_'
	}, name)
}

// Limits reports the timeout cap; member counts need a full element dump
// in nf_tables (the kernel reports no count), so Verify does not compare
// them.
func (b *Backend) Limits() backend.Limits {
	return backend.Limits{MaxTimeout: MaxTimeout, CountsMembers: false}
}

func (b *Backend) fam(v6 bool) *family {
	for _, f := range b.fams {
		if f.v6 == v6 {
			return f
		}
	}
	return nil
}

func familyName(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

// origins returns the declared origin indices, sorted.
func (b *Backend) originList() []int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]int, 0, len(b.origins))
	for o := range b.origins {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}
