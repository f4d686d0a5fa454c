package lapi

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// bodyLAPI serves a settable body on /v1/decisions/stream with the fake
// LAPI's key check, and records each request's raw query and user agent.
type bodyLAPI struct {
	mu      sync.Mutex
	body    string
	queries []string
	agents  []string
}

func (f *bodyLAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.queries = append(f.queries, r.URL.RawQuery)
	f.agents = append(f.agents, r.UserAgent())
	body := f.body
	f.mu.Unlock()
	if r.URL.Path != "/v1/decisions/stream" || r.Header.Get("X-Api-Key") != testKey {
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"message":"access forbidden"}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, body)
}

func (f *bodyLAPI) set(body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.body = body
}

// streamFixture mixes everything Normalize distinguishes: families, scopes,
// bad values, missing vs null vs empty fields, simulated and filtered types,
// repeated keys in an element, escapes, invalid UTF-8, unknown keys, null
// elements, and deleted before new as LAPI sends them.
const streamFixture = `{"deleted":[
 {"duration":"-1s","id":1,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.30"},
 {"duration":"-1s","origin":"cscli","scenario":"s","scope":"Range","type":"ban","value":"198.51.100.0/24"},
 {"duration":"-1s","scope":"ip","type":"ban","value":"2001:db8::30"},
 {"scope":"Ip","type":"ban","value":"not-an-ip"},
 null,
 {"scope":"Ip","type":"captcha","value":"192.0.2.31"},
 {"scope":"Ip","type":"simulation:ban","value":"192.0.2.32"},
 {"value":"192.0.2.33","type":"ban"}
],
"unknown":{"a":[1,2,{"b":null}],"new":[{"value":"192.0.2.99"}]},
"until":17,
"new":[
 {"duration":"3h59m56.976421313s","id":2,"origin":"cscli","scenario":"manual","scope":"Ip","type":"ban","value":"192.0.2.10","uuid":"u-1","until":"2030-01-01T00:00:00Z"},
 {"duration":"1h","origin":"lists","scenario":"lists:firehol","scope":"Range","type":"ban","value":"203.0.113.7/24"},
 {"duration":"1h","origin":"crowdsec","scenario":"crowdsecurity/ssh-bf","scope":"Ip","type":"ban","value":"2001:db8::10"},
 {"duration":"1h","origin":"crowdsec","scenario":"x","scope":"Range","type":"ban","value":"2001:db8::/32"},
 {"duration":"1h","origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"::ffff:198.51.100.9"},
 {"duration":"1h","origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"198.51.100.10/32"},
 {"duration":"1h","origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"198.51.100.0/24"},
 {"duration":"1h","origin":"crowdsec","scenario":"x","scope":"Range","type":"ban","value":"0.0.0.0/0"},
 {"duration":"1h","origin":"crowdsec","scenario":"x","scope":"Range","type":"ban","value":"300.1.2.3/8"},
 {"duration":"1h","origin":"crowdsec","scenario":"x","scope":"Country","type":"ban","value":"FR"},
 {"duration":"soon","origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.11"},
 {"duration":"-5s","origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.12"},
 {"origin":"crowdsec","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.13"},
 {"duration":"1h","origin":"crowdsec","scope":"Ip","type":"ban","value":"192.0.2.14"},
 {"duration":"1h","origin":"","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.15"},
 {"duration":"1h","origin":null,"scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.16"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":""},
 {"duration":"1h","origin":"o","scenario":"x","scope":null,"type":"ban","value":"192.0.2.17"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"","type":"ban","value":"192.0.2.17"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","value":"192.0.2.18"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"","value":"192.0.2.18"},
 {"duration":"1h","origin":"o","scenario":"","scope":"Ip","type":"ban","value":"192.0.2.19"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.20","simulated":true},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.21","simulated":false},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.22","simulated":true,"simulated":null},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.23","value":null},
 {"Duration":"1h","ORIGIN":"o","Scenario":"x","scope":"IP","type":"ban","value":"192.0.2.24"},
 {"duration":"1h","origin":"\u006fx","scenario":"caf\u00e9 \"q\"","scope":"Ip","type":"ban","value":"192.0.2.25"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"captcha","value":"192.0.2.26"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"fe80::1%eth0"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Range","type":"ban","value":"::ffff:198.51.100.0/120"},
 {"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"1.2.3.` + "\xff" + `"},
 {"duration":"2h","origin":"other","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.10","unknownfield":[1,{"x":null}]},
 null
]}`

