package journal

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// packedOf is b with its New moved to a DecisionList received at at.
func packedOf(b Batch, at time.Time) Batch {
	l := NewDecisionList(at, 0)
	for _, d := range b.New {
		l.Add(d.Prefix, d.Until.Sub(at), d.Origin, d.Scenario, d.Type, d.Scope)
	}
	b.New, b.Packed = nil, l
	return b
}

func TestDecisionListRoundTrip(t *testing.T) {
	at := t0.Add(-time.Minute)
	var want []Decision
	for i, p := range []netip.Prefix{
		netip.MustParsePrefix("192.0.2.1/32"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("::ffff:192.0.2.1/128"), // 4in6 stays 4in6
		netip.MustParsePrefix("192.0.2.1/24"),         // unmasked
		netip.PrefixFrom(netip.MustParseAddr("192.0.2.1"), 33),
		{},
	} {
		want = append(want, Decision{Prefix: p, Until: at.Add(time.Duration(i) * time.Second),
			Origin: "o" + string(rune('a'+i%2)), Scenario: "s", Type: "ban", Scope: ScopeIP})
	}
	for range 200 { // past the first chunks, with one meta repeated
		want = append(want, dec("203.0.113.7/32", time.Hour, "crowdsec"))
	}
	b := packedOf(Batch{New: want}, at)
	if b.NewLen() != len(want) || b.Len() != len(want) {
		t.Fatalf("NewLen %d Len %d, want %d", b.NewLen(), b.Len(), len(want))
	}
	i := 0
	for k, d := range b.AllNew() {
		if k != i || d != want[i] {
			t.Fatalf("decision %d (index %d) = %+v, want %+v", i, k, d, want[i])
		}
		i++
	}
	if i != len(want) {
		t.Fatalf("yielded %d, want %d", i, len(want))
	}
	if n := len(b.Packed.metas.Values); n != 3 {
		t.Errorf("%d metas, want 3: the strings are kept once", n)
	}
}

// TestBatchNewThenPacked: a batch's new decisions are New's, then Packed's.
func TestBatchNewThenPacked(t *testing.T) {
	a, b, c := dec("192.0.2.1/32", time.Hour, "x"), dec("192.0.2.2/32", time.Hour, "y"), dec("192.0.2.1/32", 2*time.Hour, "z")
	batch := packedOf(Batch{New: []Decision{b, c}}, t0)
	batch.New = []Decision{a}
	var got []Decision
	for _, d := range batch.AllNew() {
		got = append(got, d)
	}
	if len(got) != 3 || got[0] != a || got[1] != b || got[2] != c {
		t.Fatalf("AllNew = %+v", got)
	}
	if (Batch{}).NewLen() != 0 {
		t.Fatal("nil Packed is not empty")
	}
	j := openTest(t)
	if err := j.Append(batch); err != nil {
		t.Fatal(err)
	}
	diffMaps(t, "view", viewMap(j.View()), mapOf(c, b)) // the last of a key wins
}

// TestPackedBatchSameAsSlice appends the same random batches to two
// journals, as []Decision to one and as a DecisionList to the other: full
// batches into an empty view (fill) and over a held one (replace), and
// deltas, with duplicate keys, expired decisions, both families. The views
// (with since), the origins and the file's bytes must be the same.
func TestPackedBatchSameAsSlice(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	prefixes := []string{"192.0.2.1/32", "192.0.2.2/32", "198.51.100.0/24", "2001:db8::1/128", "2001:db8:1::/48", "::ffff:192.0.2.9/128"}
	origins := []string{"crowdsec", "cscli", "CAPI", "lists:firehol"}
	types := []string{"ban", "captcha"}
	batch := func(now time.Time, full bool) Batch {
		b := Batch{Full: full}
		for range rng.IntN(300) {
			d := dec(prefixes[rng.IntN(len(prefixes))], 0, origins[rng.IntN(len(origins))])
			if rng.IntN(4) == 0 {
				d.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(rng.IntN(256))}), 32)
			}
			d.Type = types[rng.IntN(len(types))]
			d.Until = now.Add(time.Duration(rng.IntN(7)-2)*time.Hour + time.Duration(rng.IntN(1000))*time.Microsecond)
			b.New = append(b.New, d)
		}
		if !full && rng.IntN(2) == 0 {
			b.Deleted = []Key{dec(prefixes[rng.IntN(len(prefixes))], 0, "").Key()}
		}
		return b
	}
	for round := range 40 {
		// A fresh pair now and then, so that full batches also fill an
		// empty view.
		sj, pj := openTest(t), openTest(t)
		for i := range 1 + rng.IntN(6) {
			now := t0.Add(time.Duration(round*10+i) * time.Hour)
			sj.clock.t, pj.clock.t = now, now
			b := batch(now, i == 0 || rng.IntN(2) == 0)
			serr := sj.Append(b)
			perr := pj.Append(packedOf(b, now.Add(-time.Duration(rng.IntN(5000))*time.Millisecond)))
			if serr != nil || perr != nil {
				t.Fatalf("round %d.%d: Append %v, %v", round, i, serr, perr)
			}
			sameJournals(t, sj, pj)
		}
	}
}

func sameJournals(t *testing.T, sj, pj *testJournal) {
	t.Helper()
	s, p := sinceState(sj.View()), sinceState(pj.View())
	if len(s) != len(p) {
		t.Fatalf("views: %d entries from the slice, %d from the list", len(s), len(p))
	}
	for k, e := range s {
		if p[k] != e {
			t.Fatalf("view %v: %+v from the slice, %+v from the list", k, e, p[k])
		}
	}
	so, po := sj.Origins(), pj.Origins()
	if len(so) != len(po) {
		t.Fatalf("origins %v, %v", so, po)
	}
	for o, i := range so {
		if po[o] != i {
			t.Fatalf("origins %v, %v", so, po)
		}
	}
	if s, p := fileBytes(t, sj), fileBytes(t, pj); !bytes.Equal(s, p) {
		t.Fatalf("files differ:\nslice %x\nlist  %x", s, p)
	}
}

// fileBytes is the snapshot and the events, as stored.
func fileBytes(t *testing.T, j *testJournal) []byte {
	t.Helper()
	var out []byte
	err := j.db.View(func(tx *bolt.Tx) error {
		out = append(out, tx.Bucket(bucketSnapshot).Get(keySnapshot)...)
		return tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
			out = append(append(out, k...), v...)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPackedInvalidRejected: an invalid prefix in the list is refused as
// in a []Decision, with the same error (its index counts New first).
func TestPackedInvalidRejected(t *testing.T) {
	good := dec("192.0.2.1/32", time.Hour, "crowdsec")
	unmasked := good
	unmasked.Prefix = netip.MustParsePrefix("192.0.2.1/24")
	zero := Decision{Until: t0.Add(time.Hour)}
	for _, full := range []bool{false, true} {
		for _, bad := range []Decision{unmasked, zero} {
			slice := Batch{Full: full, New: []Decision{good, good, bad}}
			mixed := packedOf(Batch{Full: full, New: []Decision{good, bad}}, t0)
			mixed.New = []Decision{good}
			serr := openTest(t).Append(slice)
			j := openTest(t)
			perr := j.Append(mixed)
			if !errors.Is(perr, ErrInvalidDecision) || serr == nil || perr.Error() != serr.Error() {
				t.Fatalf("full=%v %v: list %v, slice %v", full, bad.Prefix, perr, serr)
			}
			if j.View().Len() != 0 || len(j.Origins()) != 0 {
				t.Fatal("rejected batch changed state")
			}
		}
	}
}
