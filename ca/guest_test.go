package ca

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/ibcm-project/ibcm/internal/guestcode"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// clock is a test's movable time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// generous never limits: for the tests that are not about the limits.
var generous = &guestcode.Limits{PerAddress: rate.Inf, PerCode: rate.Inf, Global: rate.Inf}

func newGuestCA(t *testing.T, db *sitedb.DB, clk *clock, enabled bool, limits *guestcode.Limits) *CA {
	t.Helper()
	c, err := New(context.Background(), db, Options{
		SiteCode: "TST", Hierarchy: testHierarchy(), PublicURL: "http://127.0.0.1:1", Log: zerolog.Nop(),
		SecurityCodes: enabled, CodeLimits: limits, Now: clk.now,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// newCode stores a fresh code for session, as the MP does.
func newCode(t *testing.T, db *sitedb.DB, now time.Time, session string) (string, guestcode.Code) {
	t.Helper()
	code, err := guestcode.New(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var c guestcode.Code
	err = db.Tx(context.Background(), func(tx *sitedb.Tx) error {
		var err error
		c, err = guestcode.Insert(tx, code, guestcode.Code{Session: session, Helper: "helen", Mode: "control", TicketID: "T-" + session, Ticket: "signed",
			CreatedAt: now, ExpiresAt: now.Add(guestcode.TTL)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return code, c
}

func guestCSR(t *testing.T, cn string) []byte {
	return csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}})
}

func TestGuestProfile(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
		c := newGuestCA(t, db, clk, true, generous)
		code, stored := newCode(t, db, clk.now(), "S1")
		// Typed in lower case without the dash: still the code.
		typed := strings.ToLower(strings.ReplaceAll(code, "-", ""))
		chain, got, err := c.ExchangeCode(context.Background(), GuestExchange{Code: typed, CSR: guestCSR(t, "alice"), RemoteAddr: "192.0.2.7:5000"})
		if err != nil {
			t.Fatalf("ExchangeCode: %v", err)
		}
		if got.Session != "S1" || got.ID != stored.ID || got.Mode != "control" || got.Helper != "helen" {
			t.Errorf("code = %+v", got)
		}
		leaf := chain[0]
		if ProfileOf(leaf) != Guest {
			t.Errorf("profile %q, want guest", ProfileOf(leaf))
		}
		if leaf.Subject.CommonName != "alice" {
			t.Errorf("CN %q", leaf.Subject.CommonName)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "urn:ibcm:guest:S1" {
			t.Errorf("URIs %v", leaf.URIs)
		}
		if id := wire.Identify(leaf); id.Kind != wire.KindGuest || id.ID != "S1" {
			t.Errorf("identity %+v", id)
		}
		if len(leaf.ExtKeyUsage) != 0 || len(leaf.UnknownExtKeyUsage) != 1 || !leaf.UnknownExtKeyUsage[0].Equal(wire.OIDGuestEKU) {
			t.Errorf("EKU %v + %v, want only the guest EKU", leaf.ExtKeyUsage, leaf.UnknownExtKeyUsage)
		}
		if life := leaf.NotAfter.Sub(clk.now()); life != time.Hour {
			t.Errorf("valid for %s after issue, want 1h", life)
		}
		if leaf.IsCA || len(leaf.DNSNames)+len(leaf.IPAddresses) > 0 {
			t.Error("a guest certificate is an end entity with no host names")
		}
		// No route that wants clientAuth (every MP, DP and CA route) takes it; the guest EKU
		// chains.
		v := &trust.Verifier{Anchors: trust.NewAnchors([]*x509.Certificate{c.Root()}, []*x509.Certificate{c.Issuing()}), Now: clk.now}
		if _, err := v.Verify(chain, x509.ExtKeyUsageClientAuth); !errors.Is(err, trust.ErrWrongUsage) {
			t.Errorf("verify for clientAuth: %v, want ErrWrongUsage", err)
		}
		if _, err := v.Verify(chain, x509.ExtKeyUsageServerAuth); !errors.Is(err, trust.ErrWrongUsage) {
			t.Errorf("verify for serverAuth: %v, want ErrWrongUsage", err)
		}
		// The certificate is recorded and the code spent, by the same transaction.
		rec, err := c.Get(context.Background(), leaf.SerialNumber.String())
		if err != nil || rec.Profile != Guest || rec.IssuedBy != "code:"+stored.ID {
			t.Errorf("record %+v, %v", rec, err)
		}
		var used, sharer string
		if err := db.QueryRow(context.Background(), `SELECT used_serial, sharer FROM security_codes WHERE id = ?`, stored.ID).Scan(&used, &sharer); err != nil {
			t.Fatal(err)
		}
		if used != leaf.SerialNumber.String() || sharer != "alice" {
			t.Errorf("code spent by %q for %q", used, sharer)
		}
	})
}

func TestGuestExchangeRefusals(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
		start := clk.now()
		c := newGuestCA(t, db, clk, true, generous)
		spent, _ := newCode(t, db, clk.now(), "S1")
		if _, _, err := c.ExchangeCode(ctx, GuestExchange{Code: spent, CSR: guestCSR(t, "alice"), RemoteAddr: "192.0.2.7:1"}); err != nil {
			t.Fatal(err)
		}
		expiring, _ := newCode(t, db, clk.now(), "S2")
		fresh, freshCode := newCode(t, db, clk.now(), "S3")
		cases := []struct {
			name string
			code string
			csr  []byte
			want error
		}{
			{"unknown code", "ABCDE-FGHJK", guestCSR(t, "alice"), guestcode.ErrInvalid},
			{"malformed code", "0000O-1111I", guestCSR(t, "alice"), guestcode.ErrInvalid},
			{"too long", strings.Repeat("A", 100), guestCSR(t, "alice"), guestcode.ErrInvalid},
			{"reused code", spent, guestCSR(t, "mallory"), guestcode.ErrUsed},
			{"CSR with a DNS name", fresh, csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"}, DNSNames: []string{"mp.example"}}), ErrForbiddenSAN},
			{"CSR asking for clientAuth", fresh, csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"},
				ExtraExtensions: []pkix.Extension{extension(t, oidExtExtKeyUsage, []asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 2}})}}), ErrForbiddenUsage},
			{"bad user name", fresh, guestCSR(t, "al ice"), ErrBadSubject},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				_, _, err := c.ExchangeCode(ctx, GuestExchange{Code: tc.code, CSR: tc.csr, RemoteAddr: "192.0.2.8:2"})
				if !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
			})
		}
		// The refused CSRs did not spend the fresh code.
		if _, err := guestcode.Lookup(ctx, db, guestcode.Hash(mustNormalize(t, fresh)), clk.now()); err != nil {
			t.Errorf("the fresh code after refused requests: %v", err)
		}
		clk.add(guestcode.TTL)
		if _, _, err := c.ExchangeCode(ctx, GuestExchange{Code: expiring, CSR: guestCSR(t, "alice"), RemoteAddr: "192.0.2.8:2"}); !errors.Is(err, guestcode.ErrExpired) {
			t.Errorf("expired code: %v, want ErrExpired", err)
		}
		// A CA of a site that did not enable codes refuses every one.
		off := newGuestCA(t, db, clk, false, generous)
		if _, _, err := off.ExchangeCode(ctx, GuestExchange{Code: fresh, CSR: guestCSR(t, "alice"), RemoteAddr: "192.0.2.8:2"}); !errors.Is(err, errGuestDisabled) {
			t.Errorf("disabled: %v", err)
		}
		// Every attempt is audited, by outcome, with the code's id and never the code.
		attempts, err := guestcode.Attempts(ctx, db, start)
		if err != nil {
			t.Fatal(err)
		}
		var outcomes []string
		for _, a := range attempts {
			outcomes = append(outcomes, a.Outcome)
			if strings.Contains(a.CodeID, strings.ReplaceAll(fresh, "-", "")) {
				t.Errorf("the audit holds a code: %+v", a)
			}
		}
		want := "issued code_invalid code_invalid code_invalid code_used refused refused refused code_expired"
		if got := strings.Join(outcomes, " "); got != want {
			t.Errorf("audited outcomes\n got %s\nwant %s", got, want)
		}
		if attempts[len(attempts)-2].CodeID != freshCode.ID {
			t.Errorf("a refused request for the fresh code is audited as %q, want %q", attempts[len(attempts)-2].CodeID, freshCode.ID)
		}
	})
}

