package backend

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func TestRejectedSplitsClasses(t *testing.T) {
	bad := Rejection{Entry: Entry{Prefix: netip.MustParsePrefix("192.0.2.0/24")}, Reason: "set_type",
		Err: fmt.Errorf("%w: a hash:ip set holds single addresses only", ErrRejected)}
	full := Rejection{Entry: Entry{Prefix: netip.MustParsePrefix("192.0.2.9/32")}, Reason: "set_full",
		Err: fmt.Errorf("%w: maxelem 1", ErrSetFull)}
	infra := errors.New("netlink: connection refused")
	rej := &RejectedError{Rejected: []Rejection{bad, full}}

	tests := []struct {
		name      string
		err       error
		rejected  int
		restIsNil bool
		isFull    bool
	}{
		{"nil", nil, 0, true, false},
		{"infrastructure only", infra, 0, false, false},
		{"rejections only", rej, 2, true, true},
		{"rejections wrapped", fmt.Errorf("apply: %w", rej), 2, true, true},
		{"rejection beside a failure", errors.Join(fmt.Errorf("replay a: %w", infra), fmt.Errorf("replay b: %w", rej)), 2, false, true},
		{"two rejection reports joined", errors.Join(rej, &RejectedError{Rejected: []Rejection{bad}}), 3, true, true},
		{"only a bad entry", &RejectedError{Rejected: []Rejection{bad}}, 1, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs, rest := Rejected(tc.err)
			if len(rs) != tc.rejected {
				t.Errorf("rejected = %d, want %d", len(rs), tc.rejected)
			}
			if (rest == nil) != tc.restIsNil {
				t.Errorf("rest = %v, want nil: %v", rest, tc.restIsNil)
			}
			if rest != nil && !errors.Is(rest, infra) {
				t.Errorf("rest %v lost the infrastructure cause", rest)
			}
			if tc.rejected > 0 && !errors.Is(tc.err, ErrRejected) {
				t.Errorf("errors.Is(ErrRejected) wrong for %v", tc.err)
			}
			if got := errors.Is(tc.err, ErrSetFull); got != tc.isFull {
				t.Errorf("errors.Is(ErrSetFull) = %v, want %v", got, tc.isFull)
			}
		})
	}
}