// TestPullBatchMatchesPull proves the streaming path gives, for the same
// bodies, what the reference gives (refDecode: encoding/json and the model,
// each element on its own), errors included, and exactly what
// Pull+NormalizeWithStats gives whenever every element decodes. It also
// proves the departures from Pull: an answer without both lists is
// ErrMalformedResponse, and an element that does not decode is rejected
// alone.
func TestPullBatchMatchesPull(t *testing.T) {
	fake := &bodyLAPI{}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	c, err := NewClient(ClientConfig{APIURL: srv.URL, APIKey: testKey}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	one := `{"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.1"}`
	two := strings.Replace(one, "192.0.2.1", "192.0.2.2", 1)
	const (
		ok        = ""
		malformed = "malformed" // ErrMalformedResponse
		failed    = "error"     // any other error
	)
	bodies := []struct {
		name, body string
		want       string
		// malformedElems is how many elements are rejected alone where
		// Pull fails the whole response.
		malformedElems int
	}{
		{name: "fixture", body: streamFixture},
		{name: "null lists", body: `{"deleted":null,"new":null}`},
		{name: "empty lists", body: `{"deleted":[],"new":[]}`},
		{name: "repeated key replaces", body: `{"new":[null,null],"deleted":[null],"new":[` + one + `],"deleted":null}`},
		{name: "repeated key null", body: `{"new":[` + one + `],"new":null,"deleted":null}`},
		{name: "key case folds", body: `{"NEW":[` + one + `],"Deleted":[` + two + `]}`},
		{name: "trailing garbage ignored", body: `{"new":[` + one + `],"deleted":null} ]]] not json`},
		{name: "empty body", body: ``, want: malformed},
		{name: "whitespace", body: " \n\t\r ", want: malformed},
		{name: "top-level null", body: `null`, want: malformed},
		{name: "empty object", body: ` {} `, want: malformed},
		{name: "no deleted key", body: `{"new":[` + one + `]}`, want: malformed},
		{name: "no new key", body: `{"deleted":null}`, want: malformed},
		{name: "top-level array", body: `[]`, want: malformed},
		{name: "top-level string", body: `"new"`, want: malformed},
		{name: "list is an object", body: `{"new":{},"deleted":null}`, want: failed},
		{name: "list is a number", body: `{"new":null,"deleted":3}`, want: failed},
		{name: "element is a number", body: `{"new":[1,` + one + `],"deleted":null}`, malformedElems: 1},
		{name: "element is a string", body: `{"new":["x",` + one + `],"deleted":null}`, malformedElems: 1},
		{name: "element is an array", body: `{"new":[[` + one + `],` + one + `],"deleted":null}`, malformedElems: 1},
		{name: "id not a number", body: `{"new":[{"id":"forty","value":"192.0.2.9"},` + one + `],"deleted":null}`, malformedElems: 1},
		{name: "value not a string", body: `{"new":[{"value":5},` + one + `],"deleted":null}`, malformedElems: 1},
		{name: "uuid not a string", body: `{"new":[{"uuid":{}},` + one + `],"deleted":null}`, malformedElems: 1},
		{name: "until not a string", body: `{"new":[{"until":true},` + one + `],"deleted":null}`, malformedElems: 1},
		{name: "simulated not a bool", body: `{"new":[{"simulated":"yes"},` + one + `],"deleted":null}`, malformedElems: 1},
		{name: "bad deleted element", body: `{"new":[` + one + `],"deleted":[{"id":1.5,"value":"192.0.2.3"},` + two + `]}`, malformedElems: 1},
		{name: "truncated in list", body: `{"new":[` + one, want: failed},
		{name: "truncated after list", body: `{"new":[` + one + `]`, want: failed},
		{name: "truncated in element", body: `{"new":[{"value":"192.0`, want: failed},
		{name: "truncated after key", body: `{"new"`, want: failed},
		{name: "syntax error", body: `{"new":[` + one + `,,],"deleted":null}`, want: failed},
	}
	options := map[string]NormalizeOptions{
		"defaults":  {},
		"no ipv6":   {DisableIPv6: true},
		"no ipv4":   {DisableIPv4: true},
		"ban+capt":  {Types: map[string]bool{"ban": true, "captcha": true}},
		"only capt": {Types: map[string]bool{"captcha": true}},
	}
	now := testNow
	for _, bc := range bodies {
		for oname, opts := range options {
			for _, startup := range []bool{true, false} {
				t.Run(bc.name+"/"+oname+"/startup="+map[bool]string{true: "1", false: "0"}[startup], func(t *testing.T) {
					fake.set(bc.body)
					got, gotRej, gotStats, err := c.PullBatch(t.Context(), startup, opts, func() time.Time { return now })
					got = flat(got)
					switch {
					case bc.want == ok && err != nil, bc.want != ok && err == nil,
						bc.want == malformed && !errors.Is(err, ErrMalformedResponse):
						t.Fatalf("PullBatch err = %v, want %q", err, bc.want)
					}
					ref := refDecode([]byte(bc.body), opts, now)
					if (ref.err != nil || !ref.complete) != (err != nil) {
						t.Fatalf("reference err %v complete %v, PullBatch err %v", ref.err, ref.complete, err)
					}
					if err != nil {
						if got.Len() != 0 || gotRej != nil || gotStats != (Stats{}) {
							t.Errorf("failed PullBatch returned a partial result: %+v %+v %+v", got, gotRej, gotStats)
						}
						return
					}
					ref.batch.Full = startup
					if !reflect.DeepEqual(got, ref.batch) || !reflect.DeepEqual(gotRej, ref.rej) || gotStats != ref.stats {
						t.Errorf("\nPullBatch %+v %+v %+v\nreference %+v %+v %+v", got, gotRej, gotStats, ref.batch, ref.rej, ref.stats)
					}
					malformedRej := 0
					for _, r := range gotRej {
						if r.Reason == ReasonMalformed {
							malformedRej++
						}
					}
					if malformedRej != bc.malformedElems {
						t.Errorf("%d malformed rejections, want %d: %+v", malformedRej, bc.malformedElems, gotRej)
					}
					resp, perr := c.Pull(t.Context(), startup)
					if (perr != nil) != (bc.malformedElems > 0) {
						t.Fatalf("Pull err = %v with %d undecodable elements", perr, bc.malformedElems)
					}
					if perr != nil {
						return
					}
					want, wantRej, wantStats := NormalizeWithStats(resp, opts, now)
					want = flat(want)
					want.Full = startup
					if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotRej, wantRej) || gotStats != wantStats {
						t.Errorf("\nPullBatch      %+v %+v %+v\nPull+Normalize %+v %+v %+v", got, gotRej, gotStats, want, wantRej, wantStats)
					}
				})
			}
		}
	}
	// The fixture must exercise what it claims to, or the equality above
	// proves little.
	fake.set(streamFixture)
	b, rej, stats, err := c.PullBatch(t.Context(), true, NormalizeOptions{DisableIPv6: true}, nil)
	b = flat(b)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]bool{}
	for _, r := range rej {
		reasons[r.Reason] = true
	}
	for _, r := range []string{ReasonNil, ReasonMissingValue, ReasonMissingScope, ReasonMissingType, ReasonMissingOrigin,
		ReasonMissingScen, ReasonMissingDur, ReasonBadScope, ReasonBadIP, ReasonBadRange, ReasonTooWide,
		ReasonBadDuration, ReasonExpired, ReasonIPv6Disabled} {
		if !reasons[r] {
			t.Errorf("fixture has no %q rejection", r)
		}
	}
	if stats.SkippedSimulated == 0 || stats.SkippedType == 0 || stats.SkippedFamily == 0 || len(b.Deleted) == 0 || len(b.New) < 8 {
		t.Errorf("fixture too thin: %d new, %d deleted, %+v", len(b.New), len(b.Deleted), stats)
	}
}

