package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cfocsp "github.com/cloudflare/cfssl/ocsp"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/ocsp"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// testClock is a clock tests move by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newClockedCA(t testing.TB, db *sitedb.DB, clock *testClock) *CA {
	t.Helper()
	c, err := New(context.Background(), db, Options{
		SiteCode: "TST", Hierarchy: testHierarchy(), PublicURL: "http://127.0.0.1:1", Now: clock.now, Log: zerolog.Nop(),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func issueClient(t *testing.T, c *CA, cn string) *x509.Certificate {
	t.Helper()
	chain, err := c.Issue(context.Background(), IssueSpec{Profile: Client, Subject: cn},
		csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}), "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	return chain[0]
}

func ocspRequest(t testing.TB, cert, issuer *x509.Certificate, h crypto.Hash) []byte {
	t.Helper()
	der, err := ocsp.CreateRequest(cert, issuer, &ocsp.RequestOptions{Hash: h})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func countOCSPCerts(t *testing.T, db *sitedb.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), `SELECT COUNT(*) FROM certificates WHERE profile = 'ocsp'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestOCSPResponderIssuedOnce sends many OCSP requests at once to a CA that has no OCSP
// signing certificate yet, then again once that certificate is due for renewal: each time
// exactly one certificate of the ocsp profile is issued, and every request is answered.
func TestOCSPResponderIssuedOnce(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		clock := &testClock{t: time.Now()}
		c := newClockedCA(t, db, clock)
		leaf := issueClient(t, c, "pc-1")
		req, err := ocsp.ParseRequest(ocspRequest(t, leaf, c.Issuing(), crypto.SHA1))
		if err != nil {
			t.Fatal(err)
		}
		burst := func() {
			t.Helper()
			const n = 32
			start := make(chan struct{})
			errs := make(chan error, n)
			var wg sync.WaitGroup
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					der, err := c.OCSP(context.Background(), req)
					if err == nil {
						_, err = ocsp.ParseResponseForCert(der, leaf, c.Issuing())
					}
					errs <- err
				}()
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Errorf("OCSP: %v", err)
				}
			}
		}
		burst()
		if n := countOCSPCerts(t, db); n != 1 {
			t.Errorf("%d OCSP signing certificates after the first burst, want 1", n)
		}
		clock.advance(17 * time.Hour) // past two thirds of the 24h life, not expired
		burst()
		if n := countOCSPCerts(t, db); n != 2 {
			t.Errorf("%d OCSP signing certificates after the renewal burst, want 2", n)
		}
	})
}

// countingSigner counts the OCSP responses signed.
type countingSigner struct {
	cfocsp.Signer
	n *atomic.Int64
}

func (s countingSigner) Sign(r cfocsp.SignRequest) ([]byte, error) {
	s.n.Add(1)
	return s.Signer.Sign(r)
}

// countSignatures makes c's current responder count what it signs.
func countSignatures(t *testing.T, c *CA) *atomic.Int64 {
	t.Helper()
	if err := c.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := new(atomic.Int64)
	c.ocsp.mu.Lock()
	c.ocsp.responder.signer = countingSigner{Signer: c.ocsp.responder.signer, n: n}
	c.ocsp.mu.Unlock()
	return n
}

// runWatched runs c's background loop until t ends, once its revocation watcher is
// subscribed. The watcher hands each announcement it applied to the returned channel and
// applies the next one only once that is received.
func runWatched(t *testing.T, c *CA) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	applied := make(chan string)
	c.ocsp.cache.applied = func(sn string) {
		select {
		case applied <- sn:
		case <-ctx.Done():
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx, time.Hour) }()
	t.Cleanup(func() { cancel(); <-done })
	if sn := <-applied; sn != "" {
		t.Fatalf("first announcement applied = %q, want the subscription", sn)
	}
	return applied
}

// TestOCSPCache: the same question gets the same signed bytes over GET and POST, signed
// once; a revocation here or at another CA server of the site is answered at once; the
// answer is signed again when half its life has passed, and by the new responder after a
// renewal. (integration.TestCA has openssl verify a cached answer.)
func TestOCSPCache(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		clock := &testClock{t: time.Now()}
		c := newClockedCA(t, db, clock)
		good, local, remote := issueClient(t, c, "good"), issueClient(t, c, "local"), issueClient(t, c, "remote")
		signs := countSignatures(t, c)
		srv := httptest.NewServer(c.PublicHandler())
		t.Cleanup(srv.Close)

		ask := func(cert *x509.Certificate, h crypto.Hash, post bool) ([]byte, *ocsp.Response) {
			t.Helper()
			reqDER := ocspRequest(t, cert, c.Issuing(), h)
			var resp *http.Response
			var err error
			if post {
				resp, err = http.Post(srv.URL+"/ocsp", "application/ocsp-request", bytes.NewReader(reqDER))
			} else {
				resp, err = http.Get(srv.URL + "/ocsp/" + url.PathEscape(base64.StdEncoding.EncodeToString(reqDER)))
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("OCSP: HTTP %d", resp.StatusCode)
			}
			r, err := ocsp.ParseResponseForCert(body, cert, c.Issuing())
			if err != nil {
				t.Fatalf("OCSP response: %v", err)
			}
			return body, r
		}
		wantSigns := func(want int64) {
			t.Helper()
			if n := signs.Load(); n != want {
				t.Errorf("%d responses signed, want %d", n, want)
			}
		}

		// Without the revocation watcher nothing is cached.
		ask(good, crypto.SHA1, true)
		ask(good, crypto.SHA1, true)
		wantSigns(2)

		applied := runWatched(t, c)
		first, r := ask(good, crypto.SHA1, false)
		if r.Status != ocsp.Good {
			t.Fatalf("status %d, want good", r.Status)
		}
		for _, post := range []bool{false, true, true} {
			if again, _ := ask(good, crypto.SHA1, post); !bytes.Equal(again, first) {
				t.Errorf("asked again (post %v): other bytes than the first answer", post)
			}
		}
		wantSigns(3)
		// The CertID hash is part of the answer: SHA-256 is another entry.
		if _, r := ask(good, crypto.SHA256, true); r.IssuerHash != crypto.SHA256 {
			t.Errorf("answer to a SHA-256 request has CertID hash %v", r.IssuerHash)
		}
		ask(good, crypto.SHA256, false)
		wantSigns(4)

		// Revoked at another CA server of the site, then here: the announcement of the first
		// holds the watcher (the test has not received it), so only the revocation here
		// can tell this CA, and its very next answer says revoked.
		ask(local, crypto.SHA1, true)
		ask(local, crypto.SHA256, true)
		before, _ := ask(remote, crypto.SHA1, true)
		wantSigns(7)
		other := newClockedCA(t, db, clock)
		if err := other.Revoke(context.Background(), remote.SerialNumber.String(), "superseded"); err != nil {
			t.Fatal(err)
		}
		if err := c.Revoke(context.Background(), local.SerialNumber.String(), "keyCompromise"); err != nil {
			t.Fatal(err)
		}
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
			if _, r := ask(local, h, false); r.Status != ocsp.Revoked || r.RevocationReason != ocsp.KeyCompromise {
				t.Errorf("after revoke, %v answer: status %d reason %d", h, r.Status, r.RevocationReason)
			}
		}
		wantSigns(9)
		// The other server's revocation is answered once its announcement is applied.
		for _, want := range []*x509.Certificate{remote, local} {
			if sn := <-applied; sn != want.SerialNumber.String() {
				t.Fatalf("announcement %s applied, want %s", sn, want.SerialNumber)
			}
		}
		if after, r := ask(remote, crypto.SHA1, true); r.Status != ocsp.Revoked || r.RevocationReason != ocsp.Superseded || bytes.Equal(after, before) {
			t.Errorf("after a revocation at another CA server: status %d", r.Status)
		}
		wantSigns(10)

		// The good answer of before was kept through revocations of other serials.
		if again, _ := ask(good, crypto.SHA1, true); !bytes.Equal(again, first) {
			t.Error("a revocation of another serial dropped the answer about good")
		}
		wantSigns(10)

		// Half the answer's life on, it is signed again.
		clock.advance(ocspResponseLife/2 + time.Minute)
		if again, r := ask(good, crypto.SHA1, true); bytes.Equal(again, first) || r.Status != ocsp.Good {
			t.Error("an answer past half its life was served again")
		}
		wantSigns(11)

		// A new responder certificate: every answer is signed by it.
		old := c.ocsp.responder.cert
		clock.advance(17 * time.Hour)
		_, r = ask(good, crypto.SHA1, true)
		if r.Certificate == nil || r.Certificate.Equal(old) {
			t.Error("after the responder's renewal, an answer still signed by the old certificate")
		}
		if n := countOCSPCerts(t, db); n != 2 {
			t.Errorf("%d OCSP signing certificates, want 2", n)
		}
	})
}

// TestOCSPCacheBounded: the cache keeps at most its bound of answers, the most recently
// used ones, and nothing for serials the CA did not issue.
func TestOCSPCacheBounded(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	c := newTestCA(t, db)
	c.ocsp.cache.max = 3
	var certs []*x509.Certificate
	for _, cn := range []string{"a", "b", "c", "d"} {
		certs = append(certs, issueClient(t, c, cn))
	}
	signs := countSignatures(t, c)
	runWatched(t, c)
	ask := func(cert *x509.Certificate) {
		t.Helper()
		req, _ := ocsp.ParseRequest(ocspRequest(t, cert, c.Issuing(), crypto.SHA1))
		if _, err := c.OCSP(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	for _, cert := range certs[:3] {
		ask(cert)
	}
	ask(certs[0]) // a is now the most recently used, b the least
	ask(certs[3]) // pushes b out
	if n := c.ocsp.cache.len(); n != 3 {
		t.Errorf("%d answers cached, want 3", n)
	}
	if signs.Load() != 4 {
		t.Errorf("%d signed, want 4", signs.Load())
	}
	ask(certs[0])
	ask(certs[2])
	if signs.Load() != 4 {
		t.Errorf("a recently used answer was dropped: %d signed, want 4", signs.Load())
	}
	ask(certs[1])
	if signs.Load() != 5 {
		t.Errorf("the least recently used answer was kept: %d signed, want 5", signs.Load())
	}

	// Serials this CA did not issue (here: issued by the same issuing CA over another
	// database) are refused and leave nothing behind.
	unknown := issueClient(t, newTestCA(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))), "x")
	for range 10 {
		req, _ := ocsp.ParseRequest(ocspRequest(t, unknown, c.Issuing(), crypto.SHA1))
		if _, err := c.OCSP(context.Background(), req); err == nil {
			t.Fatal("answered for a serial this CA did not issue")
		}
	}
	if n := c.ocsp.cache.len(); n != 3 {
		t.Errorf("%d answers cached after unknown serials, want 3", n)
	}
}

// TestOCSPCacheKeepsNothingReadBeforeAForget: an answer whose status was read before a
// revocation was announced is not kept, even if it is put after the announcement.
func TestOCSPCacheKeepsNothingReadBeforeAForget(t *testing.T) {
	var oc ocspCache
	oc.setLive(true)
	r := &ocspResponder{}
	key := ocspCacheKey{serial: "42", hash: crypto.SHA1}
	now := time.Now()
	gen := oc.generation()
	oc.forget("7") // any announcement
	oc.put(key, gen, &cachedResponse{der: []byte("good"), r: r, refreshAt: now.Add(time.Hour)})
	if _, ok := oc.get(key, r, now); ok {
		t.Error("kept an answer read before a revocation was announced")
	}
	oc.put(key, oc.generation(), &cachedResponse{der: []byte("good"), r: r, refreshAt: now.Add(time.Hour)})
	if _, ok := oc.get(key, r, now); !ok {
		t.Error("did not keep an answer read after it")
	}
	if _, ok := oc.get(key, &ocspResponder{}, now); ok {
		t.Error("served an answer of another responder")
	}
	oc.put(key, oc.generation(), &cachedResponse{der: []byte("good"), r: r, refreshAt: now.Add(time.Hour)})
	oc.setLive(false)
	oc.put(key, oc.generation(), &cachedResponse{der: []byte("good"), r: r, refreshAt: now.Add(time.Hour)})
	if _, ok := oc.get(key, r, now); ok {
		t.Error("kept an answer while the revocation watcher is not subscribed")
	}
}

// BenchmarkOCSP compares an answer signed afresh with one served from the cache.
func BenchmarkOCSP(b *testing.B) {
	db := sitedbtest.Open(b, sitedb.SQLite, sitedbtest.NewDSN(b, sitedb.SQLite))
	c := newTestCA(b, db)
	chain, err := c.Issue(context.Background(), IssueSpec{Profile: Client, Subject: "pc"},
		csrPEM(b, newKey(b), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}}), "admin:test")
	if err != nil {
		b.Fatal(err)
	}
	req, _ := ocsp.ParseRequest(ocspRequest(b, chain[0], c.Issuing(), crypto.SHA1))
	if err := c.Prepare(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Run("signed", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.OCSP(context.Background(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		c.ocsp.cache.setLive(true)
		defer c.ocsp.cache.setLive(false)
		for b.Loop() {
			if _, err := c.OCSP(context.Background(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestOCSPResponderRenewalFailure: when the renewal of a due responder certificate fails,
// answers are still signed with the current one, and the next request tries again.
func TestOCSPResponderRenewalFailure(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	clock := &testClock{t: time.Now()}
	c := newClockedCA(t, db, clock)
	leaf := issueClient(t, c, "pc")
	if err := c.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	old := c.ocsp.responder.cert
	ctx := context.Background()
	if _, err := db.Exec(ctx, `CREATE TRIGGER no_ocsp BEFORE INSERT ON certificates WHEN NEW.profile = 'ocsp'
		BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`); err != nil {
		t.Fatal(err)
	}
	clock.advance(17 * time.Hour)
	req, _ := ocsp.ParseRequest(ocspRequest(t, leaf, c.Issuing(), crypto.SHA1))
	der, err := c.OCSP(ctx, req)
	if err != nil {
		t.Fatalf("OCSP while the renewal fails: %v", err)
	}
	if r, err := ocsp.ParseResponseForCert(der, leaf, c.Issuing()); err != nil || !r.Certificate.Equal(old) {
		t.Fatalf("answer while the renewal fails: %v, signed by the current certificate: %v", err, err == nil && r.Certificate.Equal(old))
	}
	if _, err := db.Exec(ctx, `DROP TRIGGER no_ocsp`); err != nil {
		t.Fatal(err)
	}
	der, err = c.OCSP(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := ocsp.ParseResponseForCert(der, leaf, c.Issuing()); err != nil || r.Certificate.Equal(old) {
		t.Errorf("after the failure cleared: %v, still the old certificate", err)
	}
	if n := countOCSPCerts(t, db); n != 2 {
		t.Errorf("%d OCSP signing certificates, want 2", n)
	}
}
