package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

func TestWaitGuest(t *testing.T) {
	seq := func(ss ...wire.Session) func(context.Context) (wire.Session, error) {
		i := 0
		return func(context.Context) (wire.Session, error) {
			s := ss[min(i, len(ss)-1)]
			i++
			return s, nil
		}
	}
	pending := wire.Session{ID: "s1", State: wire.SessionRequested}
	joined := wire.Session{ID: "s1", State: wire.SessionRequested, Sharer: "alice", DeviceName: "not enrolled: guest alice"}
	s, err := waitGuest(context.Background(), seq(pending, joined), time.Now().Add(time.Minute))
	if err != nil || s.Sharer != "alice" {
		t.Errorf("waitGuest = %+v, %v", s, err)
	}
	ended := wire.Session{ID: "s1", State: wire.SessionEnded, Outcome: wire.OutcomeFailed}
	if _, err := waitGuest(context.Background(), seq(ended), time.Now().Add(time.Minute)); err == nil || !strings.Contains(err.Error(), "ended") {
		t.Errorf("an ended session: %v", err)
	}
	if _, err := waitGuest(context.Background(), seq(pending), time.Now().Add(-time.Second)); err == nil || !strings.Contains(err.Error(), "in time") {
		t.Errorf("past the deadline: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := waitGuest(ctx, seq(pending), time.Now().Add(time.Minute)); err == nil {
		t.Error("a cancelled wait returned no error")
	}
}
