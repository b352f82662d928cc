package mp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/guestcode"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// guestCert exchanges code at a CA of the fixture's site that allows security codes, as
// `ibcm-client share --code` does, and returns the guest's TLS certificate.
func guestCert(t *testing.T, f *fixture, code, user string) (tls.Certificate, wire.GuestCertificate) {
	t.Helper()
	c, err := ca.New(context.Background(), f.db, ca.Options{SiteCode: "TST", Hierarchy: hierarchy(), PublicURL: "http://127.0.0.1:1",
		Log: zerolog.Nop(), SecurityCodes: true})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: user}}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, got, err := c.ExchangeCode(context.Background(), ca.GuestExchange{Code: code,
		CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), RemoteAddr: "127.0.0.1:1"})
	if err != nil {
		t.Fatalf("exchanging the code: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]},
		wire.GuestCertificate{Session: got.Session, TicketID: got.TicketID, Ticket: got.Ticket, Helper: got.Helper, Mode: got.Mode}
}

func createCode(t *testing.T, f *fixture, helper tls.Certificate, mode string) wire.SecurityCode {
	t.Helper()
	var out wire.SecurityCode
	if status, e := call(t, f.client(&helper), "POST", f.intranet+"/v1/admin/sessions/codes", wire.SecurityCodeRequest{Mode: mode}, &out); status != http.StatusCreated {
		t.Fatalf("creating a code: %d %+v", status, e)
	}
	return out
}

// routePatterns reads every route this package registers ("METHOD /path") from its
// sources, so that a route added later is covered too.
func routePatterns(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob("*.go")
	re := regexp.MustCompile(`mux\.Handle\("((?:GET|POST|PUT|DELETE|PATCH) /[^"]*)"`)
	var out []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			out = append(out, m[1])
		}
	}
	if len(out) < 30 {
		t.Fatalf("found %d routes in the sources; the pattern no longer matches how routes are registered", len(out))
	}
	return out
}

