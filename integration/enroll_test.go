package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestEnrollment: a device enrolls with a token and renews; every way of asking for more
// than a token allows is refused with its own clear error, and nothing is stored for it.
func TestEnrollment(t *testing.T) {
	needTool(t, "openssl")
	needTool(t, "curl")
	for _, store := range []string{"sqlite", "postgres"} {
		t.Run(store, func(t *testing.T) {
			s := startSite(t, store)
			work := t.TempDir()
			pin := fingerprint(t, s.path("ca/root.crt"))
			token := func(args ...string) string {
				return strings.TrimSpace(s.ibcm(t, append([]string{"ca", "token", "create"}, args...)...))
			}
			enroll := func(dir, tok string, extra ...string) result {
				args := append([]string{"enroll", "--dir", dir, "--ca", s.caURL, "--root-sha256", pin, "--name", "pc-7", "--fqdn", "pc-7.corp.test"}, extra...)
				return runEnv(t, []string{"IBCM_CLIENT_TOKEN=" + tok}, bin.client, args...)
			}

			// enroll with a token: the key is made on the device and never leaves it
			dev := filepath.Join(work, "device")
			tok := token("--profile", "client", "--subject", "pc-7")
			if r := enroll(dev, tok); r.code != 0 {
				t.Fatalf("enroll: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if strings.Contains(must(t, bin.client, "status", "--dir", dev), tok) {
				t.Error("status prints the token")
			}
			crt := filepath.Join(dev, "cert.pem")
			must(t, "openssl", "verify", "-CAfile", s.path("ca/root.crt"), "-untrusted", s.path("ca/issuing.crt"), "-purpose", "sslclient", crt)
			text := must(t, "openssl", "x509", "-in", crt, "-noout", "-subject", "-ext", "subjectAltName,extendedKeyUsage")
			for _, want := range []string{"CN = pc-7", "DNS:pc-7.corp.test", "URI:urn:ibcm:device:", "TLS Web Client Authentication"} {
				if !strings.Contains(text, want) {
					t.Errorf("enrolled certificate lacks %q:\n%s", want, text)
				}
			}
			if st, _ := os.Stat(filepath.Join(dev, "key.pem")); st == nil || st.Mode().Perm() != 0o600 {
				t.Errorf("device key mode: %v", st)
			}

			// the same token again
			assertRefused(t, enroll(filepath.Join(work, "again"), tok), "token_used")
			// an expired token
			short := token("--profile", "client", "--ttl", "1s")
			time.Sleep(1100 * time.Millisecond) // the condition is the passing of time itself
			assertRefused(t, enroll(filepath.Join(work, "late"), short), "token_expired")
			// the PKI commands make no admin (user) tokens: users come from `ibcm user add`
			assertRefused(t, s.try(t, "ca", "token", "create", "--profile", "admin"), "user_profile")
			// a token bound to another device
			assertRefused(t, enroll(filepath.Join(work, "other"), token("--profile", "client", "--subject", "pc-8")), "subject_mismatch")
			// a CA that is not the pinned one
			wrong := strings.Repeat("ab", 32)
			r := enroll(filepath.Join(work, "pin"), token("--profile", "client"))
			if r.code != 0 {
				t.Fatalf("enroll with a fresh token: %s", r.stderr)
			}
			r = runEnv(t, []string{"IBCM_CLIENT_TOKEN=" + token("--profile", "client")}, bin.client, "enroll", "--dir", filepath.Join(work, "pin2"),
				"--ca", s.caURL, "--root-sha256", wrong, "--name", "pc-9")
			if r.code == 0 || !strings.Contains(r.stderr, "the pinned root") {
				t.Errorf("enroll against a wrong pin: exit %d %s", r.code, r.stderr)
			}
			if _, err := os.Stat(filepath.Join(work, "pin2", "key.pem")); !os.IsNotExist(err) {
				t.Errorf("a refused enrollment left a key behind")
			}

			// requests made by openssl and sent with curl: each widening is refused
			for _, tc := range []struct {
				name, code string
				keyArgs    []string
				reqArgs    []string
			}{
				{"extra SAN", "forbidden_san", []string{"ec", "-pkeyopt", "ec_paramgen_curve:P-256"}, []string{"-addext", "subjectAltName=DNS:pc-7.corp.test,DNS:mp.corp.test"}},
				{"serverAuth", "forbidden_usage", []string{"ec", "-pkeyopt", "ec_paramgen_curve:P-256"}, []string{"-addext", "extendedKeyUsage=serverAuth,clientAuth"}},
				{"CA:TRUE", "forbidden_usage", []string{"ec", "-pkeyopt", "ec_paramgen_curve:P-256"}, []string{"-addext", "basicConstraints=critical,CA:TRUE"}},
				{"RSA 1024", "weak_key", []string{"rsa", "-pkeyopt", "rsa_keygen_bits:1024"}, nil},
				{"P-224", "weak_key", []string{"ec", "-pkeyopt", "ec_paramgen_curve:P-224"}, nil},
			} {
				t.Run(tc.name, func(t *testing.T) {
					key := filepath.Join(work, tc.code+".key")
					must(t, "openssl", append([]string{"genpkey", "-algorithm"}, append(tc.keyArgs, "-out", key)...)...)
					csr := must(t, "openssl", append([]string{"req", "-new", "-key", key, "-subj", "/CN=pc-7"}, tc.reqArgs...)...)
					body, _ := json.Marshal(wire.EnrollRequest{Token: token("--profile", "client"), CSR: csr})
					status, e := curlJSON(t, s, "/v1/enroll", body)
					if status/100 != 4 || e.Error.Code != tc.code || e.Error.Message == "" {
						t.Errorf("HTTP %d %+v, want 4xx %s", status, e.Error, tc.code)
					}
				})
			}
			// bad input: not JSON, unknown fields, too large
			for _, tc := range []struct {
				name string
				body []byte
				want int
			}{
				{"not JSON", []byte("token=x"), 400},
				{"unknown field", []byte(`{"token":"ibcm_x","csr":"x","admin":true}`), 400},
				{"too large", []byte(`{"token":"` + strings.Repeat("a", 70000) + `"}`), 413},
			} {
				if status, e := curlJSON(t, s, "/v1/enroll", tc.body); status != tc.want || e.Error.Code == "" {
					t.Errorf("%s: HTTP %d %+v, want %d with a JSON error", tc.name, status, e.Error, tc.want)
				}
			}
			// none of the refused requests left a certificate behind
			var certs []wire.Certificate
			if err := json.Unmarshal([]byte(s.ibcm(t, "ca", "list", "--profile", "client", "--json")), &certs); err != nil {
				t.Fatal(err)
			}
			if len(certs) != 2 {
				t.Errorf("%d client certificates stored, want 2 (the two successful enrollments)", len(certs))
			}

			// renew over mutual TLS: new serial, new key, same device
			before := must(t, bin.client, "status", "--dir", dev, "--json")
			must(t, bin.client, "renew", "--dir", dev)
			after := must(t, bin.client, "status", "--dir", dev, "--json")
			var b, a map[string]any
			_ = json.Unmarshal([]byte(before), &b)
			_ = json.Unmarshal([]byte(after), &a)
			if a["serial"] == b["serial"] || a["device_id"] != b["device_id"] || a["device_id"] == nil {
				t.Errorf("renewal: before %v after %v", b, a)
			}

			// revoke the device's certificate: its renewal is refused with its own error
			serial := strings.TrimPrefix(strings.TrimSpace(must(t, "openssl", "x509", "-in", crt, "-noout", "-serial")), "serial=")
			s.ibcm(t, "ca", "revoke", "--reason", "keyCompromise", serial)
			assertRefused(t, run(t, bin.client, "renew", "--dir", dev), "certificate_revoked")

			// curl with the revoked client certificate gets the same clear JSON error
			r = run(t, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--cacert", s.path("ca/root.crt"),
				"--cert", crt, "--key", filepath.Join(dev, "key.pem"), "-X", "POST", "-d", "{}", s.caURL+"/v1/renew")
			if !strings.HasSuffix(strings.TrimSpace(r.stdout), "403") || !strings.Contains(r.stdout, "certificate_revoked") {
				t.Errorf("curl renew with a revoked certificate: %s", r.stdout)
			}
		})
	}
}

func assertRefused(t *testing.T, r result, code string) {
	t.Helper()
	if r.code == 0 || !strings.Contains(r.stderr, code) {
		t.Errorf("want refusal %s, got exit %d\nstdout: %s\nstderr: %s", code, r.code, r.stdout, r.stderr)
	}
}

// curlJSON posts body to the CA's HTTPS API with curl and decodes the JSON error body.
func curlJSON(t *testing.T, s *testSite, path string, body []byte) (int, wire.Error) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(f, body, 0o600); err != nil {
		t.Fatal(err)
	}
	out := must(t, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--cacert", s.path("ca/root.crt"),
		"-H", "Content-Type: application/json", "--data-binary", "@"+f, s.caURL+path)
	i := strings.LastIndex(out, "\n")
	var status int
	_, _ = fmt.Sscan(out[i+1:], &status)
	var e wire.Error
	_ = json.Unmarshal([]byte(out[:i]), &e)
	return status, e
}

// fingerprint is the root pin as an admin computes it: openssl x509 -outform DER | sha256.
func fingerprint(t *testing.T, cert string) string {
	t.Helper()
	out := must(t, "openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256")
	hex := strings.ReplaceAll(strings.TrimSpace(out[strings.Index(out, "=")+1:]), ":", "")
	return strings.ToLower(hex)
}
