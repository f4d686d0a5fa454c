package lapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
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
		`{"new":[{"duration":"1h","origin":"o","scenario":"s","scope":"Range","type":"BAN","value":"0.0.0.0/1"},
		  {"duration":"1h","origin":"o","scenario":"s","scope":"ip","type":"Ban","value":"::ffff:127.0.0.1"},
		  {"duration":"1h","origin":"o","scenario":"s","scope":"range","type":"ban","value":"::/100"}]}`,
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
		b = flat(b)
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
			for _, q := range loopback {
				if d.Prefix.Overlaps(q) {
					t.Fatalf("kept %+v, which covers loopback %s", d, q)
				}
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

// FuzzParseFast checks the hand parser against encoding/json: whenever it
// accepts a valid JSON value, json.Unmarshal into the wire struct must
// succeed with the same fields (and the same null-ness).
func FuzzParseFast(f *testing.F) {
	seeds := []string{
		`{"duration":"3h59m56.976421313s","id":1,"origin":"cscli","scenario":"manual","scope":"Ip","type":"ban","value":"192.0.2.10"}`,
		`null`, `{}`, ` { "value" : null , "value":"x" } `, `{"value":"x","value":null}`, `{"simulated":true,"simulated":null}`,
		`{"id":-123456789012345678,"uuid":"a\"b\\","until":null}`, `{"id":1.5}`, `{"id":1e3}`,
		`{"origin":"a","id":1,"origin":"b"}`, `{ "scope" : "Ip" , "type":null ,"value":"x","type":"ban" }`,
		`{"Value":"x"}`, `{"value":"caf\u00e9"}`, `{"value":5}`, `[1]`, `"x"`, `{"scope":"Ip","other":{}}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		e := element{n: newNormalizer(NormalizeOptions{})}
		// twice: the second parse replays the run of shared members the
		// first one kept
		for range 2 {
			if !e.parseFast(data) {
				return
			}
			var w wireDecision
			p := &w
			if err := json.Unmarshal(data, &p); err != nil {
				t.Fatalf("parseFast accepted %q, encoding/json: %v", data, err)
			}
			if e.null != (p == nil) {
				t.Fatalf("%q: parseFast null=%v, encoding/json null=%v", data, e.null, p == nil)
			}
			if !e.null && !reflect.DeepEqual(e.w.fields.texts(), w.fields) {
				t.Fatalf("%q:\nparseFast %+v\njson      %+v", data, e.w.fields, w.fields)
			}
		}
	})
}

// FuzzDecodeStream checks the whole streaming decoder, with the check that
// both lists are there, against the reference (refDecode): same error-ness,
// and on success the same batch, rejections and counters. A body the
// reference decodes without both lists must fail as ErrMalformedResponse.
func FuzzDecodeStream(f *testing.F) {
	f.Add([]byte(streamFixture))
	f.Add([]byte(`{"deleted":null,"new":null}`))
	f.Add([]byte(`{"new":[{"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.1"},null],"x":[{}],"deleted":[]}`))
	f.Add([]byte(`{"new":[{"id":"forty","duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.1"},1,"x",[],{"value":5}],"deleted":null}`))
	f.Add([]byte(`{"new":[{"duration":"1h","origin":"o","scenario":"x","scope":"Range","type":"BAN","value":"127.0.0.0/7"}],"deleted":[{"scope":"ip","type":"ban","value":"::1"}]}`))
	f.Add([]byte(`{"new":[],"new":null,"deleted":[null],"NEW":[{}]}`))
	f.Add([]byte(`{"new":[{"origin":"o","scenario":"x","scope":"Ip","type":"ban","duration":"1h","value":"192.0.2.1"},{"origin":"o","scenario":"x","scope":"Ip","type":"ban","duration":"1h","value":"192.0.2.2"},{"origin":"o","scenario":"x","scope":"Ip","type":"bad","duration":"1h","value":"192.0.2.3"},{"origin":"o","scenario":"x","scope":"Ip","type":"ban"}],"deleted":null}`))
	for _, s := range []string{``, ` `, `null`, `{}`, `{"new":null}`, `{"deleted":null}`, `[]`, `"x"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want := refDecode(data, NormalizeOptions{}, testNow)
		n := newNormalizer(NormalizeOptions{})
		n.now = testNow
		gerr := n.decodeStream(bytes.NewReader(data))
		if want.err == nil && !want.complete {
			if !errors.Is(gerr, ErrMalformedResponse) {
				t.Fatalf("%q: no new/deleted list, stream err %v", data, gerr)
			}
			return
		}
		if (want.err != nil) != (gerr != nil) {
			t.Fatalf("%q: reference err %v, stream err %v", data, want.err, gerr)
		}
		if want.err != nil {
			return
		}
		got, gotRej, gotStats := n.result()
		got = flat(got)
		if !reflect.DeepEqual(got, want.batch) || !reflect.DeepEqual(gotRej, want.rej) || gotStats != want.stats {
			t.Fatalf("%q:\nstream    %+v %+v %+v\nreference %+v %+v %+v", data, got, gotRej, gotStats, want.batch, want.rej, want.stats)
		}
	})
}
