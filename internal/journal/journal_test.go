package journal

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestApplySemantics(t *testing.T) {
	a := dec("192.0.2.1/32", time.Hour, "crowdsec")
	aLonger := dec("192.0.2.1/32", 4*time.Hour, "crowdsec")
	aShorter := dec("192.0.2.1/32", time.Minute, "crowdsec")
	aCscli := dec("192.0.2.1/32", time.Hour, "cscli")
	aExpired := dec("192.0.2.1/32", -time.Second, "crowdsec")
	aAtNow := dec("192.0.2.1/32", 0, "crowdsec")
	b := dec("198.51.100.0/24", 2*time.Hour, "lists")
	c := dec("2001:db8::/64", 3*time.Hour, "CAPI")
	cap := a
	cap.Type = "captcha"

	tests := []struct {
		name        string
		setup       []Batch
		batch       Batch
		want        map[Key]Decision
		wantAdded   map[Key]Decision
		wantRemoved map[Key]Decision
	}{
		{"insert", nil, Batch{New: []Decision{a, b, c}}, mapOf(a, b, c), mapOf(a, b, c), mapOf()},
		{"replace longer", []Batch{{New: []Decision{a}}}, Batch{New: []Decision{aLonger}}, mapOf(aLonger), mapOf(aLonger), mapOf()},
		{"replace shorter: LAPI is authoritative", []Batch{{New: []Decision{aLonger}}}, Batch{New: []Decision{aShorter}}, mapOf(aShorter), mapOf(aShorter), mapOf()},
		{"origin change is remove+add", []Batch{{New: []Decision{a}}}, Batch{New: []Decision{aCscli}}, mapOf(aCscli), mapOf(aCscli), mapOf(a)},
		{"expired on arrival not inserted", nil, Batch{New: []Decision{aExpired, b}}, mapOf(b), mapOf(b), mapOf()},
		{"until == now counts as expired", nil, Batch{New: []Decision{aAtNow}}, mapOf(), mapOf(), mapOf()},
		{"expired replacement removes", []Batch{{New: []Decision{a}}}, Batch{New: []Decision{aExpired}}, mapOf(), mapOf(), mapOf(a)},
		{"delete", []Batch{{New: []Decision{a, b}}}, Batch{Deleted: []Key{a.Key()}}, mapOf(b), mapOf(), mapOf(a)},
		{"delete missing is a no-op", []Batch{{New: []Decision{b}}}, Batch{Deleted: []Key{a.Key(), c.Key()}}, mapOf(b), mapOf(), mapOf()},
		{"repeated delete", []Batch{{New: []Decision{a, b}}}, Batch{Deleted: []Key{a.Key(), a.Key(), a.Key()}}, mapOf(b), mapOf(), mapOf(a)},
		{"delete other type keeps ban", []Batch{{New: []Decision{a}}}, Batch{Deleted: []Key{cap.Key()}}, mapOf(a), mapOf(), mapOf()},
		{"same batch: later new wins", nil, Batch{New: []Decision{aLonger, aShorter}}, mapOf(aShorter), mapOf(aLonger, aShorter), mapOf()},
		{"full replaces", []Batch{{New: []Decision{a, b}}}, Batch{Full: true, New: []Decision{c, aLonger}}, mapOf(c, aLonger), mapOf(c, aLonger), mapOf(b)},
		{"full drops expired", []Batch{{New: []Decision{b}}}, Batch{Full: true, New: []Decision{aExpired, c}}, mapOf(c), mapOf(c), mapOf(b)},
		{"full empty clears", []Batch{{New: []Decision{a, b}}}, Batch{Full: true}, mapOf(), mapOf(), mapOf(a, b)},
		{"full ignores Deleted", []Batch{{New: []Decision{a}}}, Batch{Full: true, New: []Decision{a}, Deleted: []Key{a.Key()}}, mapOf(a), mapOf(a), mapOf()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := openTest(t)
			for _, s := range tt.setup {
				if err := j.Append(s); err != nil {
					t.Fatalf("setup Append: %v", err)
				}
			}
			ch, err := appendChanges(j.Journal, tt.batch)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			diffMaps(t, "view", viewMap(j.View()), tt.want)
			diffMaps(t, "added", mapOf(ch.Added...), tt.wantAdded)
			diffMaps(t, "removed", mapOf(ch.Removed...), tt.wantRemoved)
			// The file must rebuild the same view.
			j.reopen(t)
			diffMaps(t, "view after reopen", viewMap(j.View()), tt.want)
		})
	}
}

