package dnspub

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func validConfig() Config {
	return Config{
		Server:  "192.0.2.53:53",
		Zone:    "corp.example.",
		KeyName: "mp-key.",
		Secret:  base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef")),
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   string // prefix of the error; "" for valid
	}{
		{"valid with defaults", func(*Config) {}, ""},
		{"valid fully set", func(c *Config) {
			c.Server, c.Zone, c.KeyName, c.Algorithm = "dns1.corp.example:5353", "corp.example", "mp-key", "HMAC-SHA512."
			c.TTL, c.Timeout = 2*time.Second, time.Second
		}, ""},
		{"IPv6 server", func(c *Config) { c.Server = "[2001:db8::53]:53" }, ""},
		{"no server", func(c *Config) { c.Server = "" }, "dns.server: is empty"},
		{"server without port", func(c *Config) { c.Server = "192.0.2.53" }, "dns.server: must be host:port"},
		{"server without host", func(c *Config) { c.Server = ":53" }, "dns.server: must be host:port"},
		{"server port not a number", func(c *Config) { c.Server = "dns1:domain" }, "dns.server: port"},
		{"server port 0", func(c *Config) { c.Server = "dns1:0" }, "dns.server: port"},
		{"no zone", func(c *Config) { c.Zone = "" }, "dns.zone: is empty"},
		{"root zone", func(c *Config) { c.Zone = "." }, "dns.zone: must not be the root zone"},
		{"bad zone", func(c *Config) { c.Zone = "corp..example" }, "dns.zone: "},
		{"no key name", func(c *Config) { c.KeyName = "" }, "dns.key_name: is empty"},
		{"bad key name", func(c *Config) { c.KeyName = "mp key..x" }, "dns.key_name: "},
		{"unknown algorithm", func(c *Config) { c.Algorithm = "hmac-md5" }, "dns.algorithm: unknown TSIG algorithm"},
		{"no secret", func(c *Config) { c.Secret = "" }, "dns.secret_file: the TSIG secret is empty"},
		{"secret not base64", func(c *Config) { c.Secret = "not base64!" }, "dns.secret_file: the TSIG secret is not base64"},
		{"secret too short", func(c *Config) { c.Secret = base64.StdEncoding.EncodeToString([]byte("short")) }, "dns.secret_file: the TSIG secret is 5 bytes"},
		{"secret with newline from a file", func(c *Config) { c.Secret += "\n" }, ""},
		{"negative ttl", func(c *Config) { c.TTL = -time.Second }, "dns.ttl: must not be negative"},
		{"ttl too short", func(c *Config) { c.TTL = time.Second }, "dns.ttl: must be whole seconds"},
		{"ttl fractional", func(c *Config) { c.TTL = 2500 * time.Millisecond }, "dns.ttl: must be whole seconds"},
		{"ttl too long", func(c *Config) { c.TTL = 48 * time.Hour }, "dns.ttl: must be at most"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "dns.timeout: must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.modify(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && err == nil:
				t.Errorf("Validate() = nil, want %q", tt.want)
			case tt.want != "" && !strings.HasPrefix(err.Error(), tt.want):
				t.Errorf("Validate() = %q, want prefix %q", err, tt.want)
			}
			if err != nil && c.Secret != "" && strings.Contains(err.Error(), strings.TrimSpace(c.Secret)) {
				t.Errorf("Validate() error %q contains the secret", err)
			}
		})
	}
}

func TestWithDefaults(t *testing.T) {
	c := validConfig()
	c.Zone, c.KeyName, c.Secret = "Corp.Example", "MP-Key", c.Secret+"\n"
	got := c.withDefaults()
	want := Config{
		Server: c.Server, Zone: "corp.example.", KeyName: "mp-key.", Algorithm: "hmac-sha256",
		Secret: validConfig().Secret, TTL: 5 * time.Minute, Timeout: 3 * time.Second,
	}
	if got != want {
		t.Errorf("withDefaults() = %+v, want %+v", got, want)
	}
}

func TestAlgorithm(t *testing.T) {
	tests := map[string]string{
		"":             dns.HmacSHA256,
		"hmac-sha256":  dns.HmacSHA256,
		"hmac-sha256.": dns.HmacSHA256,
		"HMAC-SHA1":    dns.HmacSHA1,
		"hmac-sha224":  dns.HmacSHA224,
		"hmac-sha384":  dns.HmacSHA384,
		"hmac-sha512":  dns.HmacSHA512,
	}
	for in, want := range tests {
		if got, err := algorithm(in); err != nil || got != want {
			t.Errorf("algorithm(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestRecords(t *testing.T) {
	tests := []struct {
		name     string
		zone     string
		target   string
		port     uint16
		siteCode string
		cmName   bool
		want     []Record
	}{
		{
			name: "MP name only", zone: "corp.example.", target: "mp1.corp.example.", port: 8443, siteCode: "P01",
			want: []Record{{Name: "_ibcm-mp._tcp.corp.example.", Target: "mp1.corp.example.", Port: 8443}},
		},
		{
			name: "with the Configuration Manager name, site code lowercased", zone: "corp.example.", target: "mp1.corp.example.",
			port: 443, siteCode: "P01", cmName: true,
			want: []Record{
				{Name: "_ibcm-mp._tcp.corp.example.", Target: "mp1.corp.example.", Port: 443},
				{Name: "_mssms_mp_p01._tcp.corp.example.", Target: "mp1.corp.example.", Port: 443},
			},
		},
		{
			name: "names made fully qualified and lowercase", zone: "Corp.Example", target: "MP1.corp.example", port: 443,
			siteCode: "ABC", cmName: true,
			want: []Record{
				{Name: "_ibcm-mp._tcp.corp.example.", Target: "mp1.corp.example.", Port: 443},
				{Name: "_mssms_mp_abc._tcp.corp.example.", Target: "mp1.corp.example.", Port: 443},
			},
		},
		{
			name: "Configuration Manager name left out without a site code", zone: "corp.example.", target: "mp1.corp.example.",
			port: 443, cmName: true,
			want: []Record{{Name: "_ibcm-mp._tcp.corp.example.", Target: "mp1.corp.example.", Port: 443}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Records(tt.zone, tt.target, tt.port, tt.siteCode, tt.cmName)
			if !slices.Equal(got, tt.want) {
				t.Errorf("Records() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestRecordString(t *testing.T) {
	r := Record{Name: "_ibcm-mp._tcp.corp.example.", Target: "mp1.corp.example.", Port: 8443, Priority: 1, Weight: 5}
	if got, want := r.String(), "_ibcm-mp._tcp.corp.example. SRV 1 5 8443 mp1.corp.example."; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
