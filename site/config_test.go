package site

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every file under etc/ is an example users copy: each must load.
func TestExampleConfigsLoad(t *testing.T) {
	files, err := filepath.Glob("../etc/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example configs found under etc/ (%v)", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(f)
			if err != nil {
				t.Fatalf("%v", err)
			}
			if cfg.Site.Code == "" || cfg.CA.URL == "" || cfg.CA.PublicURL == "" {
				t.Errorf("defaults not applied: %+v", cfg.CA)
			}
		})
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	base := "version: 1\nsite: {code: ABC, intranet_name: a.corp, internet_name: a.example}\n"
	cases := []struct{ name, yaml, want string }{
		{"unknown key", base + "ca: {listn: 1.2.3.4:5}\n", "field listn not found"},
		{"version", strings.Replace(base, "version: 1", "version: 2", 1), "version: must be 1"},
		{"site code", strings.Replace(base, "ABC", "abcd", 1), "site.code"},
		{"listen", base + "ca: {listen: nowhere}\n", "ca.listen: must be host:port"},
		{"public url", base + "ca: {public_url: 'ftp://x'}\n", "ca.public_url"},
		{"driver", base + "store: {driver: mysql}\n", "store.driver"},
		{"postgres dsn", base + "store: {driver: postgres}\n", "store.dsn"},
		{"duration", base + "ca: {validity: {client: soon}}\n", "not a duration"},
		{"short validity", base + "ca: {validity: {client: 1m}}\n", "ca.validity.client"},
		{"intranet name", strings.Replace(base, "a.corp", "-bad-", 1), "site.intranet_name"},
		{"park switch", base + "mp: {park_idle_channels: maybe}\n", "line 3: cannot unmarshal !!str `maybe` into bool"},
		{"channels per device", base + "mp: {max_channels_per_device: -1}\n", "mp.max_channels_per_device"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	cfg, err := Parse([]byte(base))
	if err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	if cfg.MP.MaxChannelsPerDevice != 3 {
		t.Errorf("mp.max_channels_per_device defaults to %d, want 3", cfg.MP.MaxChannelsPerDevice)
	}
}

func TestLoadResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	if err := os.WriteFile(path, []byte("version: 1\nsite: {code: ABC, intranet_name: a.corp, internet_name: a.example}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.StoreDSN(); got != filepath.Join(dir, "site.db") {
		t.Errorf("StoreDSN = %q", got)
	}
	if got := cfg.Path(cfg.CA.RootCert); got != filepath.Join(dir, "ca/root.crt") {
		t.Errorf("root path = %q", got)
	}
}
