package lapi

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

type decoded struct {
	batch    journal.Batch
	rej      []Rejection
	stats    Stats
	complete bool // both lists were in the object
	err      error
}

// refList is one list as the reference decoder sees it: whether its key was
// there (even with null), and its elements undecoded.
type refList struct {
	present bool
	elems   []json.RawMessage
}

func (l *refList) UnmarshalJSON(b []byte) error {
	*l = refList{present: true}
	if string(b) == "null" {
		return nil
	}
	return json.Unmarshal(b, &l.elems)
}

// refDecode is the reference for the streaming decoder, built on
// encoding/json and LAPI's model: the body decoded as Pull decodes it
// (case-folded keys, last repeated key wins, nothing after the first value
// read), except that each list element is decoded into *models.Decision on
// its own and one that fails is a ReasonMalformed rejection, carrying the
// fields encoding/json decoded before the failure.
func refDecode(data []byte, opts NormalizeOptions, now time.Time) decoded {
	var resp struct {
		New     refList `json:"new"`
		Deleted refList `json:"deleted"`
	}
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&resp); err != nil {
		return decoded{err: err}
	}
	n := newNormalizer(opts)
	n.now = now
	for i, l := range []refList{resp.New, resp.Deleted} {
		n.startList(i == 1, len(l.elems))
		for _, raw := range l.elems {
			var d *models.Decision
			if err := json.Unmarshal(raw, &d); err != nil {
				var w wireDecision
				_ = json.Unmarshal(raw, &w) // the fields before the failure
				n.reject(&w.fields, ReasonMalformed)
				continue
			}
			n.addModel(d)
		}
	}
	b, rej, stats := n.result()
	b = flat(b)
	return decoded{batch: b, rej: rej, stats: stats, complete: resp.New.present && resp.Deleted.present}
}

func streamDecode(r io.Reader) decoded {
	n := newNormalizer(NormalizeOptions{})
	n.now = testNow
	complete, err := n.decodeObject(r)
	if err != nil {
		return decoded{err: err}
	}
	b, rej, stats := n.result()
	b = flat(b)
	return decoded{batch: b, rej: rej, stats: stats, complete: complete}
}

// checkStream compares decodeObject with the reference on data, read
// whole, one byte at a time (every value straddles refills) and with the
// last bytes arriving together with io.EOF.
func checkStream(t *testing.T, data []byte) {
	t.Helper()
	want := refDecode(data, NormalizeOptions{}, testNow)
	readers := map[string]io.Reader{
		"whole":    bytes.NewReader(data),
		"one byte": iotest.OneByteReader(bytes.NewReader(data)),
		"data+EOF": iotest.DataErrReader(iotest.HalfReader(bytes.NewReader(data))),
	}
	for name, r := range readers {
		got := streamDecode(r)
		if (want.err != nil) != (got.err != nil) {
			t.Fatalf("%s: %.200q: reference err %v, stream err %v", name, data, want.err, got.err)
		}
		if want.err != nil {
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: %.200q:\nstream    %+v\nreference %+v", name, data, got, want)
		}
	}
}

const oneDecision = `{"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.1"}`