func mustNormalize(t *testing.T, code string) string {
	t.Helper()
	n, err := guestcode.Normalize(code)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestGuestExchangeRateLimits(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	ctx := context.Background()
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	limits := &guestcode.Limits{PerAddress: rate.Every(time.Minute), AddrBurst: 3, PerCode: rate.Every(time.Minute), CodeBurst: 2,
		Global: rate.Every(time.Second), GlobalBurst: 100}
	c := newGuestCA(t, db, clk, true, limits)
	try := func(code, addr string) error {
		_, _, err := c.ExchangeCode(ctx, GuestExchange{Code: code, CSR: guestCSR(t, "alice"), RemoteAddr: addr})
		return err
	}
	t.Run("per address", func(t *testing.T) {
		for i := range 3 {
			if err := try("ABCDE-FGHJK", "192.0.2.1:1000"); !errors.Is(err, guestcode.ErrInvalid) {
				t.Fatalf("guess %d: %v", i, err)
			}
		}
		if err := try("ABCDE-FGHJK", "192.0.2.1:1001"); !errors.Is(err, guestcode.ErrRateLimited) {
			t.Fatalf("4th guess from the address: %v, want ErrRateLimited", err)
		}
		// The limit holds for a right code too: a guesser cannot tell one from the other.
		right, _ := newCode(t, db, clk.now(), "S9")
		if err := try(right, "192.0.2.1:1002"); !errors.Is(err, guestcode.ErrRateLimited) {
			t.Fatalf("a right code from the limited address: %v", err)
		}
		// An IPv6 host's /64 is one address.
		for i := range 3 {
			_ = try("ABCDE-FGHJK", fmt.Sprintf("[2001:db8::%d]:1", i+1))
		}
		if err := try("ABCDE-FGHJK", "[2001:db8::99]:1"); !errors.Is(err, guestcode.ErrRateLimited) {
			t.Fatalf("4th guess from the /64: %v", err)
		}
		// Another address is not limited, and the address recovers with time.
		if err := try(right, "192.0.2.2:1"); err != nil {
			t.Fatalf("a right code from another address: %v", err)
		}
		clk.add(time.Minute)
		if err := try("ABCDE-FGHJK", "192.0.2.1:1000"); !errors.Is(err, guestcode.ErrInvalid) {
			t.Fatalf("a minute later: %v", err)
		}
	})
	t.Run("per code", func(t *testing.T) {
		code, _ := newCode(t, db, clk.now(), "S10")
		// Attempts naming one code from many addresses: refused CSRs spend the code's attempts.
		bad := csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}, DNSNames: []string{"a.example"}})
		for i := range 2 {
			if _, _, err := c.ExchangeCode(ctx, GuestExchange{Code: code, CSR: bad, RemoteAddr: fmt.Sprintf("198.51.100.%d:1", i+1)}); !errors.Is(err, ErrForbiddenSAN) {
				t.Fatalf("attempt %d: %v", i, err)
			}
		}
		if err := try(code, "198.51.100.50:1"); !errors.Is(err, guestcode.ErrRateLimited) {
			t.Fatalf("3rd attempt naming the code: %v, want ErrRateLimited", err)
		}
	})
	t.Run("whole CA", func(t *testing.T) {
		clk.add(time.Hour)
		g := newGuestCA(t, db, clk, true, &guestcode.Limits{PerAddress: rate.Inf, PerCode: rate.Inf, Global: rate.Every(time.Second), GlobalBurst: 5})
		for i := range 5 {
			if _, _, err := g.ExchangeCode(ctx, GuestExchange{Code: "ABCDE-FGHJK", CSR: guestCSR(t, "a"), RemoteAddr: fmt.Sprintf("203.0.113.%d:1", i)}); !errors.Is(err, guestcode.ErrInvalid) {
				t.Fatalf("guess %d: %v", i, err)
			}
		}
		if _, _, err := g.ExchangeCode(ctx, GuestExchange{Code: "ABCDE-FGHJK", CSR: guestCSR(t, "a"), RemoteAddr: "203.0.113.99:1"}); !errors.Is(err, guestcode.ErrRateLimited) {
			t.Fatalf("a distributed guesser past the CA's limit: %v", err)
		}
	})
}

