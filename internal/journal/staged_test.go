package journal

import (
	"net/netip"
	"testing"
	"time"
)

// AppendFull hands the view and the origins over before the file is
// written, so the caller can prepare the kernel meanwhile; persist then
// makes it durable as Append would.
func TestAppendFullStaged(t *testing.T) {
	j := openTest(t)
	if err := j.Append(Batch{New: []Decision{dec("192.0.2.9/32", time.Hour, "cscli")}}); err != nil {
		t.Fatal(err)
	}
	b := Batch{Full: true, New: []Decision{
		dec("192.0.2.1/32", time.Hour, "crowdsec"),
		dec("2001:db8::1/128", time.Hour, "lists:firehol"),
		dec("203.0.113.0/24", time.Hour, "crowdsec"),
	}}
	persist, err := j.AppendFull(b)
	if err != nil {
		t.Fatal(err)
	}
	// Before persist: the view holds exactly the batch, the new origins
	// have their index, and reading them does not wait for the file.
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, ok := j.OriginIndex("lists:firehol"); !ok {
			t.Error("new origin not indexed before persist")
		}
		if n := len(j.Origins()); n != 3 {
			t.Errorf("%d origins before persist, want 3", n)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Origins waited for persist")
	}
	if j.View().Len() != 3 {
		t.Fatalf("view holds %d entries before persist, want 3", j.View().Len())
	}
	if _, ok := j.View().Get(Key{Scope: ScopeIP, Prefix: netip.MustParsePrefix("192.0.2.9/32"), Type: "ban"}); ok {
		t.Fatal("the full batch left a key it does not hold")
	}
	if err := persist(); err != nil {
		t.Fatal(err)
	}
	j.reopen(t)
	if j.View().Len() != 3 {
		t.Fatalf("reopened view holds %d entries, want 3", j.View().Len())
	}
	if _, ok := j.View().Get(Key{Scope: ScopeRange, Prefix: netip.MustParsePrefix("203.0.113.0/24"), Type: "ban"}); !ok {
		t.Fatal("the range is not in the reopened journal")
	}
	if _, err := j.AppendFull(Batch{New: b.New}); err == nil {
		t.Fatal("AppendFull took a delta batch")
	}
}
