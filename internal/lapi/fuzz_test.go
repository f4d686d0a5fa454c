package lapi

import (
	"encoding/json"
	"testing"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// FuzzNormalize feeds arbitrary JSON through the LAPI model into Normalize:
// it must never panic, and whatever it keeps must be safe to hand to the
// kernel (masked prefix, non-zero length, known scope, future expiry).
func FuzzNormalize(f *testing.F) {
	seeds := []string{
		`{"new":null,"deleted":null}`,
		`{"new":[{"duration":"3h59m56.976421313s","id":1,"origin":"cscli","scenario":"manual","scope":"Ip","type":"ban","value":"192.0.2.10"}],"deleted":null}`,
		`{"new":[{"duration":"1h","origin":"lists","scenario":"lists:x","scope":"Range","type":"ban","value":"198.51.100.7/24"}],
		  "deleted":[{"duration":"-1.5s","origin":"cscli","scenario":"s","scope":"ip","type":"ban","value":"2001:db8::10"}]}`,
		`{"new":[null,{"scope":null,"value":null},{"duration":"-1s","scope":"Ip","type":"ban","value":"::ffff:203.0.113.9"}]}`,
		`{"new":[{"duration":"1h","origin":"o","scenario":"s","scope":"Range","type":"ban","value":"::ffff:0.0.0.0/96"}]}`,
		`{"new":[{"duration":"9999999999h","origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"fe80::1%eth0"}]}`,
		`{"new":[{"duration":"1ns","origin":"o","scenario":"s","scope":"Ip","type":"simulation:ban","value":"192.0.2.1","simulated":true}]}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, noV6 bool) {
		var resp models.DecisionsStreamResponse
		if err := json.Unmarshal(data, &resp); err != nil {
			return
		}
		opts := NormalizeOptions{DisableIPv6: noV6, Types: map[string]bool{"ban": true, "captcha": true}}
		b, rej, stats := NormalizeWithStats(&resp, opts, testNow)
		if got, in := len(b.New)+len(b.Deleted)+len(rej)+stats.SkippedSimulated+stats.SkippedType+stats.SkippedFamily,
			len(resp.New)+len(resp.Deleted); got != in {
			t.Fatalf("accounted for %d decisions, got %d", got, in)
		}
		for _, d := range b.New {
			checkKey(t, d.Key())
			if !d.Until.After(testNow) {
				t.Fatalf("kept %+v with Until not after now", d)
			}
			if d.Origin == "" {
				t.Fatalf("kept %+v without origin", d)
			}
			if noV6 && d.Prefix.Addr().Is6() {
				t.Fatalf("kept v6 %+v with IPv6 disabled", d)
			}
		}
		for _, k := range b.Deleted {
			checkKey(t, k)
		}
	})
}

func checkKey(t *testing.T, k journal.Key) {
	t.Helper()
	p := k.Prefix
	switch {
	case !p.IsValid():
		t.Fatalf("invalid prefix in %+v", k)
	case p != p.Masked():
		t.Fatalf("prefix %s not masked", p)
	case p.Bits() == 0:
		t.Fatalf("zero-length prefix %s", p)
	case p.Addr().Is4In6():
		t.Fatalf("v4-mapped prefix %s", p)
	case p.Addr().Zone() != "":
		t.Fatalf("zoned prefix %s", p)
	case k.Scope != journal.ScopeIP && k.Scope != journal.ScopeRange:
		t.Fatalf("scope %q", k.Scope)
	case k.Scope == journal.ScopeIP && p.Bits() != p.Addr().BitLen():
		t.Fatalf("ip scope with short prefix %s", p)
	case k.Type != "ban" && k.Type != "captcha":
		t.Fatalf("type %q passed the filter", k.Type)
	}
}
