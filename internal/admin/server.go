package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// SocketName is the admin socket's file name, in the journal's directory
// (0700, root's): being able to connect is the authorization.
const SocketName = "admin.sock"

// ErrInUse is returned by Serve when another process already answers on
// the socket path: most likely a second daemon on the same journal.
var ErrInUse = errors.New("admin socket in use by another process")

// SocketPath returns the admin socket's path for a journal file.
func SocketPath(journalPath string) string {
	return filepath.Join(filepath.Dir(journalPath), SocketName)
}

// Serve answers the admin API on a unix socket at path until ctx ends,
// then removes the socket and returns nil. A stale socket left by a crashed
// process (nothing accepts on it) is removed first; a live one is
// ErrInUse. The socket is mode 0600.
//
// Endpoints (GET, JSON bodies; errors are {"error": "..."} with status 400
// for a bad request and 500 otherwise):
//
//	/v1/journal/stats               Stats
//	/v1/journal/show?target=IP|CIDR Show
//	/v1/journal/list                []Entry
//	/v1/journal/export              []Entry (same as list)
//	/v1/journal/verify              journal.VerifyReport
//	/v1/check                       Check
func Serve(ctx context.Context, path string, svc Service, log *slog.Logger) error {
	log = log.With("component", "admin", "socket", path)
	if err := removeStale(path); err != nil {
		return err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("admin socket %s: listen: %w", path, err)
	}
	// Listen creates the file under the umask; the directory (0700) already
	// keeps others out in the instant before this chmod.
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return fmt.Errorf("admin socket %s: chmod: %w", path, err)
	}
	srv := &http.Server{
		Handler:           Handler(svc),
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	log.Info("admin socket listening")
	select {
	case err := <-errc:
		_ = os.Remove(path)
		return fmt.Errorf("admin socket %s: serve: %w", path, err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	<-errc // http.ErrServerClosed
	// The listener unlinks the socket on close; make sure even if not.
	if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return fmt.Errorf("admin socket %s: shutdown: %w", path, err)
	}
	return nil
}

// removeStale removes a socket file nobody accepts on, and refuses one
// somebody does.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("admin socket %s: exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("admin socket %s: %w", path, ErrInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("admin socket %s: probe: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("admin socket %s: remove stale: %w", path, err)
	}
	return nil
}

// Handler returns the admin API's HTTP handler over svc (see Serve).
func Handler(svc Service) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/journal/stats", func(w http.ResponseWriter, r *http.Request) {
		v, err := svc.Stats(r.Context())
		reply(w, v, err)
	})
	mux.HandleFunc("GET /v1/journal/show", func(w http.ResponseWriter, r *http.Request) {
		t, err := ParseTarget(r.URL.Query().Get("target"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{Error: fmt.Sprintf("target: %v", err)})
			return
		}
		v, err := svc.Show(r.Context(), t)
		reply(w, v, err)
	})
	list := func(w http.ResponseWriter, r *http.Request) {
		v, err := svc.List(r.Context())
		reply(w, v, err)
	}
	mux.HandleFunc("GET /v1/journal/list", list)
	mux.HandleFunc("GET /v1/journal/export", list)
	mux.HandleFunc("GET /v1/journal/verify", func(w http.ResponseWriter, r *http.Request) {
		v, err := svc.Verify(r.Context())
		reply(w, v, err)
	})
	mux.HandleFunc("GET /v1/check", func(w http.ResponseWriter, r *http.Request) {
		v, err := svc.Check(r.Context())
		reply(w, v, err)
	})
	return mux
}

// apiError is the body of a failed request.
type apiError struct {
	Error string `json:"error"`
}

func reply[T any](w http.ResponseWriter, v T, err error) {
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// The client sees a truncated body as a decode error; nothing else to do.
	_ = json.NewEncoder(w).Encode(v)
}
