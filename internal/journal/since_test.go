package journal

import (
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// step is one Append at a clock offset from t0.
type step struct {
	at time.Duration
	b  Batch
}

func TestSince(t *testing.T) {
	a := dec("192.0.2.10/32", 4*time.Hour, "cscli")
	aLonger := dec("192.0.2.10/32", 8*time.Hour, "cscli")
	aShort := dec("192.0.2.10/32", 2*time.Minute, "cscli")
	aCAPI := dec("192.0.2.10/32", 4*time.Hour, "CAPI")
	b := dec("2001:db8::/64", 4*time.Hour, "lists")
	tests := []struct {
		name   string
		steps  []step
		key    Key
		want   time.Duration // since, as an offset from t0
		absent bool
	}{
		{"new key gets append time", []step{{time.Minute, Batch{New: []Decision{a}}}}, a.Key(), time.Minute, false},
		{"extension keeps since", []step{{0, Batch{New: []Decision{a}}}, {time.Hour, Batch{New: []Decision{aLonger}}}}, a.Key(), 0, false},
		{"shortening keeps since", []step{{time.Second, Batch{New: []Decision{a}}}, {time.Hour, Batch{New: []Decision{aLonger}}}, {2 * time.Hour, Batch{New: []Decision{a}}}}, a.Key(), time.Second, false},
		{"origin change is new", []step{{0, Batch{New: []Decision{a}}}, {time.Hour, Batch{New: []Decision{aCAPI}}}}, a.Key(), time.Hour, false},
		{"delete then re-add is new", []step{{0, Batch{New: []Decision{a}}}, {time.Minute, Batch{Deleted: []Key{a.Key()}}}, {time.Hour, Batch{New: []Decision{a}}}}, a.Key(), time.Hour, false},
		{"re-add after expiry is new", []step{{0, Batch{New: []Decision{aShort}}}, {time.Hour, Batch{New: []Decision{a}}}}, a.Key(), time.Hour, false},
		{"full keeps since of kept keys", []step{{time.Second, Batch{New: []Decision{a}}}, {time.Hour, Batch{Full: true, New: []Decision{aLonger, b}}}}, a.Key(), time.Second, false},
		{"full: new key gets its time", []step{{time.Second, Batch{New: []Decision{a}}}, {time.Hour, Batch{Full: true, New: []Decision{aLonger, b}}}}, b.Key(), time.Hour, false},
		{"full: origin change is new", []step{{time.Second, Batch{New: []Decision{a}}}, {time.Hour, Batch{Full: true, New: []Decision{aCAPI}}}}, a.Key(), time.Hour, false},
		{"extension after full keeps since", []step{{time.Second, Batch{Full: true, New: []Decision{a}}}, {time.Hour, Batch{New: []Decision{aLonger}}}}, a.Key(), time.Second, false},
		{"deleted key is absent", []step{{0, Batch{New: []Decision{a}}}, {time.Minute, Batch{Deleted: []Key{a.Key()}}}}, a.Key(), 0, true},
	}
	for _, tt := range tests {
		for _, every := range []int{1, 2, 1000} {
			t.Run(tt.name+"/compactEvery="+strconv.Itoa(every), func(t *testing.T) {
				j := openTest(t, func(o *Options) { o.CompactEvery = every })
				for _, s := range tt.steps {
					j.clock.t = t0.Add(s.at)
					if err := j.Append(s.b); err != nil {
						t.Fatalf("Append: %v", err)
					}
				}
				check := func(when string) {
					t.Helper()
					got, ok := j.View().Since(tt.key)
					if tt.absent {
						if ok {
							t.Fatalf("%s: Since(%v) = %v, want absent", when, tt.key, got)
						}
						return
					}
					if !ok || !got.Equal(t0.Add(tt.want)) {
						t.Fatalf("%s: Since(%v) = %v, %v; want %v", when, tt.key, got, ok, t0.Add(tt.want))
					}
				}
				check("live")
				j.reopen(t)
				check("after reopen")
				if err := j.Compact(); err != nil {
					t.Fatal(err)
				}
				j.reopen(t)
				check("after compaction and reopen")
			})
		}
	}
}

// An extension of a key that has expired by the time the journal is
// reopened must still keep the since it had when it was appended.
func TestSinceReplayUsesEventTime(t *testing.T) {
	j := openTest(t)
	short := dec("192.0.2.10/32", 10*time.Minute, "cscli")
	long := dec("192.0.2.10/32", 4*time.Hour, "cscli")
	if err := j.Append(Batch{New: []Decision{short}}); err != nil {
		t.Fatal(err)
	}
	j.clock.t = t0.Add(5 * time.Minute)
	if err := j.Append(Batch{New: []Decision{long}}); err != nil {
		t.Fatal(err)
	}
	j.clock.t = t0.Add(time.Hour) // short's until has passed
	j.reopen(t)
	if got, ok := j.View().Since(long.Key()); !ok || !got.Equal(t0) {
		t.Fatalf("Since = %v, %v; want %v", got, ok, t0)
	}
	// And the sweep after replay still drops what expired by load time.
	j.clock.t = t0.Add(5 * time.Hour)
	j.reopen(t)
	if n := j.View().Len(); n != 0 {
		t.Fatalf("view holds %d entries after all expired", n)
	}
}

func TestSinceEachSince(t *testing.T) {
	j := openTest(t)
	a := dec("192.0.2.10/32", time.Hour, "cscli")
	b := dec("198.51.100.0/24", time.Hour, "lists")
	if err := j.Append(Batch{New: []Decision{a}}); err != nil {
		t.Fatal(err)
	}
	j.clock.t = t0.Add(time.Minute)
	if err := j.Append(Batch{New: []Decision{b}}); err != nil {
		t.Fatal(err)
	}
	got := map[Key]time.Time{}
	j.View().EachSince(func(d Decision, since time.Time) bool {
		got[d.Key()] = since
		return true
	})
	if len(got) != 2 || !got[a.Key()].Equal(t0) || !got[b.Key()].Equal(t0.Add(time.Minute)) {
		t.Fatalf("EachSince = %v", got)
	}
}

// toV1 rewrites a version-2 value without per-decision since as version 1:
// drop the "at" varint, fix the version byte and the CRC.
func toV1(t *testing.T, v2 []byte) []byte {
	t.Helper()
	body := v2[:len(v2)-4]
	if body[0] != codecVersion || body[1]&flagSince != 0 {
		t.Fatalf("not a plain v2 value: % x", body[:2])
	}
	_, n := binary.Varint(body[2:])
	_, m := binary.Varint(body[2+n:])
	out := append([]byte{codecVersionV1, body[1]}, body[2:2+n]...)
	out = append(out, body[2+n+m:]...)
	return binary.LittleEndian.AppendUint32(out, crc32.Checksum(out, crcTable))
}

// A journal written before since existed still opens; its decisions have
// an unknown since, which an extension keeps and a new key does not.
func TestSinceVersion1JournalIsUnknown(t *testing.T) {
	j := openTest(t)
	old := dec("192.0.2.10/32", time.Hour, "cscli")
	snap := dec("198.51.100.0/24", time.Hour, "lists")
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	ev, err := EncodeBatch(Batch{New: []Decision{old}})
	if err != nil {
		t.Fatal(err)
	}
	sn, err := EncodeBatch(Batch{Full: true, New: []Decision{snap}})
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(j.opts.Path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketSnapshot).Put(keySnapshot, toV1(t, sn)); err != nil {
			return err
		}
		b := tx.Bucket(bucketEvents)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		return b.Put(seqKey(seq), toV1(t, ev))
	})
	if cerr := db.Close(); err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}
	j2, err := Open(j.opts)
	if err != nil {
		t.Fatal(err)
	}
	j.Journal = j2
	for _, k := range []Key{old.Key(), snap.Key()} {
		if got, ok := j.View().Since(k); !ok || !got.IsZero() {
			t.Fatalf("Since(%v) = %v, %v; want zero, true", k, got, ok)
		}
	}
	j.clock.t = t0.Add(time.Minute)
	fresh := dec("203.0.113.1/32", time.Hour, "cscli")
	if err := j.Append(Batch{New: []Decision{dec("192.0.2.10/32", 2*time.Hour, "cscli"), fresh}}); err != nil {
		t.Fatal(err)
	}
	j.reopen(t)
	if got, _ := j.View().Since(old.Key()); !got.IsZero() {
		t.Fatalf("extension of an unknown since = %v, want unknown", got)
	}
	if got, _ := j.View().Since(fresh.Key()); !got.Equal(t0.Add(time.Minute)) {
		t.Fatalf("new key since = %v", got)
	}
}