func TestGuestRacingExchangesOneWinner(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
		c := newGuestCA(t, db, clk, true, generous)
		code, _ := newCode(t, db, clk.now(), "S1")
		const n = 6
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				_, _, errs[i] = c.ExchangeCode(context.Background(), GuestExchange{Code: code, CSR: guestCSR(t, "alice"), RemoteAddr: "192.0.2.1:1"})
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, guestcode.ErrUsed):
				t.Errorf("a losing exchange: %v, want ErrUsed", err)
			}
		}
		if won != 1 {
			t.Errorf("%d exchanges won, want 1", won)
		}
		var certs int
		if err := db.QueryRow(context.Background(), `SELECT COUNT(*) FROM certificates WHERE profile = 'guest'`).Scan(&certs); err != nil || certs != 1 {
			t.Errorf("%d guest certificates recorded (%v), want 1", certs, err)
		}
	})
}

func TestGuestProfileNotIssuedOtherwise(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newGuestCA(t, db, &clock{t: time.Now()}, true, generous)
	if _, err := c.Issue(context.Background(), IssueSpec{Profile: Guest, Subject: "alice"}, guestCSR(t, "alice"), "admin:test"); !errors.Is(err, ErrBadProfile) {
		t.Errorf("Issue guest: %v", err)
	}
	if _, _, err := c.CreateToken(context.Background(), TokenSpec{Profile: Guest}, "admin:test"); !errors.Is(err, ErrBadProfile) {
		t.Errorf("token for guest: %v", err)
	}
}

