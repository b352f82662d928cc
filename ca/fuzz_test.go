package ca

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// checkedErrors are the outcomes a bad request may have; anything else (or a panic) from
// untrusted input is a bug.
var checkedErrors = []error{ErrBadCSR, ErrWeakKey, ErrForbiddenSAN, ErrForbiddenUsage, ErrBadSubject, ErrSubjectMismatch, ErrBadProfile}

func isChecked(err error) bool {
	for _, e := range checkedErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func seedCSRs(f *testing.F) [][]byte {
	key := newKey(f)
	return [][]byte{
		csrPEM(f, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc-01"}, DNSNames: []string{"pc-01.corp.example"}}),
		csrPEM(f, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc"}, ExtraExtensions: []pkix.Extension{
			extension(f, oidExtExtKeyUsage, []int{})}}),
		[]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"),
		{0x30, 0x82, 0x01},
	}
}

// FuzzCSR feeds arbitrary bytes to the CSR checks of every profile an enrollment can ask for.
func FuzzCSR(f *testing.F) {
	for _, s := range seedCSRs(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, p := range []Profile{Client, Admin} {
			csr, err := CheckCSR(data, p)
			if err != nil {
				if !isChecked(err) {
					t.Fatalf("CheckCSR: unexpected error kind: %v", err)
				}
				continue
			}
			if _, err := TemplateFromCSR(csr, p, "", rand.Reader); err != nil && !isChecked(err) {
				t.Fatalf("TemplateFromCSR: unexpected error kind: %v", err)
			}
		}
	})
}

// FuzzEnrollRequest feeds arbitrary request bodies through the enroll endpoint's parsing:
// strict JSON with the size limit, then the CSR checks.
func FuzzEnrollRequest(f *testing.F) {
	for _, s := range seedCSRs(f) {
		b, _ := json.Marshal(wire.EnrollRequest{Token: TokenPrefix + "x", CSR: string(s)})
		f.Add(b)
	}
	f.Add([]byte(`{"token":"ibcm_x","csr":"","profile":"client","extra":1}`))
	f.Add([]byte(`{"token":1}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req wire.EnrollRequest
		if err := api.DecodeBytes(body, &req); err != nil {
			if s := api.StatusOf(err); s != 400 && s != 413 {
				t.Fatalf("decode status %d: %v", s, err)
			}
			return
		}
		if _, err := ParseProfile(req.Profile); req.Profile != "" && err == nil {
			// a known profile: the CSR checks must classify whatever the CSR is
			if _, err := CheckCSR([]byte(req.CSR), Client); err != nil && !isChecked(err) {
				t.Fatalf("CheckCSR: %v", err)
			}
		}
		if _, err := CheckCSR([]byte(req.CSR), Client); err != nil && !isChecked(err) {
			t.Fatalf("CheckCSR: %v", err)
		}
	})
}

// FuzzOCSP sends arbitrary requests to the public OCSP responder, as POST bodies and as
// RFC 6960 GET paths: every answer is an OCSP response or a JSON error, never a panic or a 500.
func FuzzOCSP(f *testing.F) {
	c := newTestCA(f, sitedbtest.Open(f, sitedb.SQLite, sitedbtest.NewDSN(f, sitedb.SQLite)))
	if err := c.Prepare(context.Background()); err != nil {
		f.Fatal(err)
	}
	h := c.PublicHandler()
	leafDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, newKey(f))
	f.Add([]byte{0x30, 0x03, 0x0a, 0x01, 0x01}, false)
	f.Add(leafDER, true)
	f.Fuzz(func(t *testing.T, body []byte, get bool) {
		var req *http.Request
		if get {
			req = httptest.NewRequest(http.MethodGet, "/ocsp/"+url.PathEscape(base64.StdEncoding.EncodeToString(body)), nil)
		} else {
			req = httptest.NewRequest(http.MethodPost, "/ocsp", bytes.NewReader(body))
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("HTTP %d for %x", w.Code, body)
		}
	})
}
