package sdnotifytest

import (
	"maps"
	"net"
	"testing"
	"time"
)

func TestHasAndFields(t *testing.T) {
	tests := []struct {
		msg, kv    string
		wantHas    bool
		wantFields map[string]string
	}{
		{"READY=1\nSTATUS=up", "READY=1", true, map[string]string{"READY": "1", "STATUS": "up"}},
		{"READY=1\nSTATUS=up", "STATUS=", true, map[string]string{"READY": "1", "STATUS": "up"}},
		{"STATUS=READY=1", "READY=1", false, map[string]string{"STATUS": "READY=1"}},
		{"WATCHDOG=1", "WATCHDOG=", true, map[string]string{"WATCHDOG": "1"}},
		{"STOPPING=1", "READY=1", false, map[string]string{"STOPPING": "1"}},
		{"", "READY=1", false, map[string]string{}},
	}
	for _, tt := range tests {
		if got := Has(tt.msg, tt.kv); got != tt.wantHas {
			t.Errorf("Has(%q, %q) = %v, want %v", tt.msg, tt.kv, got, tt.wantHas)
		}
		if got := Fields(tt.msg); !maps.Equal(got, tt.wantFields) {
			t.Errorf("Fields(%q) = %q, want %q", tt.msg, got, tt.wantFields)
		}
	}
}

func TestListenReceivesDatagrams(t *testing.T) {
	path, msgs := Listen(t)
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, m := range []string{"STATUS=one", "READY=1\nSTATUS=two"} {
		if _, err := conn.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if got := WaitFor(t, msgs, 10*time.Second, "READY=1"); got != "READY=1\nSTATUS=two" {
		t.Fatalf("WaitFor = %q", got)
	}
}
