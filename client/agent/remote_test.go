package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// fakeMP answers the session routes the agent uses, over mutual TLS with an MP
// certificate of the test CA.
type fakeMP struct {
	srv      *httptest.Server
	key      crypto.Signer
	chain    []*x509.Certificate
	reports  chan wire.SessionReport
	uploads  chan []byte
	crl      atomic.Value // []byte
	relayHdr chan http.Header
	// relayHook, when set, is the other leg: it gets the device's upgraded stream.
	relayHook func(io.ReadWriteCloser)
}

func startFakeMP(t *testing.T, s *catest.Server) *fakeMP {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "mp"}}, key)
	chain, err := s.CA.Issue(context.Background(), ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp", DNS: []string{"127.0.0.1"}, Role: "mp"}, csr, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeMP{key: key, chain: chain, reports: make(chan wire.SessionReport, 20), uploads: make(chan []byte, 2), relayHdr: make(chan http.Header, 2)}
	crl, err := s.CA.CRL(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m.crl.Store(crl)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/crl", func(w http.ResponseWriter, r *http.Request) { w.Write(m.crl.Load().([]byte)) })
	mux.HandleFunc("GET /v1/sessions/{id}/relay", func(w http.ResponseWriter, r *http.Request) {
		if m.relayHook == nil {
			m.relayHdr <- r.Header.Clone()
		}
		if r.URL.Query().Get("ticket") == "ended" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"error":{"code":"session_ended","message":"the session ended"}}`))
			return
		}
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ibcm-relay\r\n\r\n")
		rw.Flush()
		if m.relayHook != nil {
			m.relayHook(c)
			return
		}
		io.Copy(c, rw) // echo
	})
	mux.HandleFunc("POST /v1/sessions/{id}/report", func(w http.ResponseWriter, r *http.Request) {
		var rep wire.SessionReport
		if json.NewDecoder(r.Body).Decode(&rep) == nil {
			m.reports <- rep
		}
		w.Write([]byte("{}"))
	})
	mux.HandleFunc("POST /v1/sessions/{id}/recording", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		m.uploads <- b
		w.WriteHeader(http.StatusNoContent)
	})
	m.srv = httptest.NewUnstartedServer(mux)
	h := catest.Hierarchy()
	m.srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{chain[0].Raw, h.Issuing.Raw}, PrivateKey: key}},
		ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12}
	m.srv.StartTLS()
	t.Cleanup(m.srv.Close)
	return m
}

// The agent's remote wiring against an MP: the relay leg is an HTTP/1.1 upgrade over its
// mutual-TLS connection, refusals come back with their code; the CRL is fetched, verified
// against the issuing CA and kept, and a CRL signed by anything else is refused; a
// session-requested event reaches the host, whose refusal is reported to the MP; a sealed
// recording is uploaded.
func TestAgentRemoteThroughTheMP(t *testing.T) {
	s := catest.Start(t)
	dir := t.TempDir()
	id := enrolled(t, s, dir)
	m := startFakeMP(t, s)
	a, err := newAgent(t, dir, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a.remote.mp = &session{a: a, base: m.srv.URL, http: mpClient(id, "", a.remote.crl.Revoked)}
	ctx := context.Background()

	rw, err := a.relay(ctx, ticket.NewID(), ticket.NewID())
	if err != nil {
		t.Fatal(err)
	}
	hdr := <-m.relayHdr
	if hdr.Get("Upgrade") != wire.RelayProtocol || !strings.EqualFold(hdr.Get("Connection"), "upgrade") {
		t.Errorf("relay request headers %v", hdr)
	}
	rw.Write([]byte("ciphertext"))
	buf := make([]byte, 10)
	if _, err := io.ReadFull(rw, buf); err != nil || string(buf) != "ciphertext" {
		t.Fatalf("through the relay: %q %v", buf, err)
	}
	rw.Close()
	_, err = a.relay(ctx, ticket.NewID(), "ended")
	var se *client.ServerError
	if !errors.As(err, &se) || se.Code != "session_ended" {
		t.Fatalf("a refused leg: %v", err)
	}
	<-m.relayHdr

	// The CRL: a revoked certificate is seen after the refresh, and kept on disk.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "mp2"}}, key)
	mp2, err := s.CA.Issue(ctx, ca.IssueSpec{Profile: ca.SiteServer, Subject: "mp2", DNS: []string{"127.0.0.2"}, Role: "mp"}, csr, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CA.Revoke(ctx, mp2[0].SerialNumber.String(), "superseded"); err != nil {
		t.Fatal(err)
	}
	if err := s.CA.RefreshCRL(); err != nil {
		t.Fatal(err)
	}
	crl, _ := s.CA.CRL(ctx)
	m.crl.Store(crl)
	a.refreshCRL(ctx, true)
	if !a.remote.crl.Revoked(mp2[0]) {
		t.Fatal("the revoked MP certificate is not in the agent's CRL")
	}
	if a.remote.crl.Revoked(m.chain[0]) {
		t.Fatal("a good certificate is revoked")
	}
	// An MP whose certificate the CRL lists is refused by the agent's connection.
	revokedMP := &session{a: a, base: m.srv.URL, http: mpClient(id, "", func(c *x509.Certificate) bool { return c.Equal(m.chain[0]) })}
	if _, err := revokedMP.do(ctx, http.MethodGet, "/v1/crl", nil, nil, nil); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("a revoked MP: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fake := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: catest.Hierarchy().Issuing.Subject, SubjectKeyId: []byte{1, 2, 3},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCRLSign | x509.KeyUsageCertSign}
	bad, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1 << 40), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}, fake, other)
	if err != nil {
		t.Fatal(err)
	}
	m.crl.Store(bad)
	a.refreshCRL(ctx, true)
	if !a.remote.crl.Revoked(mp2[0]) {
		t.Fatal("a CRL not signed by the issuing CA replaced the good one")
	}

	// A ticket for another device, through the notification event: refused, reported.
	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: "another-device", Helper: "alice", HelperKey: strings.Repeat("ab", 32),
		Role: ticket.RoleHelper, Mode: ticket.ModeView, Modes: []string{ticket.ModeView}, MP: "mp", IssuedAt: now, ExpiresAt: now.Add(time.Minute)}
	signed, err := ticket.Sign(tk, m.key, m.chain) // leaf and issuing CA: the agent pins the root only
	if err != nil {
		t.Fatal(err)
	}
	a.onSessionEvent(wire.Event{Type: wire.EventSessionRequested, Data: map[string]string{wire.EventDataTicket: signed}})
	select {
	case rep := <-m.reports:
		if rep.Event != wire.ReportRefused || rep.Code != "ticket_other_device" || rep.Ticket != tk.ID {
			t.Errorf("report %+v", rep)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no report at the MP")
	}

	if err := a.uploadRecording(ctx, tk.Session, []byte("sealed")); err != nil {
		t.Fatal(err)
	}
	if b := <-m.uploads; string(b) != "sealed" {
		t.Errorf("upload %q", b)
	}
}

// asNetConn: the hijacked connection is a net.Conn already.
func asNetConn(c io.ReadWriteCloser) net.Conn { return c.(net.Conn) }
