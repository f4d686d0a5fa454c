package backend

import (
	"fmt"
	"net/netip"
	"os/exec"
	"testing"
)

func TestChangeMergeKeepsCaps(t *testing.T) {
	var c Change
	if !c.Empty() {
		t.Fatal("zero change is not empty")
	}
	for i := range MaxChangeObjects + 2 {
		c.Merge(Change{Objects: []string{fmt.Sprint("object ", i), "object 0"}})
	}
	if len(c.Objects) != MaxChangeObjects {
		t.Fatalf("%d objects kept, want the cap %d (duplicates once)", len(c.Objects), MaxChangeObjects)
	}
	p := netip.MustParsePrefix("192.0.2.1/32")
	c.Merge(Change{Elements: map[string][]netip.Prefix{"s": {p}}})
	if c.Deep || len(c.Elements["s"]) != 1 {
		t.Fatalf("one element: %+v", c)
	}
	big := make([]netip.Prefix, MaxChangeElements)
	c.Merge(Change{Elements: map[string][]netip.Prefix{"s": big}})
	if !c.Deep || len(c.Elements["s"]) != 1 {
		t.Fatalf("past the element cap: deep %v, %d elements kept; want deep, 1", c.Deep, len(c.Elements["s"]))
	}
}

func TestChildrenRecordsPIDs(t *testing.T) {
	var kids Children
	cmd := exec.Command("true")
	if err := kids.Start(cmd); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	_ = cmd.Wait()
	if !kids.Own(pid) || kids.Own(pid+1) || kids.Own(0) {
		t.Fatalf("Own(%d)=%v Own(%d)=%v Own(0)=%v; want true, false, false", pid, kids.Own(pid), pid+1, kids.Own(pid+1), kids.Own(0))
	}
}

func TestChangeMergeKeepsRefill(t *testing.T) {
	for _, tc := range []struct {
		name     string
		into, of Change
	}{
		{"into an empty change", Change{}, Change{Refill: true}},
		{"kept by a later change", Change{Refill: true}, Change{Objects: []string{"rule"}}},
	} {
		c := tc.into
		c.Merge(tc.of)
		if !c.Refill || c.Empty() || c.Deep {
			t.Errorf("%s: refill %v, empty %v, deep %v; want true, false, false", tc.name, c.Refill, c.Empty(), c.Deep)
		}
	}
}