func TestSinceCodeRoundTrip(t *testing.T) {
	for _, tt := range []struct{ at, since int64 }{
		{0, 0}, {1000, 0}, {1000, 1000}, {1000, 1}, {1000, 5000}, {0, 5}, {1 << 50, -(1 << 50)},
	} {
		if got := sinceDecode(tt.at, sinceCode(tt.at, tt.since)); got != tt.since {
			t.Errorf("at %d since %d: round trip %d", tt.at, tt.since, got)
		}
	}
}

// TestFullSinceWithDuplicates checks a full batch against the rule it
// follows, on random batches holding keys twice or more with other
// origins and expired values: each decision keeps the since of the entry
// the view held before the batch when that entry was unexpired and of the
// same origin, whatever earlier duplicates in the batch did.
func TestFullSinceWithDuplicates(t *testing.T) {
	j := openTest(t)
	rng := rand.New(rand.NewPCG(1, 2))
	prefixes := []string{"192.0.2.1/32", "192.0.2.2/32", "198.51.100.0/24", "2001:db8::1/128", "2001:db8:1::/48"}
	origins := []string{"crowdsec", "cscli", "CAPI"}
	types := []string{"ban", "captcha"}
	batch := func(now time.Time) Batch {
		b := Batch{Full: true}
		for range rng.IntN(30) {
			d := dec(prefixes[rng.IntN(len(prefixes))], 0, origins[rng.IntN(len(origins))])
			d.Type = types[rng.IntN(len(types))]
			d.Until = now.Add(time.Duration(rng.IntN(7)-2) * time.Hour)
			b.New = append(b.New, d)
		}
		return b
	}
	for i := range 300 {
		now := t0.Add(time.Duration(i) * 10 * time.Hour)
		j.clock.t = now.Add(-time.Hour)
		if err := j.Append(batch(j.clock.t)); err != nil {
			t.Fatalf("Append: %v", err)
		}
		old := sinceState(j.View())
		b := batch(now)
		want := make(map[Key]sinceEntry)
		for _, d := range b.New {
			if !d.Until.After(now) {
				delete(want, d.Key())
				continue
			}
			e := sinceEntry{d, now}
			if o, ok := old[d.Key()]; ok && o.d.Origin == d.Origin && o.d.Until.After(now) {
				e.since = o.since
			}
			want[d.Key()] = e
		}
		j.clock.t = now
		if err := j.Append(b); err != nil {
			t.Fatalf("Append: %v", err)
		}
		for when, got := range map[string]map[Key]sinceEntry{"view": sinceState(j.View()), "snapshot": sinceState(snapshotView(t, j))} {
			if len(got) != len(want) {
				t.Fatalf("round %d %s: %d entries, want %d\nbatch %+v\nold %+v", i, when, len(got), len(want), b.New, old)
			}
			for k, w := range want {
				if got[k] != w {
					t.Fatalf("round %d %s: %v = %+v, want %+v\nbatch %+v\nold %+v", i, when, k, got[k], w, b.New, old)
				}
			}
		}
	}
}

type sinceEntry struct {
	d     Decision
	since time.Time
}

func sinceState(v *View) map[Key]sinceEntry {
	m := make(map[Key]sinceEntry)
	v.EachSince(func(d Decision, since time.Time) bool {
		m[d.Key()] = sinceEntry{d, since}
		return true
	})
	return m
}

// snapshotView decodes the journal's snapshot into a view.
func snapshotView(t *testing.T, j *testJournal) *View {
	t.Helper()
	v := newView(newStrtab())
	err := j.db.View(func(tx *bolt.Tx) error {
		return decodeBatch(tx.Bucket(bucketSnapshot).Get(keySnapshot), &viewLoader{v: v, now: untilMS(j.clock.t)})
	})
	if err != nil {
		t.Fatalf("decode snapshot: %v", err)
	}
	return v
}
