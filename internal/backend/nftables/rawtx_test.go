package nftables

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	gnft "github.com/google/nftables"
)

// addrMsg writes byte for byte the message rawTx.addElements writes for the
// same addresses, in both families, with and without timeouts, for a full
// message and a short one.
func TestAddrMsgSameAsAddElements(t *testing.T) {
	for _, tc := range []struct {
		name    string
		v6      bool
		timeout bool
		n       int
	}{
		{"v4 timeouts full", false, true, perMsg},
		{"v4 no timeouts", false, false, 7},
		{"v6 timeouts", true, true, perMsg},
		{"v6 no timeouts short", true, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := &gnft.Table{Name: "crowdsec", Family: gnft.TableFamilyIPv4}
			kt := gnft.TypeIPAddr
			if tc.v6 {
				tb, kt = &gnft.Table{Name: "crowdsec6", Family: gnft.TableFamilyIPv6}, gnft.TypeIP6Addr
			}
			set := &gnft.Set{Table: tb, Name: "crowdsec-blacklists-x", KeyType: kt, HasTimeout: tc.timeout}
			var els []gnft.SetElement
			am := newAddrMsg(set)
			for i := range tc.n {
				a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
				if tc.v6 {
					a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
				}
				to := time.Duration(i%3) * 90 * time.Second // some zero: no timeout attribute
				els = append(els, gnft.SetElement{Key: a.AsSlice(), Timeout: to})
				am.put(a, to)
			}
			var want, got rawTx
			if err := want.addElements(set, els); err != nil {
				t.Fatal(err)
			}
			am.done(&got)
			if len(got.msgs) != 1 || len(want.msgs) != 1 {
				t.Fatalf("%d and %d messages, want one each", len(got.msgs), len(want.msgs))
			}
			if got.msgs[0].Header != want.msgs[0].Header || !bytes.Equal(got.msgs[0].Data, want.msgs[0].Data) {
				t.Fatalf("messages differ:\n got %x\nwant %x", got.msgs[0].Data[:min(96, len(got.msgs[0].Data))], want.msgs[0].Data[:min(96, len(want.msgs[0].Data))])
			}
			am.done(&got) // empty: nothing queued
			if len(got.msgs) != 1 {
				t.Fatalf("an empty message was queued")
			}
		})
	}
}
