package lapi

import (
	"strconv"
	"unsafe"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

func itoa(i int) string { return strconv.Itoa(i) }

// unsafeStringData identifies a string's backing array, to tell whether two
// equal strings are one copy.
func unsafeStringData(s string) *byte { return unsafe.StringData(s) }

// texts is f with the strings the element parser left in the window
// copied out, as encoding/json decodes them.
func (f fields) texts() fields {
	for _, s := range [...]*jsonString{&f.Duration, &f.Origin, &f.Scenario, &f.Scope, &f.Type, &f.Value} {
		*s = jsonString{s: s.text(), ok: s.ok}
	}
	return f
}

// flat is b with its packed decisions in New, as the tests read and
// compare batches: New is nil exactly when Packed was.
func flat(b journal.Batch) journal.Batch {
	if b.Packed == nil {
		return b
	}
	news := make([]journal.Decision, 0, b.NewLen())
	for _, d := range b.AllNew() {
		news = append(news, d)
	}
	b.New, b.Packed = news, nil
	return b
}
