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
	"os"
	"syscall"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/journal"
)

// ErrNoDaemon is returned by Client methods when no daemon answers: the
// socket file is absent, or nothing accepts on it (a stale socket). The CLI
// then reads the journal file itself.
var ErrNoDaemon = errors.New("no daemon on the admin socket")

// ErrUntrustedSocket is returned by Client methods when the socket file, or
// the process listening on it, belongs to a user other than root and the
// caller: its answers could be forged (a journal_path in a directory others
// can write lets them plant a socket there), so the client does not send a
// request, nor falls back to reading the journal.
var ErrUntrustedSocket = errors.New("admin socket is not owned by root or by us")

// DefaultClientTimeout bounds one request. The daemon answers from its
// enforcer loop, which goes round at least every heal.interval; an answer
// this late means a wedged daemon, and the CLI must say so rather than hang.
const DefaultClientTimeout = 30 * time.Second

// Client is a Service that asks the daemon over its admin socket.
type Client struct {
	path    string
	hc      *http.Client
	timeout time.Duration
}

var _ Service = (*Client)(nil)

// NewClient returns a client of the socket at path (see SocketPath). Each
// request times out after DefaultClientTimeout.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialTrusted(ctx, path)
		},
		DisableKeepAlives: true,
	}
	return &Client{path: path, hc: &http.Client{Transport: tr}, timeout: DefaultClientTimeout}
}

// trustedUID reports whether a socket owned by (or served by a process of)
// uid may be believed: root's, or our own (a process of our uid can
// already do anything we can).
func trustedUID(uid uint32) bool { return uid == 0 || uid == uint32(os.Getuid()) }

// dialTrusted connects to the socket after checking who owns the file and,
// once connected, who listens on it (SO_PEERCRED: the file check alone
// races with a socket swapped in between).
func dialTrusted(ctx context.Context, path string) (net.Conn, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err // ENOENT: no daemon
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("%w: %s is not a socket", ErrUntrustedSocket, path)
	}
	if !trustedUID(st.Uid) {
		return nil, fmt.Errorf("%w: %s is owned by uid %d", ErrUntrustedSocket, path, st.Uid)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	uid, err := peerUID(c)
	if err == nil && !trustedUID(uid) {
		err = fmt.Errorf("%w: the process listening on %s runs as uid %d", ErrUntrustedSocket, path, uid)
	}
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

func peerUID(c net.Conn) (uint32, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, fmt.Errorf("%w: not a unix connection", ErrUntrustedSocket)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("admin socket peer credentials: %w", err)
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("admin socket peer credentials: %w", err)
	}
	if credErr != nil {
		return 0, fmt.Errorf("admin socket peer credentials: %w", credErr)
	}
	return cred.Uid, nil
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
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	u := url.URL{Scheme: "http", Host: "admin", Path: path, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("admin %s: %w", path, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		switch {
		case errors.Is(err, ErrUntrustedSocket):
			return fmt.Errorf("admin socket %s: refusing to talk to it: %w", c.path, err)
		case noDaemon(err):
			return fmt.Errorf("admin socket %s: %w: %w", c.path, ErrNoDaemon, err)
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			return fmt.Errorf("admin socket %s: %s: the daemon did not answer within %s (is it wedged?): %w", c.path, path, c.timeout, ctx.Err())
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
