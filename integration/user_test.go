package integration

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/bindtest"
)

// TestUserLogin: the site's admin adds a Help Desk Operator; `ibcm login` on a fresh home
// directory makes their key there (under a passphrase) and stores the identity 0600 in
// the user config directory; later commands run as them without --dir: the CA refuses
// what their role lacks (403 forbidden), the MP is the intranet one when the intranet DNS
// leads to it and the internet one otherwise; disabling them revokes the certificate at
// the CA and the MP.
func TestUserLogin(t *testing.T) {
	needTool(t, "openssl")
	corp := bindtest.Start(t, "corp.test.")
	elsewhere := bindtest.Start(t, "hotel.test.")
	s := initSite(t, "sqlite")
	if err := os.WriteFile(s.path("dns.key"), []byte(corp.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	editConfig(t, s.path("site.yaml"), s.path("site.yaml"), func(mp map[string]any) {
		mp["dns"] = map[string]any{"server": corp.Addr, "zone": "corp.test", "key_name": corp.KeyName, "secret_file": "dns.key", "ttl": "60s"}
	})
	s.start(t, "site", "up", "--dir", s.dir)
	corp.NSUpdate(t, "update add ibcm.corp.test. 60 A 127.0.0.1")
	waitFor(t, 15*time.Second, "the MP's SRV record", func() bool { return len(corp.Dig(t, "SRV", "_ibcm-mp._tcp.corp.test")) == 1 })

	tok := strings.TrimSpace(s.ibcm(t, "user", "add", "helen", "--role", "Help Desk Operator", "--display-name", "Helen Desk"))
	if tok == "" {
		t.Fatal("ibcm user add printed no token")
	}

	// The helper's own machine: a fresh home, no site directory.
	home := t.TempDir()
	cfg := filepath.Join(home, "config", "ibcm")
	env := []string{"HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, "config")}
	as := func(args ...string) result { return runEnv(t, env, bin.ibcm, args...) }
	pass := filepath.Join(home, "pass")
	if err := os.WriteFile(pass, []byte("s3cret phrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := as("login", "--ca", s.caURL, "--root-sha256", fingerprint(t, s.path("ca/root.crt")), "--token", tok, "--passphrase-file", pass)
	if r.code != 0 || !strings.Contains(r.stdout, "logged in as helen") {
		t.Fatalf("ibcm login: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, tok) {
		t.Error("ibcm login printed the token")
	}
	if fi, err := os.Stat(cfg); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("%s: %v %v", cfg, fi, err)
	}
	key, crt := filepath.Join(cfg, "user.key"), filepath.Join(cfg, "user.crt")
	for _, f := range []string{key, crt, filepath.Join(cfg, "roots.pem"), filepath.Join(cfg, "login.json")} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}

	// openssl opens the encrypted PKCS#8 key with the passphrase, not without; it is the
	// key the certificate names.
	if b, _ := os.ReadFile(key); !bytes.HasPrefix(b, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----")) {
		t.Errorf("user.key is not an encrypted PKCS#8 key:\n%.60s", b)
	}
	if r := run(t, "openssl", "pkey", "-in", key, "-passin", "pass:wrong", "-noout"); r.code == 0 {
		t.Error("openssl opened the key with a wrong passphrase")
	}
	pub := must(t, "openssl", "pkey", "-in", key, "-passin", "file:"+pass, "-pubout")
	if certPub := must(t, "openssl", "x509", "-in", crt, "-noout", "-pubkey"); pub != certPub {
		t.Errorf("the certificate names another key:\n%s\n%s", certPub, pub)
	}
	if subj := must(t, "openssl", "x509", "-in", crt, "-noout", "-subject"); !strings.Contains(subj, "CN=helen") && !strings.Contains(subj, "CN = helen") {
		t.Errorf("certificate subject: %s", subj)
	}
	// The key never left: its private part is nowhere the site keeps anything (the CA
	// saw only the CSR).
	der := []byte(must(t, "openssl", "pkey", "-in", key, "-passin", "file:"+pass, "-outform", "DER"))
	ec, err := x509.ParseECPrivateKey(der) // openssl writes an EC key's DER as SEC 1
	if err != nil {
		t.Fatal(err)
	}
	scalar, err := ec.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(der)
	if err := filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if b, err := os.ReadFile(p); err == nil && (bytes.Contains(b, scalar) || bytes.Contains(b, []byte(b64[:64]))) {
			t.Errorf("%s holds the user's private key", p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Without --dir, as helen: the CA refuses what a Help Desk Operator may not do.
	if r := as("ca", "token", "create"); r.code == 0 || !strings.Contains(r.stderr, "--passphrase-file") {
		t.Errorf("an encrypted key without its passphrase: exit %d\n%s", r.code, r.stderr)
	}
	r = as("ca", "token", "create", "--passphrase-file", pass)
	if r.code == 0 || !strings.Contains(r.stderr, `user "helen" does not have the ManagePKI permission (forbidden, HTTP 403)`) {
		t.Errorf("ca token create as helen: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// On a terminal the passphrase is asked there (script gives the command a terminal).
	needTool(t, "script")
	// The passphrase is typed once the prompt is there, as a person does. (Whether the
	// terminal echoes it is not checked: the prompt is printed just before echo goes off,
	// so a program typing at once may still see its input echoed.)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hung prompt ends the read
	defer cancel()
	tty := exec.CommandContext(ctx, "script", "-qec", bin.ibcm+" ca token create", "/dev/null")
	tty.Env = append(os.Environ(), env...)
	stdin, err := tty.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	ttyOut, err := tty.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	tty.Stderr = tty.Stdout
	if err := tty.Start(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	buf := make([]byte, 4096)
	for !strings.Contains(out.String(), "Passphrase of "+key) {
		n, err := ttyOut.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			t.Fatalf("no passphrase prompt on the terminal: %v\n%s", err, out.String())
		}
	}
	if _, err := io.WriteString(stdin, "s3cret phrase\n"); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(ttyOut)
	out.Write(rest)
	_ = tty.Wait()
	stdin.Close()
	if !strings.Contains(out.String(), `user "helen" does not have the ManagePKI permission`) {
		t.Errorf("ca token create on a terminal:\n%s", out.String())
	}

	// The MP: the intranet one where the intranet DNS leads to it, else the internet one.
	intranet, internet := filepath.Join(home, "resolv-corp"), filepath.Join(home, "resolv-hotel")
	writeResolv(t, intranet, corp.Addr)
	writeResolv(t, internet, elsewhere.Addr)
	for _, tc := range []struct{ resolv, location, mp string }{
		{intranet, "intranet", "https://ibcm.corp.test:" + port(s.mpIntranet)},
		{internet, "internet", s.mpInternet},
	} {
		r := as("device", "list", "--passphrase-file", pass, "--resolv-conf", tc.resolv, "--log-level", "debug", "--log-format", "json")
		if r.code != 0 || !strings.Contains(r.stderr, `"location":"`+tc.location+`"`) || !strings.Contains(r.stderr, `"mp":"`+tc.mp+`"`) {
			t.Errorf("device list with %s: exit %d, want the %s MP %s\n%s%s", filepath.Base(tc.resolv), r.code, tc.location, tc.mp, r.stdout, r.stderr)
		}
	}

	// The site's admin sees helen; disabling her revokes her certificate everywhere.
	if list := s.ibcm(t, "user", "list"); !strings.Contains(list, "helen") || !strings.Contains(list, "Help Desk Operator (all)") {
		t.Errorf("ibcm user list:\n%s", list)
	}
	serial := strings.TrimPrefix(strings.TrimSpace(must(t, "openssl", "x509", "-in", crt, "-noout", "-serial")), "serial=")
	if out := s.ibcm(t, "user", "disable", "helen"); !strings.Contains(out, "revoked certificate "+serial) {
		t.Errorf("ibcm user disable helen: %s (want certificate %s)", out, serial)
	}
	if r := as("ca", "token", "create", "--passphrase-file", pass); r.code == 0 || !strings.Contains(r.stderr, "certificate_revoked") {
		t.Errorf("ca token create as the disabled helen: exit %d\n%s", r.code, r.stderr)
	}
	// The MP refuses the revoked certificate in the handshake (or, on a connection older
	// than the revocation, with certificate_revoked).
	var last result
	waitFor(t, 5*time.Second, "the MP refuses helen", func() bool {
		last = as("device", "list", "--passphrase-file", pass, "--mp", s.mpInternet)
		return last.code != 0 && (strings.Contains(last.stderr, "tls: bad certificate") || strings.Contains(last.stderr, "certificate_revoked"))
	})
}
