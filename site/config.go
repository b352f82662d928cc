package site

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/console"
	"github.com/ibcm-project/ibcm/dp"
	"github.com/ibcm-project/ibcm/internal/config"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// FileName is the configuration file of a site directory.
const FileName = "site.yaml"

// Config is site.yaml. Relative paths are relative to the file's directory.
type Config struct {
	Version int      `yaml:"version"`
	Site    Identity `yaml:"site"`
	Store   Store    `yaml:"store"`
	CA      CAConfig `yaml:"ca"`
	MP      MPConfig `yaml:"mp"`
	// DP is the distribution point `ibcm site up` runs (package dp; the same keys as a
	// standalone DP's file). A site made before DPs existed has none: then no DP runs.
	DP *dp.Settings `yaml:"dp,omitempty"`

	dir string // directory of the file, for relative paths
}

// Identity names the site.
type Identity struct {
	Code         string `yaml:"code"`
	IntranetName string `yaml:"intranet_name"`
	InternetName string `yaml:"internet_name"`
}

// Store says where the site database is.
type Store struct {
	Driver string `yaml:"driver"` // sqlite or postgres
	DSN    string `yaml:"dsn"`    // sqlite: file path; postgres: lib/pq DSN
}

// CAConfig configures the CA role.
type CAConfig struct {
	Listen       string   `yaml:"listen"`        // HTTPS enrollment + admin API
	URL          string   `yaml:"url"`           // how clients and admins reach Listen
	PublicListen string   `yaml:"public_listen"` // plain HTTP: CRL, OCSP, CA certificates
	PublicURL    string   `yaml:"public_url"`    // written into certificates (CDP, AIA)
	RootCert     string   `yaml:"root_cert"`
	IssuingCert  string   `yaml:"issuing_cert"`
	IssuingKey   string   `yaml:"issuing_key"`             // encrypted PKCS#8
	PasswordFile string   `yaml:"password_file,omitempty"` // or IBCM_CA_PASSWORD
	TLSCert      string   `yaml:"tls_cert"`                // site-server certificate of the CA role, with chain
	TLSKey       string   `yaml:"tls_key"`
	Validity     Validity `yaml:"validity,omitempty"`
	CRLValidity  Duration `yaml:"crl_validity,omitempty"`
	// SecurityCodes lets helpers make security codes (`ibcm remote code create`) and the
	// sharers of unenrolled devices exchange them here for one-hour guest certificates
	// (`ibcm-client share --code`). Off by default; the MPs read it too.
	SecurityCodes bool `yaml:"security_codes,omitempty"`
}

// MPConfig configures the management point role.
type MPConfig struct {
	ID             string `yaml:"id"`              // unique per MP of the site
	Mode           string `yaml:"mode"`            // intranet, internet or both
	IntranetListen string `yaml:"intranet_listen"` // HTTPS, mutual TLS
	IntranetURL    string `yaml:"intranet_url"`    // how intranet devices reach it
	InternetListen string `yaml:"internet_listen"` // HTTPS, mutual TLS
	InternetURL    string `yaml:"internet_url"`    // how internet devices reach it
	TLSCert        string `yaml:"tls_cert"`        // site-server certificate of the MP role, with chain
	TLSKey         string `yaml:"tls_key"`
	// ConsoleListen is the web console's listener (HTTPS with the MP's certificate, no
	// client certificate: browsers log in with `ibcm console login`); empty: no console.
	ConsoleListen string `yaml:"console_listen,omitempty"`
	// ConsoleURL is how browsers reach ConsoleListen (https://host:port, no path): the
	// login links start with it and its origin is the only one the console accepts.
	// https://<reachable console_listen> when unset.
	ConsoleURL string `yaml:"console_url,omitempty"`
	// AuditKey is the site's audit private key (raw X25519 bytes, 0600): session recordings
	// are sealed to its public half and opened with it. Next to tls_key when unset; made by
	// `site init`, or by the MP role at its start for a site made before.
	AuditKey string `yaml:"audit_key,omitempty"`
	// SessionRetention is how long ended remote-control sessions stay in the audit (30 days
	// when unset).
	SessionRetention Duration `yaml:"session_retention,omitempty"`
	// OriginDPs are the DPs (ids) that may register as origin: take uploads and be the
	// default pull source. The site's own DP (dp: with origin: true) when unset. A DP says
	// it is an origin, but only the site's configuration may let it.
	OriginDPs   []string   `yaml:"origin_dps,omitempty"`
	MaxConns    int        `yaml:"max_conns,omitempty"`     // open connections per listener
	MaxInFlight int        `yaml:"max_in_flight,omitempty"` // requests at once before 503
	DNS         *DNSConfig `yaml:"dns,omitempty"`           // publish the SRV records
	// ParkIdleChannels: a TLS 1.3 notification channel leaves crypto/tls once upgraded
	// (internal/tlspark); true when unset. ParksIdleChannels reads it.
	ParkIdleChannels *bool `yaml:"park_idle_channels,omitempty"`

	// Notification channels of one device across the site; a new one beyond closes the oldest.
	MaxChannelsPerDevice int `yaml:"max_channels_per_device,omitempty"`
}

