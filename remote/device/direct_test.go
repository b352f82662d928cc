package device

import (
	"context"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/freeport"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// On the intranet with a direct ticket, the session port listens while the session is
// pending: a preamble naming another ticket is refused, the right one wins over a relay
// that has not answered, and the port closes once the session has started.
func TestDirectTransport(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser, rc.AllowDirect, rc.MaxDuration = true, false, true, "2s"
	port, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	rc.DirectPort = port
	e := newEnv(t, rc)
	relayCalled := make(chan struct{}, 1)
	e.host.c.Relay = func(ctx context.Context, _, _ string) (io.ReadWriteCloser, error) {
		relayCalled <- struct{}{}
		<-ctx.Done() // a relay that never answers
		return nil, ctx.Err()
	}
	e.host.c.Intranet = func() bool { return true }
	e.host.c.DirectAddrs = func() []net.IP { return []net.IP{net.IPv4(127, 0, 0, 1)} }
	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: deviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(e.alice.Leaf),
		Role: ticket.RoleHelper, Mode: ticket.ModeUnattended, Modes: []string{ticket.ModeUnattended}, Direct: true, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(time.Minute)}
	if err := e.host.Request(context.Background(), e.sign(tk, e.mp)); err != nil {
		t.Fatal(err)
	}
	<-relayCalled // the relay is tried in parallel
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var c net.Conn
	deadline := time.Now().Add(10 * time.Second)
	for { // the listener opens after the ticket checks out: poll the port itself
		c, err = net.Dial("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	e2e.WritePreamble(c, ticket.NewID()) // another ticket
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a connection naming another ticket was kept")
	}
	c.Close()
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := e.direct(t, c, tk.ID)
	if c2, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c2.Close()
		t.Error("the session port is still open after the session started")
	}
	r := frame.NewReader(tc)
	if f, err := r.Next(); err != nil || f.Type != frame.Hello {
		t.Fatalf("hello %v %v", f.Type, err)
	}
	frame.WriteJSON(tc, frame.Hello, frame.Greeting{Rows: 24, Cols: 80})
	// max_duration ends it.
	end := e.rep.wait(t, wire.ReportEnded)
	if end.Outcome != wire.OutcomeCompleted || end.Message != "the session reached its maximum duration" {
		t.Errorf("ended %+v", end)
	}
}

// With the session port open, the relay leg waits directGrace: a helper that reaches the
// port within it wins without the relay ever being dialed (a relay leg that answers at
// once would otherwise win every race); without a session port the relay is dialed at once.
func TestDirectHeadStart(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser, rc.AllowDirect, rc.MaxDuration = true, false, true, "1s"
	port, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	rc.DirectPort = port
	e := newEnv(t, rc)
	relayCalled := make(chan time.Time, 4)
	e.host.c.Relay = func(ctx context.Context, _, _ string) (io.ReadWriteCloser, error) {
		relayCalled <- time.Now()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	e.host.c.Intranet = func() bool { return true }
	e.host.c.DirectAddrs = func() []net.IP { return []net.IP{net.IPv4(127, 0, 0, 1)} }
	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: deviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(e.alice.Leaf),
		Role: ticket.RoleHelper, Mode: ticket.ModeUnattended, Modes: []string{ticket.ModeUnattended}, Direct: true, MP: "mp1", IssuedAt: now, ExpiresAt: now.Add(time.Minute)}
	if err := e.host.Request(context.Background(), e.sign(tk, e.mp)); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var c net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err = net.Dial("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	e.direct(t, c, tk.ID)
	select {
	case <-relayCalled:
		t.Error("the relay was dialed although the direct connection came within the grace")
	case <-time.After(directGrace + 200*time.Millisecond):
	}
}

// A CRL that does not parse or verify is refused and never replaces the one held.
func FuzzCRLUpdate(f *testing.F) {
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.Add([]byte("not a CRL"))
	p := newPKIForFuzz()
	f.Fuzz(func(t *testing.T, b []byte) {
		c := e2e.NewCRL(p, "")
		if err := c.Update(b); err == nil {
			t.Fatalf("an unsigned CRL was accepted: %x", b)
		}
	})
}
