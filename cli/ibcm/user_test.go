package main

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

// siteLogin says where the CA of a site directory is, as ibcm login wants it.
func siteLogin(t *testing.T, dir string) (caURL, rootSHA256 string) {
	t.Helper()
	cfg, err := site.Load(filepath.Join(dir, site.FileName))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cfg.Path(cfg.CA.RootCert))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ca.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.CA.URL, ca.Fingerprint(roots[0])
}

// freshHome gives the test a home and config directory of its own, as a new machine.
func freshHome(t *testing.T) (configDir string) {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	return filepath.Join(home, ".config", "ibcm")
}

func mustIBCM(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if stderr, err := ibcm(t, &out, args...); err != nil {
		t.Fatalf("ibcm %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return out.String()
}

// TestUserAddLoginAndAccess: the site's admin adds a Help Desk Operator; ibcm login makes
// their identity under a passphrase in the user config directory; commands without --dir
// then run as them (and are refused what the role does not give), --dir still wins, and
// disabling the user revokes the certificate.
func TestUserAddLoginAndAccess(t *testing.T) {
	dir := startCA(t)
	cfgDir := freshHome(t)
	caURL, pin := siteLogin(t, dir)

	var out bytes.Buffer
	stderr, err := ibcm(t, &out, "user", "add", "alice", "--role", "Help Desk Operator", "--scope", "helpdesk", "--display-name", "Alice Martin", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(out.String())
	if token == "" || strings.Contains(token, "\n") || !strings.Contains(stderr, "ibcm login --ca "+caURL+" --root-sha256 "+pin+" --token TOKEN") {
		t.Fatalf("user add printed %q, stderr %q", out.String(), stderr)
	}

	// A device's enrollment token makes no user.
	deviceToken := strings.TrimSpace(mustIBCM(t, "ca", "token", "create", "--profile", "client", "--dir", dir))
	if _, err := ibcm(t, io.Discard, "login", "--ca", caURL, "--root-sha256", pin, "--token", deviceToken); err == nil {
		t.Error("login with a device's enrollment token succeeded")
	} else if _, err := os.Stat(filepath.Join(cfgDir, userLoginFile)); err == nil {
		t.Error("a refused login left a login.json")
	}

	// A wrong pin costs no token.
	wrong := strings.Repeat("00", 32)
	if _, err := ibcm(t, io.Discard, "login", "--ca", caURL, "--root-sha256", wrong, "--token", token); err == nil || !strings.Contains(err.Error(), "pinned root") {
		t.Fatalf("login with a wrong pin: %v", err)
	}
	pass := filepath.Join(t.TempDir(), "pass")
	if err := os.WriteFile(pass, []byte("correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := mustIBCM(t, "login", "--token", token, "--passphrase-file", pass, "--ca", caURL, "--root-sha256", pin)
	if !strings.Contains(got, "logged in as alice") || !strings.Contains(got, "passphrase") {
		t.Errorf("login printed %q", got)
	}
	if fi, err := os.Stat(cfgDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("identity directory: %v %v", fi, err)
	}
	for _, f := range []string{userKeyFile, userCertFile, userRootsFile, userLoginFile} {
		if fi, err := os.Stat(filepath.Join(cfgDir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	keyPEM, _ := os.ReadFile(filepath.Join(cfgDir, userKeyFile))
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "ENCRYPTED PRIVATE KEY" {
		t.Errorf("the key is not encrypted PKCS#8:\n%.40s", keyPEM)
	}
	l, ok, err := loadUserLogin(cfgDir)
	if err != nil || !ok || l.User != "alice" || l.CAURL != caURL || l.Bootstrap == nil || l.Bootstrap.SiteCode != "CLI" {
		t.Errorf("login.json: %+v %v %v", l, ok, err)
	}

	// The token was spent; a second login is refused without --force, and with it the
	// CA refuses the used token.
	if _, err := ibcm(t, io.Discard, "login", "--ca", caURL, "--root-sha256", pin, "--token", token); err == nil || exitCode(err) != exitUsage {
		t.Errorf("a second login without --force: %v", err)
	}
	if _, err := ibcm(t, io.Discard, "login", "--ca", caURL, "--root-sha256", pin, "--token", token, "--force"); err == nil || strings.Contains(err.Error(), token) {
		t.Errorf("a second login with the used token: %v", err)
	}

	// Without --dir the commands run as alice: the key needs its passphrase.
	if _, err := ibcm(t, io.Discard, "ca", "list"); err == nil || !strings.Contains(err.Error(), "--passphrase-file") {
		t.Errorf("an encrypted key without a passphrase: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(bad, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ibcm(t, io.Discard, "ca", "list", "--passphrase-file", bad); err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Errorf("a wrong passphrase: %v", err)
	}
	if _, err := ibcm(t, io.Discard, "ca", "token", "create", "--passphrase-file", pass); err == nil || !strings.Contains(err.Error(), "forbidden") || !strings.Contains(err.Error(), "HTTP 403") {
		t.Errorf("ca token create as a Help Desk Operator: %v", err)
	}
	if _, err := ibcm(t, io.Discard, "user", "list", "--passphrase-file", pass); err == nil || !strings.Contains(err.Error(), "ManageAccess") {
		t.Errorf("user list as a Help Desk Operator: %v", err)
	}
	t.Setenv("IBCM_PASSPHRASE_FILE", pass) // the passphrase from the environment too
	if _, err := ibcm(t, io.Discard, "ca", "list"); err == nil || !strings.Contains(err.Error(), `user "alice" does not have the ManagePKI permission`) {
		t.Errorf("ca list as alice: %v", err)
	}

	// --dir wins over the login: the site's admin sees alice.
	var users []wire.User
	if err := json.Unmarshal([]byte(mustIBCM(t, "user", "list", "--json", "--dir", dir)), &users); err != nil {
		t.Fatal(err)
	}
	var alice *wire.User
	for i := range users {
		if users[i].Name == "alice" {
			alice = &users[i]
		}
	}
	if alice == nil || alice.DisplayName != "Alice Martin" || len(alice.Roles) != 1 || alice.Roles[0] != (wire.Assignment{Role: "Help Desk Operator", Scope: "helpdesk"}) {
		t.Fatalf("user list: %+v", users)
	}
	if table := mustIBCM(t, "user", "list", "--dir", dir); !strings.Contains(table, "Help Desk Operator over helpdesk") {
		t.Errorf("user list table:\n%s", table)
	}

	// Disabling revokes alice's certificate: her next call is refused.
	disabled := mustIBCM(t, "user", "disable", "alice", "--dir", dir)
	if !strings.Contains(disabled, "revoked certificate "+l.Serial) {
		t.Errorf("user disable printed %q, want certificate %s", disabled, l.Serial)
	}
	if _, err := ibcm(t, io.Discard, "ca", "list"); err == nil || !strings.Contains(err.Error(), "certificate_revoked") {
		t.Errorf("a call with a disabled user's revoked certificate: %v", err)
	}
	if show := mustIBCM(t, "user", "show", "alice", "--dir", dir); !strings.Contains(show, "disabled since") {
		t.Errorf("user show after disable:\n%s", show)
	}
	mustIBCM(t, "user", "enable", "alice", "--dir", dir)
	if tok := strings.TrimSpace(mustIBCM(t, "user", "token", "alice", "--ttl", "2h", "--dir", dir)); tok == "" || tok == token {
		t.Errorf("user token printed %q", tok)
	}
}

// TestRoleCommands: a custom role is made, shown, assigned over scopes, unassigned and
// deleted; a built-in role cannot be deleted.
func TestRoleCommands(t *testing.T) {
	dir := startCA(t)
	freshHome(t)
	if list := mustIBCM(t, "role", "list", "--dir", dir); !strings.Contains(list, "Help Desk Operator") || !strings.Contains(list, "built-in") {
		t.Errorf("role list:\n%s", list)
	}
	mustIBCM(t, "role", "create", "Remote Viewer", "--permission", "ViewScreen,ReadDevices", "--description", "looks only", "--dir", dir)
	var r wire.Role
	if err := json.Unmarshal([]byte(mustIBCM(t, "role", "show", "Remote Viewer", "--json", "--dir", dir)), &r); err != nil {
		t.Fatal(err)
	}
	if r.BuiltIn || r.Description != "looks only" || strings.Join(r.Permissions, ",") != "ViewScreen,ReadDevices" {
		t.Errorf("role show: %+v", r)
	}
	if _, err := ibcm(t, io.Discard, "role", "create", "Bad", "--permission", "Teleport", "--dir", dir); err == nil || !strings.Contains(err.Error(), "Teleport") {
		t.Errorf("role with an unknown permission: %v", err)
	}
	bobToken := strings.TrimSpace(mustIBCM(t, "user", "add", "bob", "--role", "Read-only Analyst", "--dir", dir))
	// A login without a passphrase (none given, no terminal) keeps the key unencrypted,
	// and commands run as bob without asking for one.
	caURL, pin := siteLogin(t, dir)
	mustIBCM(t, "login", "--ca", caURL, "--root-sha256", pin, "--token", bobToken)
	cfgDir, err := userDir()
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := os.ReadFile(filepath.Join(cfgDir, userKeyFile))
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("the key without a passphrase is not plain PKCS#8:\n%.40s", keyPEM)
	}
	if _, err := ibcm(t, io.Discard, "role", "list"); err == nil || !strings.Contains(err.Error(), `user "bob" does not have the ManageAccess permission`) {
		t.Errorf("role list as bob: %v", err)
	}
	if got := mustIBCM(t, "role", "assign", "bob", "Remote Viewer", "--scope", "kiosks", "--scope", "lab", "--dir", dir); !strings.Contains(got, "Remote Viewer over kiosks") || !strings.Contains(got, "Remote Viewer over lab") {
		t.Errorf("role assign:\n%s", got)
	}
	if _, err := ibcm(t, io.Discard, "role", "delete", "Remote Viewer", "--dir", dir); err == nil || !strings.Contains(err.Error(), "role_in_use") {
		t.Errorf("deleting a role in use: %v", err)
	}
	if got := mustIBCM(t, "role", "unassign", "bob", "Remote Viewer", "--dir", dir); strings.Contains(got, "Remote Viewer") {
		t.Errorf("role unassign (every scope):\n%s", got)
	}
	mustIBCM(t, "role", "delete", "Remote Viewer", "--dir", dir)
	if _, err := ibcm(t, io.Discard, "role", "delete", "Help Desk Operator", "--dir", dir); err == nil || !strings.Contains(err.Error(), "built_in_role") {
		t.Errorf("deleting a built-in role: %v", err)
	}
}

func TestUserUsageErrors(t *testing.T) {
	freshHome(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"user add without role", []string{"user", "add", "x"}, "--role is required"},
		{"login without token", []string{"login", "--ca", "https://x", "--root-sha256", "00"}, "--token is required"},
		{"login to an http CA", []string{"login", "--ca", "http://x", "--root-sha256", "00", "--token", "t"}, "--ca: must be an https URL"},
		{"login with a bad pin", []string{"login", "--ca", "https://x", "--root-sha256", "zz", "--token", "t"}, "--root-sha256"},
		{"assign without role", []string{"role", "assign", "alice"}, "needs USER ROLE"},
		{"no login, no dir", []string{"user", "list"}, "ibcm login"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ibcm(t, io.Discard, tc.args...)
			if err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v (exit %d), want exit %d saying %s", err, exitCode(err), exitUsage, tc.want)
			}
		})
	}
}

// TestLoginRefusesAnOpenDirectory before it calls the CA, so no token is spent on an
// identity that could not be kept private.
func TestLoginRefusesAnOpenDirectory(t *testing.T) {
	cfgDir := freshHome(t)
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := ibcm(t, io.Discard, "login", "--ca", "https://127.0.0.1:1", "--root-sha256", strings.Repeat("ab", 32), "--token", "t")
	if err == nil || !strings.Contains(err.Error(), "open to others") {
		t.Errorf("login into a 0755 directory: %v", err)
	}
}
