package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// ErrNoDaemon is returned by Client methods when no daemon answers: the
// socket file is absent, or nothing accepts on it (a stale socket). The CLI
// then reads the journal file itself.
var ErrNoDaemon = errors.New("no daemon on the admin socket")

// Client is a Service that asks the daemon over its admin socket.
type Client struct {
	path string
	hc   *http.Client
}

var _ Service = (*Client)(nil)

// NewClient returns a client of the socket at path (see SocketPath).
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	return &Client{path: path, hc: &http.Client{Transport: tr}}
}

// Stats implements Service.
func (c *Client) Stats(ctx context.Context) (st Stats, err error) {
	return st, c.get(ctx, "/v1/journal/stats", nil, &st)
}

// Show implements Service.
func (c *Client) Show(ctx context.Context, target netip.Prefix) (sh Show, err error) {
	return sh, c.get(ctx, "/v1/journal/show", url.Values{"target": {target.String()}}, &sh)
}

// List implements Service.
func (c *Client) List(ctx context.Context) (es []Entry, err error) {
	return es, c.get(ctx, "/v1/journal/list", nil, &es)
}

// Verify implements Service.
func (c *Client) Verify(ctx context.Context) (rep journal.VerifyReport, err error) {
	return rep, c.get(ctx, "/v1/journal/verify", nil, &rep)
}

// Check implements Service.
func (c *Client) Check(ctx context.Context) (ch Check, err error) {
	return ch, c.get(ctx, "/v1/check", nil, &ch)
}

func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	u := url.URL{Scheme: "http", Host: "admin", Path: path, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("admin %s: %w", path, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if noDaemon(err) {
			return fmt.Errorf("admin socket %s: %w: %w", c.path, ErrNoDaemon, err)
		}
		return fmt.Errorf("admin socket %s: %s: %w", c.path, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("admin %s: read reply: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var ae apiError
		if json.Unmarshal(body, &ae) == nil && ae.Error != "" {
			return fmt.Errorf("daemon: %s", ae.Error)
		}
		return fmt.Errorf("admin %s: status %s", path, resp.Status)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin %s: decode reply: %w", path, err)
	}
	return nil
}

// noDaemon sorts dial errors that mean "nobody is there". Keep this the
// one place that does.
func noDaemon(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOENT)
}
