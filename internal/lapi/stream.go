package lapi

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// errNotObject is returned (wrapped) when the stream response is valid JSON
// but not an object.
var errNotObject = fmt.Errorf("%w: not a JSON object", ErrMalformedResponse)

// errAbandoned ends apiclient's body copy when PullBatch no longer reads it.
var errAbandoned = errors.New("decisions stream abandoned by the decoder")

// maxTrailing bounds what PullBatch drains after the response object (LAPI
// sends at most a newline) so the connection can go back to the pool.
const maxTrailing = 64 << 10

// PullBatch is Pull followed by NormalizeWithStats, without the model: it
// decodes the response as it streams in and normalizes each decision at
// once, so a 100k-decision startup response never exists as 100k
// *models.Decision. Batch.Full is set to startup. Until is measured from
// now(), called once when the first bytes of the body arrive (nil means
// time.Now).
//
// Only a well-formed stream object is trusted: an answer without both
// "new" and "deleted" fails the pull (ErrMalformedResponse), as do
// transport and HTTP status errors (ErrUnauthorized for 401/403), invalid
// or truncated JSON, a body over the size limit (ErrTooLarge) and a LAPI
// silent past the idle limit or ctx's deadline (ErrTimeout): none of them
// may look like a smaller active set. A single decision that does not
// decode (a field of the wrong type, not an object, oversized) is rejected
// alone (ReasonMalformed, ReasonOversized), like any other bad decision;
// for every decision that decodes the result is what Pull+NormalizeWithStats
// gives. Requests and failures are counted as Pull counts them, with a
// timeout counted as a failure.
func (c *Client) PullBatch(ctx context.Context, startup bool, opts NormalizeOptions, now func() time.Time) (journal.Batch, []Rejection, Stats, error) {
	if now == nil {
		now = time.Now
	}
	c.requests.Add(1)
	b, rej, stats, err := c.pullBatch(ctx, startup, opts, now)
	if err != nil {
		if !errors.Is(ctx.Err(), context.Canceled) {
			c.failures.Add(1)
		}
		if ctx.Err() == context.DeadlineExceeded && !errors.Is(err, ErrTimeout) {
			err = fmt.Errorf("%w: deadline passed: %w", ErrTimeout, err)
		}
		return journal.Batch{}, nil, Stats{}, fmt.Errorf("pull decisions stream (startup=%v): %w", startup, err)
	}
	b.Full = startup
	return b, rej, stats, nil
}

func (c *Client) pullBatch(ctx context.Context, startup bool, opts NormalizeOptions, now func() time.Time) (journal.Batch, []Rejection, Stats, error) {
	if c.api.URLPrefix == "v3" {
		// GetStream decodes CAPI's grouped v3 format there; go-cs-bouncer
		// always builds a v1 client, so this is a programming error.
		return journal.Batch{}, nil, Stats{}, errors.New("streaming decode supports LAPI v1 only")
	}
	// Our own cancel stops a Do that is blocked reading the body when the
	// decoder gives up or LAPI goes silent, so that no goroutine outlives
	// the call.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stalled := fmt.Errorf("%w: nothing received from LAPI for %v", ErrTimeout, c.idle)
	idle := time.AfterFunc(c.idle, func() { cancel(stalled) })
	defer idle.Stop()
	req, err := c.api.PrepareRequest(ctx, http.MethodGet, c.streamURL(startup), nil)
	if err != nil {
		return journal.Batch{}, nil, Stats{}, fmt.Errorf("prepare request: %w", err)
	}

	h := newBodyHandoff()
	go func() {
		// Do runs CheckResponse before copying: an HTTP error ends the
		// handoff with that error before any byte, and the decoder reports it.
		resp, err := c.api.Do(ctx, req, h)
		if err != nil && resp != nil && resp.Response != nil {
			err = statusError(resp.Response.StatusCode, err)
		}
		h.finish(err) // nil: a clean EOF
	}()

	n := newNormalizer(opts)
	src := &clockReader{r: h, now: now, n: n, idle: idle, idleFor: c.idle, limit: c.maxBody}
	err = n.decodeStream(src)
	if err == nil {
		// Let the rest of the body through so Do returns with the body
		// read to its end; an error there cannot undo a complete object
		// (Pull ignores what follows the object too).
		_, _ = io.Copy(io.Discard, io.LimitReader(h, maxTrailing))
	} else {
		cancel(nil)
	}
	h.abandon()
	<-h.done
	if cause := context.Cause(ctx); err != nil && cause == stalled {
		return journal.Batch{}, nil, Stats{}, stalled
	}
	if err != nil {
		if src.err != nil {
			// Do failed (status, transport, truncation) or the body is
			// too large: that error, as Pull would return it, is the cause.
			return journal.Batch{}, nil, Stats{}, src.err
		}
		return journal.Batch{}, nil, Stats{}, fmt.Errorf("decode decisions stream: %w", err)
	}
	b, rej, stats := n.result()
	return b, rej, stats, nil
}

