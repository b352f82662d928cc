package dp

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/ibcm-project/ibcm/internal/config"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Config is a DP's configuration file (`ibcm dp serve --config FILE`). A site.yaml holds the
// same Settings under `dp:`. There are no store or database settings: a DP learns
// everything from an MP.
type Config struct {
	Version int      `yaml:"version"`
	DP      Settings `yaml:"dp"`

	dir string // of the file, for relative paths
}

// Settings configure one DP.
type Settings struct {
	ID             string `yaml:"id,omitempty"`   // the common name of its certificate
	Mode           string `yaml:"mode,omitempty"` // intranet, internet or both
	IntranetListen string `yaml:"intranet_listen,omitempty"`
	IntranetURL    string `yaml:"intranet_url,omitempty"`
	InternetListen string `yaml:"internet_listen,omitempty"`
	InternetURL    string `yaml:"internet_url,omitempty"`
	Priority       int    `yaml:"priority,omitempty"` // lower is preferred
	Origin         bool   `yaml:"origin,omitempty"`   // takes uploads; the default pull source
	TLSCert        string `yaml:"tls_cert,omitempty"` // site-server certificate of role dp, chain leaf first
	TLSKey         string `yaml:"tls_key,omitempty"`
	Roots          string `yaml:"roots,omitempty"` // the site's root certificate(s), PEM
	SiteCode       string `yaml:"site_code,omitempty"`
	MPURL          string `yaml:"mp_url,omitempty"`
	Library        string `yaml:"library,omitempty"`
	Pull           Pull   `yaml:"pull,omitempty"`
	// ValidateInterval is how often the library is re-hashed (24h when unset).
	ValidateInterval Duration `yaml:"validate_interval,omitempty"`
	MaxConns         int      `yaml:"max_conns,omitempty"`     // open connections per listener (10000)
	MaxInFlight      int      `yaml:"max_in_flight,omitempty"` // requests at once before 503 (4096)
}

// Pull says where a pull-DP fetches what is distributed to it.
type Pull struct {
	Sources        []PullSource `yaml:"sources,omitempty"`
	BytesPerSecond int64        `yaml:"bytes_per_second,omitempty"` // 0 = unlimited
}

// PullSource is another DP, by its registered id or by URL.
type PullSource struct {
	ID       string `yaml:"id,omitempty"`
	URL      string `yaml:"url,omitempty"`
	Priority int    `yaml:"priority,omitempty"`
}

// Duration is a time.Duration written as "720h" or "30m" in YAML.
type Duration = config.Duration

// Default listen addresses of a DP (beside the CA's 8443 and the MP's 9443/9444).
const (
	DefaultIntranetListen = "127.0.0.1:8446"
	DefaultInternetListen = "127.0.0.1:8447"
)

// Load reads, strictly decodes, defaults and validates a DP configuration file; relative
// paths in it are made relative to the file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	return parse(path, data, abs)
}

// Parse decodes a DP configuration (paths relative to dir).
func Parse(name string, data []byte, dir string) (*Config, error) { return parse(name, data, dir) }

func parse(name string, data []byte, dir string) (*Config, error) {
	var c Config
	if err := config.Decode(name, data, &c); err != nil {
		return nil, err
	}
	c.dir = dir
	c.DP.SetDefaults(Defaults{})
	var errs []error
	if c.Version != 1 {
		errs = append(errs, fmt.Errorf("version: must be 1 (got %d)", c.Version))
	}
	if err := c.DP.Validate("dp"); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, config.InFile(name, err)
	}
	c.DP.Resolve(dir)
	return &c, nil
}

// Defaults are what a site gives a DP it runs (empty for a standalone DP).
type Defaults struct {
	ID, SiteCode, Roots, MPURL, Library, TLSCert, TLSKey string
	IntranetName, InternetName                           string // hosts for the URLs when a listen host is unspecified
}

