package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/clitest"
	"github.com/ibcm-project/ibcm/site"
)

func TestCommandTree(t *testing.T) {
	clitest.CheckTree(t, newApp(), "IBCM_", site.PasswordEnv)
}

// TestFlagsAfterArguments runs every command with its flags after its arguments, and with
// one argument too many (see clitest.CheckArgs).
func TestFlagsAfterArguments(t *testing.T) {
	clitest.CheckArgs(t, newApp, nil)
}

// TestHelpEndsWithExamples: every command's --help ends with its EXAMPLES.
func TestHelpEndsWithExamples(t *testing.T) {
	clitest.CheckHelp(t, newApp)
}

func TestUsageErrorsExitWithTheUsageCode(t *testing.T) {
	initArgs := []string{"site", "init", "--dir", t.TempDir() + "/s", "--site-code", "ABC", "--intranet-name", "a.b", "--internet-name", "c.d"}
	cases := []struct {
		name string
		args []string
		want string // in the error
	}{
		{"bad site code", []string{"site", "init", "--dir", t.TempDir() + "/s", "--site-code", "toolong", "--intranet-name", "a.b", "--internet-name", "c.d"}, "--site-code"},
		{"site init names the flag, not the key", append(initArgs, "--ca-addr", "nowhere"), `--ca-addr: must be host:port (got "nowhere")`},
		{"a stray word among the flags", append(initArgs, "[--store", "x]", "--key-type", "p384"), `unexpected arguments "[--store" "x]": ibcm site init takes no arguments`},
		{"bad key type", append(initArgs, "--key-type", "p512"), `--key-type: must be p256, p384, rsa2048 or rsa3072 (got "p512")`},
		{"revoke without serial", []string{"ca", "revoke", "--ca", "https://x", "--cert", "c", "--key", "k", "--ca-root", "r"}, "needs SERIAL"},
		{"revoke with two serials", []string{"ca", "revoke", "1F", "2F", "--reason", "keyCompromise"}, `unexpected argument "2F"`},
		{"admin command without identity", []string{"ca", "list"}, "--dir DIR"},
		{"config validate without files", []string{"config", "validate"}, "needs FILE..."},
		{"bad log level", []string{"ca", "list", "--log-level", "chatty"}, `--log-level: must be debug, info, warn or error (got "chatty")`},
		{"bad log format", []string{"--log-format", "xml", "ca", "list"}, `--log-format: must be auto, json or console`},
		{"no uses", []string{"ca", "token", "create", "--uses", "0"}, `--uses: must be at least 1 (got "0")`},
		{"ttl without unit", []string{"ca", "token", "create", "--ttl", "2"}, `--ttl: must be a duration such as 2h or 30m (got "2")`},
		{"unknown command", []string{"policy", "list"}, `unknown command "list" for "ibcm policy"`},
		{"serve with both dir and config", []string{"ca", "serve", "--dir", "d", "--config", "c"}, "--dir or --config, not both"},
		{"serve without a site", []string{"mp", "serve"}, "--dir DIR"},
		{"a key to stdout unasked", []string{"ca", "issue", "--profile", "client", "--out", "-"}, "--key-out"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			app := newApp()
			var out bytes.Buffer
			app.Writer, app.ErrWriter = &out, &out
			err := cliapp.Run(context.Background(), app, append([]string{"ibcm"}, tc.args...))
			if err == nil || exitCode(err) != exitUsage {
				t.Fatalf("err = %v (exit %d), want exit %d", err, exitCode(err), exitUsage)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to say %s", err, tc.want)
			}
			if out.Len() > 0 {
				t.Errorf("printed besides the error:\n%s", out.String())
			}
		})
	}
}

// config validate tells a standalone DP's dp.yaml from a site.yaml: the examples in etc/
// are all valid, and a mistake in a dp.yaml is named with its key.
func TestConfigValidateSiteAndDPFiles(t *testing.T) {
	out, _, err := runIBCM(t, "", "config", "validate", "../../etc/site.yaml", "../../etc/dp.yaml")
	if err != nil || !strings.Contains(out, "etc/dp.yaml: valid") || !strings.Contains(out, "etc/site.yaml: valid") {
		t.Fatalf("validate etc/: %q %v", out, err)
	}
	bad := t.TempDir() + "/dp.yaml"
	if err := os.WriteFile(bad, []byte("version: 1\ndp:\n  id: dp2\n  mood: both\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runIBCM(t, "", "config", "validate", bad); err == nil || !strings.Contains(err.Error(), "dp.mood: unknown key (did you mean mode?)") {
		t.Fatalf("a bad dp.yaml: %v", err)
	}
}