func TestFullIgnoresDeletedFieldOnDisk(t *testing.T) {
	// A Full batch's snapshot is the new view; Deleted in it means nothing.
	// Guard that the snapshot encodes the view, not the raw batch.
	j := openTest(t)
	a := dec("192.0.2.7/32", time.Hour, "crowdsec")
	if err := j.Append(Batch{Full: true, New: []Decision{a}, Deleted: []Key{a.Key()}}); err != nil {
		t.Fatal(err)
	}
	j.reopen(t)
	if _, ok := j.View().Get(a.Key()); !ok {
		t.Fatal("decision lost after reopen")
	}
}

func TestAppendReopenManyBatches(t *testing.T) {
	for _, every := range []int{1, 7, 1000} {
		t.Run(fmt.Sprintf("compactEvery=%d", every), func(t *testing.T) {
			j := openTest(t, func(o *Options) { o.CompactEvery = every })
			for i := range 50 {
				var b Batch
				for k := range 5 {
					b.New = append(b.New, dec(fmt.Sprintf("198.18.%d.%d/32", i, k), time.Duration(i+k+1)*time.Minute, []string{"crowdsec", "cscli", "lists"}[k%3]))
				}
				if i > 0 {
					b.Deleted = append(b.Deleted, dec(fmt.Sprintf("198.18.%d.0/32", i-1), 0, "").Key())
				}
				if err := j.Append(b); err != nil {
					t.Fatal(err)
				}
			}
			want := viewMap(j.View())
			if len(want) != 50*5-49 {
				t.Fatalf("view has %d entries, want %d", len(want), 50*5-49)
			}
			j.reopen(t)
			diffMaps(t, "reopened", viewMap(j.View()), want)
		})
	}
}

func TestEmptyDeltaNotWritten(t *testing.T) {
	j := openTest(t)
	if err := j.Append(Batch{}); err != nil {
		t.Fatal(err)
	}
	if got := j.Stats().EventsSinceSnapshot; got != 0 {
		t.Fatalf("events = %d after an empty batch, want 0", got)
	}
}

func TestInvalidDecisionRejected(t *testing.T) {
	good := dec("192.0.2.1/32", time.Hour, "crowdsec")
	unmasked := good
	unmasked.Prefix = netip.MustParsePrefix("192.0.2.1/24")
	tests := []struct {
		name string
		b    Batch
	}{
		{"unmasked new", Batch{New: []Decision{good, unmasked}}},
		{"zero prefix", Batch{New: []Decision{{Until: t0.Add(time.Hour)}}}},
		{"unmasked delete", Batch{Deleted: []Key{unmasked.Key()}}},
		{"full with unmasked", Batch{Full: true, New: []Decision{unmasked}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := openTest(t)
			err := j.Append(tt.b)
			if !errors.Is(err, ErrInvalidDecision) {
				t.Fatalf("Append = %v, want ErrInvalidDecision", err)
			}
			if j.View().Len() != 0 || j.Stats().EventsSinceSnapshot != 0 || len(j.Origins()) != 0 {
				t.Fatalf("rejected batch changed state: %+v", j.Stats())
			}
		})
	}
}

func TestExpire(t *testing.T) {
	j := openTest(t)
	short := dec("192.0.2.1/32", time.Minute, "crowdsec")
	mid := dec("192.0.2.2/32", time.Hour, "crowdsec")
	long := dec("2001:db8::1/128", 24*time.Hour, "cscli")
	if err := j.Append(Batch{New: []Decision{short, mid, long}}); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		at         time.Duration
		wantGone   map[Key]Decision
		wantActive map[Key]Decision
	}{
		{30 * time.Second, mapOf(), mapOf(short, mid, long)},
		{time.Minute, mapOf(short), mapOf(mid, long)}, // Until == now is expired
		{2 * time.Minute, mapOf(), mapOf(mid, long)},
		{25 * time.Hour, mapOf(mid, long), mapOf()},
	}
	for _, s := range steps {
		now := t0.Add(s.at)
		active := mapOf(j.View().Active(now)...)
		diffMaps(t, fmt.Sprintf("Active at +%v", s.at), active, s.wantActive)
		diffMaps(t, fmt.Sprintf("Expire at +%v", s.at), mapOf(j.View().Expire(now)...), s.wantGone)
		diffMaps(t, fmt.Sprintf("view at +%v", s.at), viewMap(j.View()), s.wantActive)
	}
}