// SetDefaults fills in what is unset.
func (s *Settings) SetDefaults(d Defaults) {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&s.ID, d.ID)
	def(&s.SiteCode, d.SiteCode)
	def(&s.Roots, d.Roots)
	def(&s.MPURL, d.MPURL)
	def(&s.TLSCert, d.TLSCert)
	def(&s.TLSKey, d.TLSKey)
	def(&s.Library, d.Library)
	def(&s.Library, "content")
	def(&s.Mode, wire.DPModeIntranet)
	def(&s.IntranetListen, DefaultIntranetListen)
	def(&s.InternetListen, DefaultInternetListen)
	def(&s.IntranetURL, "https://"+reachable(s.IntranetListen, d.IntranetName))
	def(&s.InternetURL, "https://"+reachable(s.InternetListen, d.InternetName))
	if s.ValidateInterval == 0 {
		s.ValidateInterval = Duration(24 * time.Hour)
	}
	if s.MaxConns == 0 {
		s.MaxConns = 10000
	}
	if s.MaxInFlight == 0 {
		s.MaxInFlight = 4096
	}
}

// reachable turns a listen address into the host:port others use: the listen host when it
// is specific, else name (the listen address itself when there is no name).
func reachable(listen, name string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if name == "" {
			return listen
		}
		host = name
	}
	return net.JoinHostPort(host, port)
}

// Resolve makes the relative paths absolute against dir.
func (s *Settings) Resolve(dir string) {
	for _, p := range []*string{&s.TLSCert, &s.TLSKey, &s.Roots, &s.Library} {
		if *p != "" && !filepath.IsAbs(*p) && dir != "" {
			*p = filepath.Join(dir, *p)
		}
	}
}

// Intranet reports whether the DP opens its intranet listener.
func (s *Settings) Intranet() bool { return s.Mode == wire.DPModeIntranet || s.Mode == wire.DPModeBoth }

// Internet reports whether the DP opens its internet listener.
func (s *Settings) Internet() bool { return s.Mode == wire.DPModeInternet || s.Mode == wire.DPModeBoth }

var (
	idRE       = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
	siteCodeRE = regexp.MustCompile(`^[A-Z0-9]{3}$`)
)

// Validate checks the settings and names each bad key under prefix ("dp").
func (s *Settings) Validate(prefix string) error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: "+format, append([]any{prefix, key}, args...)...))
	}
	if !idRE.MatchString(s.ID) {
		bad("id", "1-32 lower-case letters, digits or '-', the common name of the DP's certificate (got %q)", s.ID)
	}
	switch s.Mode {
	case wire.DPModeIntranet, wire.DPModeInternet, wire.DPModeBoth:
	default:
		bad("mode", "must be intranet, internet or both (got %q)", s.Mode)
	}
	checkListen := func(key, addr string) {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			bad(key, "must be host:port (got %q)", addr)
		}
	}
	checkURL := func(key, raw string) {
		if u, err := url.Parse(raw); err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			bad(key, "must be an absolute https:// URL with no path (got %q)", raw)
		}
	}
	if s.Intranet() {
		checkListen("intranet_listen", s.IntranetListen)
		checkURL("intranet_url", s.IntranetURL)
	}
	if s.Internet() {
		checkListen("internet_listen", s.InternetListen)
		checkURL("internet_url", s.InternetURL)
	}
	if s.Priority < 0 || s.Priority > 65535 {
		bad("priority", "must be 0-65535 (got %d)", s.Priority)
	}
	for key, v := range map[string]string{"tls_cert": s.TLSCert, "tls_key": s.TLSKey, "roots": s.Roots, "library": s.Library} {
		if v == "" {
			bad(key, "is required")
		}
	}
	if !siteCodeRE.MatchString(s.SiteCode) {
		bad("site_code", "must be the site's code, 3 upper-case letters or digits (got %q)", s.SiteCode)
	}
	checkURL("mp_url", s.MPURL)
	for i, src := range s.Pull.Sources {
		key := fmt.Sprintf("pull.sources[%d]", i)
		switch {
		case (src.ID == "") == (src.URL == ""):
			bad(key, "give id (a registered DP) or url, one of them")
		case src.ID != "" && !idRE.MatchString(src.ID):
			bad(key+".id", "is not a DP id (got %q)", src.ID)
		case src.URL != "":
			checkURL(key+".url", src.URL)
		}
		if src.Priority < 0 {
			bad(key+".priority", "must not be negative")
		}
	}
	if s.Pull.BytesPerSecond < 0 {
		bad("pull.bytes_per_second", "must not be negative (0 = unlimited)")
	}
	if v := time.Duration(s.ValidateInterval); v < time.Minute {
		bad("validate_interval", "must be at least 1m (got %s)", v)
	}
	if s.MaxConns < 0 || s.MaxInFlight < 0 {
		bad("max_conns", "must not be negative")
	}
	return errors.Join(errs...)
}
