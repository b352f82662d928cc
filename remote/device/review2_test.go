package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/freeport"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// security review 2: an attacker on the intranet who reaches the session port first, with
// the ticket id (the preamble crosses the intranet in clear) and a genuine certificate of
// the site (another user's, a device's, or the ticket's user with another key), is refused
// in the end-to-end handshake; the port stays open for the ticket's helper, who then wins.
// With the relay head start the port is open longer before the relay is dialed: this is
// what makes that wait harmless.
func TestDirectPortRaceNeedsTheTicketsKey(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser, rc.AllowDirect, rc.MaxDuration = true, false, true, "1s"
	port, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	rc.DirectPort = port
	e := newEnv(t, rc)
	e.host.c.Relay = func(ctx context.Context, _, _ string) (io.ReadWriteCloser, error) {
		<-ctx.Done() // a relay that never answers: only the session port is raced
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
	dial := func() net.Conn {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				return c
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
		}
	}
	bob, _ := e.pki.leaf(t, "urn:ibcm:user:bob", x509.ExtKeyUsageClientAuth)
	aliceOtherKey, _ := e.pki.leaf(t, "urn:ibcm:user:alice", x509.ExtKeyUsageClientAuth)
	otherDevice, _ := e.pki.leaf(t, "urn:ibcm:device:"+ticket.NewID(), x509.ExtKeyUsageClientAuth)
	for name, cert := range map[string]tls.Certificate{"another user": bob, "alice's other key": aliceOtherKey, "a device": otherDevice} {
		c := dial()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_ = e2e.WritePreamble(c, tk.ID)
		tc := tls.Client(c, e2e.HelperConfig(cert, e.pki.roots, deviceID, nil, nil))
		// TLS 1.3: the client's certificate is checked after the client's handshake ends;
		// the refusal is the first read.
		err := tc.Handshake()
		if err == nil {
			_, err = tc.Read(make([]byte, 1))
		}
		if err == nil {
			t.Errorf("%s: the session port served it", name)
		}
		c.Close()
	}
	c := dial() // still open
	e.direct(t, c, tk.ID)
}
