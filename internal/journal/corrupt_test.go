package journal

import (
	"bytes"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// marker is a scenario name that lets a test find an event value's bytes
// inside the bbolt file.
const marker = "scenario/MARKER-0123456789"

func TestCorruptFileMovedAside(t *testing.T) {
	tests := []struct {
		name   string
		mangle func(t *testing.T, data []byte, used int64) []byte
	}{
		{"random bytes", func(t *testing.T, data []byte, used int64) []byte {
			r := rand.New(rand.NewPCG(1, 2))
			out := make([]byte, 64<<10)
			for i := range out {
				out[i] = byte(r.Uint32())
			}
			return out
		}},
		{"truncated to 100 bytes", func(t *testing.T, data []byte, used int64) []byte { return data[:100] }},
		{"truncated by half", func(t *testing.T, data []byte, used int64) []byte { return data[:len(data)/2] }},
		// The file may extend past its last used page; cut a used one.
		{"last used page cut", func(t *testing.T, data []byte, used int64) []byte { return data[:used-4096] }},
		{"flipped byte in event value", func(t *testing.T, data []byte, used int64) []byte {
			i := bytes.Index(data, []byte(marker))
			if i < 0 {
				t.Fatal("marker not found in file")
			}
			data[i+3] ^= 0x01
			return data
		}},
		{"flipped byte in event until", func(t *testing.T, data []byte, used int64) []byte {
			// The first new decision follows the string table: tag, 4 address
			// bytes, then the until delta. Flip a bit of the delta.
			i := bytes.Index(data, []byte(marker))
			if i < 0 {
				t.Fatal("marker not found in file")
			}
			j := bytes.Index(data[i:], []byte{32, 192, 0, 2, 9})
			if j < 0 {
				t.Fatal("prefix bytes not found after marker")
			}
			data[i+j+5] ^= 0x04
			return data
		}},
		{"zeroed meta pages", func(t *testing.T, data []byte, used int64) []byte {
			clear(data[:8192])
			return data
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := openTest(t)
			a := dec("192.0.2.9/32", time.Hour, "crowdsec")
			a.Scenario = marker
			if err := j.Append(Batch{New: []Decision{dec("192.0.2.1/32", time.Hour, "crowdsec")}}); err != nil {
				t.Fatal(err)
			}
			if err := j.Append(Batch{New: []Decision{a}}); err != nil {
				t.Fatal(err)
			}
			if err := j.Close(); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(j.opts.Path)
			if err != nil {
				t.Fatal(err)
			}
			bad := tt.mangle(t, data, usedSize(t, j.opts.Path))
			if err := os.WriteFile(j.opts.Path, bad, 0o600); err != nil {
				t.Fatal(err)
			}

			j.reopen(t)
			aside := j.Recovered()
			if aside == "" {
				t.Fatal("Recovered() is empty after opening a corrupt file")
			}
			if !strings.HasPrefix(aside, j.opts.Path+".corrupt-") {
				t.Fatalf("moved to %q", aside)
			}
			kept, err := os.ReadFile(aside)
			if err != nil || !bytes.Equal(kept, bad) {
				t.Fatalf("corrupt file not preserved at %s (err %v)", aside, err)
			}
			if !strings.Contains(j.logs.String(), "level=ERROR") || !strings.Contains(j.logs.String(), aside) {
				t.Fatalf("no ERROR log naming %s: %s", aside, j.logs)
			}
			if j.View().Len() != 0 || len(j.Origins()) != 0 {
				t.Fatalf("fresh journal not empty: %d entries, origins %v", j.View().Len(), j.Origins())
			}
			// The fresh journal is usable and survives a reopen.
			b := dec("198.51.100.1/32", time.Hour, "cscli")
			if err := j.Append(Batch{New: []Decision{b}}); err != nil {
				t.Fatal(err)
			}
			j.reopen(t)
			if j.Recovered() != "" {
				t.Fatalf("healthy reopen reports Recovered %q", j.Recovered())
			}
			diffMaps(t, "after recovery", viewMap(j.View()), mapOf(b))
			if i, ok := j.OriginIndex("cscli"); !ok || i != 0 {
				t.Fatalf("origin index after recovery = %d, %t", i, ok)
			}
		})
	}
}

func TestUnrelatedErrorNotMovedAside(t *testing.T) {
	// A directory where the file should be is the operator's problem, not
	// corruption: Open must fail and leave it alone (works as root too).
	j := openTest(t)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	opts := j.opts
	opts.Path = opts.Path + ".d"
	if err := os.Mkdir(opts.Path, 0o700); err != nil {
		t.Fatal(err)
	}
	if j2, err := Open(opts); err == nil {
		j2.Close()
		t.Fatal("Open of a directory succeeded")
	}
	if fi, err := os.Stat(opts.Path); err != nil || !fi.IsDir() {
		t.Fatalf("directory was moved: %v", err)
	}
	j.reopen(t)
}

// usedSize is the part of a closed bbolt file its meta page accounts for.
func usedSize(t *testing.T, path string) int64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int64
	if err := db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}
