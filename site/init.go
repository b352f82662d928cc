package site

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/dp"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/remote/recording"
)

// InitOptions are the inputs of `ibcm site init`.
type InitOptions struct {
	Dir            string
	SiteCode       string
	IntranetName   string
	InternetName   string
	CAAddr         string // HTTPS listener, default 127.0.0.1:8443
	CAPublicAddr   string // plain-HTTP listener, default 127.0.0.1:8080
	MPIntranetAddr string // MP intranet listener, default 127.0.0.1:9443
	MPInternetAddr string // MP internet listener, default 127.0.0.1:9444
	MPMode         string // intranet, internet or both (default)
	ConsoleAddr    string // web console listener, default 127.0.0.1:9445
	NoConsole      bool   // no web console (--console-addr "")
	DPIntranetAddr string // DP intranet listener, default 127.0.0.1:8446
	DPInternetAddr string // DP internet listener, default 127.0.0.1:8447
	DPMode         string // intranet, internet or both (default)
	Store          string // sqlite (default) or postgres
	DSN            string // postgres DSN
	KeyType        string // p256 (default), p384, rsa2048, rsa3072
	PasswordFile   string // the issuing key's password; made when empty and IBCM_CA_PASSWORD is unset
	OfflineRoot    string // when set, the root key is written here instead of into Dir
	AdminName      string // the first admin, default "admin"
	Now            func() time.Time
	Rand           io.Reader
}

// ErrSiteExists is returned when init would overwrite a site.
var ErrSiteExists = errors.New("a site already exists")

