package lapi

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/apiclient"
	csbouncer "github.com/crowdsecurity/go-cs-bouncer"
)

// DefaultUserAgent is sent when ClientConfig.UserAgent is empty, so LAPI's
// bouncer list shows what pulls with the key. LAPI wants "name/version"
// (it warns "bad user agent" otherwise); the binary should pass its version.
const DefaultUserAgent = "cs-journal-bouncer/dev"

// ClientConfig is the upstream-compatible connection and filter part of the
// configuration.
type ClientConfig struct {
	APIURL string
	// APIKey, or CertPath+KeyPath for TLS client-certificate auth; not both.
	APIKey             string
	CertPath, KeyPath  string
	CACertPath         string
	InsecureSkipVerify bool
	UserAgent          string
	// Filters LAPI applies server-side; nil sends none (LAPI defaults
	// scopes to ip,range).
	Scopes, Origins                             []string
	ScenariosContaining, ScenariosNotContaining []string
	// IdleTimeout fails a PullBatch when LAPI sends nothing (headers or
	// body bytes) for that long; 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxResponseBytes fails a PullBatch whose body grows past it; 0 means
	// DefaultMaxResponseBytes.
	MaxResponseBytes int64
}

// DefaultIdleTimeout is how long a pull waits for the next bytes from LAPI.
// LAPI starts answering a 100k startup pull within a fraction of a second
// and streams it without pauses, so 20 s of silence is a stalled LAPI (or
// network), not a slow one. The whole pull has its own deadline, set by the
// caller, against a LAPI that trickles bytes forever.
const DefaultIdleTimeout = 20 * time.Second

// DefaultMaxResponseBytes bounds a stream response: 1 GiB. A blocklist
// decision takes ≈148 bytes on the wire (1M of them: 148 MB; cscli and
// crowdsec ones, with longer scenarios, up to ≈200), so the limit leaves
// room for 5M or more, far beyond what an ipset holds (ipset_size defaults
// to 131072), while an endless body cannot exhaust memory.
const DefaultMaxResponseBytes = 1 << 30

// Client pulls the decisions stream. It keeps no stream state of its own:
// LAPI tracks the last pull per bouncer key, and the caller says when it
// wants the full set (startup=true).
type Client struct {
	api     *apiclient.ApiClient
	opts    apiclient.DecisionsStreamOpts
	idle    time.Duration
	maxBody int64

	requests atomic.Uint64
	failures atomic.Uint64
}

// NewClient builds the API client with go-cs-bouncer, which owns the
// API-key/client-certificate/CA handling that upstream bouncers share (an
// API key over plain http, which has none of it, is built here: see
// initPlainHTTP). It does not contact LAPI: the bouncer must boot and
// enforce from its journal while LAPI is down.
func NewClient(cfg ClientConfig, logger *slog.Logger) (*Client, error) {
	init := (*csbouncer.StreamBouncer).Init
	if plainHTTPKey(cfg) {
		init = initPlainHTTP
	}
	return newClient(cfg, logger, init)
}

// newClient is NewClient with the initialisation of go-cs-bouncer's
// StreamBouncer given.
func newClient(cfg ClientConfig, logger *slog.Logger, init func(*csbouncer.StreamBouncer) error) (*Client, error) {
	if logger == nil {
		return nil, errors.New("lapi client: nil logger")
	}
	logger = logger.With("component", "lapi")
	routeLibraryLogs(logger)

	ua := cfg.UserAgent
	if ua == "" {
		ua = DefaultUserAgent
	}
	insecure := cfg.InsecureSkipVerify
	sb := &csbouncer.StreamBouncer{
		APIKey:                 cfg.APIKey,
		APIUrl:                 cfg.APIURL,
		InsecureSkipVerify:     &insecure,
		CertPath:               cfg.CertPath,
		KeyPath:                cfg.KeyPath,
		CAPath:                 cfg.CACertPath,
		UserAgent:              ua,
		Scopes:                 cfg.Scopes,
		Origins:                cfg.Origins,
		ScenariosContaining:    cfg.ScenariosContaining,
		ScenariosNotContaining: cfg.ScenariosNotContaining,
		// Unused (we never call Run) but Init warns when it is empty.
		TickerInterval: "10s",
	}
	if err := init(sb); err != nil {
		return nil, fmt.Errorf("lapi client for %s: %w", cfg.APIURL, err)
	}
	setReadBuffer(sb.APIClient.GetClient())
	c := &Client{api: sb.APIClient, opts: sb.Opts, idle: cfg.IdleTimeout, maxBody: cfg.MaxResponseBytes}
	if c.idle <= 0 {
		c.idle = DefaultIdleTimeout
	}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxResponseBytes
	}
	return c, nil
}

