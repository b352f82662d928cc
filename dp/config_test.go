package dp

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The example under etc/ loads (site/config_test.go loads the site files).
func TestExampleConfigLoads(t *testing.T) {
	cfg, err := Load("../etc/dp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DP.ID == "" || !filepath.IsAbs(cfg.DP.Library) || len(cfg.DP.Pull.Sources) == 0 {
		t.Errorf("example not loaded whole: %+v", cfg.DP)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	base := "version: 1\ndp:\n  id: dp2\n  tls_cert: a.crt\n  tls_key: a.key\n  roots: r.crt\n  site_code: ABC\n  mp_url: https://mp.corp.test:9443\n"
	cases := []struct{ name, yaml, want string }{
		{"fine", base, ""},
		{"version", strings.Replace(base, "version: 1", "version: 2", 1), "dp.yaml: version: must be 1"},
		{"unknown key", base + "  modee: both\n", "dp.yaml:9: dp.modee: unknown key (did you mean mode?)"},
		{"database settings do not exist", base + "store: {driver: sqlite}\n", "dp.yaml:9: store: unknown key"},
		{"mode", base + "  mode: everywhere\n", "dp.mode: must be intranet, internet or both"},
		{"id", strings.Replace(base, "id: dp2", "id: DP 2", 1), "dp.id: 1-32 lower-case"},
		{"no id", strings.Replace(base, "  id: dp2\n", "", 1), "dp.id"},
		{"listen", base + "  intranet_listen: nowhere\n", "dp.intranet_listen: must be host:port"},
		{"url", base + "  intranet_url: http://dp2\n", "dp.intranet_url: must be an absolute https:// URL"},
		{"internet listen only checked in its mode", base + "  internet_listen: nowhere\n", ""},
		{"internet url", base + "  mode: both\n  internet_url: ftp://x\n", "dp.internet_url"},
		{"mp url", strings.Replace(base, "https://mp.corp.test:9443", "mp.corp.test", 1), "dp.mp_url"},
		{"site code", strings.Replace(base, "ABC", "abc", 1), "dp.site_code"},
		{"no roots", strings.Replace(base, "  roots: r.crt\n", "", 1), "dp.roots: is required"},
		{"source with both", base + "  pull:\n    sources: [{id: dp1, url: 'https://x:1'}]\n", "dp.pull.sources[0]: give id"},
		{"source url", base + "  pull:\n    sources: [{url: 'x'}]\n", "dp.pull.sources[0].url"},
		{"bandwidth", base + "  pull: {bytes_per_second: -1}\n", "dp.pull.bytes_per_second"},
		{"validate interval", base + "  validate_interval: 1s\n", "dp.validate_interval: must be at least 1m"},
		{"validate interval syntax", base + "  validate_interval: daily\n", `dp.yaml:9: dp.validate_interval: "daily" is not a duration`},
		{"priority", base + "  priority: -1\n", "dp.priority"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("dp.yaml", []byte(c.yaml), "/etc/ibcm")
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("error %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	base := "version: 1\ndp:\n  id: dp2\n  tls_cert: a.crt\n  tls_key: a.key\n  roots: r.crt\n  site_code: ABC\n  mp_url: https://mp.corp.test:9443\n"
	cfg, err := Parse("dp.yaml", []byte(base), "/etc/ibcm")
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.DP
	if s.Mode != "intranet" || s.IntranetListen != DefaultIntranetListen || s.IntranetURL != "https://"+DefaultIntranetListen ||
		s.Library != "/etc/ibcm/content" || s.TLSCert != "/etc/ibcm/a.crt" || s.ValidateInterval != Duration(24*60*60*1e9) {
		t.Fatalf("defaults: %+v", s)
	}
	if s.Intranet() != true || s.Internet() != false {
		t.Fatal("intranet mode")
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("missing file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}
