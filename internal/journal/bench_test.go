package journal

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// batch100k is a startup-sized set: 100k IPv4 bans from a few origins and
// scenarios, with spread expiries, as LAPI sends them.
func batch100k() Batch {
	b := Batch{Full: true, New: make([]Decision, 0, 100_000)}
	origins := []string{"crowdsec", "cscli", "lists", "CAPI"}
	for i := range 100_000 {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
		b.New = append(b.New, Decision{
			Prefix: netip.PrefixFrom(a, 32), Until: t0.Add(time.Duration(1+i%10000) * time.Second),
			Origin: origins[i%4], Scenario: fmt.Sprintf("lists:list-%d", i%50), Type: "ban", Scope: ScopeIP,
		})
	}
	return b
}

func BenchmarkAppend100k(b *testing.B) {
	batch := batch100k()
	j, err := Open(Options{Path: filepath.Join(b.TempDir(), "j.db"), Now: func() time.Time { return t0 }})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	b.ResetTimer()
	for b.Loop() {
		if err := j.Append(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(j.Stats().FileSize), "file-bytes")
}

func BenchmarkEncode100k(b *testing.B) {
	batch := batch100k()
	batch.Full = false
	for b.Loop() {
		data, err := EncodeBatch(batch)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(len(data))/1e5, "bytes/decision")
	}
}

func BenchmarkOpen100k(b *testing.B) {
	path := filepath.Join(b.TempDir(), "j.db")
	opts := Options{Path: path, Now: func() time.Time { return t0 }}
	j, err := Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	if err := j.Append(batch100k()); err != nil {
		b.Fatal(err)
	}
	if err := j.Close(); err != nil {
		b.Fatal(err)
	}
	var heap uint64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		j, err := Open(opts)
		if err != nil {
			b.Fatal(err)
		}
		if j.View().Len() != 100_000 {
			b.Fatalf("view has %d entries", j.View().Len())
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - before.HeapAlloc
		runtime.KeepAlive(j)
		if err := j.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(heap)/1e6, "view-MB")
}
