package mp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestRefusedRenewalWarnsDevice: the CA refuses a renewal of an already renewed
// certificate for another key while no MP runs; an MP started afterwards shows the clone
// warning on the device.
func TestRefusedRenewalWarnsDevice(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c, csr := testCA(t, db)
		req, key := csr()
		chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-7"}, req, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		old := chain[0]
		real, _ := csr()
		if _, err := c.Renew(ctx, old, real); err != nil {
			t.Fatalf("the real device's renewal: %v", err)
		}
		copied, _ := csr()
		if _, err := c.Renew(ctx, old, copied); !errors.Is(err, ca.ErrRenewalSuperseded) {
			t.Fatalf("the copy's renewal = %v, want ErrRenewalSuperseded", err)
		}

		f := newFixture(t, db, Options{})
		cert := tls.Certificate{Certificate: [][]byte{old.Raw, chain[1].Raw}, PrivateKey: key, Leaf: old}
		if status, e := call(t, f.client(&cert), "GET", f.intranet+"/v1/whoami", nil, &wire.Whoami{}); status != 200 {
			t.Fatalf("whoami: %d %+v", status, e)
		}
		id := deviceID(cert)
		d, err := f.mp.Device(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "probable clone") || !strings.Contains(d.Warnings[0], wire.FormatSerial(old.SerialNumber)) {
			t.Errorf("device warnings = %q, want one clone warning naming %s", d.Warnings, wire.FormatSerial(old.SerialNumber))
		}
		all, err := f.mp.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, dev := range all {
			if dev.ID == id && len(dev.Warnings) != 1 {
				t.Errorf("device list: warnings %q", dev.Warnings)
			}
		}
	})
}

// TestSupersededCertificateRefused: once the device presented the renewal C1 of its
// certificate C0 at an MP, C0 is refused with 403 certificate_superseded and the device is
// warned of a clone (a copy that never renews keeps using C0; the MP accepted it silently).
// A channel C0 opened before is closed. C0 works until then: the agent may not have
// received its renewal yet. A second MP
// process, without its cache, refuses C0 too. Security review finding; its test.
func TestSupersededCertificateRefused(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) { testSupersededCertificateRefused(t, db) })
}

func testSupersededCertificateRefused(t *testing.T, db *sitedb.DB) {
	ctx := context.Background()
	c, csr := testCA(t, db)
	req, key := csr()
	chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-7"}, req, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	req2, key2 := csr()
	chain2, err := c.Renew(ctx, chain[0], req2)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, db, Options{})
	oldCert := tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
	newCert := tls.Certificate{Certificate: [][]byte{chain2[0].Raw, chain2[1].Raw}, PrivateKey: key2, Leaf: chain2[0]}
	id := deviceID(oldCert)
	whoami := func(f *fixture, cert *tls.Certificate, path string) (int, wire.Error) {
		t.Helper()
		return call(t, f.client(cert), "GET", f.intranet+path, nil, nil)
	}
	if st, e := whoami(f, &oldCert, "/v1/whoami"); st != 200 {
		t.Fatalf("the old certificate before the renewal reached an MP: %d %+v", st, e)
	}
	copyChannel := live(t, f.intranet, f.client(&oldCert))
	waitConnected(t, f.mp, id, 1)
	if st, e := whoami(f, &newCert, "/v1/whoami"); st != 200 {
		t.Fatalf("the renewed certificate: %d %+v", st, e)
	}
	for _, path := range []string{"/v1/whoami", "/v1/policy", "/v1/notify", "/v1/whoami"} {
		st, e := whoami(f, &oldCert, path)
		if st != http.StatusForbidden || e.Error.Code != "certificate_superseded" {
			t.Errorf("the superseded certificate at %s: %d %+v, want 403 certificate_superseded", path, st, e)
		}
	}
	if reason := copyChannel.closedWith(t); reason != "certificate superseded" {
		t.Errorf("the channel of the superseded certificate closed with %q", reason)
	}
	d, err := f.mp.Device(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "probable clone") || !strings.Contains(d.Warnings[0], wire.FormatSerial(oldCert.Leaf.SerialNumber)) {
		t.Errorf("device warnings = %q, want one clone warning naming %s", d.Warnings, wire.FormatSerial(oldCert.Leaf.SerialNumber))
	}
	if st, e := whoami(f, &newCert, "/v1/policy"); st != 200 {
		t.Errorf("the renewed certificate after the clone was refused: %d %+v", st, e)
	}
	other := newFixture(t, db, Options{ID: "mp-other"})
	if st, e := whoami(other, &oldCert, "/v1/whoami"); st != http.StatusForbidden || e.Error.Code != "certificate_superseded" {
		t.Errorf("the superseded certificate at another MP: %d %+v, want 403 certificate_superseded", st, e)
	}
}

// When the copy renewed first, the real device's renewal is refused (renewal_superseded)
// and the line is contested: its older certificate is not refused, or the copy would lock
// the real device out. The device is flagged and both keep working until an admin acts.
func TestContestedLineNotRefused(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c, csr := testCA(t, db)
		req, key := csr()
		chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-8"}, req, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		f := newFixture(t, db, Options{})
		device := tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
		if st, e := call(t, f.client(&device), "GET", f.intranet+"/v1/whoami", nil, nil); st != 200 {
			t.Fatalf("the device before any renewal: %d %+v", st, e)
		}
		// The copy renews first and presents its renewal.
		copyReq, copyKey := csr()
		copyChain, err := c.Renew(ctx, chain[0], copyReq)
		if err != nil {
			t.Fatal(err)
		}
		clone := tls.Certificate{Certificate: [][]byte{copyChain[0].Raw, copyChain[1].Raw}, PrivateKey: copyKey, Leaf: copyChain[0]}
		if st, e := call(t, f.client(&clone), "GET", f.intranet+"/v1/whoami", nil, nil); st != 200 {
			t.Fatalf("the copy's renewal: %d %+v", st, e)
		}
		// The real device's renewal is refused: the line is contested.
		realReq, _ := csr()
		if _, err := c.Renew(ctx, chain[0], realReq); !errors.Is(err, ca.ErrRenewalSuperseded) {
			t.Fatalf("the real device's renewal after the copy's: %v, want renewal_superseded", err)
		}
		for _, mp := range []*fixture{f, newFixture(t, db, Options{ID: "mp-other"})} {
			if st, e := call(t, mp.client(&device), "GET", mp.intranet+"/v1/policy", nil, nil); st != 200 {
				t.Errorf("the real device's certificate on a contested line: %d %+v, want 200", st, e)
			}
		}
		d, err := f.mp.Device(ctx, deviceID(device))
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Warnings) == 0 || !strings.Contains(strings.Join(d.Warnings, "\n"), "probable clone") {
			t.Errorf("a contested line raised no clone warning: %q", d.Warnings)
		}
	})
}

// testCA is a CA of site TST on db and a maker of CSRs for new P-256 keys, for the tests
// that renew through the real CA.
func testCA(t *testing.T, db *sitedb.DB) (*ca.CA, func() ([]byte, *ecdsa.PrivateKey)) {
	t.Helper()
	c, err := ca.New(context.Background(), db, ca.Options{SiteCode: "TST", Hierarchy: hierarchy(), PublicURL: "http://127.0.0.1:1", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return c, func() ([]byte, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
}