// bodyHandoff lets the decoder read the response body itself, in its own
// goroutine: apiclient's Do copies the body into the writer it is given,
// io.Copy passes the body to ReadFrom, and ReadFrom hands it over and waits
// until the decoder has read it to its end or abandoned it. The decoder
// reads when its window runs out, taking what the transport gathered
// meanwhile in one read, straight into the window. (Through an io.Pipe,
// Do's goroutine read ahead as soon as the decoder took a block, so each
// read took little, and every block was copied once more and handed over
// with two goroutine switches.)
type bodyHandoff struct {
	body      chan io.Reader // ReadFrom to the decoder
	released  chan struct{}  // the decoder read the body to its end
	abandoned chan struct{}  // closed: the decoder reads no more
	done      chan struct{}  // closed when Do has returned, with err set
	err       error
	cur       io.Reader // the body being read (decoder's side)
}

func newBodyHandoff() *bodyHandoff {
	return &bodyHandoff{
		body:      make(chan io.Reader),
		released:  make(chan struct{}),
		abandoned: make(chan struct{}),
		done:      make(chan struct{}),
	}
}

// ReadFrom runs in Do's goroutine and returns once the decoder is done
// with r, which Do then closes.
func (h *bodyHandoff) ReadFrom(r io.Reader) (int64, error) {
	select {
	case h.body <- r:
	case <-h.abandoned:
		return 0, errAbandoned
	}
	select {
	case <-h.released:
		return 0, nil
	case <-h.abandoned:
		return 0, errAbandoned
	}
}

