package integration

import (
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCA walks a PKI admin's day on both backends, with openssl and curl as the judges.
func TestCA(t *testing.T) {
	needTool(t, "openssl")
	needTool(t, "curl")
	for _, store := range []string{"sqlite", "postgres"} {
		t.Run(store, func(t *testing.T) {
			s := startSite(t, store)
			work := t.TempDir()
			root, issuing := s.path("ca/root.crt"), s.path("ca/issuing.crt")

			status := s.try(t, "site", "status")
			if status.code != 0 || strings.Count(status.stdout, " ok ") != 7 { // ca, ca-public, mp-intranet, mp-internet, console, dp-intranet, dp-internet
				t.Fatalf("site status: exit %d\n%s%s", status.code, status.stdout, status.stderr)
			}

			// issue -> openssl verify accepts the chain and shows the right EKU
			leaf := filepath.Join(work, "mp1")
			s.ibcm(t, "ca", "issue", "--profile", "site-server", "--role", "mp", "--subject", "mp1",
				"--dns", "mp1.corp.test", "--dns", "mp.example.test", "--out", leaf)
			out := must(t, "openssl", "verify", "-CAfile", root, "-untrusted", issuing, "-purpose", "sslserver", leaf+".crt")
			if !strings.Contains(out, ": OK") {
				t.Fatalf("openssl verify: %s", out)
			}
			text := must(t, "openssl", "x509", "-in", leaf+".crt", "-noout", "-ext", "extendedKeyUsage,subjectAltName,basicConstraints")
			for _, want := range []string{"TLS Web Server Authentication", "TLS Web Client Authentication", "DNS:mp1.corp.test", "DNS:mp.example.test", "URI:urn:ibcm:site:E2E:role:mp", "CA:FALSE"} {
				if !strings.Contains(text, want) {
					t.Errorf("site-server certificate lacks %q:\n%s", want, text)
				}
			}
			if st, err := os.Stat(leaf + ".key"); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("issued key mode: %v %v", st, err)
			}
			client := filepath.Join(work, "pc")
			s.ibcm(t, "ca", "issue", "--profile", "client", "--subject", "pc-1", "--dns", "pc-1.corp.test", "--out", client)
			text = must(t, "openssl", "x509", "-in", client+".crt", "-noout", "-ext", "extendedKeyUsage,keyUsage")
			if !strings.Contains(text, "TLS Web Client Authentication") || strings.Contains(text, "Server Authentication") || !strings.Contains(text, "Digital Signature") {
				t.Errorf("client certificate usages:\n%s", text)
			}
			must(t, "openssl", "verify", "-CAfile", root, "-untrusted", issuing, "-purpose", "sslclient", client+".crt")

			// list / show speak hex as openssl prints it, in text and in JSON, and take what
			// openssl prints as it is
			opensslLine := strings.TrimSpace(must(t, "openssl", "x509", "-in", client+".crt", "-noout", "-serial"))
			serial := strings.TrimPrefix(opensslLine, "serial=")
			if list := s.ibcm(t, "ca", "list", "--profile", "client"); !strings.Contains(list, serial) {
				t.Errorf("ca list does not show %s:\n%s", serial, list)
			}
			var listed []struct{ Serial string }
			if err := json.Unmarshal([]byte(s.ibcm(t, "ca", "list", "--profile", "client", "--json")), &listed); err != nil || len(listed) != 1 || listed[0].Serial != serial {
				t.Errorf("ca list --json = %+v (%v), want the one serial %s", listed, err, serial)
			}
			if show := s.ibcm(t, "ca", "show", serial); !regexp.MustCompile(`(?m)^status\s+valid$`).MatchString(show) ||
				!regexp.MustCompile(`(?m)^serial\s+`+serial+`$`).MatchString(show) {
				t.Errorf("ca show:\n%s", show)
			}
			var shown struct{ Serial string }
			if err := json.Unmarshal([]byte(s.ibcm(t, "ca", "show", "--json", opensslLine)), &shown); err != nil || shown.Serial != serial {
				t.Errorf("ca show --json %s: serial %q (%v), want %s", opensslLine, shown.Serial, err, serial)
			}
			if r := s.try(t, "ca", "show", "12G4"); r.code == 0 || !strings.Contains(r.stderr, "hex as openssl prints it") {
				t.Errorf("ca show of a serial that is not hex: exit %d\n%s", r.code, r.stderr)
			}

			// a valid certificate: OCSP good; asked again, the CA serves the answer it signed
			// the first time, and openssl still verifies it
			first := ocsp(t, s, client+".crt")
			if !strings.Contains(first, ": good") {
				t.Errorf("openssl ocsp on a valid certificate:\n%s", first)
			}
			if again := ocsp(t, s, client+".crt"); ocspSignature(again) != ocspSignature(first) || ocspSignature(first) == "" {
				t.Errorf("openssl ocsp asked twice got two signatures:\n%s\n%s", first, again)
			}

			// revoke -> CRL over HTTP lists it with its reason; openssl verify -crl_check and ocsp say revoked
			if out := s.ibcm(t, "ca", "revoke", "--reason", "keyCompromise", opensslLine); !strings.Contains(out, "revoked certificate "+serial) {
				t.Errorf("ca revoke %s printed:\n%s", opensslLine, out)
			}
			crlURL := strings.TrimSpace(strings.SplitAfter(must(t, "openssl", "x509", "-in", client+".crt", "-noout", "-ext", "crlDistributionPoints"), "URI:")[1])
			if !strings.HasPrefix(crlURL, s.publicURL+"/crl/") {
				t.Fatalf("CRL distribution point %q is not on the public listener %s", crlURL, s.publicURL)
			}
			crlDER := filepath.Join(work, "site.crl")
			must(t, "curl", "-sSf", "-o", crlDER, crlURL)
			crlText := must(t, "openssl", "crl", "-inform", "DER", "-in", crlDER, "-noout", "-text")
			for _, want := range []string{"Serial Number: " + serial, "Key Compromise", "X509v3 CRL Number", "Next Update"} {
				if !strings.Contains(crlText, want) {
					t.Errorf("CRL lacks %q:\n%s", want, crlText)
				}
			}
			crlPEM := filepath.Join(work, "crl.pem")
			must(t, "openssl", "crl", "-inform", "DER", "-in", crlDER, "-out", crlPEM)
			bundle := filepath.Join(work, "bundle.pem")
			writeCat(t, bundle, root, issuing, crlPEM)
			r := run(t, "openssl", "verify", "-crl_check", "-CAfile", bundle, client+".crt")
			if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "certificate revoked") {
				t.Errorf("openssl verify -crl_check on a revoked certificate: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			if r := run(t, "openssl", "verify", "-crl_check", "-CAfile", bundle, leaf+".crt"); r.code != 0 {
				t.Errorf("openssl verify -crl_check on a valid certificate: %s%s", r.stdout, r.stderr)
			}
			if out := ocsp(t, s, client+".crt"); !strings.Contains(out, ": revoked") || !strings.Contains(out, "keyCompromise") {
				t.Errorf("openssl ocsp on a revoked certificate:\n%s", out)
			}
			if again := s.try(t, "ca", "revoke", "--reason", "keyCompromise", serial); again.code == 0 || !strings.Contains(again.stderr, "already_revoked") {
				t.Errorf("second revoke: exit %d %s", again.code, again.stderr)
			}
			if list := s.ibcm(t, "ca", "list", "--status", "revoked"); !strings.Contains(list, serial) {
				t.Errorf("ca list --status revoked lacks %s:\n%s", serial, list)
			}

			// ca crl and ca bundle
			adminCRL := filepath.Join(work, "admin.crl")
			s.ibcm(t, "ca", "crl", "--out", adminCRL)
			if crlText := must(t, "openssl", "crl", "-inform", "DER", "-in", adminCRL, "-noout", "-text"); !strings.Contains(crlText, serial) {
				t.Errorf("ibcm ca crl lacks %s", serial)
			}
			roots := s.ibcm(t, "ca", "bundle")
			rootPEM, _ := os.ReadFile(root)
			if strings.TrimSpace(roots) != strings.TrimSpace(string(rootPEM)) {
				t.Errorf("ca bundle = %q, want the site root", roots)
			}

			// the public listener's CA certificate (AIA) is the issuing CA
			aia := strings.TrimSpace(strings.SplitAfter(must(t, "openssl", "x509", "-in", client+".crt", "-noout", "-ext", "authorityInfoAccess"), "CA Issuers - URI:")[1])
			caDER := filepath.Join(work, "issuing.der")
			must(t, "curl", "-sSf", "-o", caDER, aia)
			der, _ := os.ReadFile(caDER)
			if c, err := x509.ParseCertificate(der); err != nil || !c.IsCA {
				t.Errorf("AIA %s did not serve the issuing CA: %v", aia, err)
			}
		})
	}
}

// ocsp asks the site's OCSP responder about cert with openssl, verifying the response.
func ocsp(t *testing.T, s *testSite, cert string) string {
	t.Helper()
	r := run(t, "openssl", "ocsp", "-issuer", s.path("ca/issuing.crt"), "-cert", cert, "-url", s.publicURL+"/ocsp",
		"-CAfile", s.path("ca/root.crt"), "-resp_text")
	out := r.stdout + r.stderr
	if r.code != 0 || !strings.Contains(out, "Response verify OK") {
		t.Fatalf("openssl ocsp: exit %d\n%s", r.code, out)
	}
	return out
}

// ocspSignature returns the signature of the response in openssl ocsp -resp_text output.
func ocspSignature(out string) string {
	m := regexp.MustCompile(`(?s)OCSP Response Data:.*?Signature Algorithm: \S+\s+(?:Signature Value:\s+)?([0-9a-f:\s]+)`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return strings.Join(strings.Fields(m[1]), "")
}

func writeCat(t *testing.T, out string, files ...string) {
	t.Helper()
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	if err := os.WriteFile(out, all, 0o600); err != nil {
		t.Fatal(err)
	}
}
