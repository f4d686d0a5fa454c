package main

import "testing"

// In nftables mode, `nft flush ruleset`, deleting our table, a rule, a
// chain's rules, one set element or a set's elements is repaired on the
// kernel's event, not on the tick or the deep verify.
func TestE2ENFTablesEventRepairs(t *testing.T) {
	if !e2eSetup(t) {
		return
	}
	testEventRepairs(t, nftE2E)
}
