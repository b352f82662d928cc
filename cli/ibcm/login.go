package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/internal/wire"
)

func loginCommand() *cli.Command {
	return &cli.Command{
		Name:  "login",
		Usage: "make your administrator identity on this machine with the login token of ibcm user add",
		Description: `Makes your key here (it never leaves this machine), has the CA certify it with the
one-time login token an administrator gave you (ibcm user add, ibcm user token), and
stores the identity in the user config directory ($XDG_CONFIG_HOME/ibcm, else
~/.config/ibcm; directory 0700, files 0600) with where the site's CA and MPs are. Later
ibcm commands use it when no --dir is given: the CA of the login, and the intranet MP
when the site's intranet DNS leads to it (as the agent detects it), else the internet MP.

The CA is trusted only through --root-sha256, the SHA-256 of the site's root certificate
(ibcm site init prints it). The key is encrypted (PKCS#8, AES-256) with the passphrase of
--passphrase-file, or one asked on the terminal (empty: none); every later command then
needs the passphrase the same way.

EXAMPLES:
   ibcm login --ca https://ibcm.example.com:8443 --root-sha256 3A:7F:...:C2 --token "$TOKEN"
   ibcm login --ca https://ibcm.example.com:8443 --root-sha256 3a7f...c2 --token "$TOKEN" --passphrase-file ~/.ibcm-pass
   IBCM_LOGIN_TOKEN=... ibcm login --ca https://ca.corp.example:8443 --root-sha256 3a7f...c2 --force`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "ca", Required: true, Usage: "https URL of the site's CA", Sources: cli.EnvVars("IBCM_CA_URL")},
			&cli.StringFlag{Name: "root-sha256", Required: true, Usage: "SHA-256 of the site's root certificate (hex, colons allowed)", Sources: cli.EnvVars("IBCM_ROOT_SHA256")},
			&cli.StringFlag{Name: "token", Required: true, Usage: "the one-time login token", Sources: cli.EnvVars("IBCM_LOGIN_TOKEN")},
			passphraseFlag(),
			&cli.StringFlag{Name: "key-type", Value: "p256", Usage: "p256, p384, rsa2048 or rsa3072", Sources: cli.EnvVars("IBCM_LOGIN_KEY_TYPE"), Validator: keyType},
			&cli.BoolFlag{Name: "force", Usage: "replace the identity already stored", Sources: cli.EnvVars("IBCM_LOGIN_FORCE")},
		},
		Action: login,
	}
}

func login(ctx context.Context, c *cli.Command) error {
	base, err := url.Parse(strings.TrimSuffix(c.String("ca"), "/"))
	if err != nil || base.Scheme != "https" || base.Host == "" || (base.Path != "" && base.Path != "/") {
		return usageError("--ca: must be an https URL such as https://ibcm.example.com:8443 (got %q)", c.String("ca"))
	}
	pin, err := client.ParseFingerprint(c.String("root-sha256"))
	if err != nil {
		return usageError("--root-sha256: %v", err)
	}
	kt, err := ca.ParseKeyType(c.String("key-type"))
	if err != nil {
		return usageError("--key-type: %v", err)
	}
	dir, err := userDir()
	if err != nil {
		return err
	}
	if _, ok, _ := loadUserLogin(dir); ok && !c.Bool("force") {
		return usageError("%s already holds an identity; pass --force to replace it", dir)
	}
	if err := ensureUserDir(dir); err != nil {
		return fmt.Errorf("the identity directory: %w", err)
	}
	pw, _, err := readPassphrase(c, "Passphrase for your key (empty: none): ", true)
	if err != nil {
		return err
	}

	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS12, InsecureSkipVerify: true, // replaced: VerifyConnection checks the pin and the chain
		VerifyConnection: verifyPinnedCA(pin, base.Hostname()),
	}}}
	// The trust bundle first: it must hold the pinned root, before the token is spent.
	var bundle wire.Bundle
	if err := callCA(ctx, hc, http.MethodGet, base.String()+"/v1/bundle", nil, &bundle); err != nil {
		return fmt.Errorf("fetching the trust bundle: %w", err)
	}
	roots, err := ca.ParseCerts([]byte(bundle.Roots))
	if err != nil {
		return fmt.Errorf("the CA's trust bundle: %w", err)
	}
	var pinned *x509.Certificate
	for _, r := range roots {
		if sum := sha256.Sum256(r.Raw); bytes.Equal(sum[:], pin) {
			pinned = r
		}
	}
	if pinned == nil {
		return errors.New("the CA's trust bundle does not contain the pinned root")
	}

	key, err := kt.Generate(rand.Reader)
	if err != nil {
		return err
	}
	// The common name is only a placeholder: the token is bound to the user's name.
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "login"}}, key)
	if err != nil {
		return err
	}
	var resp wire.CertificateResponse
	req := wire.EnrollRequest{Token: c.String("token"), Profile: "admin", CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), NameFromToken: true}
	if err := callCA(ctx, hc, http.MethodPost, base.String()+"/v1/enroll", req, &resp); err != nil {
		return fmt.Errorf("logging in: %w", err)
	}
	chain, err := ca.ParseCerts([]byte(resp.Certificate))
	if err != nil {
		return fmt.Errorf("the CA's answer: %w", err)
	}
	leaf := chain[0]
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, pub) {
		return errors.New("the CA's answer certifies another key than the one made here")
	}
	if p := ca.ProfileOf(leaf); p != ca.Admin {
		return fmt.Errorf("the CA issued a %s certificate, not a user's (admin profile)", p)
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	pool.AddCert(pinned)
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("the CA's certificate does not verify up to the pinned root: %w", err)
	}

	keyPEM, err := encodeUserKey(key, pw)
	if err != nil {
		return err
	}
	lj, err := json.MarshalIndent(userLogin{
		User: leaf.Subject.CommonName, CAURL: base.String(), RootSHA256: client.Fingerprint(pinned), Serial: resp.Serial,
		NotAfter: leaf.NotAfter.UTC(), Encrypted: len(pw) > 0, Bootstrap: resp.Bootstrap, LoggedInAt: time.Now().UTC(),
	}, "", "  ")
	if err != nil {
		return err
	}
	if err := storeUserIdentity(dir, map[string][]byte{
		userKeyFile: keyPEM, userCertFile: ca.EncodeCerts(chain...), userRootsFile: ca.EncodeCerts(roots...), userLoginFile: append(lj, '\n'),
	}); err != nil {
		return fmt.Errorf("storing your identity in %s: %w", dir, err)
	}
	under := ""
	if len(pw) > 0 {
		under = ", key under a passphrase"
	}
	fmt.Fprintf(c.Root().Writer, "logged in as %s (certificate %s until %s%s)\n  %s\n", leaf.Subject.CommonName, resp.Serial, leaf.NotAfter.UTC().Format(time.RFC3339), under, dir)
	return nil
}

