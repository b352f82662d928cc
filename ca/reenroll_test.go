package ca

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// A re-enroll token makes a certificate for its device's id and registered name, once,
// within its short life, and only while the device is not blocked. It is stored only as a
// hash, and no other token can name an existing device id.
func TestReenrollTokenKeepsTheDeviceID(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c := newTestCA(t, db)
		old := enrollClient(t, c, "pc-01")
		id := registerDevice(t, db, old)
		other := registerDevice(t, db, enrollClient(t, c, "pc-02"))
		if _, _, err := c.CreateToken(ctx, TokenSpec{Profile: Client, DeviceID: id}, "admin:test"); !errors.Is(err, ErrDeviceLive) {
			t.Fatalf("a re-enroll token while the device has a valid certificate: %v, want ErrDeviceLive", err)
		}
		revokeCert(t, c, old) // the device lost its key: its certificate goes first
		csr := func(cn string, uris ...*url.URL) []byte {
			return csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, URIs: uris})
		}

		secret, tok, err := c.CreateToken(ctx, TokenSpec{Profile: Client, DeviceID: id}, "admin:test")
		if err != nil {
			t.Fatalf("CreateToken: %v", err)
		}
		if tok.Subject != "pc-01" || tok.Uses != 1 || tok.DeviceID != id || tok.ExpiresAt.Sub(tok.CreatedAt) != ReenrollTTL {
			t.Errorf("token %+v: want bound to pc-01 and %s, one use, %s", tok, id, ReenrollTTL)
		}
		var hash, subject, device, by string
		if err := db.QueryRow(ctx, `SELECT hash, subject, device_id, created_by FROM enrollment_tokens WHERE id = ?`, tok.ID).
			Scan(&hash, &subject, &device, &by); err != nil {
			t.Fatal(err)
		}
		body := strings.TrimPrefix(secret, TokenPrefix)
		for _, v := range []string{hash, subject, device, by} {
			if strings.Contains(v, body) {
				t.Errorf("the token's row holds its secret: %q", v)
			}
		}
		if hash != hashSecret(secret) || device != id {
			t.Errorf("stored hash %s device %s, want the secret's SHA-256 and %s", hash, device, id)
		}

		// The request cannot pick another device: a URI of its own is refused, and the
		// certificate names the token's device.
		if _, err := c.Enroll(ctx, secret, "", csr("pc-01", deviceURIFor(other))); !errors.Is(err, ErrForbiddenSAN) {
			t.Errorf("re-enroll token with another device's URI in the CSR: %v, want ErrForbiddenSAN", err)
		}
		if _, err := c.Enroll(ctx, secret, "", csr("pc-02")); !errors.Is(err, ErrSubjectMismatch) {
			t.Errorf("re-enroll token naming another device: %v, want ErrSubjectMismatch", err)
		}
		chain, err := c.EnrollWith(ctx, Enrollment{Secret: secret, CSR: csr("host-name"), NameFromToken: true})
		if err != nil {
			t.Fatalf("re-enroll: %v", err)
		}
		if got := deviceIDOf(chain[0]); got != id {
			t.Errorf("re-enrolled certificate names device %q, want %q", got, id)
		}
		if chain[0].Subject.CommonName != "pc-01" {
			t.Errorf("re-enrolled certificate is for %q, want the device's name pc-01", chain[0].Subject.CommonName)
		}
		if _, err := c.Enroll(ctx, secret, "", csr("pc-01")); !errors.Is(err, ErrTokenUsed) {
			t.Errorf("second use of a re-enroll token: %v, want ErrTokenUsed", err)
		}

		// Short-lived: refused after its hour.
		expiring := mustToken(t, c, TokenSpec{Profile: Client, DeviceID: id, TTL: time.Minute})
		real := c.now
		c.now = func() time.Time { return real().Add(2 * time.Minute) }
		if _, err := c.Enroll(ctx, expiring, "", csr("pc-01")); !errors.Is(err, ErrTokenExpired) {
			t.Errorf("expired re-enroll token: %v", err)
		}
		c.now = real

		// Not for a blocked device: neither made nor used while it is blocked.
		pending := mustToken(t, c, TokenSpec{Profile: Client, DeviceID: id})
		var listed []string
		if err := db.Tx(ctx, func(tx *sitedb.Tx) error { var err error; listed, err = blockSQL(tx, id); return err }); err != nil {
			t.Fatal(err)
		}
		// The block lists the re-enrolled certificate, which no MP has seen yet, for revocation.
		if !slices.Contains(listed, chain[0].SerialNumber.String()) {
			t.Errorf("the block lists %v, not the re-enrolled certificate %s", listed, chain[0].SerialNumber)
		}
		if _, _, err := c.CreateToken(ctx, TokenSpec{Profile: Client, DeviceID: id}, "admin:test"); !errors.Is(err, ErrDeviceBlocked) {
			t.Errorf("re-enroll token for a blocked device: %v, want ErrDeviceBlocked", err)
		}
		// The block revoked the token made before it (TestReenrollRacingBlock: one the block
		// missed is refused for the blocked device).
		if _, err := c.Enroll(ctx, pending, "", csr("pc-01")); !errors.Is(err, ErrTokenRevoked) {
			t.Errorf("re-enrolling a blocked device: %v, want ErrTokenRevoked", err)
		}
	})
}

