package device

import (
	"bytes"
	"testing"

	"github.com/ibcm-project/ibcm/remote/frame"
)

// Shell output already queued goes out as one frame, in order, up to frame.MaxData; what
// cannot join it (another source, a frame too large) comes back to be handled next, and
// nothing is waited for.
func TestCoalesceQueuedShellOutput(t *testing.T) {
	s := &session{events: make(chan event, 64)}
	data := func(src int, p string) event {
		return event{src: src, f: frame.Frame{Type: frame.Data, Payload: []byte(p)}}
	}
	s.events <- data(fromShell, "b")
	s.events <- data(fromShell, "c")
	s.events <- data(fromHelper, "typed")
	s.events <- data(fromShell, "d")
	e := data(fromShell, "a")
	next := s.coalesce(&e)
	if string(e.f.Payload) != "abc" || next == nil || next.src != fromHelper {
		t.Fatalf("coalesced %q, next %+v", e.f.Payload, next)
	}
	if len(s.events) != 1 {
		t.Fatalf("%d events left, want the later shell output still queued", len(s.events))
	}
	// Nothing queued: nothing waited for.
	<-s.events
	e = data(fromShell, "x")
	if next := s.coalesce(&e); next != nil || string(e.f.Payload) != "x" {
		t.Fatalf("alone: %q %+v", e.f.Payload, next)
	}
	// A frame never grows past frame.MaxData.
	big := bytes.Repeat([]byte("y"), frame.MaxData-1)
	s.events <- data(fromShell, "zz")
	e = event{src: fromShell, f: frame.Frame{Type: frame.Data, Payload: big}}
	if next := s.coalesce(&e); next == nil || len(e.f.Payload) != frame.MaxData-1 || string(next.f.Payload) != "zz" {
		t.Fatalf("over the limit: %d bytes, next %+v", len(e.f.Payload), next)
	}
	// Not output: untouched.
	e = data(fromHelper, "k")
	s.events <- data(fromShell, "o")
	if next := s.coalesce(&e); next != nil || len(s.events) != 1 {
		t.Fatal("a helper's frame was coalesced")
	}
}
