package mp

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestBlockRevokesPendingReenrollTokens: a re-enroll token made for a device and not used
// yet does not outlive a block of the device. It is refused while the device is blocked,
// and without this it came back to life at the next unblock (alongside the new token that
// unblock prints), for whoever had kept a copy. Security review finding; its test.
func TestBlockRevokesPendingReenrollTokens(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c, csr := testCA(t, db)
		req, key := csr()
		chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-3"}, req, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		f := newFixture(t, db, Options{})
		cert := tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
		if status, e := call(t, f.client(&cert), "GET", f.intranet+"/v1/whoami", nil, &wire.Whoami{}); status != 200 {
			t.Fatalf("whoami: %d %+v", status, e)
		}
		id := deviceID(cert)
		if err := c.Revoke(ctx, chain[0].SerialNumber.String(), "superseded"); err != nil { // lost its key
			t.Fatal(err)
		}
		pending, _, err := c.CreateToken(ctx, ca.TokenSpec{Profile: ca.Client, DeviceID: id}, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.mp.Block(ctx, id, true); err != nil {
			t.Fatal(err)
		}
		if _, err := f.mp.Block(ctx, id, false); err != nil {
			t.Fatal(err)
		}
		der, _ := csr()
		_, err = c.EnrollWith(ctx, ca.Enrollment{Secret: pending, NameFromToken: true,
			CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})})
		if !errors.Is(err, ca.ErrTokenRevoked) {
			t.Errorf("a re-enroll token made before the block, used after the unblock: %v, want ErrTokenRevoked", err)
		}
	})
}

// TestReenrollOfALiveDeviceIsRefused: a re-enroll token for a device that still has a
// valid certificate would make a second live identity for its id beside it (security
// review finding), so it is refused until the device is blocked, which revokes its
// certificates; the unblock then prints the token.
func TestReenrollOfALiveDeviceIsRefused(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c, csr := testCA(t, db)
		req, key := csr()
		chain, err := c.Issue(ctx, ca.IssueSpec{Profile: ca.Client, Subject: "pc-4"}, req, "admin:test")
		if err != nil {
			t.Fatal(err)
		}
		f := newFixture(t, db, Options{})
		old := tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
		if status, e := call(t, f.client(&old), "GET", f.intranet+"/v1/whoami", nil, &wire.Whoami{}); status != 200 {
			t.Fatalf("whoami: %d %+v", status, e)
		}
		id := deviceID(old)
		if _, _, err := c.CreateToken(ctx, ca.TokenSpec{Profile: ca.Client, DeviceID: id}, "admin:test"); !errors.Is(err, ca.ErrDeviceLive) {
			t.Fatalf("a re-enroll token for a device with a valid certificate: %v, want ErrDeviceLive", err)
		}
		// Its certificate revoked (as a block does), the token is made.
		if err := c.Revoke(ctx, chain[0].SerialNumber.String(), "superseded"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.CreateToken(ctx, ca.TokenSpec{Profile: ca.Client, DeviceID: id}, "admin:test"); err != nil {
			t.Errorf("a re-enroll token once the certificate is revoked: %v", err)
		}
	})
}
