package iptables

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/backend"
	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/testenv"
)

// ipset_size is a floor: a replay or an apply beyond it grows the set
// (swapped in, members and timeouts kept) instead of refusing entries.
func TestKernelSetsGrow(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	small, _ := newKernelBackend(t, Config{Mode: "ipset", SetName4: "small4", DisableIPv6: true, MaxElem: 1000})
	sh(t, "ipset create small4 hash:net maxelem 1000 timeout 0")
	entries := v4Entries(5000, time.Hour)
	if err := small.Replay(ctx, slices.Values(entries[:1500])); err != nil {
		t.Fatalf("Replay beyond ipset_size = %v, want the set grown", err)
	}
	if got := sh(t, "ipset list -t small4"); !strings.Contains(got, "Number of entries: 1500") {
		t.Fatalf("replay did not grow the set:\n%s", got)
	}
	if err := small.Apply(ctx, backend.Delta{Add: entries[1500:]}); err != nil {
		t.Fatalf("Apply beyond maxelem = %v, want the set grown", err)
	}
	got := sh(t, "ipset list -t small4")
	if !strings.Contains(got, "Number of entries: 5000") {
		t.Fatalf("apply did not grow the set:\n%s", got)
	}
	// The copied members kept a timeout (not made permanent).
	if line := sh(t, "ipset list small4 | grep -m1 '^198.18.0.1 '"); !strings.Contains(line, "timeout") {
		t.Fatalf("member lost its timeout in the growth: %q", line)
	}
	if names := sh(t, "ipset list -n"); strings.Contains(names, "small4-t") {
		t.Fatalf("temporary set left behind: %s", names)
	}
}

// A set with our name but the wrong type: moved aside when nothing uses
// it, else left alone with its entries refused — the other sets enforce.
func TestKernelWrongTypeSet(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b, _ := newKernelBackend(t, Config{Chains4: []string{"INPUT"}, DisableIPv6: true})
	name0, name1 := b.setName(backend.SetKey{Origin: 0}), b.setName(backend.SetKey{Origin: 1})
	sh(t, "ipset create "+name0+" hash:ip && ipset add "+name0+" 192.0.2.99")
	sh(t, "ipset create "+name1+" hash:ip && iptables -I FORWARD -m set --match-set "+name1+" src -j ACCEPT")
	if err := ensure(ctx, b, 0, 1); err != nil {
		t.Fatalf("Ensure with a wrong-type set = %v, want the others enforced", err)
	}
	names := sh(t, "ipset list -n")
	if !strings.Contains(names, name0+"-moved") {
		t.Fatalf("unused wrong-type set not moved aside:\n%s", names)
	}
	if typ := sh(t, "ipset list -t "+name0+" | grep Type"); !strings.Contains(typ, "hash:net") {
		t.Fatalf("ours not recreated: %s", typ)
	}
	err := b.Replay(ctx, slices.Values([]backend.Entry{entry("192.0.2.1/32", 0, time.Hour), entry("192.0.2.2/32", 1, time.Hour)}))
	rs, rest := backend.Rejected(err)
	if rest != nil || len(rs) != 1 || rs[0].Reason != "set_mismatch" || rs[0].Entry.Prefix != netip.MustParsePrefix("192.0.2.2/32") {
		t.Fatalf("Replay = %v; want only the referenced stranger's entry refused", err)
	}
	if !errors.Is(err, backend.ErrRejected) {
		t.Fatalf("refusal not classified: %v", err)
	}
	if m := members(t, name0); len(m) != 1 {
		t.Fatalf("origin 0 not enforced: %v", m)
	}
	if d, err := b.Verify(ctx, map[backend.SetKey]int{{Origin: 0}: 1}); err != nil || !d.None() {
		t.Fatalf("Verify reports the known stranger as drift: %+v %v", d, err)
	}
	// The admin follows the advice: drift, and the next Ensure takes over.
	sh(t, "iptables -D FORWARD -m set --match-set "+name1+" src -j ACCEPT && iptables -F "+b.cfg.Chain+" && ipset destroy "+name1)
	if d, _ := b.Verify(ctx, nil); d.None() {
		t.Fatal("a freed name is not reported as drift")
	}
	if err := ensure(ctx, b, 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Replay(ctx, slices.Values([]backend.Entry{entry("192.0.2.2/32", 1, time.Hour)})); err != nil {
		t.Fatalf("Replay after the fix = %v", err)
	}
}

// A stop (SIGTERM) in the middle of a replay's fill leaves no temporary set
// behind: it is removed under a context of its own.
func TestKernelReplayCancelledLeavesNoTemp(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	b, _ := newKernelBackend(t, Config{Mode: "ipset", SetName4: "cancel4", DisableIPv6: true})
	sh(t, "ipset create cancel4 hash:net timeout 0")
	entries := v4Entries(100000, time.Hour)
	if err := b.Replay(t.Context(), slices.Values(entries[:10])); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(5*time.Millisecond, cancel)
	err := b.Replay(ctx, slices.Values(entries))
	if err == nil {
		t.Fatal("the fill of 100k finished within 5 ms: the cancellation was never exercised")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Replay = %v, want context.Canceled", err)
	}
	if names := sh(t, "ipset list -n"); strings.Contains(names, "cancel4-t") {
		t.Fatalf("temporary set left behind after a cancelled replay:\n%s", names)
	}
	if got := sh(t, "ipset list -t cancel4"); !strings.Contains(got, "Number of entries: 10") {
		t.Fatalf("the live set changed under a cancelled replay:\n%s", got)
	}
}

// A set of the other family under our name, still used by another
// program's rule, is left alone like a wrong-type one: no rule of ours
// names it (iptables would refuse the whole script), and the other origins
// are enforced.
func TestKernelWrongFamilySet(t *testing.T) {
	if !testenv.InFreshNetns(t) {
		return
	}
	ctx := t.Context()
	b, _ := newKernelBackend(t, Config{Chains4: []string{"INPUT"}, DisableIPv6: true})
	name1 := b.setName(backend.SetKey{Origin: 1})
	sh(t, "ipset create "+name1+" hash:net family inet6 && ip6tables -I FORWARD -m set --match-set "+name1+" src -j ACCEPT")
	if err := ensure(ctx, b, 0, 1); err != nil {
		t.Fatalf("Ensure with a wrong-family set = %v, want the others enforced", err)
	}
	err := b.Replay(ctx, slices.Values([]backend.Entry{entry("192.0.2.1/32", 0, time.Hour), entry("192.0.2.2/32", 1, time.Hour)}))
	if rs, rest := backend.Rejected(err); rest != nil || len(rs) != 1 || rs[0].Reason != "set_mismatch" {
		t.Fatalf("Replay = %v; want only the stranger's entry refused", err)
	}
	if m := members(t, b.setName(backend.SetKey{Origin: 0})); len(m) != 1 {
		t.Fatalf("origin 0 not enforced: %v", m)
	}
	if rules := sh(t, "iptables -S "+b.cfg.Chain); strings.Contains(rules, name1) {
		t.Fatalf("a rule of ours names the stranger:\n%s", rules)
	}
	if d, err := b.Verify(ctx, map[backend.SetKey]int{{Origin: 0}: 1}); err != nil || !d.None() {
		t.Fatalf("Verify: %+v %v", d, err)
	}
}