// Write serves a body that io.Copy does not pass to ReadFrom, an
// io.WriterTo (http.NoBody writes nothing), the same way.
func (h *bodyHandoff) Write(p []byte) (int, error) {
	if _, err := h.ReadFrom(bytes.NewReader(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// finish records Do's result: the decoder's reads return err (io.EOF for
// nil) once the handed-over bodies are read.
func (h *bodyHandoff) finish(err error) {
	h.err = err
	close(h.done)
}

// abandon releases Do's goroutine when the decoder stops reading.
func (h *bodyHandoff) abandon() { close(h.abandoned) }

// Read is the decoder's side.
func (h *bodyHandoff) Read(p []byte) (int, error) {
	for {
		if h.cur == nil {
			select {
			case h.cur = <-h.body:
			case <-h.done:
				return 0, cmp.Or(h.err, io.EOF)
			}
		}
		k, err := h.cur.Read(p)
		if err == io.EOF {
			h.cur, err = nil, nil
			h.released <- struct{}{}
		}
		if k > 0 || err != nil || len(p) == 0 {
			return k, err
		}
	}
}

// streamURL builds the same path and query as apiclient's GetStream
// (DecisionsStreamOpts.addQueryParamsToURL is unexported): false bools
// except community_pull/additional_pull, which are sent only when false,
// and empty strings are left out.
func (c *Client) streamURL(startup bool) string {
	o := c.opts
	q := url.Values{}
	if startup {
		q.Set("startup", "true")
	}
	if !o.CommunityPull {
		q.Set("community_pull", "false")
	}
	if !o.AdditionalPull {
		q.Set("additional_pull", "false")
	}
	for k, v := range map[string]string{
		"scopes":                   o.Scopes,
		"scenarios_containing":     o.ScenariosContaining,
		"scenarios_not_containing": o.ScenariosNotContaining,
		"origins":                  o.Origins,
	} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return c.api.URLPrefix + "/decisions/stream?" + q.Encode()
}

// clockReader takes the receive time when the first body bytes arrive,
// pushes the idle deadline back on every read that brings bytes, enforces
// the size limit, and remembers a failure of the source (Do's error
// through the pipe) to tell it from a JSON error.
type clockReader struct {
	r       io.Reader
	now     func() time.Time
	n       *normalizer
	idle    *time.Timer
	idleFor time.Duration
	limit   int64 // the most bytes the body may bring
	read    int64
	started bool
	err     error
}

func (c *clockReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	if k > 0 {
		c.idle.Reset(c.idleFor)
		if !c.started {
			c.started = true
			c.n.now = c.now()
		}
		if c.read += int64(k); c.read > c.limit {
			c.err = fmt.Errorf("%w: the body exceeds the limit of %d bytes (%d MiB)", ErrTooLarge, c.limit, c.limit>>20)
			return 0, c.err
		}
	}
	if err != nil && err != io.EOF {
		c.err = err
	}
	return k, err
}

// decodeStream reads the top-level object and decodes list elements one at
// a time, with encoding/json's rules for what json.Decode into
// models.DecisionsStreamResponse accepts: keys match case-insensitively,
// unknown keys are ignored (their values validated), null lists are empty, a
// repeated key replaces the earlier list, and nothing after the object is
// read. Two departures, both on purpose: the response must be an object
// with both "new" and "deleted" (an empty body, null or {} is
// ErrMalformedResponse, where the model decoder sees an empty response),
// and a list element that does not decode into a decision is rejected alone
// where the model decoder fails the whole response. One quirk is not
// copied: for a repeated key encoding/json merges the later list's objects
// into the earlier list's, where PullBatch starts the list afresh (LAPI
// never repeats a key).
func (n *normalizer) decodeStream(r io.Reader) error {
	complete, err := n.decodeObject(r)
	if err != nil {
		return err
	}
	if !complete {
		return fmt.Errorf("%w: it lacks the \"new\" or \"deleted\" key", ErrMalformedResponse)
	}
	return nil
}

// decodeObject is decodeStream without the check that both lists were
// there, which it reports in complete (false for a top-level null).
func (n *normalizer) decodeObject(r io.Reader) (complete bool, err error) {
	w := &window{r: r}
	c, err := w.peek()
	switch {
	case err == io.EOF:
		return false, fmt.Errorf("%w: empty body", ErrMalformedResponse)
	case err != nil:
		return false, err
	case c == 'n':
		// a top-level null, which holds no list; encoding/json ignores
		// what follows any top-level value
		_, err := w.scan(scanNull, 0)
		return false, err
	case c != '{':
		if _, st := skipValue([]byte{c}, 0, 0); st == scanBad {
			return false, w.syntaxError(w.pos)
		}
		return false, fmt.Errorf("%w: starts with %q", errNotObject, c)
	}
	w.pos++
	if c, err = w.peekIn(); err != nil {
		return false, err
	}
	var seen [3]bool
	for c != '}' { // c is '}' only for an empty object
		k, err := w.scan(scanString, 0)
		if err != nil {
			return false, err
		}
		// classified now: the window moves on the next read
		key, err := keyKind(w.buf[w.pos : w.pos+k])
		if err != nil {
			return false, err
		}
		seen[key] = true
		w.pos += k
		if err := w.expect(':'); err != nil {
			return false, err
		}
		if _, err = w.peekIn(); err != nil { // the value's first byte
			return false, err
		}
		switch key {
		case keyNew:
			err = n.scanList(w, false)
		case keyDeleted:
			err = n.scanList(w, true)
		default:
			k, err = w.scan(scanAnyValue, topDepth)
			w.pos += k
		}
		if err != nil {
			return false, err
		}
		// Nothing after the closing brace is read.
		done, err := w.afterMember('}')
		if err != nil {
			return false, err
		}
		if done {
			break
		}
	}
	return seen[keyNew] && seen[keyDeleted], nil
}

// Top-level keys the decoder acts on.
const (
	keyOther = iota
	keyNew
	keyDeleted
)

// keyKind classifies the validated string literal b as encoding/json would
// match it against the model's fields: decoded (escapes, U+FFFD for invalid
// UTF-8) by encoding/json unless it is plain ASCII, then case-folded.
func keyKind(b []byte) (int, error) {
	raw := b[1 : len(b)-1]
	key := ""
	if plainASCII(raw) {
		switch {
		case asciiEqualFold(raw, "new"):
			return keyNew, nil
		case asciiEqualFold(raw, "deleted"):
			return keyDeleted, nil
		}
		return keyOther, nil
	}
	if err := json.Unmarshal(b, &key); err != nil {
		return 0, fmt.Errorf("decode key: %w", err)
	}
	switch {
	case strings.EqualFold(key, "new"):
		return keyNew, nil
	case strings.EqualFold(key, "deleted"):
		return keyDeleted, nil
	}
	return keyOther, nil
}

// scanList decodes one list, which starts at the window's position, into
// the normalizer.
func (n *normalizer) scanList(w *window, deleted bool) error {
	n.startList(deleted, 0)
	switch c := w.buf[w.pos]; c {
	case 'n':
		k, err := w.scan(scanNull, 0)
		w.pos += k
		return err
	case '[':
	default:
		if _, st := skipValue([]byte{c}, 0, 0); st == scanBad {
			return w.syntaxError(w.pos)
		}
		return fmt.Errorf("%w: a decisions list is not an array: starts with %q", ErrMalformedResponse, c)
	}
	w.pos++
	c, err := w.peekIn()
	if err != nil {
		return err
	}
	if c == ']' {
		w.pos++
		return nil
	}
	n.listStarted() // a non-empty list is never nil, as in Normalize
	e := element{n: n}
	for {
		if err := n.scanElement(w, &e); err != nil {
			return err
		}
		if done, err := w.afterMember(']'); err != nil || done {
			return err
		}
	}
}

// maxElement bounds one list element in the window. LAPI's decisions are
// 150–200 bytes; an element past 1 MiB is skipped without being held, and
// rejected.
const maxElement = 1 << 20

// scanElement decodes the element at the window's position and adds it:
// by hand when parseFast's shape allows, otherwise validated by skipValue
// and decoded by encoding/json. An element that is valid JSON but not a
// decision (a field of the wrong type, not an object) or that outgrows
// maxElement is rejected alone; only invalid or truncated JSON fails.
func (n *normalizer) scanElement(w *window, e *element) error {
	k, st := e.scan(w.buf[w.pos:])
	for st == scanMore {
		if len(w.buf)-w.pos > maxElement {
			return n.skipOversized(w)
		}
		if !w.more(len(w.buf) - w.pos) {
			return w.truncated()
		}
		k, st = e.scan(w.buf[w.pos:])
	}
	if st != scanOK {
		for k, st = skipValue(w.buf[w.pos:], 0, listDepth); st == scanMore; k, st = skipValue(w.buf[w.pos:], 0, listDepth) {
			if len(w.buf)-w.pos > maxElement {
				return n.skipOversized(w)
			}
			if !w.more(len(w.buf) - w.pos) {
				return w.truncated()
			}
		}
		if st != scanOK {
			return w.syntaxError(w.pos + k)
		}
		if k > maxElement {
			return n.rejectOversized(w, k)
		}
		if err := e.decodeSlow(w.buf[w.pos : w.pos+k]); err != nil {
			// what decoded before the bad field names it in the log
			w.pos += k
			n.reject(&e.w.fields, ReasonMalformed)
			return nil
		}
	}
	if k > maxElement {
		return n.rejectOversized(w, k)
	}
	w.pos += k
	if e.null {
		n.add(nil)
	} else {
		n.add(&e.w.fields)
	}
	return nil
}

// rejectOversized rejects the element of length k at the window's position,
// which the window came to hold whole although it outgrew maxElement, so
// that the limit does not depend on how the window grew.
func (n *normalizer) rejectOversized(w *window, k int) error {
	w.pos += k
	n.reject(nil, ReasonOversized)
	return nil
}

// skipOversized discards the element at the window's position, which has
// outgrown maxElement, without holding it, and rejects it. Since the
// element is rejected whatever it holds, only strings and nesting are
// tracked to find its end; a body that ends inside it is a truncation.
func (n *normalizer) skipOversized(w *window) error {
	depth, inString, escaped := 0, false, false
	for {
		for ; w.pos < len(w.buf); w.pos++ {
			c := w.buf[w.pos]
			switch {
			case inString:
				switch {
				case escaped:
					escaped = false
				case c == '\\':
					escaped = true
				case c == '"':
					inString = false
					if depth == 0 { // the element was a string
						w.pos++
						n.reject(nil, ReasonOversized)
						return nil
					}
				}
			case c == '"':
				inString = true
			case c == '{' || c == '[':
				depth++
			case c == '}' || c == ']':
				if depth == 0 { // the list's end after a scalar element
					n.reject(nil, ReasonOversized)
					return nil
				}
				if depth--; depth == 0 {
					w.pos++
					n.reject(nil, ReasonOversized)
					return nil
				}
			case depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'):
				n.reject(nil, ReasonOversized) // the end of a scalar element
				return nil
			}
		}
		if !w.discard() {
			return w.truncated()
		}
	}
}

// wireDecision has every field of models.Decision, so that a value of the
// wrong JSON type fails here exactly when it fails the model decoder; only
// fields are kept.
type wireDecision struct {
	fields
	ID    int64       `json:"id"`
	UUID  checkString `json:"uuid"`
	Until checkString `json:"until"`
}

// jsonString is a string field that knows whether it was present and not
// null: the model's non-nil *string. The element parser leaves the value
// and the duration, unique to each decision and parsed once, in the window
// (b) instead of allocating a string for each: b is valid until the next
// element is scanned, so what must outlive the element copies it (text).
type jsonString struct {
	s  string
	b  []byte
	ok bool
}

// text is the field's string: s, or a copy of b.
func (j *jsonString) text() string {
	if j.s != "" {
		return j.s
	}
	return string(j.b)
}

// view is the field's string without a copy, for netip's parsers: a
// value in the window (an IPv6 address, a range) would otherwise cost an
// allocation each. It must not outlive the element; netip keeps nothing of
// its input but in errors, which parseIP and parseRange drop (a zone,
// refused anyway, is copied by unique.Make).
func (j *jsonString) view() string {
	if j.s != "" || len(j.b) == 0 {
		return j.s
	}
	return unsafe.String(&j.b[0], len(j.b))
}

// UnmarshalJSON implements json.Unmarshaler.
func (j *jsonString) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*j = jsonString{}
		return nil
	}
	if len(b) >= 2 && b[0] == '"' && plainASCII(b[1:len(b)-1]) {
		// the common case: no escapes, nothing for UTF-8 repair to do
		*j = jsonString{s: string(b[1 : len(b)-1]), ok: true}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	*j = jsonString{s: s, ok: true}
	return nil
}

func plainASCII(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// jsonBool is the model's *bool where nil and false mean the same, with
// null resetting an earlier true as it resets the model's pointer.
type jsonBool bool

// UnmarshalJSON implements json.Unmarshaler.
func (j *jsonBool) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case "null", "false":
		*j = false
	case "true":
		*j = true
	default:
		var v bool
		return json.Unmarshal(b, &v) // the model's type error
	}
	return nil
}

// checkString accepts what a string field of the model accepts, and keeps
// nothing.
type checkString struct{}

// UnmarshalJSON implements json.Unmarshaler.
func (*checkString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return nil // the decoder has already checked the syntax
	}
	var s string
	return json.Unmarshal(b, &s)
}

// afterMember consumes what follows a member of an object or array: a comma
// (and reports more to come), or the closer (and reports done); anything
// else is a syntax error.
func (w *window) afterMember(closer byte) (done bool, err error) {
	c, err := w.peekIn()
	if err != nil {
		return false, err
	}
	switch c {
	case ',':
		w.pos++
		_, err = w.peekIn()
		return false, err
	case closer:
		w.pos++
		return true, nil
	default:
		return false, w.syntaxError(w.pos)
	}
}
