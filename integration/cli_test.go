package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCommandLine uses the real binaries the way a new admin does: flags after the
// arguments, bad input, --version, completion and the man pages.
func TestCommandLine(t *testing.T) {
	needTool(t, "openssl")
	s := startSite(t, "sqlite")
	work := t.TempDir()

	for _, b := range []string{bin.ibcm, bin.client} {
		if out := must(t, b, "--version"); !regexp.MustCompile(`^\S+ version \S+ \(.*go1\.\d+.*\)\n$`).MatchString(out) {
			t.Errorf("%s --version: %q", filepath.Base(b), out)
		}
		for _, shell := range []string{"bash", "zsh", "fish"} {
			if out := must(t, b, "completion", shell); !strings.Contains(out, filepath.Base(b)) {
				t.Errorf("%s completion %s: %q", filepath.Base(b), shell, out)
			}
		}
	}

	// flags after the arguments
	leaf := filepath.Join(work, "pc-1")
	s.ibcm(t, "ca", "issue", "--profile", "client", "--subject", "pc-1", "--out", leaf, "--log-level", "warn")
	serial := strings.TrimPrefix(strings.TrimSpace(must(t, "openssl", "x509", "-in", leaf+".crt", "-noout", "-serial")), "serial=")
	if out := s.ibcm(t, "ca", "revoke", serial, "--reason", "keyCompromise"); !strings.Contains(out, "keyCompromise") {
		t.Errorf("ca revoke SERIAL --reason keyCompromise: %s", out)
	}
	if show := s.ibcm(t, "ca", "show", serial, "--json"); !strings.Contains(show, `"reason": "keyCompromise"`) {
		t.Errorf("ca show SERIAL --json:\n%s", show)
	}

	// bad input: the error and one usage line, exit 2, and nothing issued
	before := strings.Count(s.ibcm(t, "ca", "list"), "\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ca", "issue", "--profile", "client", "--subject", "pc-2", "--out", filepath.Join(work, "missing", "pc-2")}, "--out: cannot create"},
		{[]string{"ca", "token", "create", "--ttl", "2"}, `--ttl: must be a duration such as 2h or 30m (got "2")`},
		{[]string{"ca", "token", "create", "--uses", "0"}, "--uses: must be at least 1"},
		{[]string{"ca", "list", "--log-level", "chatty"}, "--log-level: must be debug, info, warn or error"},
		{[]string{"policy", "list"}, `unknown command "list" for "ibcm policy"`},
		{[]string{"ca", "revoke", serial, "extra", "--reason", "keyCompromise"}, `unexpected argument "extra"`},
		{[]string{"device", "list", "--mp", "https://127.0.0.1:1"}, "calling the management point"},
	} {
		r := s.try(t, tc.args...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code == 0 || !strings.Contains(lines[0], tc.want) {
			t.Errorf("ibcm %s: exit %d\n%s\nwant %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
			continue
		}
		usage := strings.HasPrefix(lines[len(lines)-1], "usage: ")
		if tc.want != "calling the management point" && (r.code != 2 || len(lines) != 2 || !usage) {
			t.Errorf("ibcm %s: exit %d, want 2 with the error and one usage line:\n%s", strings.Join(tc.args, " "), r.code, r.stderr)
		}
	}
	if after := strings.Count(s.ibcm(t, "ca", "list"), "\n"); after != before {
		t.Errorf("refused commands issued %d certificates", after-before)
	}
	if _, err := os.Stat(filepath.Join(work, "missing")); !os.IsNotExist(err) {
		t.Errorf("ca issue made the missing directory: %v", err)
	}

	// man pages from the command tree
	man := filepath.Join(work, "man")
	must(t, bin.ibcm, "man", man)
	must(t, bin.client, "man", man)
	for _, page := range []string{"ibcm.1", "ibcm-ca-revoke.1", "ibcm-site-init.1", "ibcm-client.1", "ibcm-client-enroll.1"} {
		if b, err := os.ReadFile(filepath.Join(man, page)); err != nil || !strings.Contains(string(b), ".SH EXAMPLES") {
			t.Errorf("%s: %v", page, err)
		}
	}
}