// TestPullBatchRequest checks the request matches GetStream's: the same raw
// query (filters, startup, the CAPI knobs) and user agent.
func TestPullBatchRequest(t *testing.T) {
	fake := &bodyLAPI{body: `{"deleted":null,"new":null}`}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	cfgs := map[string]ClientConfig{
		"no filters": {APIKey: testKey},
		"filters": {APIKey: testKey, Scopes: []string{"ip", "range"}, Origins: []string{"crowdsec", "lists"},
			ScenariosContaining: []string{"ssh", "http"}, ScenariosNotContaining: []string{"te st&x"}, UserAgent: "x/1"},
	}
	for name, cfg := range cfgs {
		for _, startup := range []bool{true, false} {
			cfg.APIURL = srv.URL + "/"
			c, err := NewClient(cfg, discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Pull(t.Context(), startup); err != nil {
				t.Fatal(err)
			}
			if _, _, _, err := c.PullBatch(t.Context(), startup, NormalizeOptions{}, nil); err != nil {
				t.Fatal(err)
			}
			fake.mu.Lock()
			q, a := fake.queries[len(fake.queries)-2:], fake.agents[len(fake.agents)-2:]
			fake.mu.Unlock()
			if q[0] != q[1] || a[0] != a[1] {
				t.Errorf("%s startup=%v: Pull sent %q %q, PullBatch sent %q %q", name, startup, q[0], a[0], q[1], a[1])
			}
			if c.Requests() != 2 || c.Failures() != 0 {
				t.Errorf("requests %d failures %d, want 2 and 0", c.Requests(), c.Failures())
			}
		}
	}
}

// TestPullBatchErrors: HTTP errors come back as Pull reports them, a body
// cut by the transport fails the pull, and failures are counted like Pull's.
func TestPullBatchErrors(t *testing.T) {
	one := `{"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.1"}`
	mux := http.NewServeMux()
	mux.Handle("/v1/decisions/stream", &bodyLAPI{body: `{"new":[` + one + `]}`})
	mux.HandleFunc("/short/v1/decisions/stream", func(w http.ResponseWriter, _ *http.Request) {
		// promises more than it sends, then the connection closes
		body := `{"new":[` + one + `,` + one + `]}`
		w.Header().Set("Content-Length", itoa(len(body)+100))
		_, _ = io.WriteString(w, body[:len(body)/2])
	})
	mux.HandleFunc("/cut/v1/decisions/stream", func(w http.ResponseWriter, _ *http.Request) {
		// a chunked body whose connection dies before the last chunk
		_, _ = io.WriteString(w, `{"new":[`+one+`,`)
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	})
	mux.HandleFunc("/boom/v1/decisions/stream", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, `{"message":"boom"}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	tests := []struct {
		name, path, key string
		wantErr         string
	}{
		{name: "403 wrong key", path: "/", key: "wrong", wantErr: "access forbidden"},
		{name: "500", path: "/boom/", key: testKey, wantErr: "boom"},
		{name: "short body", path: "/short/", key: testKey, wantErr: "unexpected EOF"},
		{name: "connection cut", path: "/cut/", key: testKey, wantErr: "unexpected EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(ClientConfig{APIURL: srv.URL + tc.path, APIKey: tc.key}, discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			_, perr := c.Pull(t.Context(), true)
			b, rej, stats, err := c.PullBatch(t.Context(), true, NormalizeOptions{}, nil)
			b = flat(b)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "pull decisions stream (startup=true): ") {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if perr == nil {
				t.Fatalf("Pull succeeded where PullBatch failed with %v", err)
			}
			// the status error itself, not a decode error, and a refused
			// key told apart from LAPI being down
			switch tc.name {
			case "403 wrong key":
				if !errors.Is(err, ErrUnauthorized) || !strings.HasSuffix(err.Error(), strings.TrimPrefix(perr.Error(), "pull decisions stream (startup=true): ")) {
					t.Errorf("PullBatch err %q, want ErrUnauthorized wrapping Pull's %q", err, perr)
				}
			case "500":
				if err.Error() != perr.Error() {
					t.Errorf("PullBatch err %q, Pull err %q", err, perr)
				}
			}
			if tc.name != "403 wrong key" && errors.Is(err, ErrUnauthorized) {
				t.Errorf("%v classified as ErrUnauthorized", err)
			}
			if b.Len() != 0 || b.Full || rej != nil || stats != (Stats{}) {
				t.Errorf("partial result on error: %+v %+v %+v", b, rej, stats)
			}
			if c.Requests() != 2 || c.Failures() != 2 {
				t.Errorf("requests %d failures %d, want 2 and 2", c.Requests(), c.Failures())
			}
		})
	}
}

// TestPullBatchNoLeak stops the pull mid-body two ways (our context ends;
// the decoder fails while LAPI keeps the body open) and checks that
// PullBatch returns an error and leaves no goroutine of its own behind.
func TestPullBatchNoLeak(t *testing.T) {
	one := `{"duration":"1h","origin":"o","scenario":"x","scope":"Ip","type":"ban","value":"192.0.2.1"}`
	sent := make(chan struct{}, 1)
	stall := func(prefix string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, prefix)
			w.(http.Flusher).Flush()
			sent <- struct{}{}
			<-r.Context().Done() // the body never ends on its own
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/stall/v1/decisions/stream", stall(`{"new":[`+one+`,`))
	mux.Handle("/bad/v1/decisions/stream", stall(`{"new":[`+one+`,}`))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	tests := []struct {
		name, path string
		cancel     bool
		wantFails  uint64
		wantErr    error
	}{
		{name: "context cancelled mid-body", path: "/stall/", cancel: true, wantFails: 0, wantErr: context.Canceled},
		{name: "decoder fails, body still open", path: "/bad/", wantFails: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(ClientConfig{APIURL: srv.URL + tc.path, APIKey: testKey}, discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tc.cancel {
				go func() {
					<-sent
					cancel()
				}()
			}
			res := make(chan error, 1)
			go func() {
				b, _, _, err := c.PullBatch(ctx, true, NormalizeOptions{}, nil)
				b = flat(b)
				if err == nil {
					err = errors.New("no error")
				}
				if b.Len() != 0 {
					err = errors.New("partial batch")
				}
				res <- err
			}()
			var perr error
			select {
			case perr = <-res:
			case <-time.After(30 * time.Second): // a hang, not a timing check
				t.Fatal("PullBatch did not return")
			}
			if !tc.cancel {
				<-sent
			}
			if perr == nil || perr.Error() == "no error" || perr.Error() == "partial batch" ||
				(tc.wantErr != nil && !errors.Is(perr, tc.wantErr)) {
				t.Fatalf("PullBatch err = %v, want an error (%v)", perr, tc.wantErr)
			}
			if c.Failures() != tc.wantFails {
				t.Errorf("failures = %d, want %d", c.Failures(), tc.wantFails)
			}
			// PullBatch waits for its copy goroutine before returning, so
			// none may be left now: no polling needed.
			if s := ourGoroutines(); s != "" {
				t.Errorf("goroutine left behind:\n%s", s)
			}
		})
	}
}

// ourGoroutines returns the stacks of goroutines started by pullBatch.
func ourGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		// A goroutine whose function returned may still be listed while
		// it exits (its only frame is runtime.goexit1): it is not left behind.
		if strings.Contains(g, "lapi.(*Client).pullBatch") && !strings.Contains(g, "runtime.goexit1()") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// TestPullBatchInterns checks that 100 decisions share one copy of their
// origin, scenario and type, and that now() is called exactly once.
func TestPullBatchInterns(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`{"new":[`)
	for i := range 100 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"duration":"1h","origin":"lists","scenario":"lists:x","scope":"Ip","type":"ban","value":"198.18.0.` + itoa(i) + `"}`)
	}
	sb.WriteString(`],"deleted":null}`)
	srv := httptest.NewServer(&bodyLAPI{body: sb.String()})
	defer srv.Close()
	c, err := NewClient(ClientConfig{APIURL: srv.URL, APIKey: testKey}, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b, _, _, err := c.PullBatch(t.Context(), true, NormalizeOptions{}, func() time.Time { calls++; return now })
	b = flat(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.New) != 100 || calls != 1 || !b.New[99].Until.Equal(now.Add(time.Hour)) {
		t.Fatalf("%d decisions, now() called %d times, until %v", len(b.New), calls, b.New[99].Until)
	}
	for _, d := range b.New[1:] {
		if unsafeStringData(d.Origin) != unsafeStringData(b.New[0].Origin) ||
			unsafeStringData(d.Scenario) != unsafeStringData(b.New[0].Scenario) ||
			unsafeStringData(d.Type) != unsafeStringData(b.New[0].Type) {
			t.Fatalf("strings not interned: %+v", d)
		}
	}
}

// TestBodyHandoffPaths: the decoder reads the same body whether io.Copy
// hands it to ReadFrom (the transport's bodies) or writes it through Write
// (an io.WriterTo body), and sees Do's error once the body is read.
func TestBodyHandoffPaths(t *testing.T) {
	body := benchBody(1000)
	for name, src := range map[string]io.Reader{
		"ReadFrom": iotest.HalfReader(strings.NewReader(body)), // not an io.WriterTo
		"Write":    strings.NewReader(body),
	} {
		t.Run(name, func(t *testing.T) {
			h := newBodyHandoff()
			cut := errors.New("cut")
			go func() {
				_, err := io.Copy(h, src)
				h.finish(cmp.Or(err, cut))
			}()
			got, err := io.ReadAll(h)
			h.abandon()
			<-h.done
			if string(got) != body || !errors.Is(err, cut) {
				t.Fatalf("read %d of %d bytes, err %v", len(got), len(body), err)
			}
		})
	}
}
