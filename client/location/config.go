package location

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Defaults for the zero fields of Config.
const (
	DefaultResolvConf   = "/etc/resolv.conf"
	DefaultSRVName      = "_ibcm-mp._tcp"
	DefaultDNSTimeout   = 250 * time.Millisecond // a LAN resolver answers in well under 50 ms; two attempts keep a black-holed intranet DNS under 600 ms
	DefaultDNSAttempts  = 2
	DefaultProbeTimeout = time.Second
	DefaultBudget       = 1500 * time.Millisecond
)

// Config says where to look for the site's management points and how to recognise them.
type Config struct {
	SiteCode         string           // e.g. "P01": the probe demands urn:ibcm:site:<SiteCode>:role:mp
	IntranetSuffixes []string         // e.g. ["corp.example"]
	SRVNames         []string         // e.g. ["_ibcm-mp._tcp"] -> query _ibcm-mp._tcp.corp.example. SRV; DefaultSRVName when empty
	InternetMPs      []string         // host:port of the internet MP(s); port 443 when left out
	AlwaysInternet   bool             // Configuration Manager's CCMALWAYSINF: skip detection
	ResolvConf       string           // DefaultResolvConf when empty
	Roots            *x509.CertPool   // the site's pinned roots
	ClientCert       *tls.Certificate // the device's certificate, presented in probes (MPs require one)
	DNSTimeout       time.Duration    // per query attempt
	DNSAttempts      int              // attempts per query and nameserver
	ProbeTimeout     time.Duration    // per TLS probe
	Budget           time.Duration    // whole detection
}

// withDefaults returns c with its zero fields set to the defaults.
func (c Config) withDefaults() Config {
	if c.ResolvConf == "" {
		c.ResolvConf = DefaultResolvConf
	}
	if len(c.SRVNames) == 0 {
		c.SRVNames = []string{DefaultSRVName}
	}
	if c.DNSTimeout <= 0 {
		c.DNSTimeout = DefaultDNSTimeout
	}
	if c.DNSAttempts <= 0 {
		c.DNSAttempts = DefaultDNSAttempts
	}
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.Budget <= 0 {
		c.Budget = DefaultBudget
	}
	return c
}

// Validate checks the configuration and names the first bad key. Zero durations and
// counts are fine (they take the defaults); negative ones are not.
func (c Config) Validate() error {
	if c.SiteCode == "" {
		return errors.New("site_code: required (the probe checks the MP's certificate names this site)")
	}
	if strings.ContainsAny(c.SiteCode, ": \t/") {
		return fmt.Errorf("site_code: %q must not contain ':', '/' or spaces", c.SiteCode)
	}
	if c.Roots == nil {
		return errors.New("roots: required (the site's pinned roots the MP's certificate must chain to)")
	}
	for i, s := range c.IntranetSuffixes {
		if _, ok := dns.IsDomainName(s); !ok || strings.Trim(s, ".") == "" {
			return fmt.Errorf("intranet_dns_suffixes[%d]: %q is not a domain name", i, s)
		}
	}
	for i, s := range c.SRVNames {
		if _, ok := dns.IsDomainName(s); !ok || strings.Trim(s, ".") == "" || strings.HasSuffix(s, ".") {
			return fmt.Errorf("srv_names[%d]: %q must be a relative name such as _ibcm-mp._tcp", i, s)
		}
	}
	for i, s := range c.InternetMPs {
		if _, _, err := splitHostPort(s); err != nil {
			return fmt.Errorf("internet_mp_names[%d]: %w", i, err)
		}
	}
	switch {
	case c.DNSTimeout < 0:
		return errors.New("dns_timeout: must not be negative")
	case c.DNSAttempts < 0:
		return errors.New("dns_attempts: must not be negative")
	case c.ProbeTimeout < 0:
		return errors.New("probe_timeout: must not be negative")
	case c.Budget < 0:
		return errors.New("budget: must not be negative")
	}
	return nil
}

// splitHostPort splits "host:port", "host", "[v6]:port" or a bare IPv6 address; the port
// defaults to 443. The host comes back without brackets or a trailing dot.
func splitHostPort(s string) (string, uint16, error) {
	host, port := s, "443"
	if h, p, err := net.SplitHostPort(s); err == nil {
		host, port = h, p
	} else if strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1 {
		return "", 0, fmt.Errorf("%q: must be host:port: %v", s, err)
	}
	host = strings.TrimSuffix(host, ".")
	if host == "" {
		return "", 0, fmt.Errorf("%q: the host is empty", s)
	}
	if _, ok := dns.IsDomainName(host); !ok && net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%q: %q is neither a host name nor an IP address", s, host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("%q: port %q must be 1-65535", s, port)
	}
	return host, uint16(n), nil
}
