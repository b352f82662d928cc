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
		if filepath.Base(f) == "dp.yaml" {
			continue // a standalone DP's file: dp.TestExampleConfigLoads loads it
		}
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
		{"unknown key", base + "ca: {listn: 1.2.3.4:5}\n", "site.yaml:3: ca.listn: unknown key (did you mean listen?)"},
		{"unknown site key", "version: 1\nsite:\n  code: ABC\n  intranet_nmae: a.corp\n", "site.yaml:4: site.intranet_nmae: unknown key (did you mean intranet_name?)"},
		{"empty file", "", "site.yaml: the file is empty"},
		{"not a number", base + "mp:\n  max_channels_per_device: three\n", `site.yaml:4: mp.max_channels_per_device: must be a number (got "three")`},
		{"validate names the file", strings.Replace(base, "version: 1", "version: 2", 1), "site.yaml: version: must be 1"},
		{"version", strings.Replace(base, "version: 1", "version: 2", 1), "version: must be 1"},
		{"site code", strings.Replace(base, "ABC", "abcd", 1), "site.code"},
		{"listen", base + "ca: {listen: nowhere}\n", "ca.listen: must be host:port"},
		{"public url", base + "ca: {public_url: 'ftp://x'}\n", "ca.public_url"},
		{"driver", base + "store: {driver: mysql}\n", "store.driver"},
		{"postgres dsn", base + "store: {driver: postgres}\n", "store.dsn"},
		{"duration", base + "ca: {validity: {client: soon}}\n", `site.yaml:3: ca.validity.client: "soon" is not a duration`},
		{"short validity", base + "ca: {validity: {client: 1m}}\n", "ca.validity.client"},
		{"intranet name", strings.Replace(base, "a.corp", "-bad-", 1), "site.intranet_name"},
		{"park switch", base + "mp: {park_idle_channels: maybe}\n", `site.yaml:3: mp.park_idle_channels: must be true or false (got "maybe")`},
		{"channels per device", base + "mp: {max_channels_per_device: -1}\n", "mp.max_channels_per_device"},
		{"dp mode", base + "dp: {mode: everywhere}\n", "site.yaml: dp.mode: must be intranet, internet or both"},
		{"dp unknown key", base + "dp: {orign: true}\n", "site.yaml:3: dp.orign: unknown key (did you mean origin?)"},
		{"console listen", base + "mp: {console_listen: nowhere}\n", "mp.console_listen: must be host:port"},
		{"console url", base + "mp: {console_listen: '127.0.0.1:9445', console_url: 'http://a.corp:9445'}\n", "mp.console_url: must be https://host[:port]"},
		{"console url path", base + "mp: {console_listen: '127.0.0.1:9445', console_url: 'https://a.corp/console'}\n", "mp.console_url"},
		{"console url alone", base + "mp: {console_url: 'https://a.corp:9445'}\n", "mp.console_url: is set but mp.console_listen is empty"},
		{"dp pull source", base + "dp: {pull: {sources: [{priority: 1}]}}\n", "dp.pull.sources[0]: give id"},
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
	if cfg.DP != nil {
		t.Errorf("a site.yaml without a dp section has a DP: %+v", cfg.DP)
	}
	if cfg.MP.ConsoleListen != "" || cfg.MP.ConsoleURL != "" {
		t.Errorf("a site.yaml without console_listen has a console: %q %q", cfg.MP.ConsoleListen, cfg.MP.ConsoleURL)
	}
	// console_url defaults from console_listen (its host when specific, else the intranet name).
	for listen, want := range map[string]string{"0.0.0.0:9445": "https://a.corp:9445", "127.0.0.1:9445": "https://127.0.0.1:9445"} {
		cfg, err := Parse([]byte(base + "mp: {console_listen: '" + listen + "'}\n"))
		if err != nil || cfg.MP.ConsoleURL != want {
			t.Errorf("console_listen %s: console_url %q, %v", listen, cfg.MP.ConsoleURL, err)
		}
	}
	// An empty dp section is a DP with the site's defaults.
	cfg, err = Parse([]byte(base + "mp: {mode: internet}\ndp: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.DP; d.ID != "dp1" || d.SiteCode != "ABC" || d.Roots != cfg.CA.RootCert || d.MPURL != cfg.MP.InternetURL || d.Library != "content" || d.TLSCert != "tls/dp.crt" {
		t.Errorf("dp defaults from the site: %+v", d)
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

// Bad files under testdata/: each error names the file, the line and the key path.
func TestBadFiles(t *testing.T) {
	cases := []struct{ file, want string }{
		{"empty.yaml", "testdata/empty.yaml: the file is empty"},
		{"comments.yaml", "testdata/comments.yaml: the file is empty"},
		{"typo.yaml", "testdata/typo.yaml:4: site.intranet_nmae: unknown key (did you mean intranet_name?)"},
		{"wrong-type.yaml", "testdata/wrong-type.yaml:7: mp.max_channels_per_device: must be a number (got \"lots\")\n" +
			"testdata/wrong-type.yaml:8: mp.park_idle_channels: must be true or false (got \"1\")"},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			_, err := Load(filepath.Join("testdata", tc.file))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("Load: %v\nwant: %s", err, tc.want)
			}
		})
	}
}
