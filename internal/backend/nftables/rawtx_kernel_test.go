package nftables

import (
	"slices"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// Replay encodes its own element messages (rawtx.go): the kernel must read
// the same keys, timeouts and interval ends from them as from the
// library's, and a transaction it refuses must change nothing. A replayed
// range keeps its timeout (it once went in without one, never expiring).
func TestKernelReplayRawMessages(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b := newKernel(t, kernelConfig())
	active := []backend.Entry{
		entry("192.0.2.10/32", 0, time.Hour),
		entry("192.0.2.64/26", 0, 2*time.Hour),
		entry("2001:db8::10/128", 2, 3*time.Hour),
	}
	if err := b.Replay(ctx, slices.Values(active)); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		fam, table, set, key string
		ttl                  time.Duration
	}{
		{"ip", "crowdsec", "crowdsec-blacklists-crowdsec", "192.0.2.10", time.Hour},
		{"ip", "crowdsec", "crowdsec-blacklists-crowdsec-ranges", "192.0.2.64/26", 2 * time.Hour},
		{"ip6", "crowdsec6", "crowdsec6-blacklists-cscli", "2001:db8::10", 3 * time.Hour},
	} {
		got := elements(t, w.fam, w.table, w.set)
		exp, ok := got[w.key]
		// the clock is t0, set when the test process started
		if max := int(w.ttl.Seconds()); !ok || len(got) != 1 || exp > max || exp < max-60 {
			t.Errorf("%s holds %v, want only %s expiring in ~%d s", w.set, got, w.key, max)
		}
	}

	// The ip6 table is gone: flushing its sets fails, and with it the whole
	// transaction, the IPv4 flush included.
	sh(t, "nft delete table ip6 crowdsec6")
	if err := b.Replay(ctx, slices.Values([]backend.Entry{entry("192.0.2.99/32", 0, time.Hour)})); err == nil {
		t.Fatal("Replay into a deleted table succeeded")
	}
	if got := keys(elements(t, "ip", "crowdsec", "crowdsec-blacklists-crowdsec")); !slices.Equal(got, []string{"192.0.2.10"}) {
		t.Errorf("a refused replay changed the IPv4 set: %q", got)
	}
}
