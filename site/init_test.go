package site

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func initOptions(dir string) InitOptions {
	return InitOptions{Dir: dir, SiteCode: "TST", IntranetName: "ibcm.corp.test", InternetName: "ibcm.example.test",
		CAAddr: "127.0.0.1:1", CAPublicAddr: "127.0.0.1:2"}
}

func TestInitMakesASiteAndRefusesToOverwriteIt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "site")
	var out strings.Builder
	cfg, err := Init(context.Background(), initOptions(dir), &out)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if !strings.Contains(out.String(), "Next: ibcm site up --dir "+dir) {
		t.Errorf("init output does not name the next command:\n%s", out.String())
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{FileName, 0o600}, {"site.db", 0o600}, {"ca/issuing.key", 0o600}, {"ca/root.key", 0o600},
		{"ca/password", 0o600}, {"tls/ca.key", 0o600}, {"tls/audit.key", 0o600}, {AdminKey, 0o600}, {"ca/root.crt", 0o644}, {AdminCert, 0o644},
	} {
		st, err := os.Stat(filepath.Join(dir, f.path))
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		if st.Mode().Perm() != f.mode {
			t.Errorf("%s mode %v, want %v", f.path, st.Mode().Perm(), f.mode)
		}
	}
	key, _ := os.ReadFile(filepath.Join(dir, "ca/issuing.key"))
	if !strings.Contains(string(key), "ENCRYPTED PRIVATE KEY") {
		t.Errorf("issuing key is not encrypted at rest:\n%s", key)
	}
	loaded, err := Load(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatalf("loading the written config: %v", err)
	}
	if _, err := LoadHierarchy(loaded); err != nil {
		t.Fatalf("LoadHierarchy: %v", err)
	}
	if cfg.Site.Code != "TST" {
		t.Errorf("site code = %q", cfg.Site.Code)
	}
	before, _ := os.ReadFile(filepath.Join(dir, FileName))
	_, err = Init(context.Background(), initOptions(dir), io.Discard)
	if !errors.Is(err, ErrSiteExists) {
		t.Fatalf("second init: err = %v, want ErrSiteExists", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, FileName))
	if string(before) != string(after) {
		t.Error("second init changed site.yaml")
	}
}

func TestInitRefusesBadInputAndLeavesNothing(t *testing.T) {
	cases := []struct {
		name   string
		modify func(*InitOptions)
		want   string
	}{
		{"site code lower case", func(o *InitOptions) { o.SiteCode = "abc" }, "site.code"},
		{"site code too long", func(o *InitOptions) { o.SiteCode = "ABCD" }, "site.code"},
		{"intranet name", func(o *InitOptions) { o.IntranetName = "not a name" }, "site.intranet_name"},
		{"ca addr", func(o *InitOptions) { o.CAAddr = "8443" }, "ca.listen"},
		{"key type", func(o *InitOptions) { o.KeyType = "ed25519" }, "key type"},
		{"store", func(o *InitOptions) { o.Store = "mysql" }, "store.driver"},
		{"short password", func(o *InitOptions) { o.PasswordFile = writeTemp(t, "short") }, "at least 8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			o := initOptions(filepath.Join(parent, "site"))
			tc.modify(&o)
			_, err := Init(context.Background(), o, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			entries, _ := os.ReadDir(parent)
			for _, e := range entries {
				if !strings.HasPrefix(e.Name(), "short") {
					t.Errorf("failed init left %s behind", e.Name())
				}
			}
		})
	}
}

func TestInitOfflineRootAndPasswordFile(t *testing.T) {
	parent := t.TempDir()
	o := initOptions(filepath.Join(parent, "site"))
	o.OfflineRoot = filepath.Join(parent, "usb")
	o.PasswordFile = writeTemp(t, "correct horse battery staple\n")
	o.KeyType = "p384"
	if _, err := Init(context.Background(), o, io.Discard); err != nil {
		t.Fatalf("Init: %v", err)
	}
	if _, err := os.Stat(filepath.Join(o.Dir, "ca/root.key")); !os.IsNotExist(err) {
		t.Errorf("root key still in the site directory (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(o.OfflineRoot, "root.key")); err != nil {
		t.Errorf("offline root key missing: %v", err)
	}
	if _, err := os.Stat(filepath.Join(o.Dir, "ca/password")); !os.IsNotExist(err) {
		t.Errorf("a password file was made although one was given")
	}
	cfg, err := Load(filepath.Join(o.Dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadHierarchy(cfg); err != nil {
		t.Fatalf("the issuing key does not open with the given password: %v", err)
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "short-password")
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