// ParksIdleChannels reports whether the MP parks its idle notification channels
// (mp.park_idle_channels, on unless set to false).
func (m *MPConfig) ParksIdleChannels() bool { return m.ParkIdleChannels == nil || *m.ParkIdleChannels }

// DNSConfig is the MP's DNS publishing: RFC 2136 updates signed with TSIG.
type DNSConfig struct {
	Server     string   `yaml:"server"`      // host:port of the primary server of the zone
	Zone       string   `yaml:"zone"`        // e.g. corp.example
	KeyName    string   `yaml:"key_name"`    // TSIG key name, e.g. mp-key.
	Algorithm  string   `yaml:"algorithm"`   // hmac-sha256 (default)
	SecretFile string   `yaml:"secret_file"` // base64 TSIG secret, 0600
	TTL        Duration `yaml:"ttl,omitempty"`
	Target     string   `yaml:"target,omitempty"`  // SRV target; the intranet name when empty
	CMName     bool     `yaml:"cm_name,omitempty"` // also _mssms_mp_<sitecode>._tcp
}

// Validity is the certificate lifetime of each profile.
type Validity struct {
	Client     Duration `yaml:"client,omitempty"`
	SiteServer Duration `yaml:"site_server,omitempty"`
	Admin      Duration `yaml:"admin,omitempty"`
	OCSP       Duration `yaml:"ocsp,omitempty"`
}

// Duration is a time.Duration written as "720h" or "30m" in YAML.
type Duration = config.Duration

// Load reads, strictly decodes, defaults and validates a site.yaml.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := parse(path, data)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	cfg.dir = abs
	return cfg, nil
}

// Parse decodes a site.yaml: unknown keys and values of the wrong type are errors that
// name the line and the key path (internal/config), then defaults are applied and the
// result validated.
func Parse(data []byte) (*Config, error) { return parse(FileName, data) }

// parse is Parse with the file name for messages.
func parse(name string, data []byte) (*Config, error) {
	var cfg Config
	if err := config.Decode(name, data, &cfg); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, config.InFile(name, err)
	}
	return &cfg, nil
}

func (c *Config) setDefaults() {
	d := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	d(&c.Store.Driver, "sqlite")
	if c.Store.Driver == "sqlite" {
		d(&c.Store.DSN, "site.db")
	}
	d(&c.CA.Listen, "127.0.0.1:8443")
	d(&c.CA.PublicListen, "127.0.0.1:8080")
	d(&c.CA.URL, "https://"+reachable(c.CA.Listen, c.Site.IntranetName))
	d(&c.CA.PublicURL, "http://"+reachable(c.CA.PublicListen, c.Site.IntranetName))
	d(&c.CA.RootCert, "ca/root.crt")
	d(&c.CA.IssuingCert, "ca/issuing.crt")
	d(&c.CA.IssuingKey, "ca/issuing.key")
	d(&c.CA.TLSCert, "tls/ca.crt")
	d(&c.CA.TLSKey, "tls/ca.key")
	d(&c.MP.ID, "mp1")
	d(&c.MP.Mode, "both")
	d(&c.MP.IntranetListen, "127.0.0.1:9443")
	d(&c.MP.InternetListen, "127.0.0.1:9444")
	d(&c.MP.IntranetURL, "https://"+reachable(c.MP.IntranetListen, c.Site.IntranetName))
	d(&c.MP.InternetURL, "https://"+reachable(c.MP.InternetListen, c.Site.InternetName))
	d(&c.MP.TLSCert, "tls/mp.crt")
	d(&c.MP.TLSKey, "tls/mp.key")
	d(&c.MP.AuditKey, filepath.Join(filepath.Dir(c.MP.TLSKey), "audit.key"))
	if c.MP.ConsoleListen != "" {
		d(&c.MP.ConsoleURL, "https://"+reachable(c.MP.ConsoleListen, c.Site.IntranetName))
	}
	if c.MP.MaxConns == 0 {
		c.MP.MaxConns = 150000
	}
	if c.MP.MaxChannelsPerDevice == 0 {
		c.MP.MaxChannelsPerDevice = 3
	}
	if c.MP.DNS != nil {
		d(&c.MP.DNS.Algorithm, "hmac-sha256")
		d(&c.MP.DNS.Target, c.Site.IntranetName)
	}
	if c.DP != nil {
		c.DP.SetDefaults(c.dpDefaults())
	}
}

