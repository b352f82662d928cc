package mp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// testClock is the MP's injected clock, moved by the test.
type testClock struct{ off atomic.Int64 }

func (c *testClock) now() time.Time       { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *testClock) move(d time.Duration) { c.off.Add(int64(d)) }
func (c *testClock) moveTo(t time.Time)   { c.move(time.Until(t)) }
func sqliteDB(t testing.TB) *sitedb.DB {
	return sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
}
func deviceCert(id string) *url.URL         { return &url.URL{Scheme: "urn", Opaque: "ibcm:device:" + id} }
func expiredAt(c tls.Certificate) time.Time { return c.Leaf.NotAfter.Add(time.Second) }

// shortLived is a real device certificate of the site's issuing CA that expires at notAfter
// (whole seconds, as X.509 encodes it).
func shortLived(t testing.TB, name string, notAfter time.Time) tls.Certificate {
	t.Helper()
	return handmade(t, &x509.Certificate{Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: notAfter.Truncate(time.Second), URIs: []*url.URL{deviceCert(randomID())},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

// request sends one HTTP/1.1 request on a raw connection and reads the answer.
func request(t testing.TB, c io.Writer, br *bufio.Reader, path string) *http.Response {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: mp\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// A kept-alive connection does not outlive its certificate: the request after NotAfter is
// refused with 403 certificate_expired and the connection is closed.
func TestExpiryEndsKeptAliveConnection(t *testing.T) {
	clock := &testClock{}
	f := newFixture(t, sqliteDB(t), Options{Now: clock.now})
	pc := f.device(t, "pc-1")
	c, br := f.rawConn(t, pc)
	if resp := request(t, c, br, "/v1/whoami"); resp.StatusCode != http.StatusOK {
		t.Fatalf("whoami: %d", resp.StatusCode)
	}
	clock.moveTo(expiredAt(pc))
	if _, err := io.WriteString(c, "GET /v1/whoami HTTP/1.1\r\nHost: mp\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "certificate_expired") {
		t.Fatalf("after NotAfter: %d %s, want 403 certificate_expired", resp.StatusCode, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the connection stays open after an expired certificate's request (%v)", err)
	}
}

// A notification channel does not outlive its certificate either: the ping after NotAfter
// closes it (moved clock).
func TestExpiryEndsChannelAtPing(t *testing.T) {
	clock := &testClock{}
	f := newFixture(t, sqliteDB(t), Options{Now: clock.now, PingInterval: 100 * time.Millisecond})
	pc := f.device(t, "pc-1")
	ws := dialNotify(t, f, &pc)
	waitConnected(t, f.mp, deviceID(pc), 1)
	clock.moveTo(expiredAt(pc))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := ws.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != "certificate expired" {
		t.Fatalf("channel after NotAfter: %v, want close 1008 \"certificate expired\"", err)
	}
	waitConnected(t, f.mp, deviceID(pc), 0)
}

// An idle channel whose certificate expires long before its next ping is cut at NotAfter
// (real clock, a certificate that lives for two or three seconds).
func TestExpiryEndsIdleChannelOnTime(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{PingInterval: time.Hour})
	pc := shortLived(t, "brief", time.Now().Add(3*time.Second))
	_, br := f.rawUpgrade(t, pc)
	op, p, err := serverFrame(br)
	cut := time.Now()
	if err != nil || op != opClose || len(p) < 2 || binary.BigEndian.Uint16(p) != closePolicyViolation || string(p[2:]) != "certificate expired" {
		t.Fatalf("got op %#x %q %v, want a close 1008 \"certificate expired\"", op, p, err)
	}
	if cut.Before(pc.Leaf.NotAfter) || cut.After(pc.Leaf.NotAfter.Add(2*time.Second)) {
		t.Errorf("channel cut at %v, certificate valid until %v", cut.Format(time.StampMilli), pc.Leaf.NotAfter.Format(time.StampMilli))
	}
	waitConnected(t, f.mp, deviceID(pc), 0)
}
