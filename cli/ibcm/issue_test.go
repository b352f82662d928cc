package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/freeport"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

// startCA makes a site in a temporary directory and runs its CA role in this process
// until the test ends; it returns the site directory.
func startCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "site")
	addr := func() string {
		a, err := freeport.Addr()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	cfg, err := site.Init(context.Background(), site.InitOptions{Dir: dir, SiteCode: "CLI", IntranetName: "ibcm.corp.test", InternetName: "ibcm.example.test",
		CAAddr: addr(), CAPublicAddr: addr(), MPIntranetAddr: addr(), MPInternetAddr: addr()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}, 2), make(chan error, 1)
	go func() {
		done <- site.Run(ctx, cfg, lineFunc(func(l string) {
			if strings.Contains(l, "listening on") {
				ready <- struct{}{}
			}
		}), zerolog.Nop(), site.RoleCA)
	}()
	t.Cleanup(func() { cancel(); <-done })
	for range 2 { // the CA's HTTPS and public listeners
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("the CA stopped: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("the CA is not listening after 20s")
		}
	}
	return dir
}

// lineFunc calls its function with each line written.
type lineFunc func(string)

func (f lineFunc) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		f(l)
	}
	return len(p), nil
}

// ibcm runs the command line as the binary does, with stdout going to stdout.
func ibcm(t *testing.T, stdout io.Writer, args ...string) (stderr string, err error) {
	t.Helper()
	app := newApp()
	var errOut bytes.Buffer
	app.Writer, app.ErrWriter = stdout, &errOut
	err = cliapp.Run(context.Background(), app, append([]string{"ibcm"}, args...))
	return errOut.String(), err
}

func certificates(t *testing.T, dir string) []wire.Certificate {
	t.Helper()
	var out bytes.Buffer
	if _, err := ibcm(t, &out, "ca", "list", "--dir", dir, "--json"); err != nil {
		t.Fatal(err)
	}
	var certs []wire.Certificate
	if err := json.Unmarshal(out.Bytes(), &certs); err != nil {
		t.Fatal(err)
	}
	return certs
}

// TestIssueIntoAMissingDirectoryIssuesNothing: the output files are made before the CA
// is asked, so a bad --out costs no certificate (and no lost key).
func TestIssueIntoAMissingDirectoryIssuesNothing(t *testing.T) {
	dir := startCA(t)
	before := len(certificates(t, dir))
	out := filepath.Join(t.TempDir(), "missing", "pc-1")
	_, err := ibcm(t, io.Discard, "ca", "issue", "--dir", dir, "--profile", "client", "--subject", "pc-1", "--out", out)
	if err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), "--out: cannot create "+out+".") {
		t.Fatalf("issue into a missing directory: %v (exit %d)", err, exitCode(err))
	}
	if after := len(certificates(t, dir)); after != before {
		t.Errorf("%d certificates issued by a refused issue", after-before)
	}
	if _, err := os.Stat(filepath.Dir(out)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the missing directory was made: %v", err)
	}
	// an existing file is refused the same way, and kept
	taken := filepath.Join(t.TempDir(), "pc-2")
	if err := os.WriteFile(taken+".key", []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ibcm(t, io.Discard, "ca", "issue", "--dir", dir, "--profile", "client", "--subject", "pc-2", "--out", taken); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("issue over an existing key: %v", err)
	}
	if b, _ := os.ReadFile(taken + ".key"); string(b) != "mine" {
		t.Errorf("the existing key was changed")
	}
	if _, err := os.Stat(taken + ".crt"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused issue left %s.crt: %v", taken, err)
	}
	// a request the CA refuses leaves none of the files made for it
	refused := filepath.Join(t.TempDir(), "pc-5")
	if _, err := ibcm(t, io.Discard, "ca", "issue", "--dir", dir, "--profile", "no-such-profile", "--subject", "pc-5", "--out", refused); err == nil {
		t.Error("issue with an unknown profile succeeded")
	}
	for _, f := range []string{refused + ".key", refused + ".crt"} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a refused issue left %s: %v", f, err)
		}
	}
	if after := len(certificates(t, dir)); after != before {
		t.Errorf("%d certificates issued by refused issues", after-before)
	}
}

