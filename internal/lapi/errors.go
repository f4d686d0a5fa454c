package lapi

import (
	"errors"
	"strings"

	"github.com/crowdsecurity/crowdsec/pkg/apiclient"
)

// ErrUnauthorized classifies a pull LAPI refused because of our
// credentials (HTTP 401/403: a wrong or revoked API key, a certificate LAPI
// does not accept). Unlike an unreachable LAPI, retrying does not help: an
// operator must fix the key.
var ErrUnauthorized = errors.New("LAPI rejected the bouncer's credentials (HTTP 401/403): check api_key or the client certificate")

// Unauthorized reports whether err is LAPI refusing our credentials. The
// API client keeps no status code in its error, only LAPI's message, so
// the known forms of that message are matched here, in one place.
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
