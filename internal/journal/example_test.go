package journal_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// ExampleJournal shows the enforcer's use: append each LAPI batch before
// touching the kernel, derive the kernel delta from the changes, and
// rebuild the view from disk at the next start.
func ExampleJournal() {
	dir, err := os.MkdirTemp("", "journal-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	opts := journal.Options{Path: filepath.Join(dir, "journal.db"), Now: func() time.Time { return now }}

	j, err := journal.Open(opts)
	if err != nil {
		panic(err)
	}
	ban := journal.Decision{
		Prefix: netip.MustParsePrefix("192.0.2.1/32"), Until: now.Add(4 * time.Hour),
		Origin: "crowdsec", Scenario: "crowdsecurity/ssh-bf", Type: "ban", Scope: journal.ScopeIP,
	}
	if err := j.Append(journal.Batch{New: []journal.Decision{ban}}); err != nil {
		panic(err)
	}
	idx, _ := j.OriginIndex("crowdsec")
	fmt.Println("journaled:", ban.Prefix, "origin set", idx)
	if err := j.Close(); err != nil {
		panic(err)
	}

	// Next start: the view comes back from disk, without LAPI.
	j, err = journal.Open(opts)
	if err != nil {
		panic(err)
	}
	defer j.Close()
	for _, d := range j.View().Active(now) {
		fmt.Println("replay:", d.Prefix, d.Until.Sub(now))
	}
	// Output:
	// journaled: 192.0.2.1/32 origin set 0
	// replay: 192.0.2.1/32 4h0m0s
}
