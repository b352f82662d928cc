package freeport

import (
	"net"
	"testing"
)

func TestPick(t *testing.T) {
	seen := map[int]bool{}
	for range 20 {
		p, err := Pick()
		if err != nil {
			t.Fatal(err)
		}
		if p < low || p >= high {
			t.Fatalf("port %d outside [%d, %d)", p, low, high)
		}
		seen[p] = true
	}
	if len(seen) < 10 {
		t.Errorf("20 picks gave only %d ports", len(seen))
	}
	a, err := Addr()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", a)
	if err != nil {
		t.Fatalf("the picked address does not bind: %v", err)
	}
	l.Close()
}