// dpDefaults are what the site gives its DP: the site's code and roots, the MP's URL, the
// library <site dir>/content, the certificate tls/dp.crt.
func (c *Config) dpDefaults() dp.Defaults {
	mpURL := c.MP.InternetURL
	if c.MPIntranet() {
		mpURL = c.MP.IntranetURL
	}
	return dp.Defaults{ID: "dp1", SiteCode: c.Site.Code, Roots: c.CA.RootCert, MPURL: mpURL, Library: "content",
		TLSCert: "tls/dp.crt", TLSKey: "tls/dp.key", IntranetName: c.Site.IntranetName, InternetName: c.Site.InternetName}
}

// MPIntranet reports whether the MP takes intranet connections.
func (c *Config) MPIntranet() bool { return c.MP.Mode == "intranet" || c.MP.Mode == "both" }

// MPInternet reports whether the MP takes internet connections.
func (c *Config) MPInternet() bool { return c.MP.Mode == "internet" || c.MP.Mode == "both" }

// reachable turns a listen address into the host:port others use: the listen host when it
// is specific, else name.
func reachable(listen, name string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = name
	}
	return net.JoinHostPort(host, port)
}

var siteCodeRE = regexp.MustCompile(`^[A-Z0-9]{3}$`)

// CheckSiteCode checks a site code: three upper-case letters or digits.
func CheckSiteCode(s string) error {
	if !siteCodeRE.MatchString(s) {
		return fmt.Errorf("site code %q: must be 3 upper-case letters or digits, like P01 or ABC", s)
	}
	return nil
}