// A guest certificate reaches the relay of its own session and nothing else: every other
// route of the MP refuses it, and so does the relay of another session. With it, the guest's
// leg is spliced to the helper's, and the helper's audit names the guest.
func TestGuestCertificateOnlyReachesItsRelay(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{SecurityCodes: true})
	helper := f.user(t, "hd", access.HelpDeskOperator)
	code := createCode(t, f, helper, "control")
	if code.Start.TicketID == "" || code.Session == "" || len(code.Code) != 11 {
		t.Fatalf("code %+v", code)
	}
	guest, got := guestCert(t, f, code.Code, "alice")
	if got.Session != code.Session || got.TicketID != code.Start.TicketID || got.Ticket == "" {
		t.Fatalf("exchange answered %+v for code %+v", got, code)
	}
	other := createCode(t, f, helper, "view")
	otherGuest, _ := guestCert(t, f, other.Code, "bob")

	gc := f.client(&guest)
	for _, pattern := range routePatterns(t) {
		method, path, _ := strings.Cut(pattern, " ")
		path = regexp.MustCompile(`\{[a-z_]+\}`).ReplaceAllString(path, code.Session)
		if path == guestRelayPath(code.Session) {
			continue
		}
		status, e := call(t, gc, method, f.internet+path, nil, nil)
		if status != http.StatusForbidden || e.Error.Code != "guest_certificate" {
			t.Errorf("%s %s with a guest certificate: %d %q, want 403 guest_certificate", method, path, status, e.Error.Code)
		}
	}
	// The relay of another session, with its real ticket, refuses it too.
	leg := waitLeg(t, dialLeg(t, f, f.internet, guest, guestRelayPath(other.Session)+"?ticket="+other.Start.TicketID))
	if leg.status != http.StatusForbidden || leg.err.Error.Code != "guest_certificate" {
		t.Errorf("another session's relay: %d %+v", leg.status, leg.err)
	}
	// Its own relay, with another session's ticket: refused.
	leg = waitLeg(t, dialLeg(t, f, f.internet, guest, guestRelayPath(code.Session)+"?ticket="+other.Start.TicketID))
	if leg.status != http.StatusForbidden || leg.err.Error.Code != "not_your_session" {
		t.Errorf("own relay, another ticket: %d %+v", leg.status, leg.err)
	}
	// A device's leg of the guest's session is not a device's to open.
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	leg = waitLeg(t, dialLeg(t, f, f.intranet, pc, "/v1/sessions/"+code.Session+"/relay?ticket="+code.Start.TicketID))
	if leg.status != http.StatusForbidden {
		t.Errorf("a device's leg of a guest session: %d %+v", leg.status, leg.err)
	}

	// The guest route takes nothing but a guest certificate.
	for name, cert := range map[string]tls.Certificate{"a device": pc, "the helper": helper} {
		leg = waitLeg(t, dialLeg(t, f, f.internet, cert, guestRelayPath(code.Session)+"?ticket="+code.Start.TicketID))
		if leg.status != http.StatusForbidden || leg.err.Error.Code != "guest_certificate" {
			t.Errorf("%s on the guest relay route: %d %+v", name, leg.status, leg.err)
		}
	}

	// The guest's and the helper's legs meet.
	gl := dialLeg(t, f, f.internet, guest, guestRelayPath(code.Session)+"?ticket="+code.Start.TicketID)
	waitPairs(t, f.mp, 1)
	hl := waitLeg(t, dialLeg(t, f, f.intranet, helper, "/v1/admin/sessions/"+code.Session+"/relay?ticket="+code.Start.TicketID))
	g := waitLeg(t, gl)
	if g.status != http.StatusSwitchingProtocols || hl.status != http.StatusSwitchingProtocols {
		t.Fatalf("legs: guest %d %+v, helper %d %+v", g.status, g.err, hl.status, hl.err)
	}
	exchange(t, g, hl)
	var s wire.Session
	if status, e := call(t, f.client(&helper), "GET", f.intranet+"/v1/admin/sessions/"+code.Session, nil, &s); status != http.StatusOK {
		t.Fatalf("session: %d %+v", status, e)
	}
	if s.DeviceName != "not enrolled: guest alice" || s.Sharer != "alice" || s.Helper != "hd" || s.Mode != "control" ||
		s.State != wire.SessionActive || s.Transport != wire.TransportRelay {
		t.Errorf("the helper sees %+v", s)
	}
	// The MP keeps the audit of a guest session from its relay: the guest cannot report.
	g.conn.Close()
	hl.conn.Close()
	for deadline := time.Now().Add(5 * time.Second); s.State != wire.SessionEnded; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the guest session after its relay closed: %+v", s)
		}
		call(t, f.client(&helper), "GET", f.intranet+"/v1/admin/sessions/"+code.Session, nil, &s)
	}
	if s.Outcome != wire.OutcomeCompleted || s.BytesIn == 0 || s.BytesOut == 0 {
		t.Errorf("the ended guest session: %+v", s)
	}
	_ = otherGuest
}

