package dnspub

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultAlgorithm = "hmac-sha256"
	DefaultTTL       = 5 * time.Minute
	DefaultTimeout   = 3 * time.Second
)

// maxTTL bounds Config.TTL: a record that outlives a dead MP by more than a
// day helps nobody.
const maxTTL = 24 * time.Hour

// Config says where and how to publish. Its keys in the MP configuration are
// dns.server, dns.zone, dns.key_name, dns.algorithm, dns.secret_file, dns.ttl
// and dns.timeout; Validate names them in its errors.
type Config struct {
	Server    string        // host:port of the primary DNS server
	Zone      string        // zone to update, e.g. "corp.example." (the trailing dot is added if missing)
	KeyName   string        // TSIG key name, e.g. "mp-key." (the trailing dot is added if missing)
	Algorithm string        // TSIG algorithm: "hmac-sha256" (default), "hmac-sha1", "hmac-sha224", "hmac-sha384", "hmac-sha512"
	Secret    string        // base64 TSIG secret, read from dns.secret_file by the caller; never logged
	TTL       time.Duration // TTL of the records, whole seconds, default 5m; they are refreshed every TTL/2
	Timeout   time.Duration // per update, default 3s
}

// algorithms maps the accepted spellings of Config.Algorithm to miekg/dns names.
var algorithms = map[string]string{
	"hmac-sha1":   dns.HmacSHA1,
	"hmac-sha224": dns.HmacSHA224,
	"hmac-sha256": dns.HmacSHA256,
	"hmac-sha384": dns.HmacSHA384,
	"hmac-sha512": dns.HmacSHA512,
}

// Validate reports the first invalid field, naming its configuration key.
// Zero Algorithm, TTL and Timeout are valid (defaults apply).
func (c Config) Validate() error {
	if err := validateServer(c.Server); err != nil {
		return fmt.Errorf("dns.server: %w", err)
	}
	if err := validateName(c.Zone); err != nil {
		return fmt.Errorf("dns.zone: %w", err)
	}
	if dns.Fqdn(c.Zone) == "." {
		return errors.New("dns.zone: must not be the root zone")
	}
	if err := validateName(c.KeyName); err != nil {
		return fmt.Errorf("dns.key_name: %w", err)
	}
	if _, err := algorithm(c.Algorithm); err != nil {
		return fmt.Errorf("dns.algorithm: %w", err)
	}
	if c.Secret == "" {
		return errors.New("dns.secret_file: the TSIG secret is empty")
	}
	if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(c.Secret)); err != nil {
		// The decoder's error carries only an offset, never secret bytes.
		return fmt.Errorf("dns.secret_file: the TSIG secret is not base64: %w", err)
	} else if len(raw) < 16 {
		return fmt.Errorf("dns.secret_file: the TSIG secret is %d bytes, want at least 16", len(raw))
	}
	switch {
	case c.TTL < 0:
		return fmt.Errorf("dns.ttl: must not be negative, got %s", c.TTL)
	case c.TTL != 0 && (c.TTL < 2*time.Second || c.TTL%time.Second != 0):
		return fmt.Errorf("dns.ttl: must be whole seconds, at least 2s, got %s", c.TTL)
	case c.TTL > maxTTL:
		return fmt.Errorf("dns.ttl: must be at most %s, got %s", maxTTL, c.TTL)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("dns.timeout: must not be negative, got %s", c.Timeout)
	}
	return nil
}

// withDefaults returns c with defaults filled in and names made fully qualified.
func (c Config) withDefaults() Config {
	c.Zone = dns.CanonicalName(c.Zone)
	c.KeyName = dns.CanonicalName(c.KeyName)
	c.Secret = strings.TrimSpace(c.Secret)
	if c.Algorithm == "" {
		c.Algorithm = DefaultAlgorithm
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}

// algorithm returns the miekg/dns name of a TSIG algorithm; "" means the default.
func algorithm(name string) (string, error) {
	if name == "" {
		name = DefaultAlgorithm
	}
	if alg, ok := algorithms[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
		return alg, nil
	}
	return "", fmt.Errorf("unknown TSIG algorithm %q (want hmac-sha1, hmac-sha224, hmac-sha256, hmac-sha384 or hmac-sha512)", name)
}

func validateServer(s string) error {
	if s == "" {
		return errors.New("is empty, want host:port")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("must be host:port: %w", err)
	}
	if host == "" {
		return fmt.Errorf("must be host:port, got %q", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q must be a number from 1 to 65535", port)
	}
	return nil
}

func validateName(name string) error {
	if name == "" {
		return errors.New("is empty")
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return fmt.Errorf("%q is not a valid domain name", name)
	}
	return nil
}
