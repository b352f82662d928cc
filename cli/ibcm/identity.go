package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/urfave/cli/v3"
	"go.step.sm/crypto/pemutil"
	"golang.org/x/term"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

// The user identity `ibcm login` makes: the key (made on this machine, optionally under
// a passphrase), the certificate, the site's roots and where the site's CA and MPs are,
// all in os.UserConfigDir()/ibcm (directory 0700, files 0600). Admin commands use it when
// neither --dir nor --cert/--key say otherwise.
const (
	userCertFile  = "user.crt"   // leaf followed by the issuing chain
	userKeyFile   = "user.key"   // PKCS#8 PEM, "ENCRYPTED PRIVATE KEY" under a passphrase
	userRootsFile = "roots.pem"  // the site's trust bundle, containing the pinned root
	userLoginFile = "login.json" // userLogin
)

// userLogin is what login.json holds: where the site is and who this identity is.
type userLogin struct {
	User       string          `json:"user"`
	CAURL      string          `json:"ca_url"`
	RootSHA256 string          `json:"root_sha256"`
	Serial     string          `json:"serial"` // as openssl prints it
	NotAfter   time.Time       `json:"not_after"`
	Encrypted  bool            `json:"encrypted"` // the key is under a passphrase
	Bootstrap  *wire.Bootstrap `json:"bootstrap,omitempty"`
	LoggedInAt time.Time       `json:"logged_in_at"`
}

// userDir is where the user identity lives: os.UserConfigDir()/ibcm ($XDG_CONFIG_HOME/ibcm,
// else ~/.config/ibcm on Linux).
func userDir() (string, error) {
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("finding the user config directory: %w", err)
	}
	return filepath.Join(d, "ibcm"), nil
}

// loadUserLogin reads login.json of dir; ok is false when nobody logged in there.
func loadUserLogin(dir string) (l userLogin, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, userLoginFile))
	if errors.Is(err, fs.ErrNotExist) {
		return l, false, nil
	}
	if err != nil {
		return l, false, fmt.Errorf("reading the login of %s: %w", dir, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return l, false, fmt.Errorf("reading %s: %w", filepath.Join(dir, userLoginFile), err)
	}
	if l.CAURL == "" {
		return l, false, fmt.Errorf("%s: ca_url missing; run ibcm login again", filepath.Join(dir, userLoginFile))
	}
	return l, true, nil
}

// passphraseFlag is the file holding the passphrase of the user key.
func passphraseFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "passphrase-file", Usage: "file holding the passphrase of the key (default: asked on the terminal when the key is encrypted)",
		Sources: cli.EnvVars("IBCM_PASSPHRASE_FILE"), TakesFile: true}
}

// readPassphrase reads the passphrase from the --passphrase-file file (its first line),
// or asks on the terminal (twice when confirm); ok is false when there is neither.
func readPassphrase(c *cli.Command, prompt string, confirm bool) (pw []byte, ok bool, err error) {
	if f := c.String("passphrase-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, false, usageError("--passphrase-file: %v", errors.Unwrap(err))
		}
		line, _, _ := strings.Cut(string(b), "\n")
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			return nil, false, usageError("--passphrase-file: %s holds an empty passphrase", f)
		}
		return []byte(line), true, nil
	}
	fd := int(os.Stdin.Fd())
	if !isatty.IsTerminal(os.Stdin.Fd()) {
		return nil, false, nil
	}
	fmt.Fprint(os.Stderr, prompt)
	pw, err = term.ReadPassword(fd)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return nil, false, fmt.Errorf("reading the passphrase: %w", err)
	}
	if confirm && len(pw) > 0 {
		fmt.Fprint(os.Stderr, "Again: ")
		again, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return nil, false, fmt.Errorf("reading the passphrase: %w", err)
		}
		if !bytes.Equal(pw, again) {
			return nil, false, usageError("the passphrases differ")
		}
	}
	return pw, len(pw) > 0, nil
}

