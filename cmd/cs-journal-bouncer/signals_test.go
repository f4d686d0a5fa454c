package main

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cs-journal-bouncer/cs-journal-bouncer/internal/config"
)

func loadConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := config.Load(path, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return res.Config
}

func TestChangedKeys(t *testing.T) {
	const base = "mode: iptables\napi_url: http://127.0.0.1:8080/\napi_key: k1\n"
	tests := []struct {
		name, next string
		want       []string
	}{
		{"same", base, nil},
		{"same, written differently", base + "deny_action: drop\nlog_max_files: 3\n", nil},
		{"deny action and heal interval", base + "deny_action: REJECT\nheal:\n  interval: 2s\n", []string{"deny_action", "heal.interval"}},
		{"api key (masked in the dump)", strings.Replace(base, "k1", "k2", 1), []string{"api_key"}},
		{"chains", base + "iptables_chains: [INPUT, FORWARD]\n", []string{"iptables_chains", "iptables_v4_chains", "iptables_v6_chains"}},
	}
	old := loadConfig(t, base)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := changedKeys(old, loadConfig(t, tc.next))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("changedKeys = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestLogWriterNeverBlocks: with a reader that does not read, writes still
// return; lines beyond the queue are dropped and counted once the reader
// reads again; Close returns even while the reader is stuck.
func TestLogWriterNeverBlocks(t *testing.T) {
	pr, pw := io.Pipe()
	lw := newLogWriter(pw)
	const n = logQueueLines * 3
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for range n {
			_, _ = lw.Write([]byte("line\n"))
		}
	}()
	select {
	case <-wrote:
	case <-time.After(30 * time.Second):
		t.Fatal("Write blocked on a reader that does not read")
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	got, dropped := 0, ""
	for got < logQueueLines || dropped == "" {
		l := <-lines
		switch {
		case l == "line":
			got++
		case strings.Contains(l, "log lines dropped"):
			dropped = l
		default:
			t.Fatalf("unexpected line %q", l)
		}
	}
	// One line sat in the drain goroutine's blocked Write, up to a queue's
	// worth waited; the rest were dropped.
	if got > logQueueLines+1 || !strings.Contains(dropped, " log lines dropped") {
		t.Fatalf("%d lines through, dropped note %q", got, dropped)
	}

	// A stuck reader again: Close gives up after its wait.
	_, _ = lw.Write([]byte("line\n"))
	closed := make(chan struct{})
	go func() { lw.Close(100 * time.Millisecond); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close blocked on a stuck reader")
	}
	if _, err := lw.Write([]byte("after close\n")); err != nil {
		t.Fatalf("Write after Close = %v", err)
	}
	_ = pr.Close()
}