// scanSeeds are the scanner's edge cases: nested unknown values, escapes,
// odd numbers, whitespace, and their invalid neighbours.
var scanSeeds = []string{
	streamFixture,
	`{"new":[{"x":{"a":[1,{"b":[[],{}]},"]}"],"c":null},"value":"192.0.2.1","scope":"Ip","type":"ban","duration":"1h","origin":"o","scenario":"s"}]}`,
	`{"new":[{"x":[1,2,],"value":"192.0.2.1"}]}`,
	`{"new":[{"x":{"a":1,},"value":"192.0.2.1"}]}`,
	`{"new":[{"x":{"a" 1},"value":"192.0.2.1"}]}`,
	`{"new":[{"uuid":"a\"b\\c\/d\b\f\n\r\t","until":"\u00e9\uD83D\uDE00","value":"192.0.2.1","scope":"Ip","type":"ban"}]}`,
	`{"new":[{"uuid":"\x"}]}`, `{"new":[{"uuid":"\u12G4"}]}`, `{"new":[{"uuid":"\u12"}]}`,
	`{"new":[{"value":"192.0.2.1\""}]}`, `{"new":[{"value":"a` + "\x01" + `"}]}`, `{"new":[{"x":"a` + "\x1f" + `"}]}`,
	`{"new":[{"value":"\u0031\u0039\u0032.0.2.1","scope":"\u0049p","type":"ban","duration":"1h","origin":"o","scenario":"s"}]}`,
	`{"new":[{"value":"192.0.2.1","scope":"Ip","type":"ban","duration":"1h","origin":"` + "\xff\xfe" + `","scenario":"s"}]}`,
	`{"new":[{"` + "\xff" + `":1,"value":"192.0.2.1"}]}`, `{"ne\u0077":[` + oneDecision + `]}`, `{"n` + "\xc3\xa9" + `w":[1]}`,
	`{"new":[{"id":-0,"x":1.5e+10,"y":-0.0E-0,"z":0,"w":123456789012345678901234567890,"v":1E5}]}`,
	`{"new":[{"id":9223372036854775807},{"id":-9223372036854775808}]}`,
	`{"new":[{"id":9223372036854775808}]}`, `{"new":[{"id":123456789012345678}]}`, `{"new":[{"id":1234567890123456789}]}`,
	`{"new":[{"id":1.0}]}`, `{"new":[{"id":1e2}]}`, `{"new":[{"id":01}]}`, `{"new":[{"id":-}]}`, `{"new":[{"id":-01}]}`,
	`{"new":[{"x":1.}]}`, `{"new":[{"x":.5}]}`, `{"new":[{"x":+1}]}`, `{"new":[{"x":1e}]}`, `{"new":[{"x":1e+}]}`, `{"new":[{"x":--1}]}`,
	`{"new":[{"x":tru}]}`, `{"new":[{"x":truex}]}`, `{"new":[{"x":nul}]}`, `{"new":[{"simulated":tRue}]}`, `{"new":[nulL]}`,
	"\t\r\n {\t\"new\"\r:\n[\t" + oneDecision + " \n,\r null\t] , \"deleted\" : null }\n",
	"{\"new\":[" + oneDecision + "]\f}", "{\"new\":\v[]}", "\xef\xbb\xbf{}",
	`{"new":[{"Value":"192.0.2.1","SCOPE":"Ip","tYpe":"ban","Duration":"1h","origin":"o","scenario":"s","ID":1}]}`,
	`{"new":[{"ſcope":"Ip","value":"192.0.2.1","type":"ban"}]}`,
	`{"new":[{"value":"192.0.2.1","value":"192.0.2.2","scope":"Ip","type":"ban","scope":null,"simulated":false,"simulated":true}]}`,
	`{"new":[{}],"deleted":[{},null]}`, `{"new":[[]]}`, `{"new":[1]}`, `{"new":["x"]}`, `{"new":[true]}`, `{"new":[{"value":5}]}`,
	`{"new":[{"simulated":"yes"}]}`, `{"new":[{"uuid":1}]}`, `{"new":[{"until":{}}]}`, `{"new":[{"until":null,"uuid":null}]}`,
	`{"new":[` + oneDecision + `,]}`, `{"new":[,` + oneDecision + `]}`, `{"new":[` + oneDecision + ` ` + oneDecision + `]}`,
	`{"new":[` + oneDecision + `],}`, `{,}`, `{"new"}`, `{"new":}`, `{"new" "x"}`, `{"new":[]]`, `{"new":[}`, `{]`,
	`{"x":[1,2,{"y":"}"}],"new":[` + oneDecision + `],"z":"]"}`, `{"x":01}`, `{"x":"\q"}`,
	`nullx`, `null  garbage`, `nul`, `n`, `[]`, `"new"`, `12`, `-`, `true`, `x`, `  `, "\x00",
	`{"new":[` + oneDecision + `]}garbage`, `{"new":null}{"new":[1]}`,
	`{"new":{}}`, `{"new":"x"}`, `{"new":3}`, `{"new":true}`, `{"new":nul}`, `{"deleted":[` + oneDecision + `]}`,
}

// FuzzScanStream checks decodeObject against the reference for bodies read
// in pieces of every size, so that values straddle window refills.
func FuzzScanStream(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkStream(t, data)
	})
}

