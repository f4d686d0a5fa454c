package lapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csbouncer "github.com/crowdsecurity/go-cs-bouncer"
)

const testKey = "0123456789abcdef-secret-key"

// fakeLAPI behaves like LAPI's /v1/decisions/stream for one bouncer key:
// 403 for a wrong key, the full set on startup=true, null lists otherwise.
type fakeLAPI struct {
	mu      sync.Mutex
	queries []url.Values
	agents  []string
	status  int // non-zero: answer with this status
}

func (f *fakeLAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.queries = append(f.queries, r.URL.Query())
	f.agents = append(f.agents, r.UserAgent())
	status := f.status
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path != "/v1/decisions/stream":
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"message":"not found"}`)
	case r.TLS == nil && r.Header.Get("X-Api-Key") != testKey:
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"message":"access forbidden"}`)
	case status != 0:
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"message":"boom"}`)
	case r.URL.Query().Get("startup") == "true":
		_, _ = io.WriteString(w, `{"deleted":[{"duration":"-1s","id":1,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.30"}],
			"new":[{"duration":"3h59m56.976421313s","id":2,"origin":"cscli","scenario":"manual","scope":"Ip","type":"ban","value":"192.0.2.10"}]}`)
	default:
		_, _ = io.WriteString(w, `{"deleted":null,"new":null}`)
	}
}

func (f *fakeLAPI) last() (url.Values, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.queries[len(f.queries)-1], f.agents[len(f.agents)-1]
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestClientPull(t *testing.T) {
	fake := &fakeLAPI{}
	srv := httptest.NewServer(fake)
	defer srv.Close()

	tests := []struct {
		name      string
		cfg       ClientConfig
		startup   bool
		status    int
		cancel    bool
		wantErr   string
		wantNew   int
		wantDel   int
		wantQuery url.Values
		wantFails uint64
	}{
		{name: "startup", cfg: ClientConfig{APIKey: testKey}, startup: true, wantNew: 1, wantDel: 1,
			wantQuery: url.Values{"startup": {"true"}}},
		{name: "delta null lists", cfg: ClientConfig{APIKey: testKey},
			wantQuery: url.Values{}},
		{name: "filters comma-joined", startup: true, wantNew: 1, wantDel: 1,
			cfg: ClientConfig{APIKey: testKey, Scopes: []string{"ip", "range"}, Origins: []string{"crowdsec", "lists"},
				ScenariosContaining: []string{"ssh", "http"}, ScenariosNotContaining: []string{"test"}},
			wantQuery: url.Values{"startup": {"true"}, "scopes": {"ip,range"}, "origins": {"crowdsec,lists"},
				"scenarios_containing": {"ssh,http"}, "scenarios_not_containing": {"test"}}},
		{name: "wrong key", cfg: ClientConfig{APIKey: "wrong"}, startup: true,
			wantErr: "pull decisions stream (startup=true)", wantFails: 1},
		{name: "server error", cfg: ClientConfig{APIKey: testKey}, status: http.StatusInternalServerError,
			wantErr: "pull decisions stream (startup=false)", wantFails: 1},
		{name: "cancelled is not a LAPI failure", cfg: ClientConfig{APIKey: testKey}, cancel: true,
			wantErr: "context canceled", wantFails: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake.mu.Lock()
			fake.status = tc.status
			fake.mu.Unlock()
			tc.cfg.APIURL = srv.URL // no trailing slash: Init must add it
			c, err := NewClient(tc.cfg, discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			if tc.cancel {
				cancel()
			}
			defer cancel()
			resp, err := c.Pull(ctx, tc.startup)
			if c.Requests() != 1 || c.Failures() != tc.wantFails {
				t.Errorf("requests %d failures %d, want 1 and %d", c.Requests(), c.Failures(), tc.wantFails)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), testKey) {
					t.Fatalf("error leaks the API key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.New) != tc.wantNew || len(resp.Deleted) != tc.wantDel {
				t.Errorf("new %d deleted %d, want %d and %d", len(resp.New), len(resp.Deleted), tc.wantNew, tc.wantDel)
			}
			q, ua := fake.last()
			// community_pull/additional_pull are CAPI knobs the apiclient
			// always sends as false; LAPI ignores them for bouncers.
			q.Del("community_pull")
			q.Del("additional_pull")
			if q.Encode() != tc.wantQuery.Encode() {
				t.Errorf("query %q, want %q", q.Encode(), tc.wantQuery.Encode())
			}
			if ua != DefaultUserAgent {
				t.Errorf("user agent %q, want %q", ua, DefaultUserAgent)
			}
		})
	}
}

func TestNewClientErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  ClientConfig
	}{
		{name: "no url", cfg: ClientConfig{APIKey: testKey}},
		{name: "no credentials", cfg: ClientConfig{APIURL: "http://127.0.0.1:1/"}},
		{name: "key and cert", cfg: ClientConfig{APIURL: "http://127.0.0.1:1/", APIKey: testKey, CertPath: "/x", KeyPath: "/y"}},
		{name: "missing cert files", cfg: ClientConfig{APIURL: "https://127.0.0.1:1/", CertPath: "/nonexistent/c", KeyPath: "/nonexistent/k"}},
		{name: "missing CA file, plain http", cfg: ClientConfig{APIURL: "http://127.0.0.1:1/", APIKey: testKey, CACertPath: "/nonexistent/ca.pem"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewClient(tc.cfg, discardLogger()); err == nil {
				t.Fatal("NewClient succeeded, want an error")
			}
		})
	}
}

// TestClientLibraryLogs checks that go-cs-bouncer's logrus output reaches
// our slog logger and that the API key appears nowhere in it.
func TestClientLibraryLogs(t *testing.T) {
	srv := httptest.NewServer(&fakeLAPI{})
	defer srv.Close()
	var buf syncBuffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// The library's own initialisation (a plain http key skips it; TLS
	// configurations use it) is what logs.
	c, err := newClient(ClientConfig{APIURL: srv.URL, APIKey: testKey}, logger, (*csbouncer.StreamBouncer).Init)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pull(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, "Using API key auth") || !strings.Contains(out, "component=lapi") {
		t.Errorf("library log not routed to slog; got:\n%s", out)
	}
	if strings.Contains(out, testKey) {
		t.Errorf("API key logged:\n%s", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestClientTLSClientCert runs the fake LAPI behind TLS that requires a
// client certificate from our CA, like LAPI's cert auth for bouncers.
func TestClientTLSClientCert(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t, "test ca")
	otherCA, otherKey := newCA(t, "other ca")
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	writePEM(t, filepath.Join(dir, "other-ca.pem"), "CERTIFICATE", otherCA.Raw)
	serverCert := newLeaf(t, ca, caKey, "localhost", x509.ExtKeyUsageServerAuth, dir, "server")
	newLeaf(t, ca, caKey, "bouncer", x509.ExtKeyUsageClientAuth, dir, "client")
	newLeaf(t, otherCA, otherKey, "intruder", x509.ExtKeyUsageClientAuth, dir, "intruder")

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv := httptest.NewUnstartedServer(&fakeLAPI{})
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}
	// rejected handshakes are the point of some cases: keep them off stderr
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()

	p := func(name string) string { return filepath.Join(dir, name) }
	tests := []struct {
		name    string
		cfg     ClientConfig
		wantErr bool
	}{
		{name: "client cert from our CA", cfg: ClientConfig{CertPath: p("client.pem"), KeyPath: p("client-key.pem"), CACertPath: p("ca.pem")}},
		{name: "no client cert", cfg: ClientConfig{APIKey: testKey, CACertPath: p("ca.pem")}, wantErr: true},
		{name: "client cert from another CA", cfg: ClientConfig{CertPath: p("intruder.pem"), KeyPath: p("intruder-key.pem"), CACertPath: p("ca.pem")}, wantErr: true},
		{name: "server not trusted", cfg: ClientConfig{CertPath: p("client.pem"), KeyPath: p("client-key.pem"), CACertPath: p("other-ca.pem")}, wantErr: true},
		{name: "insecure skip verify", cfg: ClientConfig{CertPath: p("client.pem"), KeyPath: p("client-key.pem"), InsecureSkipVerify: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.APIURL = srv.URL + "/"
			c, err := NewClient(tc.cfg, discardLogger())
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Pull(t.Context(), true)
			if tc.wantErr {
				if err == nil {
					t.Fatal("pull succeeded, want a TLS failure")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.New) != 1 {
				t.Fatalf("new = %d decisions, want 1", len(resp.New))
			}
		})
	}
}

func newCA(t *testing.T, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// newLeaf issues a certificate for 127.0.0.1/localhost, writes NAME.pem and
// NAME-key.pem into dir, and returns it as a tls.Certificate.
func newLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage, dir, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, OrganizationalUnit: []string{"bouncer-ou"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	writePEM(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", keyDER)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// For an API key over plain http, NewClient builds the client itself
// (go-cs-bouncer would load the system's CA certificates first, for
// nothing): it must send LAPI exactly what the library's client sends.
func TestPlainHTTPSameAsLibrary(t *testing.T) {
	type request struct{ method, uri, key, agent string }
	var mu sync.Mutex
	var got []request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, request{r.Method, r.URL.RequestURI(), r.Header.Get("X-Api-Key"), r.Header.Get("User-Agent")})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"new":null,"deleted":null}`))
	}))
	defer srv.Close()
	for _, cfg := range []ClientConfig{
		{APIURL: srv.URL, APIKey: testKey},
		{APIURL: srv.URL + "/", APIKey: testKey, UserAgent: "cs-journal-bouncer/1.2.3",
			Scopes: []string{"ip", "range"}, Origins: []string{"crowdsec", "lists"},
			ScenariosContaining: []string{"ssh"}, ScenariosNotContaining: []string{"http", "smb"}},
	} {
		if !plainHTTPKey(cfg) {
			t.Fatalf("%s with a key is not plain http", cfg.APIURL)
		}
		got = nil
		for _, init := range []func(*csbouncer.StreamBouncer) error{initPlainHTTP, (*csbouncer.StreamBouncer).Init} {
			c, err := newClient(cfg, discardLogger(), init)
			if err != nil {
				t.Fatal(err)
			}
			for _, startup := range []bool{true, false} {
				if _, _, _, err := c.PullBatch(t.Context(), startup, NormalizeOptions{}, nil); err != nil {
					t.Fatal(err)
				}
			}
		}
		if len(got) != 4 {
			t.Fatalf("%d requests, want 4", len(got))
		}
		for i := range 2 {
			if got[i] != got[i+2] {
				t.Errorf("request %d: ours %+v, library's %+v", i, got[i], got[i+2])
			}
		}
		if got[0].key != testKey || !strings.Contains(got[0].uri, "startup=true") {
			t.Errorf("first request %+v: want the key and startup=true", got[0])
		}
	}
}
