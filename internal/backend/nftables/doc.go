// Package nftables enforces the journal's view with nf_tables over netlink
// (github.com/google/nftables; no nft binary, no exec per entry). It
// implements backend.Backend for upstream's "nftables" mode with
// upstream's names, so configurations, scripts and dashboards keep
// working:
//
//	table ip <nftables.ipv4.table>   (crowdsec)    table ip6 <...ipv6.table> (crowdsec6)
//	  counter processed, counter <set> per origin
//	  set <blacklists_ipv4>-<origin>          ipv4_addr, flags timeout
//	  set <blacklists_ipv4>-<origin>-ranges   ipv4_addr, flags interval,timeout
//	  chain <chain>-<hook> per nftables_hooks: type filter, the priority, policy accept
//	    counter name "processed"
//	    ip saddr @<set> counter name "<set>" [log prefix …] drop|reject   (per set)
//
// An origin "lists:NAME" gives the set <blacklists>-lists-NAME, as
// upstream. Every rule of ours carries an nft comment starting
// "cs-journal-bouncer: " that spells the rule: a restart, a kill -9 or a
// second instance finds its rules by it and never adds duplicates, and a
// configuration change replaces them. In set-only mode only the set
// <blacklists> is filled, in the administrator's table of the family's
// own kind (ip/ip6, else inet); their table, chains and rules are never
// touched.
//
// Set layout for ranges. Single addresses go to upstream's plain set;
// Range decisions (which upstream cuts down to their network address) go
// to a second, interval set per origin, both matched by one counter. The
// kernel refuses overlapping elements in an interval set (a /24 inside a
// /16 fails the whole transaction), so each interval set has an in-memory
// mirror and the kernel holds only the outermost prefixes, each with the
// latest expiry of what it covers (intervals.go); nothing is refused for
// nesting. Ranges are few, so the mirror is small; a single address inside
// a range is in the other set and needs no mirror. Measured through
// netlink on kernel 6.18, one transaction of 100k IPv4 adds with
// timeouts: 350 ms into a plain set, 450 ms into an interval set (nft -f of
// the same: 0.92 s and 2.08 s). The interval set costs little; the split
// keeps upstream's set and spares a 100k-entry mirror.
//
// Writes are transactions. Apply sends deletes then adds in transactions
// of up to 50k entries. A present element must get the new timeout: from
// Linux 6.10 an add updates it in place, so an add is one add; before, an
// add of a present element is a no-op and an add is "add, delete, add" in
// one transaction (50k adds: 0.10–0.13 s vs 0.39–0.50 s measured on 6.18).
// A delete is "add, delete" so an absent element
// never fails the batch. Replay flushes and refills every set in one
// transaction, so enforcement never drops: measured 0.76 s for 100k and
// 8.6 s for 1M entries (nft -f of the same into a timeout set: 1.69 s and
// 11.8 s). Replay walks its entries once, straight from the journal's
// view, routing each to its set and encoding its element messages itself
// (rawtx.go): the library's per-element encoding was a quarter of a 100k
// replay; now 100k take 0.19–0.28 s on a quiet machine, most of it the
// kernel's. Elements go 1200 per netlink message (a message's element list
// is one attribute with a 16-bit length); a transaction is one sendmsg, so
// our sockets get forced 256 MiB send and receive buffers (limits, not
// allocations).
//
// A full pull that brings origins with no set yet (a first start, a new
// blocklist) is loaded into the kernel while it downloads (preload.go):
// the pull's goroutine encodes element messages as decisions are
// decoded, a second goroutine commits them ~10k at a time, so the kernel's
// inserts overlap the decoding. The sets are new and no rule matches them
// (Ensure leaves their rules out), so nothing is enforced before the
// journal holds the batch. The replay that follows the journal write keeps
// a loaded set when it received exactly as many elements as the replay
// would put in it (each address of the pull once, so it holds exactly
// those, with their own timeouts), refills it otherwise, then adds its
// rules. Measured on the 100k cold start of make bench (2 shared cores):
// 0.27–0.37 s from process start instead of 0.37–0.49 s. Known origins,
// ranges and set-only mode go through the replay as before.
//
// Entries the backend will not hold (disabled family, /0, unmasked,
// undeclared origin, a range for a set-only set without the interval
// flag) are reported as *backend.RejectedError after the rest is applied;
// they are checked before sending, since the kernel stops a whole batch
// at the first bad element.
//
// Limits: element timeouts are capped at MaxTimeout (ten years; the
// kernel refuses timeouts whose nanoseconds overflow 64 bits, ~213,503
// days). nf_tables reports no element count short of a full dump, so
// Verify checks tables, chains, rules, sets and counters only
// (CountsMembers false): an emptied set shows in Members.
package nftables