// encodeUserKey writes key as PKCS#8 PEM, encrypted (PBES2, AES-256-CBC) when pw is set.
func encodeUserKey(key crypto.Signer, pw []byte) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if len(pw) == 0 {
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	}
	block, err := pemutil.EncryptPKCS8PrivateKey(rand.Reader, der, pw, x509.PEMCipherAES256)
	if err != nil {
		return nil, fmt.Errorf("encrypting the key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

// loadKeyPair reads a certificate chain and its key; an encrypted PKCS#8 key is opened
// with the passphrase of --passphrase-file or the terminal.
func loadKeyPair(c *cli.Command, certFile, keyFile string) (tls.Certificate, error) {
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	if b, _ := pem.Decode(keyPEM); b != nil && b.Type == "ENCRYPTED PRIVATE KEY" {
		pw, ok, err := readPassphrase(c, "Passphrase of "+keyFile+": ", false)
		if err != nil {
			return tls.Certificate{}, err
		}
		if !ok {
			return tls.Certificate{}, usageError("%s is encrypted: give its passphrase with --passphrase-file, or run on a terminal", keyFile)
		}
		der, err := pemutil.DecryptPKCS8PrivateKey(b.Bytes, pw)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("opening %s: wrong passphrase or damaged key: %w", keyFile, err)
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// userMP picks the MP for a logged-in user with the agent's location detector
// (client/location): the intranet MP when its SRV record under the site's intranet DNS
// suffix leads to an MP of this site that proves it is the intranet listener, else the
// internet MP the CA named at login. It returns the MP's URL and the address to dial.
func userMP(ctx context.Context, c *cli.Command, l userLogin, pair tls.Certificate, roots *x509.CertPool) (mpURL, addr string, err error) {
	if l.Bootstrap == nil {
		return "", "", usageError("the login names no management point; give --mp URL, or run ibcm login again")
	}
	d := location.Detect(ctx, location.Config{
		SiteCode: l.Bootstrap.SiteCode, IntranetSuffixes: l.Bootstrap.IntranetDNSSuffixes, SRVNames: l.Bootstrap.SRVNames,
		InternetMPs: l.Bootstrap.InternetMPs, Roots: roots, ClientCert: &pair, ResolvConf: c.String("resolv-conf"),
	})
	if d.MP == "" {
		return "", "", fmt.Errorf("no management point of site %s answered: %s", l.Bootstrap.SiteCode, d.Reason)
	}
	log := logger(c)
	log.Debug().Str("location", d.Location).Str("mp", d.MP).Str("addr", d.Addr).Dur("duration", d.Took).Msg(d.Reason)
	return d.MP, d.Addr, nil
}

// userClient is the admin client of a logged-in user: the identity of the user config
// directory, the CA of the login, and for the MP the one userMP picks (--ca / --mp win).
func userClient(c *cli.Command, role string, dir string, l userLogin) (*adminClient, error) {
	pair, err := loadKeyPair(c, filepath.Join(dir, userCertFile), filepath.Join(dir, userKeyFile))
	if err != nil {
		return nil, fmt.Errorf("loading your identity (%s): %w", dir, err)
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, userRootsFile))
	if err != nil {
		return nil, fmt.Errorf("reading the site's roots: %w", err)
	}
	rs, err := ca.ParseCerts(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("reading the site's roots: %w", err)
	}
	pool := x509.NewCertPool()
	for _, r := range rs {
		pool.AddCert(r)
	}
	base, who, addr := orDefault(c.String("ca"), l.CAURL), "the CA", ""
	if role == site.RoleMP {
		who = "the management point"
		if base = c.String("mp"); base == "" {
			if base, addr, err = userMP(context.Background(), c, l, pair, pool); err != nil {
				return nil, err
			}
		}
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12}}
	if addr != "" { // the address the probe proved; the certificate is still checked for the MP's name
		d := &net.Dialer{Timeout: 10 * time.Second}
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}
	}
	return &adminClient{base: strings.TrimSuffix(base, "/"), who: who, root: ca.Fingerprint(rs[0]), http: &http.Client{Timeout: 30 * time.Second, Transport: tr}}, nil
}
