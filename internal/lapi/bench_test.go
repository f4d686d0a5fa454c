package lapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// BenchmarkNormalize100k normalizes a blocklist-sized startup response:
// 100k Ip decisions with one origin and scenario (the journal's batch size).
func BenchmarkNormalize100k(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"deleted":null,"new":[`)
	for i := range 100_000 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"duration":"23h59m58.5s","id":%d,"origin":"lists","scenario":"lists:firehol_level1","scope":"Ip","type":"ban","value":"198.18.%d.%d"}`,
			i, i/256%256, i%256)
	}
	sb.WriteString(`]}`)
	var resp models.DecisionsStreamResponse
	if err := json.Unmarshal([]byte(sb.String()), &resp); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		batch, rej := Normalize(&resp, NormalizeOptions{}, testNow)
		if batch.NewLen() != 100_000 || len(rej) != 0 {
			b.Fatalf("kept %d rejected %d", batch.NewLen(), len(rej))
		}
	}
}

// benchBody is a startup response of n Ip bans in 198.18.0.0/15, shaped like
// LAPI's (deleted first, null).
func benchBody(n int) string {
	return streamBody(n, func(i int) string { return fmt.Sprintf("198.%d.%d.%d", 18+i/65536, (i/256)%256, i%256) })
}

// streamBody is a startup response of n blocklist Ip bans, the i-th on
// value(i).
func streamBody(n int, value func(i int) string) string {
	var sb strings.Builder
	sb.WriteString(`{"deleted":null,"new":[`)
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"duration":"23h59m58.%09ds","id":%d,"origin":"lists","scenario":"lists:firehol_level1","scope":"Ip","type":"ban","value":"%s"}`,
			i, i+1, value(i))
	}
	sb.WriteString(`]}`)
	return sb.String()
}

// pullBench runs pull against a local LAPI stand-in serving n bans. It
// first measures one pull alone, untimed: peak-heap-MB is the largest heap
// in use (HeapInuse, sampled) above the level before the pull, retained-MB
// what the result keeps after a GC. Then it times pulls as usual.
func pullBench(b *testing.B, n int, pull func(*Client) (journal.Batch, error)) {
	srv := httptest.NewServer(&bodyLAPI{body: benchBody(n)})
	defer srv.Close()
	c, err := NewClient(ClientConfig{APIURL: srv.URL, APIKey: testKey}, discardLogger())
	if err != nil {
		b.Fatal(err)
	}
	check := func() journal.Batch {
		got, err := pull(c)
		if err != nil || got.NewLen() != n {
			b.Fatalf("pull: %d decisions, %v", got.NewLen(), err)
		}
		return got
	}
	check() // warm-up: the connection and lazy initialisations
	peak, retained := measurePull(b, func() any { return check() })
	b.ReportAllocs()
	for b.Loop() {
		check()
	}
	// after the loop: b.Loop resets extra metrics on its first call
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MB")
	b.ReportMetric(float64(retained)/(1<<20), "retained-MB")
}

var benchKeep any

func measurePull(b *testing.B, f func() any) (peak, retained uint64) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	inuse := func() uint64 {
		metrics.Read(samples)
		return samples[0].Value.Uint64() + samples[1].Value.Uint64()
	}
	runtime.GC()
	base := inuse()
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		var max uint64
		t := time.NewTicker(200 * time.Microsecond)
		defer t.Stop()
		for {
			if v := inuse(); v > max {
				max = v
			}
			select {
			case <-stop:
				done <- max
				return
			case <-t.C:
			}
		}
	}()
	benchKeep = f()
	close(stop)
	max := <-done
	runtime.GC()
	after := inuse()
	benchKeep = nil
	if max > base {
		peak = max - base
	}
	if after > base {
		retained = after - base
	}
	b.Logf("heap in use before %d MB, peak %d MB, after GC %d MB", base>>20, max>>20, after>>20)
	return peak, retained
}

// BenchmarkPullNormalize100k is the model path: Pull decodes the whole
// response into *models.Decision, then Normalize.
func BenchmarkPullNormalize100k(b *testing.B) {
	pullBench(b, 100_000, func(c *Client) (journal.Batch, error) {
		resp, err := c.Pull(b.Context(), true)
		if err != nil {
			return journal.Batch{}, err
		}
		batch, _ := Normalize(resp, NormalizeOptions{}, time.Now())
		return batch, nil
	})
}

// BenchmarkPullBatch100k is the streaming path the daemon uses.
func BenchmarkPullBatch100k(b *testing.B) { pullBench(b, 100_000, pullBatch) }

// BenchmarkPullBatch1M is the streaming path at the size of the largest
// blocklist subscriptions, for its peak heap; skipped with -short (a body of
// ~190 MB and about a second per pull).
func BenchmarkPullBatch1M(b *testing.B) {
	if testing.Short() {
		b.Skip("1M decisions: skipped with -short")
	}
	pullBench(b, 1_000_000, pullBatch)
}

func pullBatch(c *Client) (journal.Batch, error) {
	batch, _, _, err := c.PullBatch(context.Background(), true, NormalizeOptions{}, nil)
	return batch, err
}

// BenchmarkPullAppendFull1M is a cold start's pull phase at 1M bans: the
// streaming pull, then the batch into an empty journal and its snapshot
// written. peak-heap-MB is what the phase adds to the heap at its
// highest, retained-MB what the journal keeps. Skipped with -short.
func BenchmarkPullAppendFull1M(b *testing.B) {
	if testing.Short() {
		b.Skip("1M decisions: skipped with -short")
	}
	const n = 1_000_000
	srv := httptest.NewServer(&bodyLAPI{body: benchBody(n)})
	defer srv.Close()
	c, err := NewClient(ClientConfig{APIURL: srv.URL, APIKey: testKey}, discardLogger())
	if err != nil {
		b.Fatal(err)
	}
	coldStart := func() any {
		j, err := journal.Open(journal.Options{Path: filepath.Join(b.TempDir(), "j.db")})
		if err != nil {
			b.Fatal(err)
		}
		batch, err := pullBatch(c)
		if err != nil || batch.Len() != n {
			b.Fatalf("pull: %d decisions, %v", batch.Len(), err)
		}
		persist, err := j.AppendFull(batch)
		if err != nil {
			b.Fatal(err)
		}
		if err := persist(); err != nil {
			b.Fatal(err)
		}
		if err := j.Close(); err != nil {
			b.Fatal(err)
		}
		return j // its view stays readable
	}
	coldStart() // warm-up: the connection and lazy initialisations
	peak, retained := measurePull(b, coldStart)
	b.ReportAllocs()
	for b.Loop() {
		coldStart()
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MB")
	b.ReportMetric(float64(retained)/(1<<20), "retained-MB")
}

// BenchmarkDecodeStream100k is PullBatch's decode and normalize alone, from
// a body in memory: the part of a pull that is ours, without HTTP.
func BenchmarkDecodeStream100k(b *testing.B) { decodeBench(b, benchBody(100_000)) }

// BenchmarkDecodeStream100kIPv6 is BenchmarkDecodeStream100k with IPv6
// addresses, which netip parses.
func BenchmarkDecodeStream100kIPv6(b *testing.B) {
	decodeBench(b, benchBodyV6(100_000))
}

// benchBodyV6 is benchBody with Ip bans in 2001:db8::/32.
func benchBodyV6(n int) string {
	return streamBody(n, func(i int) string { return fmt.Sprintf("2001:db8::%x:%x", i>>16, i&0xffff) })
}

func decodeBench(b *testing.B, s string) {
	body := []byte(s)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		n := newNormalizer(NormalizeOptions{})
		if err := n.decodeStream(bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
		if batch, _, _ := n.result(); batch.NewLen() != 100_000 {
			b.Fatalf("kept %d", batch.NewLen())
		}
	}
}
