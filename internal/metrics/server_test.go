package metrics

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// listenAddr waits for ListenAndServe's "listening" log line and returns
// the address it names.
func listenAddr(t *testing.T, rl *recordLog) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		rl.mu.Lock()
		for _, rec := range rl.recs {
			var addr string
			rec.Attrs(func(a slog.Attr) bool {
				if a.Key == "addr" {
					addr = a.Value.String()
				}
				return true
			})
			if addr != "" {
				rl.mu.Unlock()
				return addr
			}
		}
		rl.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no listening line logged")
	return ""
}

func TestListenAndServe(t *testing.T) {
	m := New(Sources{}, Options{})
	rl := &recordLog{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ListenAndServe(ctx, "127.0.0.1:0", NewHandler(m), slog.New(rl)) }()
	addr := listenAddr(t, rl)

	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/metrics", 200, "cs_journal_bouncer_kernel_read_errors_total 0"},
		{"/health", 503, `"status": "unhealthy"`},
		{"/nope", 404, ""},
	} {
		resp, err := http.Get("http://" + addr + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.body) {
			t.Errorf("GET %s = %d %q, want %d containing %q", tc.path, resp.StatusCode, body, tc.code, tc.body)
		}
	}

	// The address is taken: a second listener fails at once, naming it.
	err := ListenAndServe(t.Context(), addr, NewHandler(m), nil)
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("second listener on %s = %v, want an error naming the address", addr, err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ListenAndServe after cancel = %v, want nil", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("still listening after cancel")
	}
}
