package lapi

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/crowdsecurity/crowdsec/pkg/apiclient"
)

// Errors a failed pull is classified by (wrapped, with the detail): the
// caller acts on each differently, and none of them may be taken as "LAPI
// has no bans". Any other error is LAPI being unreachable.
var (
	// ErrUnauthorized is returned when LAPI refuses our credentials (HTTP
	// 401 or 403): LAPI is up, the API key or client certificate is wrong
	// or revoked, and retrying will not help until an operator fixes it.
	ErrUnauthorized = errors.New("LAPI rejected our API key")

	// ErrMalformedResponse is returned when LAPI answers 200 with something
	// that is not a decisions stream object holding both "new" and
	// "deleted" (an empty body, null, {}, whitespace, another JSON value,
	// or JSON that is not valid). A real LAPI always sends both keys, with
	// null for an empty list, so such an answer comes from a proxy, a
	// truncated write or a bug, and trusting it would empty the firewall.
	ErrMalformedResponse = errors.New("LAPI answer is not a decisions stream object")

	// ErrTimeout is returned when LAPI stays silent longer than the idle
	// limit, or the pull's deadline passes, whether LAPI trickles bytes or
	// sends nothing.
	ErrTimeout = errors.New("LAPI pull timed out")

	// ErrTooLarge is returned when the response body exceeds the response
	// size limit.
	ErrTooLarge = errors.New("LAPI response too large")
)

// statusError classifies an HTTP status that apiclient reported as an
// error: 401 and 403 are ours to fix, not LAPI's health.
func statusError(code int, err error) error {
	if code == http.StatusUnauthorized || code == http.StatusForbidden {
		return fmt.Errorf("%w (HTTP %d): %w", ErrUnauthorized, code, err)
	}
	return err
}

// Unauthorized reports whether err is LAPI refusing our credentials: a
// pull classifies the HTTP status itself (ErrUnauthorized); the API
// client's own calls keep no status code, only LAPI's message, whose known
// forms are matched here, in one place.
func Unauthorized(err error) bool {
	if errors.Is(err, ErrUnauthorized) {
		return true
	}
	var er *apiclient.ErrorResponse
	if !errors.As(err, &er) || er.Message == nil {
		return false
	}
	m := *er.Message
	return m == "access forbidden" || strings.HasPrefix(m, "http code 401") || strings.HasPrefix(m, "http code 403")
}
