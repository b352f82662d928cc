package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/clitest"
)

// TestCommandTree checks the rules every command tree follows (see internal/clitest).
func TestCommandTree(t *testing.T) {
	app := newApp()
	clitest.CheckTree(t, app, "IBCM_CLIENT_")
	for _, want := range []string{"enroll", "renew", "status"} {
		found := false
		for _, c := range app.Commands {
			found = found || c.Name == want
		}
		if !found {
			t.Errorf("no %s command", want)
		}
	}
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

// run runs the app as the binary would and returns stdout and stderr.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	err := cliapp.Run(context.Background(), app, append([]string{"ibcm-client"}, args...))
	return out.String() + errOut.String(), err
}

func TestBadLogLevelIsRefused(t *testing.T) {
	_, err := run(t, "status", "--dir", t.TempDir(), "--log-level", "chatty")
	if err == nil || cliapp.ExitCode(err) != cliapp.ExitUsage || !strings.Contains(err.Error(), `--log-level: must be debug, info, warn or error (got "chatty")`) {
		t.Errorf("--log-level chatty: %v", err)
	}
}

func TestHelpHidesToken(t *testing.T) {
	t.Setenv("IBCM_CLIENT_TOKEN", "s3cret-token-value")
	out, err := run(t, "enroll", "--help")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "s3cret-token-value") {
		t.Error("enroll --help prints the token from the environment")
	}
}

func TestStatusNotEnrolled(t *testing.T) {
	_, err := run(t, "status", "--dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "not enrolled") {
		t.Errorf("status in an empty directory = %v, want a not enrolled error", err)
	}
}

// TestEnrollRenewStatus drives the commands against a real CA.
func TestEnrollRenewStatus(t *testing.T) {
	url, pin, token := startCA(t)
	dir := filepath.Join(t.TempDir(), "state")
	t.Setenv("IBCM_CLIENT_TOKEN", token)
	out, err := run(t, "enroll", "--dir", dir, "--ca", url, "--root-sha256", pin, "--name", "pc-01", "--fqdn", "pc-01.corp.example")
	if err != nil {
		t.Fatalf("enroll: %v\n%s", err, out)
	}
	if strings.Contains(out, token) {
		t.Error("enroll printed the token")
	}
	status := func() statusReport {
		t.Helper()
		out, err := run(t, "status", "--dir", dir, "--json")
		if err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		var r statusReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		return r
	}
	before := status()
	if before.DeviceID == "" || before.Name != "pc-01" || before.RenewDue || before.Expired || before.Serial == "" {
		t.Errorf("status after enroll = %+v", before)
	}

	// Reusing the token fails with the CA's code, and nothing is written.
	other := filepath.Join(t.TempDir(), "other")
	if _, err := run(t, "enroll", "--dir", other, "--ca", url, "--root-sha256", pin, "--name", "pc-02"); err == nil || !strings.Contains(err.Error(), "token_used") {
		t.Errorf("enroll with a used token = %v, want token_used", err)
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Errorf("a failed enroll created %s", other)
	}

	if out, err := run(t, "renew", "--dir", dir, "--if-due"); err != nil || !strings.Contains(out, "not due") {
		t.Errorf("renew --if-due on a new certificate = %v\n%s", err, out)
	}
	if out, err := run(t, "renew", "--dir", dir); err != nil {
		t.Fatalf("renew: %v\n%s", err, out)
	}
	after := status()
	if after.DeviceID != before.DeviceID || after.Serial == before.Serial {
		t.Errorf("status after renew = %+v, before %+v", after, before)
	}

	out, err = run(t, "status", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{after.DeviceID, after.Serial, "CN=pc-01", "renew due:"} {
		if !strings.Contains(out, want) {
			t.Errorf("status does not print %q:\n%s", want, out)
		}
	}
}

// startCA serves a real CA's HTTPS API on 127.0.0.1 and returns its URL, its root's
// SHA-256 and a client enrollment token.
func startCA(t *testing.T) (url, pin, token string) {
	t.Helper()
	s := catest.Start(t)
	return s.URL, s.Pin, s.Token(t, ca.TokenSpec{})
}
