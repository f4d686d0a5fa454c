package heal

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend/fake"
)

// Drift of chains, rules or jumps alone is repaired by Ensure when the sets
// are intact; whenever a set lost its members, by a replay. Both backend
// kinds (counting members, like ipset; not counting, like nftables).
func TestInfraDriftRepairedWithoutReplay(t *testing.T) {
	for _, tc := range []struct {
		name   string
		counts bool
		fault  func(be *fake.Backend)
		replay bool
		kind   string
	}{
		{"rules dropped, counted", true, (*fake.Backend).DropRules, false, "chain"},
		{"rules dropped, uncounted", false, (*fake.Backend).DropRules, false, "chain"},
		{"sets destroyed too", true, (*fake.Backend).Wipe, true, "set"},
		{"sets destroyed too, uncounted", false, (*fake.Backend).Wipe, true, "set"},
		{"sets destroyed between verify and repair, counted", true, func(be *fake.Backend) {
			be.DropRules()
			be.BeforeNextEnsure(be.Wipe) // Ensure recreates the sets empty: a count drift
		}, true, "chain"},
		{"ensure fails", true, func(be *fake.Backend) {
			be.DropRules()
			be.FailNext("Ensure", 1)
		}, true, "chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWakeRig(t, Config{}, tc.counts)
			replays, ensures := w.be.Calls("Replay"), w.be.Calls("Ensure")
			tc.fault(w.be)
			w.tick()
			if !w.has("crowdsec", "192.0.2.10/32") || !w.has("crowdsec", "192.0.2.11/32") {
				t.Fatalf("not repaired:\n%s", w.be)
			}
			if got := w.be.Calls("Replay") - replays; got != map[bool]int{false: 0, true: 1}[tc.replay] {
				t.Fatalf("%d replays, want replay=%v", got, tc.replay)
			}
			if w.be.Calls("Ensure") == ensures {
				t.Fatal("repaired without Ensure")
			}
			h := w.enf.Health()
			if h.Repairs != 1 || h.RepairsByKind[tc.kind] != 1 || h.ReplayFailures != 0 || !h.Enforcing {
				t.Fatalf("repairs %d, by kind %v, replay failures %d; want 1 repair of kind %s, no failure",
					h.Repairs, h.RepairsByKind, h.ReplayFailures, tc.kind)
			}
			if wantN := map[bool]int{false: 0, true: 2}[tc.replay]; h.LastRepairEntries != wantN {
				t.Fatalf("repair reports %d entries replayed, want %d", h.LastRepairEntries, wantN)
			}
			w.tick()
			if w.enf.Health().Repairs != 1 {
				t.Fatal("drift left after the repair")
			}
		})
	}
}

// Rules deleted again and again, even without a replay, count as a fight.
func TestRepeatedRuleDeletionsBackOff(t *testing.T) {
	w := newWakeRig(t, Config{FreeRepairs: 2, FightWindow: 10 * time.Second, BackoffInitial: time.Second}, true)
	for range 3 {
		w.clk.Advance(time.Second)
		w.be.DropRules()
		w.tick()
	}
	if h := w.enf.Health(); !h.BackingOff || h.Repairs != 3 {
		t.Fatalf("3 quick repairs with free_repairs 2: backing off %v, repairs %d", h.BackingOff, h.Repairs)
	}
	w.clk.Advance(500 * time.Millisecond)
	w.be.DropRules()
	w.tick()
	if w.enf.Health().Repairs != 3 {
		t.Fatal("repaired during the backoff")
	}
	w.clk.Advance(time.Second)
	w.tick()
	if w.enf.Health().Repairs != 4 {
		t.Fatal("not repaired once the backoff ended")
	}
}

// A wake whose change says another program emptied our sets wholesale
// replays them (no member dump); lost events run the deep verify and never
// replay, as our own replay may be what overran the socket.
func TestWakeRefillReplaysDeepDoesNot(t *testing.T) {
	for _, tc := range []struct {
		name      string
		c         backend.Change
		replays   int
		listings  int
		eventKind string
	}{
		{"refill", backend.Change{Refill: true, Objects: []string{"more set elements than can be tracked one by one"}}, 1, 0, "member"},
		{"lost events", backend.Change{Deep: true, Objects: []string{"nf_tables events lost (socket overrun)"}}, 0, 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWakeRig(t, Config{}, false)
			o, _ := w.j.OriginIndex("crowdsec")
			for _, p := range []string{"192.0.2.10/32", "192.0.2.11/32"} {
				w.be.RemoveMember(backend.SetKey{Origin: o}, netip.MustParsePrefix(p))
			}
			replays, listings := w.be.Calls("Replay"), w.be.Calls("Members")
			w.send(tc.c)
			if !w.has("crowdsec", "192.0.2.10/32") || !w.has("crowdsec", "192.0.2.11/32") {
				t.Fatalf("members not back:\n%s", w.be)
			}
			if r, l := w.be.Calls("Replay")-replays, w.be.Calls("Members")-listings; r != tc.replays || l != tc.listings {
				t.Fatalf("%d replays and %d member listings, want %d and %d", r, l, tc.replays, tc.listings)
			}
			if tc.eventKind != "" {
				h := w.enf.Health()
				if h.Repairs != 1 || h.RepairsByKind[tc.eventKind] != 1 || w.eventRepairs() != 1 {
					t.Fatalf("repairs %d by kind %v by cause %v; want 1 %s repair by event", h.Repairs, h.RepairsByKind, h.RepairsByCause, tc.eventKind)
				}
			}
		})
	}
}

// A backend that cannot count members does not see, after Ensure, a set
// destroyed between the verify and the repair: Ensure recreated it empty.
// The destruction's own event (Refill) replays it.
func TestSetDestroyedDuringEnsureRefilledByItsEvent(t *testing.T) {
	w := newWakeRig(t, Config{}, false)
	w.be.DropRules()
	w.be.BeforeNextEnsure(w.be.Wipe)
	w.tick()
	w.clk.Advance(time.Second)
	w.send(backend.Change{Refill: true, Objects: []string{"set ip crowdsec crowdsec-blacklists-crowdsec"}})
	if !w.has("crowdsec", "192.0.2.10/32") || !w.has("crowdsec", "192.0.2.11/32") {
		t.Fatalf("members of the recreated set not back:\n%s", w.be)
	}
}
