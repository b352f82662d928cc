package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/device"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// A whole session through the agent: a session-requested event with a ticket signed by
// an MP of the site, the device's relay leg upgraded over its MP connection, the
// end-to-end TLS with a user certificate of the site's CA, a shell that answers the
// helper, and the end reported to the MP.
func TestAgentServesASessionThroughTheRelay(t *testing.T) {
	s := catest.Start(t)
	dir := t.TempDir()
	id := enrolled(t, s, dir)
	ctx := context.Background()

	// The helper's certificate: a user of the site, key made here.
	if err := s.CA.Access().AddUser(ctx, access.User{Name: "alice", DisplayName: "Alice"}, "admin:test"); err != nil {
		t.Fatal(err)
	}
	ukey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"}}, ukey)
	uchain, err := s.CA.Enroll(ctx, s.Token(t, ca.TokenSpec{Profile: ca.Admin, Subject: "alice"}), string(ca.Admin), csr)
	if err != nil {
		t.Fatal(err)
	}
	ucert := tls.Certificate{PrivateKey: ukey, Leaf: uchain[0]}
	for _, c := range uchain {
		ucert.Certificate = append(ucert.Certificate, c.Raw)
	}

	m := startFakeMP(t, s)
	helperOut := make(chan string, 1)
	m.relayHook = func(c io.ReadWriteCloser) { // the helper's end, spliced by the "MP"
		tc := tls.Client(asNetConn(c), e2e.HelperConfig(ucert, id.Roots, id.DeviceID, nil, nil))
		defer tc.Close()
		if err := tc.Handshake(); err != nil {
			helperOut <- "handshake: " + err.Error()
			return
		}
		r := frame.NewReader(tc)
		if f, err := r.Next(); err != nil || f.Type != frame.Hello {
			helperOut <- "no hello"
			return
		}
		frame.WriteJSON(tc, frame.Hello, frame.Greeting{Rows: 24, Cols: 80})
		frame.Write(tc, frame.Data, []byte("echo AGENT$((6*7))\r"))
		var out []byte
		re := regexp.MustCompile(`AGENT42`)
		for !re.Match(out) {
			f, err := r.Next()
			if err != nil {
				helperOut <- "read: " + err.Error() + ": " + string(out)
				return
			}
			if f.Type == frame.Data {
				out = append(out, f.Payload...)
			}
		}
		frame.WriteJSON(tc, frame.End, frame.Ending{Outcome: wire.OutcomeCompleted})
		helperOut <- string(out)
	}
	a, err := newAgent(t, dir, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a.o.Shells = "direct"
	a.policy = &cachedPolicy{Policy: wire.Policy{RemoteControl: wire.RemoteControlSettings{Enabled: true, AccessLevel: "full", AllowUnattended: true, ConsentTimeout: "5s"}}}
	a.remote.mp = &session{a: a, base: m.srv.URL, http: mpClient(id, "", a.remote.crl.Revoked)}
	a.refreshCRL(ctx, true) // also learns the site code from the MP's certificate

	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: id.DeviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(uchain[0]),
		Card: ticket.Card{User: "alice", DisplayName: "Alice"}, Role: ticket.RoleHelper, Mode: ticket.ModeUnattended,
		Modes: []string{ticket.ModeView, ticket.ModeControl, ticket.ModeUnattended}, MP: "mp", IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
	signed, err := ticket.Sign(tk, m.key, m.chain)
	if err != nil {
		t.Fatal(err)
	}
	a.onSessionEvent(wire.Event{Type: wire.EventSessionRequested, Data: map[string]string{wire.EventDataTicket: signed}})
	select {
	case out := <-helperOut:
		if !regexp.MustCompile(`AGENT42`).MatchString(out) {
			t.Fatalf("the helper saw %q", out)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the session did not run")
	}
	events := map[string]wire.SessionReport{}
	deadline := time.After(20 * time.Second)
	for events[wire.ReportEnded].Event == "" {
		select {
		case r := <-m.reports:
			events[r.Event] = r
		case <-deadline:
			t.Fatalf("reports %v", events)
		}
	}
	if events[wire.ReportStarted].Transport != wire.TransportRelay || events[wire.ReportEnded].Outcome != wire.OutcomeCompleted || events[wire.ReportEnded].BytesOut == 0 {
		t.Errorf("reports %+v", events)
	}
}

// A running agent serves its share socket (0666, in a directory of its own, 0755).
func TestAgentServesTheShareSocket(t *testing.T) {
	s := catest.Start(t)
	dir := t.TempDir()
	enrolled(t, s, dir)
	sockDir := filepath.Join(t.TempDir(), "run")
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 127.0.0.1:9\n"), 0o600)
	a, err := New(Options{Dir: dir, ResolvConf: resolv, ShareSocket: filepath.Join(sockDir, "share.sock"), Shells: "direct"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, err := device.Answer(context.Background(), filepath.Join(sockDir, "share.sock"), "", true)
		if code == device.CodeNoPrompt {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the share socket does not answer: %s %v", code, err)
		}
		time.Sleep(20 * time.Millisecond) // polling the readiness condition itself
	}
	fi, _ := os.Stat(filepath.Join(sockDir, "share.sock"))
	di, _ := os.Stat(sockDir)
	if fi.Mode().Perm() != 0o666 || di.Mode().Perm() != 0o755 {
		t.Errorf("socket %v, directory %v", fi.Mode(), di.Mode())
	}
}