// ensureUserDir makes dir 0700, and refuses one that others can open: it is checked before
// the token is spent.
func ensureUserDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is open to others (mode %04o); chmod 700 it", dir, fi.Mode().Perm())
	}
	return nil
}

// storeUserIdentity writes the files into dir, each 0600 from the start: all of them to
// temporary files first, then renamed into place, login.json last, so that a failed write
// leaves the previous identity as it was.
func storeUserIdentity(dir string, files map[string][]byte) error {
	if err := ensureUserDir(dir); err != nil {
		return err
	}
	names := []string{userKeyFile, userCertFile, userRootsFile, userLoginFile}
	tmp := func(n string) string { return filepath.Join(dir, "."+n+".tmp") }
	defer func() {
		for _, n := range names {
			_ = os.Remove(tmp(n)) // nothing once renamed
		}
	}()
	for _, n := range names {
		_ = os.Remove(tmp(n)) // left by an interrupted login
		f, err := os.OpenFile(tmp(n), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = f.Write(files[n])
		if serr := f.Sync(); err == nil {
			err = serr
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	for _, n := range names {
		if err := os.Rename(tmp(n), filepath.Join(dir, n)); err != nil {
			return err
		}
	}
	return nil
}

// verifyPinnedCA accepts the CA's TLS chain when it contains the self-signed root with
// SHA-256 pin and the leaf verifies up to it for host.
func verifyPinnedCA(pin []byte, host string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		var root *x509.Certificate
		for _, ct := range cs.PeerCertificates {
			if sum := sha256.Sum256(ct.Raw); bytes.Equal(sum[:], pin) {
				root = ct
			}
		}
		if root == nil || len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%s does not present the pinned root %X: check --root-sha256 and --ca", host, pin)
		}
		if !root.IsCA || root.CheckSignatureFrom(root) != nil {
			return errors.New("the certificate with the pinned SHA-256 is not a self-signed CA certificate")
		}
		pool, inter := x509.NewCertPool(), x509.NewCertPool()
		pool.AddCert(root)
		for _, ct := range cs.PeerCertificates[1:] {
			inter.AddCert(ct)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err != nil {
			return fmt.Errorf("the CA's certificate does not verify up to the pinned root: %w", err)
		}
		return nil
	}
}

// callCA sends in (nil for none) as JSON and decodes a 2xx answer into out; an error
// answer becomes an error with its code. The token is in the body, never in an error.
func callCA(ctx context.Context, hc *http.Client, method, u string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("calling the CA: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("reading the answer of the CA: %w", err)
	}
	if resp.StatusCode >= 300 {
		var e wire.Error
		if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
			return fmt.Errorf("%s (%s, HTTP %d)", e.Error.Message, e.Error.Code, resp.StatusCode)
		}
		return fmt.Errorf("the CA answered HTTP %d", resp.StatusCode)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding the answer of the CA: %w", err)
	}
	return nil
}
