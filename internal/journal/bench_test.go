package journal

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

// batch100k is a startup-sized set: 100k IPv4 bans from a few origins and
// scenarios, with spread expiries, as LAPI sends them.
func batch100k() Batch { return batchN(100_000, false) }

// batchN is batch100k with n decisions (n < 2^24); v6 takes the addresses
// from 2001:db8::/96 instead, as the daemon's 1M benchmark does.
func batchN(n int, v6 bool) Batch {
	b := Batch{Full: true, New: make([]Decision, 0, n)}
	origins := []string{"crowdsec", "cscli", "lists", "CAPI"}
	scenarios := make([]string, 50)
	for i := range scenarios {
		scenarios[i] = fmt.Sprintf("lists:list-%d", i)
	}
	for i := range n {
		a := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
		if v6 {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
		}
		b.New = append(b.New, Decision{
			Prefix: netip.PrefixFrom(a, a.BitLen()), Until: t0.Add(time.Duration(1+i%10000) * time.Second),
			Origin: origins[i%4], Scenario: scenarios[i%50], Type: "ban", Scope: ScopeIP,
		})
	}
	return b
}

// heapPeak samples the heap in use (live and not yet collected objects,
// what RSS follows) while an operation runs: the peak, not what is left
// after it, is what a cold start pays.
type heapPeak struct {
	stop chan struct{}
	done chan uint64
}

func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func startHeapPeak() *heapPeak {
	h := &heapPeak{stop: make(chan struct{}), done: make(chan uint64)}
	go func() {
		peak := heapObjects()
		t := time.NewTicker(200 * time.Microsecond)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				h.done <- max(peak, heapObjects())
				return
			case <-t.C:
				peak = max(peak, heapObjects())
			}
		}
	}()
	return h
}

func (h *heapPeak) end() uint64 {
	close(h.stop)
	return <-h.done
}

// benchAppendFull appends a full batch of n to a journal whose view
// already holds the same n keys (a restart: Open, then LAPI's startup
// pull), and reports the peak heap above what was live before.
func benchAppendFull(b *testing.B, n int, v6 bool) {
	batch := batchN(n, v6)
	j, err := Open(Options{Path: filepath.Join(b.TempDir(), "j.db"), Now: func() time.Time { return t0 }})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	if err := j.Append(batch); err != nil {
		b.Fatal(err)
	}
	var peak uint64
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		base := heapObjects()
		h := startHeapPeak()
		b.StartTimer()
		if err := j.Append(batch); err != nil {
			b.Fatal(err)
		}
		peak = max(peak, h.end()-base)
	}
	b.ReportMetric(float64(peak)/1e6, "peak-MB")
	b.ReportMetric(float64(j.Stats().FileSize), "file-bytes")
}

func BenchmarkAppendFull1M(b *testing.B)  { benchAppendFull(b, 1_000_000, false) }
func BenchmarkAppendFull1M6(b *testing.B) { benchAppendFull(b, 1_000_000, true) }

// benchOpen opens a journal holding a snapshot of n decisions and reports
// the peak heap during Open and the heap the opened journal keeps.
func benchOpen(b *testing.B, n int, v6 bool) {
	path := filepath.Join(b.TempDir(), "j.db")
	opts := Options{Path: path, Now: func() time.Time { return t0 }}
	j, err := Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	if err := j.Append(batchN(n, v6)); err != nil {
		b.Fatal(err)
	}
	if err := j.Close(); err != nil {
		b.Fatal(err)
	}
	var heap, peak uint64
	for b.Loop() {
		b.StopTimer()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		h := startHeapPeak()
		b.StartTimer()
		j, err := Open(opts)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		peak = max(peak, h.end()-before.HeapAlloc)
		if j.View().Len() != n {
			b.Fatalf("view has %d entries", j.View().Len())
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - before.HeapAlloc
		runtime.KeepAlive(j)
		if err := j.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(heap)/1e6, "view-MB")
	b.ReportMetric(float64(peak)/1e6, "peak-MB")
}

func BenchmarkOpen1M(b *testing.B)  { benchOpen(b, 1_000_000, false) }
func BenchmarkOpen1M6(b *testing.B) { benchOpen(b, 1_000_000, true) }

func BenchmarkAppend100k(b *testing.B) { benchAppendFull(b, 100_000, false) }

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

func BenchmarkOpen100k(b *testing.B) { benchOpen(b, 100_000, false) }

// benchSnapshot encodes a view of n decisions as the snapshot and reports
// its size. list makes it a blocklist pull: one origin, scenario and
// expiry for every decision, where batchN spreads them.
func benchSnapshot(b *testing.B, n int, v6, list bool) {
	batch := batchN(n, v6)
	if list {
		for i := range batch.New {
			d := &batch.New[i]
			d.Origin, d.Scenario, d.Until = "lists", "lists:firehol", t0.Add(24*time.Hour)
		}
	}
	v := newView(newStrtab())
	v.fill(batch, untilMS(t0))
	var size int
	for b.Loop() {
		size = len(v.encode(untilMS(t0)))
	}
	b.ReportMetric(float64(size), "snapshot-bytes")
	b.ReportMetric(float64(size)/float64(n), "bytes/decision")
}

func BenchmarkSnapshot100k(b *testing.B)     { benchSnapshot(b, 100_000, false, false) }
func BenchmarkSnapshot1M(b *testing.B)       { benchSnapshot(b, 1_000_000, false, false) }
func BenchmarkSnapshot1M6(b *testing.B)      { benchSnapshot(b, 1_000_000, true, false) }
func BenchmarkSnapshotList100k(b *testing.B) { benchSnapshot(b, 100_000, false, true) }
func BenchmarkSnapshotList1M6(b *testing.B)  { benchSnapshot(b, 1_000_000, true, true) }