// Init creates a new site: it validates everything first, then builds the site directory
// beside the target and moves it into place only when everything worked, so a failed init
// leaves nothing behind. It writes a summary of what it made to out.
func Init(ctx context.Context, o InitOptions, out io.Writer) (*Config, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.AdminName == "" {
		o.AdminName = "admin"
	}
	if o.Dir == "" {
		return nil, errors.New("--dir is required")
	}
	kt := ca.P256
	if o.KeyType != "" {
		var err error
		if kt, err = ca.ParseKeyType(o.KeyType); err != nil {
			return nil, err
		}
	}
	cfg := &Config{
		Version: 1,
		Site:    Identity{Code: o.SiteCode, IntranetName: o.IntranetName, InternetName: o.InternetName},
		Store:   Store{Driver: o.Store, DSN: o.DSN},
		CA:      CAConfig{Listen: o.CAAddr, PublicListen: o.CAPublicAddr},
		MP:      MPConfig{Mode: o.MPMode, IntranetListen: o.MPIntranetAddr, InternetListen: o.MPInternetAddr},
		// The site's DP is the origin: it takes uploads and is every pull-DP's default source.
		DP: &dp.Settings{Mode: o.DPMode, IntranetListen: o.DPIntranetAddr, InternetListen: o.DPInternetAddr, Origin: true},
	}
	if !o.NoConsole {
		cfg.MP.ConsoleListen = o.ConsoleAddr
		if cfg.MP.ConsoleListen == "" {
			cfg.MP.ConsoleListen = "127.0.0.1:9445"
		}
	}
	if cfg.DP.Mode == "" {
		cfg.DP.Mode = "both"
	}
	if cfg.Store.Driver == "" {
		cfg.Store.Driver = string(sitedb.SQLite)
	}
	if cfg.Store.Driver == string(sitedb.SQLite) && o.DSN != "" {
		return nil, errors.New("--dsn is for --store postgres; the SQLite store is always DIR/site.db")
	}
	if err := ca.CheckName(o.AdminName); err != nil {
		return nil, fmt.Errorf("admin name: %w", err)
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("%w in %s (it is not empty); choose another --dir", ErrSiteExists, dir)
	} else if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	password, passwordMade, err := initPassword(o)
	if err != nil {
		return nil, err
	}

	// Build in a temporary directory beside the target, then rename.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+".init-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	cfg.dir = tmp
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, err
	}

	h, err := ca.NewHierarchy(o.SiteCode, kt, o.Now(), o.Rand)
	if err != nil {
		return nil, err
	}
	if passwordMade {
		cfg.CA.PasswordFile = "ca/password"
		if err := writeFile(cfg.Path(cfg.CA.PasswordFile), append(password, '\n'), 0o600); err != nil {
			return nil, err
		}
	} else if o.PasswordFile != "" {
		if cfg.CA.PasswordFile, err = filepath.Abs(o.PasswordFile); err != nil {
			return nil, err
		}
	}
	issuingKey, err := ca.EncryptKey(h.IssuingKey, password)
	if err != nil {
		return nil, err
	}
	rootKey, err := ca.EncryptKey(h.RootKey, password)
	if err != nil {
		return nil, err
	}
	rootKeyPath := cfg.Path("ca/root.key")
	if o.OfflineRoot != "" {
		rootKeyPath = filepath.Join(o.OfflineRoot, "root.key")
		if _, err := os.Stat(rootKeyPath); err == nil {
			return nil, fmt.Errorf("%w: %s exists", ErrSiteExists, rootKeyPath)
		}
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{cfg.Path(cfg.CA.RootCert), ca.EncodeCerts(h.Root), 0o644},
		{cfg.Path(cfg.CA.IssuingCert), ca.EncodeCerts(h.Issuing, h.Root), 0o644},
		{cfg.Path(cfg.CA.IssuingKey), issuingKey, 0o600},
	} {
		if err := writeFile(f.path, f.data, f.mode); err != nil {
			return nil, fmt.Errorf("writing %s: %w", f.path, err)
		}
	}

	db, err := sitedb.Open(ctx, sitedb.Driver(cfg.Store.Driver), cfg.StoreDSN())
	if err != nil {
		return nil, err
	}
	defer db.Close()
	if err := refuseExistingSite(ctx, db); err != nil {
		return nil, err
	}
	// A shared (PostgreSQL) store outlives the temporary directory: if init fails from here
	// on, take this site's rows out again so that the next init is not refused.
	done := false
	defer func() {
		if !done {
			forgetSite(cfg, h)
		}
	}()
	authority, err := ca.New(ctx, db, ca.Options{SiteCode: o.SiteCode, Hierarchy: h, PublicURL: cfg.CA.PublicURL,
		Validity: cfg.CA.Validity.byProfile(), Now: o.Now, Rand: o.Rand, Log: zerolog.Nop()})
	if err != nil {
		return nil, err
	}

	// The CA role's TLS certificate names every way clients reach it.
	names := []string{o.IntranetName, o.InternetName}
	for _, u := range []string{cfg.CA.URL} {
		if host := hostOf(u); host != o.IntranetName && host != o.InternetName {
			names = append(names, host)
		}
	}
	tlsChain, tlsKey, err := issue(ctx, authority, kt, o.Rand, ca.IssueSpec{Profile: ca.SiteServer, Subject: o.IntranetName, DNS: names, Role: "ca"}, "site-init")
	if err != nil {
		return nil, fmt.Errorf("issuing the CA role's TLS certificate: %w", err)
	}
	mpChain, mpKey, err := issue(ctx, authority, kt, o.Rand, ca.IssueSpec{Profile: ca.SiteServer, Subject: cfg.MP.ID, DNS: mpNames(cfg), Role: "mp"}, "site-init")
	if err != nil {
		return nil, fmt.Errorf("issuing the MP role's TLS certificate: %w", err)
	}
	dpChain, dpKey, err := issue(ctx, authority, kt, o.Rand, ca.IssueSpec{Profile: ca.SiteServer, Subject: cfg.DP.ID, DNS: dpNames(cfg), Role: "dp"}, "site-init")
	if err != nil {
		return nil, fmt.Errorf("issuing the DP's TLS certificate: %w", err)
	}
	adminChain, adminKey, err := issue(ctx, authority, kt, o.Rand, ca.IssueSpec{Profile: ca.Admin, Subject: o.AdminName}, "site-init")
	if err != nil {
		return nil, fmt.Errorf("issuing the first admin certificate: %w", err)
	}
	if err := authority.BootstrapAccess(ctx); err != nil { // the first admin: Full Administrator
		return nil, err
	}
	for _, f := range []struct {
		path string
		data []byte
	}{
		{cfg.Path(cfg.CA.TLSCert), ca.EncodeCerts(append(tlsChain, h.Root)...)},
		{cfg.Path(cfg.MP.TLSCert), ca.EncodeCerts(mpChain...)},
		{cfg.Path(cfg.DP.TLSCert), ca.EncodeCerts(dpChain...)},
		{cfg.Path(AdminCert), ca.EncodeCerts(adminChain...)},
	} {
		if err := writeFile(f.path, f.data, 0o644); err != nil {
			return nil, err
		}
	}
	if err := writeKey(cfg.Path(cfg.CA.TLSKey), tlsKey); err != nil {
		return nil, err
	}
	auditKey, _, err := recording.NewKey()
	if err != nil {
		return nil, err
	}
	if err := writeFile(cfg.Path(cfg.MP.AuditKey), auditKey, 0o600); err != nil {
		return nil, err
	}
	if err := writeKey(cfg.Path(cfg.MP.TLSKey), mpKey); err != nil {
		return nil, err
	}
	if err := writeKey(cfg.Path(cfg.DP.TLSKey), dpKey); err != nil {
		return nil, err
	}
	if err := writeKey(cfg.Path(AdminKey), adminKey); err != nil {
		return nil, err
	}
	if err := db.Close(); err != nil {
		return nil, err
	}
	body, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if err := writeFile(cfg.Path(FileName), append([]byte(configHeader), body...), 0o600); err != nil {
		return nil, err
	}

	// Everything worked: put the site in place, and the root key where it belongs.
	if o.OfflineRoot != "" {
		if err := os.MkdirAll(o.OfflineRoot, 0o700); err != nil {
			return nil, err
		}
		if err := writeFile(filepath.Join(o.OfflineRoot, "root.crt"), ca.EncodeCerts(h.Root), 0o644); err != nil {
			return nil, err
		}
	}
	if err := writeFile(rootKeyPath, rootKey, 0o600); err != nil {
		return nil, err
	}
	_ = os.Remove(dir) // an empty directory made by the user
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("moving the new site into %s: %w", dir, err)
	}
	done = true
	cfg.dir = dir
	if o.OfflineRoot == "" {
		rootKeyPath = cfg.Path("ca/root.key")
	}

	fp := ca.Fingerprint(h.Root)
	fmt.Fprintf(out, "Created site %s in %s\n", o.SiteCode, dir)
	fmt.Fprintf(out, "  root CA        %s (%s, valid until %s)\n", cfg.Path(cfg.CA.RootCert), kt, h.Root.NotAfter.Format("2006-01-02"))
	fmt.Fprintf(out, "  root SHA-256   %s\n", fp)
	if o.OfflineRoot != "" {
		fmt.Fprintf(out, "  root key       %s (offline: move it off this server)\n", rootKeyPath)
	} else {
		fmt.Fprintf(out, "  root key       %s (encrypted)\n", rootKeyPath)
	}
	fmt.Fprintf(out, "  issuing CA     %s, key encrypted at rest\n", cfg.Path(cfg.CA.IssuingCert))
	if passwordMade {
		fmt.Fprintf(out, "  CA password    %s (0600; keep a copy somewhere safe)\n", cfg.Path(cfg.CA.PasswordFile))
	}
	fmt.Fprintf(out, "  store          %s\n", cfg.Store.Driver)
	fmt.Fprintf(out, "  CA TLS cert    %s (names: %v)\n", cfg.Path(cfg.CA.TLSCert), names)
	fmt.Fprintf(out, "  MP TLS cert    %s (mode %s, names: %v)\n", cfg.Path(cfg.MP.TLSCert), cfg.MP.Mode, mpNames(cfg))
	if cfg.MP.ConsoleListen != "" {
		fmt.Fprintf(out, "  web console    %s (log in: ibcm console login)\n", cfg.MP.ConsoleURL)
	}
	fmt.Fprintf(out, "  DP TLS cert    %s (%s, mode %s, origin, names: %v)\n", cfg.Path(cfg.DP.TLSCert), cfg.DP.ID, cfg.DP.Mode, dpNames(cfg))
	fmt.Fprintf(out, "  admin identity %s, %s\n", cfg.Path(AdminCert), cfg.Path(AdminKey))
	fmt.Fprintf(out, "  config         %s\n", cfg.Path(FileName))
	fmt.Fprintf(out, "\nNext: ibcm site up --dir %s\n", dir)
	fmt.Fprintf(out, "Enroll a device: ibcm-client enroll --ca %s --root-sha256 %s --token \"$(ibcm ca token create --dir %s --profile client)\"\n", cfg.CA.URL, fp, dir)
	return cfg, nil
}

