package mp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
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
		c, err := ca.New(ctx, db, ca.Options{SiteCode: "TST", Hierarchy: hierarchy(), PublicURL: "http://127.0.0.1:1", Log: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		csr := func() ([]byte, *ecdsa.PrivateKey) {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
			if err != nil {
				t.Fatal(err)
			}
			return der, key
		}
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
		if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "probable clone") || !strings.Contains(d.Warnings[0], ca.SerialHex(old.SerialNumber)) {
			t.Errorf("device warnings = %q, want one clone warning naming %s", d.Warnings, ca.SerialHex(old.SerialNumber))
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
