package lapi

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func sp(s string) *string { return &s }

// dec builds a decision; "-" for a field means null.
func dec(scope, value, typ, dur string) *models.Decision {
	opt := func(s string) *string {
		if s == "-" {
			return nil
		}
		return sp(s)
	}
	return &models.Decision{
		Scope: opt(scope), Value: opt(value), Type: opt(typ), Duration: opt(dur),
		Origin: sp("crowdsec"), Scenario: sp("crowdsecurity/ssh-bf"),
	}
}

func TestNormalizeNew(t *testing.T) {
	simTrue := true
	tests := []struct {
		name       string
		d          *models.Decision
		opts       NormalizeOptions
		wantPrefix string // "" when not kept
		wantUntil  time.Duration
		wantReason string
		wantStats  Stats
	}{
		{name: "ipv4", d: dec("Ip", "192.0.2.10", "ban", "4h"), wantPrefix: "192.0.2.10/32", wantUntil: 4 * time.Hour},
		{name: "scope lower case", d: dec("ip", "192.0.2.10", "ban", "1s"), wantPrefix: "192.0.2.10/32", wantUntil: time.Second},
		{name: "scope upper case", d: dec("IP", "192.0.2.10", "ban", "1s"), wantPrefix: "192.0.2.10/32", wantUntil: time.Second},
		{name: "fractional duration", d: dec("Ip", "192.0.2.10", "ban", "3h59m56.976421313s"),
			wantPrefix: "192.0.2.10/32", wantUntil: 3*time.Hour + 59*time.Minute + 56976421313*time.Nanosecond},
		{name: "ipv6", d: dec("Ip", "2001:db8::10", "ban", "1h"), wantPrefix: "2001:db8::10/128", wantUntil: time.Hour},
		{name: "ipv6 uncompressed", d: dec("Ip", "2001:0db8:0000::0010", "ban", "1h"), wantPrefix: "2001:db8::10/128", wantUntil: time.Hour},
		{name: "v4-mapped ipv6 unmapped", d: dec("Ip", "::ffff:192.0.2.10", "ban", "1h"), wantPrefix: "192.0.2.10/32", wantUntil: time.Hour},
		{name: "ip as full-length prefix", d: dec("Ip", "192.0.2.10/32", "ban", "1h"), wantPrefix: "192.0.2.10/32", wantUntil: time.Hour},
		{name: "ip as short prefix", d: dec("Ip", "192.0.2.0/24", "ban", "1h"), wantReason: ReasonBadIP},
		{name: "ip with zone", d: dec("Ip", "fe80::1%eth0", "ban", "1h"), wantReason: ReasonBadIP},
		{name: "ip garbage", d: dec("Ip", "not-an-ip", "ban", "1h"), wantReason: ReasonBadIP},
		{name: "ip empty", d: dec("Ip", "", "ban", "1h"), wantReason: ReasonBadIP},
		{name: "range", d: dec("Range", "198.51.100.0/24", "ban", "1h"), wantPrefix: "198.51.100.0/24", wantUntil: time.Hour},
		{name: "range masked", d: dec("Range", "198.51.100.77/24", "ban", "1h"), wantPrefix: "198.51.100.0/24", wantUntil: time.Hour},
		{name: "range v6 masked", d: dec("range", "2001:db8:1:2::5/48", "ban", "1h"), wantPrefix: "2001:db8:1::/48", wantUntil: time.Hour},
		{name: "range v4-mapped", d: dec("Range", "::ffff:198.18.0.0/111", "ban", "1h"), wantPrefix: "198.18.0.0/15", wantUntil: time.Hour},
		{name: "range zero length v4", d: dec("Range", "0.0.0.0/0", "ban", "1h"), wantReason: ReasonTooWide},
		{name: "range zero length v6", d: dec("Range", "::/0", "ban", "1h"), wantReason: ReasonTooWide},
		{name: "range mapped zero length", d: dec("Range", "::ffff:0.0.0.0/96", "ban", "1h"), wantReason: ReasonTooWide},
		{name: "range without length", d: dec("Range", "198.51.100.1", "ban", "1h"), wantReason: ReasonBadRange},
		{name: "range garbage", d: dec("Range", "198.51.100.0/33", "ban", "1h"), wantReason: ReasonBadRange},
		{name: "unknown scope", d: dec("Country", "FR", "ban", "1h"), wantReason: ReasonBadScope},
		{name: "bad duration", d: dec("Ip", "192.0.2.10", "ban", "4 hours"), wantReason: ReasonBadDuration},
		{name: "negative duration", d: dec("Ip", "192.0.2.10", "ban", "-1.5s"), wantReason: ReasonExpired},
		{name: "zero duration", d: dec("Ip", "192.0.2.10", "ban", "0s"), wantReason: ReasonExpired},
		{name: "nil decision", d: nil, wantReason: ReasonNil},
		{name: "nil value", d: dec("Ip", "-", "ban", "1h"), wantReason: ReasonMissingValue},
		{name: "nil scope", d: dec("-", "192.0.2.10", "ban", "1h"), wantReason: ReasonMissingScope},
		{name: "nil type", d: dec("Ip", "192.0.2.10", "-", "1h"), wantReason: ReasonMissingType},
		{name: "nil duration", d: dec("Ip", "192.0.2.10", "ban", "-"), wantReason: ReasonMissingDur},
		{name: "nil origin", d: func() *models.Decision { d := dec("Ip", "192.0.2.10", "ban", "1h"); d.Origin = nil; return d }(), wantReason: ReasonMissingOrigin},
		{name: "empty origin", d: func() *models.Decision { d := dec("Ip", "192.0.2.10", "ban", "1h"); d.Origin = sp(""); return d }(), wantReason: ReasonMissingOrigin},
		{name: "nil scenario", d: func() *models.Decision { d := dec("Ip", "192.0.2.10", "ban", "1h"); d.Scenario = nil; return d }(), wantReason: ReasonMissingScen},
		{name: "captcha skipped by default", d: dec("Ip", "192.0.2.10", "captcha", "1h"), wantStats: Stats{SkippedType: 1}},
		{name: "captcha allowed", d: dec("Ip", "192.0.2.10", "captcha", "1h"), opts: NormalizeOptions{Types: map[string]bool{"captcha": true}},
			wantPrefix: "192.0.2.10/32", wantUntil: time.Hour},
		{name: "ban not in types", d: dec("Ip", "192.0.2.10", "ban", "1h"), opts: NormalizeOptions{Types: map[string]bool{"captcha": true}}, wantStats: Stats{SkippedType: 1}},
		{name: "simulation type", d: dec("Ip", "192.0.2.10", "simulation:ban", "1h"), wantStats: Stats{SkippedSimulated: 1}},
		{name: "simulated flag", d: func() *models.Decision { d := dec("Ip", "192.0.2.10", "ban", "1h"); d.Simulated = &simTrue; return d }(), wantStats: Stats{SkippedSimulated: 1}},
		{name: "ipv6 disabled", d: dec("Ip", "2001:db8::10", "ban", "1h"), opts: NormalizeOptions{DisableIPv6: true}, wantReason: ReasonIPv6Disabled},
		{name: "ipv6 disabled keeps v4", d: dec("Ip", "192.0.2.10", "ban", "1h"), opts: NormalizeOptions{DisableIPv6: true}, wantPrefix: "192.0.2.10/32", wantUntil: time.Hour},
		{name: "ipv4 disabled", d: dec("Range", "203.0.113.0/24", "ban", "1h"), opts: NormalizeOptions{DisableIPv4: true}, wantReason: ReasonIPv4Disabled},
		{name: "ipv4 disabled mapped", d: dec("Ip", "::ffff:203.0.113.5", "ban", "1h"), opts: NormalizeOptions{DisableIPv4: true}, wantReason: ReasonIPv4Disabled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := &models.DecisionsStreamResponse{New: models.GetDecisionsResponse{tc.d}}
			b, rej, stats := NormalizeWithStats(resp, tc.opts, testNow)
			b = flat(b)
			if len(b.Deleted) != 0 {
				t.Fatalf("deleted = %v, want none", b.Deleted)
			}
			if stats != tc.wantStats {
				t.Errorf("stats = %+v, want %+v", stats, tc.wantStats)
			}
			if tc.wantReason != "" {
				if len(rej) != 1 || rej[0].Reason != tc.wantReason || rej[0].Deleted {
					t.Fatalf("rejections = %+v, want one new with reason %q", rej, tc.wantReason)
				}
				if len(b.New) != 0 {
					t.Fatalf("kept %v although rejected", b.New)
				}
				return
			}
			if len(rej) != 0 {
				t.Fatalf("unexpected rejections %+v", rej)
			}
			if tc.wantPrefix == "" {
				if len(b.New) != 0 {
					t.Fatalf("kept %v, want it skipped", b.New)
				}
				return
			}
			if len(b.New) != 1 {
				t.Fatalf("new = %v, want one decision", b.New)
			}
			got := b.New[0]
			want := journal.Decision{
				Prefix: netip.MustParsePrefix(tc.wantPrefix), Until: testNow.Add(tc.wantUntil),
				Origin: "crowdsec", Scenario: "crowdsecurity/ssh-bf", Type: *tc.d.Type,
				Scope: strings.ToLower(*tc.d.Scope),
			}
			if got != want {
				t.Errorf("got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestNormalizeDeleted(t *testing.T) {
	tests := []struct {
		name       string
		d          *models.Decision
		opts       NormalizeOptions
		want       *journal.Key
		wantReason string
		wantStats  Stats
	}{
		{name: "negative duration ignored", d: dec("Ip", "192.0.2.10", "ban", "-3h59m0.5s"),
			want: &journal.Key{Scope: journal.ScopeIP, Prefix: netip.MustParsePrefix("192.0.2.10/32"), Type: "ban"}},
		{name: "nil duration, origin and scenario ignored", d: func() *models.Decision {
			d := dec("Ip", "2001:db8::10", "ban", "-")
			d.Origin, d.Scenario = nil, nil
			return d
		}(), want: &journal.Key{Scope: journal.ScopeIP, Prefix: netip.MustParsePrefix("2001:db8::10/128"), Type: "ban"}},
		{name: "garbage duration ignored", d: dec("Range", "198.51.100.9/24", "ban", "xyz"),
			want: &journal.Key{Scope: journal.ScopeRange, Prefix: netip.MustParsePrefix("198.51.100.0/24"), Type: "ban"}},
		{name: "bad value", d: dec("Ip", "300.1.1.1", "ban", "-1s"), wantReason: ReasonBadIP},
		{name: "nil value", d: dec("Ip", "-", "ban", "-1s"), wantReason: ReasonMissingValue},
		{name: "unknown scope", d: dec("AS", "64496", "ban", "-1s"), wantReason: ReasonBadScope},
		{name: "type filtered", d: dec("Ip", "192.0.2.10", "captcha", "-1s"), wantStats: Stats{SkippedType: 1}},
		{name: "simulation", d: dec("Ip", "192.0.2.10", "simulation:ban", "-1s"), wantStats: Stats{SkippedSimulated: 1}},
		{name: "disabled family skipped, not rejected", d: dec("Ip", "2001:db8::10", "ban", "-1s"),
			opts: NormalizeOptions{DisableIPv6: true}, wantStats: Stats{SkippedFamily: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := &models.DecisionsStreamResponse{Deleted: models.GetDecisionsResponse{tc.d}}
			b, rej, stats := NormalizeWithStats(resp, tc.opts, testNow)
			b = flat(b)
			if len(b.New) != 0 {
				t.Fatalf("new = %v, want none", b.New)
			}
			if stats != tc.wantStats {
				t.Errorf("stats = %+v, want %+v", stats, tc.wantStats)
			}
			switch {
			case tc.wantReason != "":
				if len(rej) != 1 || rej[0].Reason != tc.wantReason || !rej[0].Deleted || len(b.Deleted) != 0 {
					t.Fatalf("got deleted %v rejections %+v, want one deleted rejection %q", b.Deleted, rej, tc.wantReason)
				}
			case tc.want == nil:
				if len(b.Deleted) != 0 || len(rej) != 0 {
					t.Fatalf("got deleted %v rejections %+v, want it skipped", b.Deleted, rej)
				}
			default:
				if len(rej) != 0 || len(b.Deleted) != 1 || b.Deleted[0] != *tc.want {
					t.Fatalf("got deleted %v rejections %+v, want %+v", b.Deleted, rej, *tc.want)
				}
			}
		})
	}
}

// TestNormalizeBatch checks that bad decisions are rejected one by one, that
// the order of good ones is kept, and that null lists and a nil response
// are fine.
func TestNormalizeBatch(t *testing.T) {
	tests := []struct {
		name        string
		json        string
		wantNew     []string
		wantDeleted []string
		wantRej     []string
	}{
		{name: "null lists", json: `{"new":null,"deleted":null}`},
		{name: "empty object", json: `{}`},
		{name: "mixed", json: `{"new":[
			{"duration":"1h","origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.10"},
			{"duration":"1h","origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"bogus"},
			null,
			{"duration":"1h","origin":null,"scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.11"},
			{"duration":"2h","origin":"lists","scenario":"lists:x","scope":"Range","type":"ban","value":"203.0.113.0/24"}],
			"deleted":[
			{"duration":"-1s","origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"2001:db8::20"},
			{"duration":"-1s","scope":"Ip","type":"ban","value":null}]}`,
			wantNew:     []string{"192.0.2.10/32", "203.0.113.0/24"},
			wantDeleted: []string{"2001:db8::20/128"},
			wantRej:     []string{ReasonBadIP, ReasonNil, ReasonMissingOrigin, ReasonMissingValue}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var resp models.DecisionsStreamResponse
			if err := json.Unmarshal([]byte(tc.json), &resp); err != nil {
				t.Fatal(err)
			}
			b, rej := Normalize(&resp, NormalizeOptions{}, testNow)
			b = flat(b)
			if b.Full {
				t.Error("Normalize set Full; that is the caller's job")
			}
			var gotNew, gotDel, gotRej []string
			for _, d := range b.New {
				gotNew = append(gotNew, d.Prefix.String())
			}
			for _, k := range b.Deleted {
				gotDel = append(gotDel, k.Prefix.String())
			}
			for _, r := range rej {
				gotRej = append(gotRej, r.Reason)
			}
			if strings.Join(gotNew, ",") != strings.Join(tc.wantNew, ",") ||
				strings.Join(gotDel, ",") != strings.Join(tc.wantDeleted, ",") ||
				strings.Join(gotRej, ",") != strings.Join(tc.wantRej, ",") {
				t.Errorf("new %v deleted %v rejected %v\nwant new %v deleted %v rejected %v",
					gotNew, gotDel, gotRej, tc.wantNew, tc.wantDeleted, tc.wantRej)
			}
		})
	}
	if b, rej := Normalize(nil, NormalizeOptions{}, testNow); b.Len() != 0 || rej != nil {
		t.Errorf("nil response: got %+v %v", b, rej)
	}
}

// TestNormalizeRejectionFields checks that a rejection carries the raw
// fields for the log line.
func TestNormalizeRejectionFields(t *testing.T) {
	d := dec("Ip", "bogus", "ban", "1h")
	_, rej := Normalize(&models.DecisionsStreamResponse{New: models.GetDecisionsResponse{d}}, NormalizeOptions{}, testNow)
	want := Rejection{Value: "bogus", Scope: "Ip", Type: "ban", Origin: "crowdsec", Reason: ReasonBadIP}
	if len(rej) != 1 || rej[0] != want {
		t.Fatalf("got %+v, want %+v", rej, want)
	}
}

// TestNormalizeInterns checks that 1000 decisions decoded from JSON share one
// copy of their origin, scenario and type strings.
func TestNormalizeInterns(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`{"new":[`)
	for i := range 1000 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"duration":"1h","origin":"lists","scenario":"lists:firehol","scope":"Ip","type":"ban","value":"198.18.`)
		sb.WriteString(strings.Join([]string{itoa(i / 256), itoa(i % 256)}, "."))
		sb.WriteString(`"}`)
	}
	sb.WriteString(`]}`)
	var resp models.DecisionsStreamResponse
	if err := json.Unmarshal([]byte(sb.String()), &resp); err != nil {
		t.Fatal(err)
	}
	if unsafeStringData(*resp.New[0].Scenario) == unsafeStringData(*resp.New[1].Scenario) {
		t.Fatal("decoder already shares strings; the test cannot tell interning apart")
	}
	b, rej := Normalize(&resp, NormalizeOptions{}, testNow)
	b = flat(b)
	if len(rej) != 0 || len(b.New) != 1000 {
		t.Fatalf("kept %d, rejected %v", len(b.New), rej)
	}
	first := b.New[0]
	for i, d := range b.New {
		if unsafeStringData(d.Scenario) != unsafeStringData(first.Scenario) ||
			unsafeStringData(d.Origin) != unsafeStringData(first.Origin) ||
			unsafeStringData(d.Type) != unsafeStringData(first.Type) {
			t.Fatalf("decision %d does not share the interned strings", i)
		}
	}
}

// FuzzWindowParsers: what dottedQuad and durationFast accept, netip and
// time.ParseDuration accept with the same value.
func FuzzWindowParsers(f *testing.F) {
	for _, s := range []string{
		"1.2.3.4", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.", "1.2.3.4.5",
		"1..2.3", "1.2.3.4/32", "1.2.3.0004", "::ffff:1.2.3.4", "",
		"23h59m58.5s", "167h59m59.999999999s", "4m0.5s", "12s", "0s", "1h5s", "5m", "5ms", "1.5ms", "-1h0m0s",
		"1.s", ".5s", "1.1234567891s", "9999999h0m0s", "2562047h47m16.854775807s", "1h1h1s", "100s", "0.000000001s",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if a, ok := dottedQuad([]byte(s)); ok {
			if want, err := netip.ParseAddr(s); err != nil || a != want {
				t.Fatalf("dottedQuad(%q) = %v, netip: %v, %v", s, a, want, err)
			}
		}
		if d, ok := durationFast([]byte(s)); ok {
			if want, err := time.ParseDuration(s); err != nil || d != want {
				t.Fatalf("durationFast(%q) = %v, time: %v, %v", s, d, want, err)
			}
		}
	})
}

// TestWindowParsersTakeLAPIForms: the forms LAPI sends take the fast path.
func TestWindowParsersTakeLAPIForms(t *testing.T) {
	for _, s := range []string{"1.2.3.4", "198.51.100.255"} {
		if _, ok := dottedQuad([]byte(s)); !ok {
			t.Errorf("dottedQuad(%q) declined", s)
		}
	}
	for _, s := range []string{"167h59m59.999999999s", "23h59m58.5s", "4m0.5s", "12s", "0s"} {
		if _, ok := durationFast([]byte(s)); !ok {
			t.Errorf("durationFast(%q) declined", s)
		}
	}
}