// The first admin's identity inside the site directory.
const (
	AdminCert = "admin/admin.crt"
	AdminKey  = "admin/admin.key"
)

const configHeader = `# ibcm site configuration, written by ibcm site init.
# Reference: etc/site.yaml in the ibcm source tree. Relative paths are relative to this file.
`

func initPassword(o InitOptions) (password []byte, made bool, err error) {
	switch {
	case o.PasswordFile != "":
		b, err := os.ReadFile(o.PasswordFile)
		if err != nil {
			return nil, false, fmt.Errorf("reading --password-file: %w", err)
		}
		p := []byte(trimNewline(string(b)))
		if len(p) < 8 {
			return nil, false, errors.New("--password-file: the password must be at least 8 characters")
		}
		return p, false, nil
	case os.Getenv(PasswordEnv) != "":
		if len(os.Getenv(PasswordEnv)) < 8 {
			return nil, false, errors.New(PasswordEnv + ": the password must be at least 8 characters")
		}
		return []byte(os.Getenv(PasswordEnv)), false, nil
	}
	b := make([]byte, 24)
	if _, err := io.ReadFull(o.Rand, b); err != nil {
		return nil, false, err
	}
	return []byte(base64.RawURLEncoding.EncodeToString(b)), true, nil
}

func trimNewline(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	return s
}