// plainHTTPKey reports whether cfg is an API key over plain http with no
// TLS file named: the one case where go-cs-bouncer has nothing to handle. A
// ca_cert_path is left to the library even then, which refuses one it
// cannot read, as upstream does.
func plainHTTPKey(cfg ClientConfig) bool {
	return strings.HasPrefix(cfg.APIURL, "http://") && cfg.APIKey != "" &&
		cfg.CertPath == "" && cfg.KeyPath == "" && cfg.CACertPath == ""
}

// initPlainHTTP is sb.Init for plainHTTPKey: the same options and the same
// API-key client, without the system's CA certificates, which Init loads
// whatever the scheme (≈30 ms, on the way to the first pull, and of no use
// without TLS). TestPlainHTTPSameAsLibrary holds the two to the same
// requests.
func initPlainHTTP(sb *csbouncer.StreamBouncer) error {
	if !strings.HasSuffix(sb.APIUrl, "/") {
		sb.APIUrl += "/"
	}
	u, err := url.Parse(sb.APIUrl)
	if err != nil {
		return fmt.Errorf("local API Url '%s': %w", sb.APIUrl, err)
	}
	join := func(l []string) string {
		if l == nil {
			return ""
		}
		return strings.Join(l, ",")
	}
	sb.Opts.Scopes, sb.Opts.Origins = join(sb.Scopes), join(sb.Origins)
	sb.Opts.ScenariosContaining, sb.Opts.ScenariosNotContaining = join(sb.ScenariosContaining), join(sb.ScenariosNotContaining)
	t := &apiclient.APIKeyTransport{APIKey: sb.APIKey}
	sb.APIClient, err = apiclient.NewDefaultClient(u, "v1", sb.UserAgent, t.Client())
	return err
}

// readBufferSize is the transport's read buffer per connection. LAPI
// streams a startup answer in 2 KiB HTTP chunks, which the chunked reader
// takes through that buffer: at the default 4 KiB, a read syscall for every
// 4 KiB, ~3600 for a 100k-decision answer.
const readBufferSize = 64 << 10

// setReadBuffer sets the read buffer of the transports go-cs-bouncer
// builds: an APIKeyTransport over http.DefaultTransport (given a copy of
// its own, the global one left alone) or over an *http.Transport, or an
// *http.Transport for certificate auth.
func setReadBuffer(hc *http.Client) {
	t := hc.Transport
	if k, ok := t.(*apiclient.APIKeyTransport); ok {
		if k.Transport == nil {
			if d, ok := http.DefaultTransport.(*http.Transport); ok {
				k.Transport = d.Clone()
			}
		}
		t = k.Transport
	}
	if ht, ok := t.(*http.Transport); ok {
		ht.ReadBufferSize = readBufferSize
	}
}

// APIClient returns go-cs-bouncer's API client, for the usage-metrics push.
func (c *Client) APIClient() *apiclient.ApiClient { return c.api }

// Requests is the number of stream pulls attempted (lapi_requests_total).
func (c *Client) Requests() uint64 { return c.requests.Load() }

// Failures is the number of pulls that failed for reasons other than our own
// cancellation (lapi_requests_failures_total).
func (c *Client) Failures() uint64 { return c.failures.Load() }