// Validate checks the configuration and names the first bad key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}
	if c.Version != 1 {
		bad("version", "must be 1 (got %d)", c.Version)
	}
	if err := CheckSiteCode(c.Site.Code); err != nil {
		bad("site.code", "%v", err)
	}
	for key, name := range map[string]string{"site.intranet_name": c.Site.IntranetName, "site.internet_name": c.Site.InternetName} {
		if err := ca.CheckDNSName(name); err != nil {
			bad(key, "must be a host name (got %q)", name)
		}
	}
	if _, err := sitedb.ParseDriver(c.Store.Driver); err != nil {
		bad("store.driver", "must be sqlite or postgres (got %q)", c.Store.Driver)
	}
	if c.Store.Driver == string(sitedb.Postgres) && c.Store.DSN == "" {
		bad("store.dsn", "is required for postgres")
	}
	switch c.MP.Mode {
	case "intranet", "internet", "both":
	default:
		bad("mp.mode", "must be intranet, internet or both (got %q)", c.MP.Mode)
	}
	if !regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`).MatchString(c.MP.ID) {
		bad("mp.id", "1-32 lower-case letters, digits or '-' (got %q)", c.MP.ID)
	}
	if c.MP.MaxConns < 0 || c.MP.MaxInFlight < 0 {
		bad("mp.max_conns", "must not be negative")
	}
	if c.MP.MaxChannelsPerDevice < 1 {
		bad("mp.max_channels_per_device", "must be at least 1 (got %d)", c.MP.MaxChannelsPerDevice)
	}
	if r := time.Duration(c.MP.SessionRetention); r != 0 && r < time.Hour {
		bad("mp.session_retention", "at least 1h when set (got %s)", r)
	}
	if dns := c.MP.DNS; dns != nil {
		if _, _, err := net.SplitHostPort(dns.Server); err != nil {
			bad("mp.dns.server", "must be host:port (got %q)", dns.Server)
		}
		if ca.CheckDNSName(strings.TrimSuffix(dns.Zone, ".")) != nil {
			bad("mp.dns.zone", "must be a DNS zone name (got %q)", dns.Zone)
		}
		if !strings.HasSuffix(dns.KeyName, ".") || len(dns.KeyName) < 2 {
			bad("mp.dns.key_name", "must be a fully qualified key name ending in '.' (got %q)", dns.KeyName)
		}
		if dns.SecretFile == "" {
			bad("mp.dns.secret_file", "is required")
		}
	}
	if c.DP != nil {
		if err := c.DP.Validate("dp"); err != nil {
			errs = append(errs, err)
		}
	}
	for key, addr := range map[string]string{"ca.listen": c.CA.Listen, "ca.public_listen": c.CA.PublicListen,
		"mp.intranet_listen": c.MP.IntranetListen, "mp.internet_listen": c.MP.InternetListen} {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			bad(key, "must be host:port (got %q)", addr)
		}
	}
	if c.MP.ConsoleListen != "" {
		if _, port, err := net.SplitHostPort(c.MP.ConsoleListen); err != nil || port == "" {
			bad("mp.console_listen", "must be host:port, or empty for no web console (got %q)", c.MP.ConsoleListen)
		}
		if _, err := console.Origin(c.MP.ConsoleURL); err != nil {
			bad("mp.console_url", "must be https://host[:port] with no path (got %q)", c.MP.ConsoleURL)
		}
	} else if c.MP.ConsoleURL != "" {
		bad("mp.console_url", "is set but mp.console_listen is empty (no web console)")
	}
	for key, raw := range map[string]string{"ca.url": c.CA.URL, "ca.public_url": c.CA.PublicURL,
		"mp.intranet_url": c.MP.IntranetURL, "mp.internet_url": c.MP.InternetURL} {
		u, err := url.Parse(raw)
		want := "https"
		if key == "ca.public_url" {
			want = "http"
		}
		if err != nil || u.Scheme != want || u.Host == "" {
			bad(key, "must be an absolute %s:// URL (got %q)", want, raw)
		}
	}
	for key, v := range map[string]Duration{"ca.validity.client": c.CA.Validity.Client, "ca.validity.site_server": c.CA.Validity.SiteServer,
		"ca.validity.admin": c.CA.Validity.Admin, "ca.validity.ocsp": c.CA.Validity.OCSP, "ca.crl_validity": c.CA.CRLValidity} {
		if v < 0 || (v > 0 && time.Duration(v) < 10*time.Minute) {
			bad(key, "must be at least 10m (got %s)", time.Duration(v))
		}
	}
	return errors.Join(errs...)
}

// Path resolves a path from the config against the config file's directory.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

// Dir returns the directory of the config file.
func (c *Config) Dir() string { return c.dir }

// StoreDSN returns the DSN to open, with a relative SQLite path resolved.
func (c *Config) StoreDSN() string {
	if c.Store.Driver == string(sitedb.SQLite) {
		return c.Path(c.Store.DSN)
	}
	return c.Store.DSN
}

// PasswordEnv is the environment variable that holds the issuing key's password, read by
// site init and by every command that opens the CA (it wins over ca.password_file).
const PasswordEnv = "IBCM_CA_PASSWORD"

// Password returns the issuing key's password: IBCM_CA_PASSWORD, or the password file.
func (c *Config) Password() ([]byte, error) {
	if p := os.Getenv(PasswordEnv); p != "" {
		return []byte(p), nil
	}
	if c.CA.PasswordFile == "" {
		return nil, errors.New("no CA password: set ca.password_file or IBCM_CA_PASSWORD")
	}
	b, err := os.ReadFile(c.Path(c.CA.PasswordFile))
	if err != nil {
		return nil, fmt.Errorf("reading ca.password_file: %w", err)
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		return nil, fmt.Errorf("ca.password_file %s is empty", c.CA.PasswordFile)
	}
	return []byte(p), nil
}

// validity returns the per-profile lifetimes for ca.Options.
func (v Validity) byProfile() map[ca.Profile]time.Duration {
	return map[ca.Profile]time.Duration{
		ca.Client: time.Duration(v.Client), ca.SiteServer: time.Duration(v.SiteServer),
		ca.Admin: time.Duration(v.Admin), ca.OCSP: time.Duration(v.OCSP),
	}
}

// hostPort returns the host:port of an https URL (port 443 when it has none).
func hostPort(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return u.Host
}

// Bootstrap are the location settings devices get at enrollment and in the default policy:
// the site code, the internet MP, the intranet DNS suffix (the domain of the intranet
// name: mp.corp.example -> corp.example) and the SRV name MPs publish.
func (c *Config) Bootstrap() wire.Bootstrap {
	suffix := c.Site.IntranetName
	if _, rest, ok := strings.Cut(suffix, "."); ok {
		suffix = rest
	}
	b := wire.Bootstrap{SiteCode: c.Site.Code, IntranetDNSSuffixes: []string{suffix}, SRVNames: []string{"_ibcm-mp._tcp"}, InternetMPs: []string{}}
	if c.MPInternet() {
		b.InternetMPs = append(b.InternetMPs, hostPort(c.MP.InternetURL))
	}
	return b
}