func TestExpireOnReopen(t *testing.T) {
	j := openTest(t)
	short := dec("192.0.2.1/32", time.Minute, "crowdsec")
	long := dec("192.0.2.2/32", time.Hour, "crowdsec")
	if err := j.Append(Batch{New: []Decision{short}}); err != nil {
		t.Fatal(err)
	}
	if err := j.Compact(); err != nil { // short now lives in the snapshot
		t.Fatal(err)
	}
	if err := j.Append(Batch{New: []Decision{long, dec("192.0.2.3/32", 2*time.Minute, "x")}}); err != nil {
		t.Fatal(err)
	}
	j.clock.t = t0.Add(10 * time.Minute)
	j.reopen(t)
	diffMaps(t, "after reopen", viewMap(j.View()), mapOf(long))
}

func TestCompactionBoundsFile(t *testing.T) {
	tests := []struct {
		name        string
		every       int
		wantBounded bool
	}{
		{"compacting", 200, true},
		{"never compacting grows", 1 << 30, false}, // proves the bound means something
	}
	const maxSize = 512 << 10 // compacting stays near 256 KiB; not compacting reaches MiBs
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := openTest(t, func(o *Options) { o.CompactEvery = tt.every })
			maxEvents := 0
			for i := range 2000 {
				var b Batch
				// A rotating pool of 200 prefixes keeps the view small.
				for k := range 40 {
					n := (i*40 + k) % 200
					b.New = append(b.New, dec(fmt.Sprintf("203.0.113.%d/32", n), time.Duration(1+i%5)*time.Hour, "crowdsec"))
				}
				b.Deleted = []Key{dec(fmt.Sprintf("203.0.113.%d/32", (i*7)%200), 0, "").Key()}
				if err := j.Append(b); err != nil {
					t.Fatal(err)
				}
				maxEvents = max(maxEvents, j.Stats().EventsSinceSnapshot)
			}
			st := j.Stats()
			bounded := st.FileSize <= maxSize && maxEvents < tt.every
			if bounded != tt.wantBounded {
				t.Fatalf("file %d bytes, max events %d (every %d): bounded=%t, want %t", st.FileSize, maxEvents, tt.every, bounded, tt.wantBounded)
			}
			t.Logf("file %d bytes, max events %d", st.FileSize, maxEvents)
			want := viewMap(j.View())
			j.reopen(t)
			diffMaps(t, "after reopen", viewMap(j.View()), want)
		})
	}
}

func TestOriginIndices(t *testing.T) {
	j := openTest(t)
	steps := []struct {
		batch Batch
		want  map[string]int
	}{
		{Batch{New: []Decision{dec("192.0.2.1/32", time.Hour, "crowdsec"), dec("192.0.2.2/32", time.Hour, "cscli"), dec("192.0.2.3/32", time.Hour, "crowdsec")}},
			map[string]int{"crowdsec": 0, "cscli": 1}},
		// An expired decision still names its origin: indices are about names.
		{Batch{New: []Decision{dec("192.0.2.4/32", -time.Hour, "lists")}}, map[string]int{"crowdsec": 0, "cscli": 1, "lists": 2}},
		// A full set without the old origins does not free their indices.
		{Batch{Full: true, New: []Decision{dec("192.0.2.5/32", time.Hour, "CAPI")}}, map[string]int{"crowdsec": 0, "cscli": 1, "lists": 2, "CAPI": 3}},
		{Batch{New: []Decision{dec("192.0.2.6/32", time.Hour, "cscli-import")}}, map[string]int{"crowdsec": 0, "cscli": 1, "lists": 2, "CAPI": 3, "cscli-import": 4}},
	}
	for i, s := range steps {
		if err := j.Append(s.batch); err != nil {
			t.Fatal(err)
		}
		j.reopen(t)
		got := j.Origins()
		if fmt.Sprint(got) != fmt.Sprint(s.want) {
			t.Fatalf("step %d: origins %v, want %v", i, got, s.want)
		}
		for name, idx := range s.want {
			if g, ok := j.OriginIndex(name); !ok || g != idx {
				t.Fatalf("step %d: OriginIndex(%q) = %d, %t; want %d", i, name, g, ok, idx)
			}
		}
	}
	if _, ok := j.OriginIndex("never-seen"); ok {
		t.Fatal("OriginIndex of an unknown origin reported ok")
	}
}