func TestGuestCodeCreateRules(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{SecurityCodes: true})
	for _, tc := range []struct {
		name, role, mode string
		status           int
		code             string
	}{
		{"analyst", access.ReadOnlyAnalyst, "view", http.StatusForbidden, "forbidden"},
		{"helper, elevated", access.HelpDeskOperator, "elevated", http.StatusBadRequest, "bad_request"},
		{"helper, view", access.HelpDeskOperator, "view", http.StatusCreated, ""},
		{"helper, default mode", access.HelpDeskOperator, "", http.StatusCreated, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := f.user(t, strings.ReplaceAll(tc.name, " ", "")[:5], tc.role)
			var out wire.SecurityCode
			status, e := call(t, f.client(&u), "POST", f.intranet+"/v1/admin/sessions/codes", wire.SecurityCodeRequest{Mode: tc.mode}, &out)
			if status != tc.status || e.Error.Code != tc.code {
				t.Fatalf("%d %+v, want %d %q", status, e, tc.status, tc.code)
			}
			if status == http.StatusCreated && (out.Mode != "view" || out.ExpiresAt.IsZero()) {
				t.Errorf("code %+v", out)
			}
		})
	}
	var n int
	if err := f.db.QueryRow(context.Background(), `SELECT COUNT(*) FROM security_codes WHERE hash LIKE '%-%'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("codes stored in clear? %d, %v", n, err)
	}
}

// On a site that did not enable codes, no code is made and a guest certificate (from a CA
// that had them on) fails the handshake.
func TestGuestCodesOffByDefault(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{SecurityCodes: true})
	helper := f.user(t, "hd", access.HelpDeskOperator)
	code := createCode(t, f, helper, "view")
	guest, _ := guestCert(t, f, code.Code, "alice")
	off := f.startMP(t, Options{ID: "mp-off"})
	if status, e := call(t, f.client(&helper), "POST", off.intranet+"/v1/admin/sessions/codes", wire.SecurityCodeRequest{}, nil); status != http.StatusNotFound || e.Error.Code != "security_codes_disabled" {
		t.Errorf("code create on an MP without codes: %d %+v", status, e)
	}
	leg := waitLeg(t, dialLeg(t, f, off.internet, guest, guestRelayPath(code.Session)+"?ticket="+code.Start.TicketID))
	if leg.status >= 0 {
		t.Errorf("a guest certificate at an MP without codes: handshake passed, status %d", leg.status)
	}
}

// A guest who reaches another MP of the site than the one its code was made at is forwarded
// there, as a device's leg is.
func TestGuestRelayAcrossMPs(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{ID: "mp-a", SecurityCodes: true})
	b := f.startMP(t, Options{ID: "mp-b", SecurityCodes: true})
	helper := f.user(t, "hd", access.HelpDeskOperator)
	code := createCode(t, f, helper, "view")
	guest, _ := guestCert(t, f, code.Code, "alice")
	gl := dialLeg(t, f, b.internet, guest, guestRelayPath(code.Session)+"?ticket="+code.Start.TicketID)
	waitPairs(t, f.mp, 1) // the forwarded leg waits at the code's MP
	hl := waitLeg(t, dialLeg(t, f, f.intranet, helper, "/v1/admin/sessions/"+code.Session+"/relay?ticket="+code.Start.TicketID))
	g := waitLeg(t, gl)
	if g.status != http.StatusSwitchingProtocols || hl.status != http.StatusSwitchingProtocols {
		t.Fatalf("legs: guest %d %+v, helper %d %+v", g.status, g.err, hl.status, hl.err)
	}
	exchange(t, g, hl)
}

// A code dies with its session: once the helper (or an admin, or the user's disabling)
// ended the session, the code exchanges for nothing.
func TestGuestCodeDiesWithItsSession(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{SecurityCodes: true})
	helper := f.user(t, "hd", access.HelpDeskOperator)
	code := createCode(t, f, helper, "view")
	if status, e := call(t, f.client(&helper), "POST", f.intranet+"/v1/admin/sessions/"+code.Session+"/end", nil, nil); status != http.StatusOK {
		t.Fatalf("ending the session: %d %+v", status, e)
	}
	c, err := ca.New(context.Background(), f.db, ca.Options{SiteCode: "TST", Hierarchy: hierarchy(), PublicURL: "http://127.0.0.1:1",
		Log: zerolog.Nop(), SecurityCodes: true})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"}}, key)
	chain, _, err := c.ExchangeCode(context.Background(), ca.GuestExchange{Code: code.Code,
		CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), RemoteAddr: "127.0.0.1:1"})
	if !errors.Is(err, guestcode.ErrExpired) || chain != nil {
		t.Fatalf("exchanging the code of an ended session: %v (certificate issued: %v), want ErrExpired", err, chain != nil)
	}
}