// TestDecodeStreamLarge covers what the fuzzer cannot reach: the nesting
// limit (counted from the top-level object, as the model decoder counts it),
// values larger than the window, and many elements across refills.
func TestDecodeStreamLarge(t *testing.T) {
	nest := func(d int) string { return strings.Repeat("[", d) + strings.Repeat("]", d) }
	big := strings.Repeat("a", 3*minWindow)
	bodies := map[string]string{
		// the response object is depth 1, a list 2, an element 3
		"top-level value at the limit":   `{"x":` + nest(maxDepth-1) + `,"new":[` + oneDecision + `]}`,
		"top-level value over the limit": `{"x":` + nest(maxDepth) + `,"new":[` + oneDecision + `]}`,
		"element value at the limit":     `{"new":[{"x":` + nest(maxDepth-3) + `,"value":"192.0.2.1"}]}`,
		"element value over the limit":   `{"new":[{"x":` + nest(maxDepth-2) + `,"value":"192.0.2.1"}]}`,
		"slow element at the limit":      `{"new":[{"Value":"192.0.2.1","x":` + nest(maxDepth-3) + `}]}`,
		"slow element over the limit":    `{"new":[{"Value":"192.0.2.1","x":` + nest(maxDepth-2) + `}]}`,
		"list element array at limit":    `{"new":[` + nest(maxDepth-2) + `]}`,
		"big unknown in element":         `{"new":[{"x":"` + big + `",` + oneDecision[1:] + `]}`,
		"big value in element":           `{"new":[{"scope":"Ip","type":"ban","value":"` + big + `"}]}`,
		"big escaped value in element":   `{"new":[{"scope":"Ip","type":"ban","value":"\u0041` + big + `"}]}`,
		"big top-level unknown":          `{"x":["` + big + `",` + strings.Repeat(`1.5e3,`, minWindow) + `0],"new":[` + oneDecision + `]}`,
		"big truncated":                  `{"x":["` + big,
		"many decisions":                 benchBody(3000),
		"many decisions, one slow":       strings.Replace(benchBody(3000), `"origin"`, `"Origin"`, 1),
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			checkStream(t, []byte(body))
		})
	}
	// the limits really are where the model decoder puts them
	for name, wantErr := range map[string]bool{
		"top-level value at the limit": false, "top-level value over the limit": true,
		"element value at the limit": false, "element value over the limit": true,
		"slow element over the limit": true,
	} {
		var resp models.DecisionsStreamResponse
		if err := json.Unmarshal([]byte(bodies[name]), &resp); (err != nil) != wantErr {
			t.Errorf("%s: model err %v, want error %v", name, err, wantErr)
		}
	}
}

// TestDecodeStreamTruncated: every proper prefix of a body is an error,
// never a smaller batch, however the bytes arrive.
func TestDecodeStreamTruncated(t *testing.T) {
	for _, body := range []string{streamFixture, benchBody(20), `{"x":{"a":[1,"b",null]},"new":[` + oneDecision + `],"deleted":null}`} {
		if r := streamDecode(strings.NewReader(body)); r.err != nil || r.batch.Len() == 0 {
			t.Fatalf("whole body: %+v", r)
		}
		for k := 1; k < len(body); k++ {
			for _, r := range []io.Reader{strings.NewReader(body[:k]), iotest.OneByteReader(strings.NewReader(body[:k]))} {
				if got := streamDecode(r); got.err == nil {
					t.Fatalf("prefix %q decoded to %+v without error", body[:k], got)
				}
			}
		}
	}
}

// TestPullBatchTruncatedBody serves every proper prefix of a small body as a
// complete HTTP response: PullBatch must fail without a partial result.
func TestPullBatchTruncatedBody(t *testing.T) {
	body := `{"deleted":[` + strings.Replace(oneDecision, "192.0.2.1", "192.0.2.2", 1) + `],"x":[{"y":"\"]"}],"new":[` + oneDecision + `,null]}`
	fake := &bodyLAPI{}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	c, err := NewClient(ClientConfig{APIURL: srv.URL, APIKey: testKey}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return testNow }
	for k := 1; k <= len(body); k++ {
		fake.set(body[:k])
		b, rej, stats, err := c.PullBatch(t.Context(), true, NormalizeOptions{}, now)
		b = flat(b)
		if k == len(body) {
			if err != nil || len(b.New) != 1 || len(b.Deleted) != 1 || len(rej) != 1 {
				t.Fatalf("whole body: %+v %+v %v", b, rej, err)
			}
			continue
		}
		if err == nil || b.Len() != 0 || b.Full || rej != nil || stats != (Stats{}) {
			t.Fatalf("prefix %q: %+v %+v %+v %v", body[:k], b, rej, stats, err)
		}
	}
}

// TestPlainStringEveryByte: plainString's word-at-a-time scan stops where a
// byte-at-a-time scan does, for every byte at every offset in a word and
// whatever follows it.
func TestPlainStringEveryByte(t *testing.T) {
	ref := func(b []byte) (int, scanStatus) {
		for j := 1; j < len(b); j++ {
			switch c := b[j]; {
			case c == '"':
				return j + 1, scanOK
			case c == '\\' || c < 0x20 || c >= 0x80:
				return j, scanSlow
			}
		}
		return len(b), scanMore
	}
	for off := range 18 {
		for c := range 256 {
			for _, tail := range []string{"", `"`, "\x00\xff\\", "abcdefghij\"", "\x1f\x20\x21\x7f\x80"} {
				b := []byte(`"` + strings.Repeat("a", off) + string(rune(0)) + tail)
				b[1+off] = byte(c)
				_, j, st := plainString(b, 0)
				wj, wst := ref(b)
				if j != wj || st != wst {
					t.Fatalf("%q: plainString %d %v, want %d %v", b, j, st, wj, wst)
				}
			}
		}
	}
}