// TestGuestCertificateRefusedByCARoutes: the CA's routes that take a client certificate
// (renewal, the admin API) refuse a guest certificate, as the exchange route answers each
// refusal with its status and code.
func TestGuestCertificateRefusedByCARoutes(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	c := newGuestCA(t, db, clk, true, &guestcode.Limits{PerAddress: rate.Every(time.Hour), AddrBurst: 5, PerCode: rate.Inf, Global: rate.Inf})
	code, _ := newCode(t, db, clk.now(), "S1")
	key := newKey(t)
	chain, _, err := c.ExchangeCode(context.Background(), GuestExchange{Code: code, CSR: csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"}}), RemoteAddr: "10.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	guest := &tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key}
	srv, hc := serveTLS(t, c, guest)
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/v1/renew", `{"csr":"` + jsonEscape(string(guestCSR(t, "alice"))) + `"}`},
		{"GET", "/v1/admin/tokens", ""},
		{"POST", "/v1/admin/tokens", `{"profile":"client"}`},
		{"GET", "/v1/admin/certificates", ""},
		{"GET", "/v1/admin/crl", ""},
		{"GET", "/v1/admin/users", ""},
	} {
		status, e := call(t, hc, r.method, srv.URL+r.path, r.body)
		if status != http.StatusForbidden || e.Error.Code != "wrong_usage" {
			t.Errorf("%s %s with a guest certificate: %d %q, want 403 wrong_usage", r.method, r.path, status, e.Error.Code)
		}
	}
	// The exchange route's refusals, over HTTP (no client certificate needed).
	_, anon := serveTLS(t, c, nil)
	fresh, _ := newCode(t, db, clk.now(), "S2")
	exchange := func(code string) (int, wire.Error) {
		return call(t, anon, "POST", srv.URL+"/v1/guest/exchange", `{"code":"`+code+`","csr":"`+jsonEscape(string(guestCSR(t, "bob")))+`"}`)
	}
	for _, tc := range []struct {
		name   string
		code   string
		status int
		ecode  string
	}{
		{"used", code, http.StatusConflict, "code_used"},
		{"wrong", "ABCDE-FGHJK", http.StatusUnauthorized, "code_invalid"},
		{"malformed", "hello", http.StatusUnauthorized, "code_invalid"},
		{"good", fresh, http.StatusOK, ""},
	} {
		if status, e := exchange(tc.code); status != tc.status || e.Error.Code != tc.ecode {
			t.Errorf("%s code: %d %q, want %d %q", tc.name, status, e.Error.Code, tc.status, tc.ecode)
		}
	}
	if status, e := call(t, anon, "POST", srv.URL+"/v1/guest/exchange", `{"code":"x","csr":"y","extra":1}`); status != http.StatusBadRequest {
		t.Errorf("unknown field: %d %q, want 400", status, e.Error.Code)
	}
	clk.add(guestcode.TTL)
	expired, _ := newCode(t, db, clk.now().Add(-guestcode.TTL), "S3")
	if status, e := exchange(expired); status != http.StatusForbidden || e.Error.Code != "code_expired" {
		t.Errorf("expired code: %d %q", status, e.Error.Code)
	}
	req, _ := http.NewRequest("POST", srv.URL+"/v1/guest/exchange", strings.NewReader(`{"code":"ABCDE-FGHJK","csr":"x"}`))
	resp, err := anon.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("past the address's limit: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// FuzzGuestExchange sends arbitrary bodies to the exchange route: every answer is a JSON
// error with one of the route's codes (or a certificate for the one good code), never a 5xx.
func FuzzGuestExchange(f *testing.F) {
	db := sitedbtest.Open(f, sitedb.SQLite, sitedbtest.NewDSN(f, sitedb.SQLite))
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	c, err := New(context.Background(), db, Options{SiteCode: "TST", Hierarchy: testHierarchy(), PublicURL: "http://127.0.0.1:1",
		Log: zerolog.Nop(), SecurityCodes: true, CodeLimits: generous, Now: clk.now})
	if err != nil {
		f.Fatal(err)
	}
	h := c.Handler(&trust.Verifier{Anchors: trust.NewAnchors([]*x509.Certificate{c.Root()}, []*x509.Certificate{c.Issuing()})})
	csr := string(csrPEM(f, newKey(f), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"}}))
	for _, s := range []string{`{"code":"ABCDE-FGHJK","csr":` + strconv.Quote(csr) + `}`, `{"code":"","csr":""}`, `{}`, `[`, `{"code":1}`,
		`{"code":"ABCDE-FGHJK","csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/v1/guest/exchange", bytes.NewReader(body))
		h.ServeHTTP(rec, req)
		var e wire.Error
		if rec.Code >= 500 || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error.Code == "" {
			t.Fatalf("body %q: %d %s", body, rec.Code, rec.Body.Bytes())
		}
	})
}

// A guesser past the limits still reaches the route at line rate: its refused attempts must
// not each cost a row in the site database (and a log line), or the limit bounds the
// guessing but not the writes, which anyone on the internet can then make without end.
func TestGuestRateLimitedAttemptsBoundedAudit(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	ctx := context.Background()
	clk := &clock{t: time.Now().UTC().Truncate(time.Second)}
	c := newGuestCA(t, db, clk, true, &guestcode.Limits{PerAddress: rate.Every(time.Minute), AddrBurst: 3, PerCode: rate.Inf,
		Global: rate.Every(time.Second), GlobalBurst: 100})
	start := clk.now()
	for i := range 500 {
		_, _, err := c.ExchangeCode(ctx, GuestExchange{Code: "ABCDE-FGHJK", CSR: []byte("x"), RemoteAddr: fmt.Sprintf("[2001:db8:%x::1]:1", i%50)})
		if i >= 150 && !errors.Is(err, guestcode.ErrRateLimited) {
			t.Fatalf("attempt %d: %v, want ErrRateLimited", i, err)
		}
	}
	attempts, err := guestcode.Attempts(ctx, db, start)
	if err != nil {
		t.Fatal(err)
	}
	limited := 0
	for _, a := range attempts {
		if a.Outcome == guestcode.OutcomeRateLimited {
			limited++
		}
	}
	if limited == 0 || limited > 60 {
		t.Errorf("%d rate-limited attempts audited of 350 (%d rows in all); want some, at most one per address and minute", limited, len(attempts))
	}
}
