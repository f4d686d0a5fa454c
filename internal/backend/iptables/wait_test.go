package iptables

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A kernel that never answers must not hold the enforcer for the socket's
// 30 s receive timeout: the wait ends with the caller's context.
func TestNetlinkWaitFollowsContext(t *testing.T) {
	s, err := openSocket()
	if err != nil {
		t.Fatalf("open netfilter netlink socket: %v", err)
	}
	defer s.close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.wait(ctx) }() // nothing was sent: no reply will come
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("wait = %v, want the context's deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("wait ignored its context")
	}
}