func TestSecondOpenLocked(t *testing.T) {
	j := openTest(t)
	opts := j.opts
	opts.Timeout = 20 * time.Millisecond
	j2, err := Open(opts)
	if err == nil {
		j2.Close()
		t.Fatal("second Open succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), opts.Path) || !strings.Contains(err.Error(), "another cs-journal-bouncer") {
		t.Fatalf("error %q lacks the path or the hint", err)
	}
	// The first instance is unharmed and nothing was moved aside.
	if err := j.Append(Batch{New: []Decision{dec("192.0.2.1/32", time.Hour, "crowdsec")}}); err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(opts.Path + ".corrupt-*"); len(m) != 0 {
		t.Fatalf("lock contention moved files aside: %v", m)
	}
}

func TestPerms(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "bouncer")
	j := openTest(t, func(o *Options) { o.Path = filepath.Join(dir, "journal.db") })
	if err := j.Append(Batch{New: []Decision{dec("192.0.2.1/32", time.Hour, "crowdsec")}}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, j.Path(): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode %v, want %v", path, got, want)
		}
	}
}

func TestWritableDirWarns(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	j := openTest(t, func(o *Options) { o.Path = filepath.Join(dir, "j.db") })
	if !strings.Contains(j.logs.String(), "world writable") {
		t.Fatalf("no warning about a 0777 directory; logs: %s", j.logs)
	}
	// An existing directory is not ours to chmod.
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o777 {
		t.Fatalf("directory mode changed to %v", fi.Mode().Perm())
	}
}

func TestForPrefix(t *testing.T) {
	j := openTest(t)
	ban := dec("192.0.2.1/32", time.Hour, "crowdsec")
	captcha := ban
	captcha.Type = "captcha"
	asRange := ban
	asRange.Scope = ScopeRange
	other := dec("192.0.2.0/24", time.Hour, "lists")
	v6 := dec("2001:db8::1/128", time.Hour, "crowdsec")
	if err := j.Append(Batch{New: []Decision{ban, captcha, asRange, other, v6}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		prefix string
		want   map[Key]Decision
	}{
		{"192.0.2.1/32", mapOf(ban, captcha, asRange)},
		{"192.0.2.0/24", mapOf(other)},
		{"192.0.2.2/32", mapOf()},
		{"2001:db8::1/128", mapOf(v6)},
		{"::ffff:192.0.2.1/128", mapOf()}, // 4in6 is a different prefix
	}
	for _, tt := range tests {
		diffMaps(t, tt.prefix, mapOf(j.View().ForPrefix(netip.MustParsePrefix(tt.prefix))...), tt.want)
	}
}

func TestStats(t *testing.T) {
	j := openTest(t)
	ds := []Decision{
		dec("192.0.2.1/32", time.Hour, "crowdsec"),
		dec("192.0.2.2/32", 3*time.Hour, "crowdsec"),
		dec("198.51.100.0/24", 2*time.Hour, "lists"),
	}
	if err := j.Append(Batch{New: ds}); err != nil {
		t.Fatal(err)
	}
	st := j.Stats()
	if st.Active != 3 || st.EventsSinceSnapshot != 1 || st.FileSize <= 0 {
		t.Fatalf("stats %+v", st)
	}
	if !st.OldestUntil.Equal(t0.Add(time.Hour)) || !st.NewestUntil.Equal(t0.Add(3*time.Hour)) {
		t.Fatalf("until range %v..%v", st.OldestUntil, st.NewestUntil)
	}
	if fmt.Sprint(st.PerOrigin) != fmt.Sprint(map[string]int{"crowdsec": 2, "lists": 1}) {
		t.Fatalf("per origin %v", st.PerOrigin)
	}
	if err := j.Compact(); err != nil {
		t.Fatal(err)
	}
	if got := j.Stats().EventsSinceSnapshot; got != 0 {
		t.Fatalf("events after Compact = %d", got)
	}
}

func TestActiveSorted(t *testing.T) {
	// Active returns every live decision exactly once.
	j := openTest(t)
	var ds []Decision
	for i := range 300 {
		ds = append(ds, dec(fmt.Sprintf("198.18.%d.%d/32", i/256, i%256), time.Duration(i-100)*time.Minute, "crowdsec"))
	}
	if err := j.Append(Batch{New: ds}); err != nil {
		t.Fatal(err)
	}
	got := j.View().Active(t0)
	sort.Slice(got, func(a, b int) bool { return got[a].Until.Before(got[b].Until) })
	if len(got) != 199 || !got[0].Until.Equal(t0.Add(time.Minute)) {
		t.Fatalf("Active: %d entries, first until %v", len(got), got[0].Until)
	}
}
