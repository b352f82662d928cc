package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestRenewAfterLostAnswer: the CA issues the successor, then the connection drops before
// the agent reads the answer. The key the agent asked for was stored before the request;
// the retry asks for it again and gets the very certificate the CA issued the first time.
func TestRenewAfterLostAnswer(t *testing.T) {
	dir := t.TempDir()
	var drop atomic.Bool
	var pendingAtRequest atomic.Bool
	var lostStatus atomic.Int32
	tc := testCA{catest.StartWrapped(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/renew" || !drop.Load() {
				h.ServeHTTP(w, r)
				return
			}
			_, err := os.Stat(filepath.Join(dir, PendingKeyFile))
			pendingAtRequest.Store(err == nil)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r) // the CA does all its work and answers...
			lostStatus.Store(int32(rec.Code))
			conn, _, err := w.(http.Hijacker).Hijack() // ...and the answer is lost
			if err == nil {
				conn.Close()
			}
		})
	})}
	old := enroll(t, tc, dir)
	oldKey := readFile(t, filepath.Join(dir, KeyFile))

	drop.Store(true)
	if _, err := Renew(context.Background(), RenewOptions{Dir: dir}); err == nil {
		t.Fatal("Renew succeeded though the answer was lost")
	}
	if !pendingAtRequest.Load() {
		t.Error("the pending key was not stored before the request")
	}
	if lostStatus.Load() != http.StatusOK {
		t.Fatalf("the CA answered the first request with %d, want 200", lostStatus.Load())
	}
	if !bytes.Equal(oldKey, readFile(t, filepath.Join(dir, KeyFile))) {
		t.Error("a renewal without an answer changed key.pem")
	}
	recs, err := tc.CA.List(context.Background(), ca.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var issued []ca.Record
	for _, r := range recs {
		if r.RenewedFrom == old.Serial.String() {
			issued = append(issued, r)
		}
	}
	if len(issued) != 1 {
		t.Fatalf("the CA recorded %d successors, want 1", len(issued))
	}
	pending, err := pendingKey(dir, old, false, nil)
	if err != nil {
		t.Fatal(err)
	}

	drop.Store(false)
	id, err := Renew(context.Background(), RenewOptions{Dir: dir})
	if err != nil {
		t.Fatalf("the retry: %v", err)
	}
	if !bytes.Equal(id.Leaf.Raw, issued[0].Cert.Raw) {
		t.Errorf("the retry got serial %s, the CA issued %s in the lost answer", id.SerialHex(), wire.FormatSerial(issued[0].Cert.SerialNumber))
	}
	if !samePublicKey(id.Leaf, pending) {
		t.Error("the retry did not ask for the stored pending key")
	}
	loaded, err := Load(dir)
	if err != nil || !bytes.Equal(loaded.Leaf.Raw, issued[0].Cert.Raw) || !samePublicKey(loaded.Leaf, loaded.Certificate.PrivateKey.(crypto.Signer)) {
		t.Fatalf("Load after the retry: %v", err)
	}
	if got := entries(t, dir); len(got) != 4 {
		t.Errorf("after the retry the directory holds %v (the pending key must be gone)", got)
	}
}

// TestRenewCopiedIdentity: a copy of the state directory (key and certificate) renews
// after the real device did, or before it: whoever comes second is refused with
// renewal_superseded (409) and the identity it holds is left as it was.
func TestRenewCopiedIdentity(t *testing.T) {
	tc := startCA(t)
	for _, copyFirst := range []bool{false, true} {
		name := map[bool]string{false: "device first", true: "copy first"}[copyFirst]
		t.Run(name, func(t *testing.T) {
			real := t.TempDir()
			enroll(t, tc, real)
			clone := stateDir(t)
			for _, f := range commitOrder {
				if err := os.WriteFile(filepath.Join(clone, f), readFile(t, filepath.Join(real, f)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			first, second := real, clone
			if copyFirst {
				first, second = clone, real
			}
			if _, err := Renew(context.Background(), RenewOptions{Dir: first}); err != nil {
				t.Fatalf("first renewal: %v", err)
			}
			before := readFile(t, filepath.Join(second, CertFile))
			_, err := Renew(context.Background(), RenewOptions{Dir: second})
			var se *ServerError
			if !errors.As(err, &se) || se.Status != http.StatusConflict || se.Code != "renewal_superseded" {
				t.Fatalf("second renewal = %v, want 409 renewal_superseded", err)
			}
			if !bytes.Equal(before, readFile(t, filepath.Join(second, CertFile))) {
				t.Error("a refused renewal changed cert.pem")
			}
			if got := entries(t, second); len(got) != 4 {
				t.Errorf("a refused renewal left %v", got)
			}
		})
	}
}

// TestPendingKeyBoundToSerial: a pending key written for another certificate (a crash
// after the commit, before its removal) is never sent; one that others can read is refused.
func TestPendingKeyBoundToSerial(t *testing.T) {
	tc := startCA(t)
	dir := t.TempDir()
	id := enroll(t, tc, dir)
	stale, err := P256.generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(stale)
	block := &pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{pendingSerialHeader: "12345"}, Bytes: der}
	path := filepath.Join(dir, PendingKeyFile)
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := pendingKey(dir, id, false, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if samePublicKey(&x509.Certificate{PublicKey: stale.Public()}, got) {
		t.Error("a pending key written for another serial was used")
	}
	if again, err := pendingKey(dir, id, false, rand.Reader); err != nil || !samePublicKey(&x509.Certificate{PublicKey: got.Public()}, again) {
		t.Errorf("the stored pending key is not reused: %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Renew(context.Background(), RenewOptions{Dir: dir}); !errors.Is(err, ErrKeyPermissions) {
		t.Errorf("Renew with a pending key readable by others = %v, want ErrKeyPermissions", err)
	}
}