func TestReenrollTokenRules(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c := newTestCA(t, db)
		id := registerDevice(t, db, enrollClient(t, c, "pc-01"))
		cases := []struct {
			name string
			spec TokenSpec
			want error
		}{
			{"unknown device", TokenSpec{Profile: Client, DeviceID: "6defabdb-743f-4a34-9830-20527b338cb5"}, ErrNotFound},
			{"admin profile", TokenSpec{Profile: Admin, DeviceID: id}, ErrBadProfile},
			{"bulk", TokenSpec{Profile: Client, DeviceID: id, Uses: 2}, ErrBadSubject},
			{"long-lived", TokenSpec{Profile: Client, DeviceID: id, TTL: 25 * time.Hour}, ErrBadSubject},
			{"another name", TokenSpec{Profile: Client, DeviceID: id, Subject: "pc-99"}, ErrSubjectMismatch},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				if _, _, err := c.CreateToken(ctx, tc.spec, "admin:test"); !errors.Is(err, tc.want) {
					t.Errorf("CreateToken(%+v) = %v, want %v", tc.spec, err, tc.want)
				}
			})
		}
	})
}

// A token that is not a re-enroll token never names an existing device: the CA makes a
// new id whatever the request says.
func TestNormalTokenCannotClaimADeviceID(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c := newTestCA(t, db)
		id := registerDevice(t, db, enrollClient(t, c, "pc-01"))
		tok := mustToken(t, c, TokenSpec{Profile: Client, Subject: "pc-01"})
		if _, err := c.Enroll(ctx, tok, "", csrPEM(t, newKey(t), &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: "pc-01"}, URIs: []*url.URL{deviceURIFor(id)}})); !errors.Is(err, ErrForbiddenSAN) {
			t.Errorf("normal token with an existing device's URI: %v, want ErrForbiddenSAN", err)
		}
		chain, err := c.Enroll(ctx, tok, "", csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc-01"}}))
		if err != nil {
			t.Fatal(err)
		}
		if got := deviceIDOf(chain[0]); got == id || got == "" {
			t.Errorf("a normal token for the same name made device id %q (the existing one is %q)", got, id)
		}
	})
}

// A token bound to a subject names the certificate when the request's name is only a
// default; a request that insists on another name is refused.
func TestNameFromToken(t *testing.T) {
	sitedbtest.ForEach(t, func(t *testing.T, db *sitedb.DB) {
		ctx := context.Background()
		c := newTestCA(t, db)
		csr := func(cn, dns string) []byte {
			tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}
			if dns != "" {
				tmpl.DNSNames = []string{dns}
			}
			return csrPEM(t, newKey(t), tmpl)
		}
		chain, err := c.EnrollWith(ctx, Enrollment{Secret: mustToken(t, c, TokenSpec{Profile: Client, Subject: "kiosk-7"}),
			CSR: csr("build-host", "kiosk-7.corp.example"), NameFromToken: true})
		if err != nil {
			t.Fatalf("bound token, name from token: %v", err)
		}
		if chain[0].Subject.CommonName != "kiosk-7" || len(chain[0].DNSNames) != 1 || chain[0].DNSNames[0] != "kiosk-7.corp.example" {
			t.Errorf("certificate %q %v, want kiosk-7 with its FQDN", chain[0].Subject.CommonName, chain[0].DNSNames)
		}
		_, err = c.EnrollWith(ctx, Enrollment{Secret: mustToken(t, c, TokenSpec{Profile: Client, Subject: "kiosk-7"}), CSR: csr("kiosk-8", "")})
		if !errors.Is(err, ErrSubjectMismatch) || !strings.Contains(err.Error(), `"kiosk-7"`) {
			t.Errorf("bound token, another explicit name: %v, want ErrSubjectMismatch naming the token's subject", err)
		}
		chain, err = c.EnrollWith(ctx, Enrollment{Secret: mustToken(t, c, TokenSpec{Profile: Client}), CSR: csr("build-host", ""), NameFromToken: true})
		if err != nil || chain[0].Subject.CommonName != "build-host" {
			t.Errorf("unbound token, name from token: the request's default name stays (%v)", err)
		}
	})
}