// refuseExistingSite stops init from reusing a PostgreSQL database that already holds a site.
func refuseExistingSite(ctx context.Context, db *sitedb.DB) error {
	var n int
	err := db.QueryRow(ctx, `SELECT COUNT(*) FROM ca_certificates`).Scan(&n)
	if err == nil && n > 0 {
		return fmt.Errorf("%w in this database (it holds %d CA certificates); use a new database", ErrSiteExists, n)
	}
	return nil // no table yet: a new database
}

// forgetSite removes what a failed init wrote into a PostgreSQL store (a SQLite store goes
// with the temporary directory): the certificates of its issuing CA and its CA certificates.
func forgetSite(cfg *Config, h *ca.Hierarchy) {
	if cfg.Store.Driver != string(sitedb.Postgres) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := sitedb.Open(ctx, sitedb.Postgres, cfg.StoreDSN())
	if err != nil {
		return
	}
	defer db.Close()
	_, _ = db.Exec(ctx, `DELETE FROM certificates WHERE issuer_id = ?`, ca.IssuerID(h.Issuing))
	_, _ = db.Exec(ctx, `DELETE FROM ca_certificates WHERE id IN (?, ?)`, ca.IssuerID(h.Root), ca.IssuerID(h.Issuing))
	_, _ = db.Exec(ctx, `DELETE FROM access_assignments`) // one site per database (refuseExistingSite)
	_, _ = db.Exec(ctx, `DELETE FROM access_users`)
}

// issue makes a key here, and has the CA issue a certificate for it.
func issue(ctx context.Context, c *ca.CA, kt ca.KeyType, rnd io.Reader, spec ca.IssueSpec, by string) ([]*x509.Certificate, crypto.Signer, error) {
	key, err := kt.Generate(rnd)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rnd, &x509.CertificateRequest{Subject: pkix.Name{CommonName: spec.Subject}}, key)
	if err != nil {
		return nil, nil, err
	}
	chain, err := c.Issue(ctx, spec, csr, by)
	if err != nil {
		return nil, nil, err
	}
	return chain, key, nil
}

// mpNames are the names the MP's certificate carries: the intranet and/or internet FQDN as
// its mode needs (as Configuration Manager asks of a role's web server certificate), and
// the hosts of its URLs.
func mpNames(cfg *Config) []string {
	var names []string
	add := func(n string) {
		for _, have := range names {
			if have == n {
				return
			}
		}
		names = append(names, n)
	}
	if cfg.MPIntranet() {
		add(cfg.Site.IntranetName)
		add(hostOf(cfg.MP.IntranetURL))
	}
	if cfg.MPInternet() {
		add(cfg.Site.InternetName)
		add(hostOf(cfg.MP.InternetURL))
	}
	if cfg.MP.ConsoleListen != "" { // browsers check the console's name too
		add(hostOf(cfg.MP.ConsoleURL))
	}
	return names
}

// dpNames are the names the DP's certificate carries, as mpNames for the MP.
func dpNames(cfg *Config) []string {
	var names []string
	add := func(n string) {
		for _, have := range names {
			if have == n || n == "" {
				return
			}
		}
		names = append(names, n)
	}
	if cfg.DP.Intranet() {
		add(cfg.Site.IntranetName)
		add(hostOf(cfg.DP.IntranetURL))
	}
	if cfg.DP.Internet() {
		add(cfg.Site.InternetName)
		add(hostOf(cfg.DP.InternetURL))
	}
	return names
}

func hostOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	host := u.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return host
}