// failingWriter fails every write, like a closed pipe or a full disk.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// TestIssueRevokesWhatItCannotWrite: when writing fails after the CA issued, the
// certificate is revoked again and the error says so.
func TestIssueRevokesWhatItCannotWrite(t *testing.T) {
	dir := startCA(t)
	_, err := ibcm(t, failingWriter{}, "ca", "issue", "--dir", dir, "--profile", "client", "--subject", "pc-3", "--out", "-", "--key-out", "-")
	if err == nil || !strings.Contains(err.Error(), "no space left on device") || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("issue to a failing stdout: %v", err)
	}
	serial := regexp.MustCompile(`certificate ([0-9A-F]+) was issued`).FindStringSubmatch(err.Error())
	if serial == nil {
		t.Fatalf("the error does not name the certificate: %v", err)
	}
	for _, c := range certificates(t, dir) {
		if c.Serial == serial[1] {
			if c.Status != "revoked" {
				t.Errorf("the lost certificate %s is %s", c.Serial, c.Status)
			}
			return
		}
	}
	t.Errorf("certificate %s is not listed", serial[1])
}

// TestIssueToStdoutAndRevokeWithFlagsLast: --out - prints the certificate (the key only
// when asked with --key-out -), and revoke takes its --reason after the serial.
func TestIssueToStdoutAndRevokeWithFlagsLast(t *testing.T) {
	dir := startCA(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "kiosk-7"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr := filepath.Join(t.TempDir(), "kiosk-7.csr")
	if err := os.WriteFile(csr, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	stderr, err := ibcm(t, &out, "ca", "issue", "--profile", "client", "--csr", csr, "--out", "-", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(out.Bytes())
	if block == nil || block.Type != "CERTIFICATE" || strings.Contains(string(rest), "PRIVATE KEY") {
		t.Fatalf("stdout is not the certificate chain:\n%s", out.String())
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "issued serial") {
		t.Errorf("the summary is not on stderr: %q", stderr)
	}

	// a key made here goes to stdout only when asked, ahead of the certificate
	out.Reset()
	if _, err := ibcm(t, &out, "ca", "issue", "--dir", dir, "--profile", "client", "--subject", "pc-4", "--out", "-", "--key-out", "-"); err != nil {
		t.Fatal(err)
	}
	if block, _ := pem.Decode(out.Bytes()); block == nil || block.Type != "PRIVATE KEY" || !strings.Contains(out.String(), "CERTIFICATE") {
		t.Errorf("--out - --key-out - printed:\n%s", out.String())
	}

	serial := strings.ToUpper(leaf.SerialNumber.Text(16))
	out.Reset()
	if _, err := ibcm(t, &out, "ca", "revoke", serial, "--reason", "keyCompromise", "--dir", dir); err != nil {
		t.Fatalf("revoke SERIAL --reason keyCompromise: %v", err)
	}
	var ct wire.Certificate
	out.Reset()
	if _, err := ibcm(t, &out, "ca", "show", serial, "--json", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out.Bytes(), &ct); err != nil || ct.Status != "revoked" || ct.Reason != "keyCompromise" {
		t.Errorf("after revoke: %+v %v", ct, err)
	}
}

// TestMPErrorsNameTheManagementPoint: a command that talks to the MP says so when it fails.
func TestMPErrorsNameTheManagementPoint(t *testing.T) {
	dir := startCA(t) // the site's MP does not run
	_, err := ibcm(t, io.Discard, "device", "list", "--dir", dir)
	if err == nil || !strings.Contains(err.Error(), "calling the management point") || strings.Contains(err.Error(), "CA") {
		t.Errorf("device list without an MP: %v", err)
	}
}