// On PostgreSQL a re-enrollment that passed its first check before a block committed waits
// for the block under the device row's lock when it records the certificate, and is
// refused: the token stays unspent and no certificate the block did not list exists.
func TestReenrollRacingBlock(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.Postgres, sitedbtest.NewDSN(t, sitedb.Postgres))
	ctx := context.Background()
	c := newTestCA(t, db)
	racer := enrollClient(t, c, "pc-race")
	id := registerDevice(t, db, racer)
	revokeCert(t, c, racer)
	secret, tok, err := c.CreateToken(ctx, TokenSpec{Profile: Client, DeviceID: id}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	enrolled := make(chan error, 1)
	err = db.Tx(ctx, func(tx *sitedb.Tx) error {
		if _, err := tx.Exec(`UPDATE devices SET blocked_at = ? WHERE id = ?`, time.Now().Unix(), id); err != nil {
			return err
		}
		csr := csrPEM(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc-race"}})
		go func() { _, err := c.Enroll(ctx, secret, "", csr); enrolled <- err }()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			var waiting int
			if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
				return err
			}
			if waiting > 0 {
				break
			}
			select {
			case err := <-enrolled:
				enrolled <- err
				return fmt.Errorf("the re-enrollment did not wait for the block's transaction: %v", err)
			default:
			}
			if time.Now().After(deadline) {
				return errors.New("the re-enrollment never waited for the block's transaction")
			}
		}
		_, err := blockSQL(tx, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-enrolled; !errors.Is(err, ErrDeviceBlocked) {
		t.Errorf("re-enrollment racing the block = %v, want ErrDeviceBlocked", err)
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM certificates WHERE issued_by = ?`, "token:"+tok.ID).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d certificates recorded for the token while the device was being blocked (%v)", n, err)
	}
	ts, err := c.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ts {
		if x.ID == tok.ID && x.UsesLeft != 1 {
			t.Errorf("the refused re-enrollment spent its token (%d uses left)", x.UsesLeft)
		}
	}
}

// TestReenrollTokenRacingBlock: on PostgreSQL a re-enroll token made while the device is
// being blocked waits for the block under the device row's lock and is refused; without
// the lock it was stored after the block had revoked the device's tokens, and worked
// again after the unblock. Security review finding; its test.
func TestReenrollTokenRacingBlock(t *testing.T) {
	db := sitedbtest.Open(t, sitedb.Postgres, sitedbtest.NewDSN(t, sitedb.Postgres))
	ctx := context.Background()
	c := newTestCA(t, db)
	id := registerDevice(t, db, enrollClient(t, c, "pc-race"))
	made := make(chan error, 1)
	err := db.Tx(ctx, func(tx *sitedb.Tx) error {
		if _, err := blockSQL(tx, id); err != nil {
			return err
		}
		go func() {
			_, _, err := c.CreateToken(ctx, TokenSpec{Profile: Client, DeviceID: id}, "admin:test")
			made <- err
		}()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			var waiting int
			if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
				return err
			}
			if waiting > 0 {
				return nil
			}
			select {
			case err := <-made:
				made <- err
				return fmt.Errorf("the token was made without waiting for the block's transaction: %v", err)
			default:
			}
			if time.Now().After(deadline) {
				return errors.New("making the token never waited for the block's transaction")
			}
		}
	})
	if err != nil {
		t.Error(err)
	}
	if err := <-made; !errors.Is(err, ErrDeviceBlocked) {
		t.Errorf("re-enroll token made while the device was being blocked: %v, want ErrDeviceBlocked", err)
	}
	ts, err := c.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ts {
		if x.DeviceID == id && x.RevokedAt == nil {
			t.Errorf("token %s for the blocked device is not revoked", x.ID)
		}
	}
}

func revokeCert(t *testing.T, c *CA, cert *x509.Certificate) {
	t.Helper()
	if err := c.Revoke(context.Background(), cert.SerialNumber.String(), "superseded"); err != nil {
		t.Fatal(err)
	}
}
