package main

import (
	"bytes"
	"context"
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

func TestUsageErrorsExitWithTheUsageCode(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want int
	}{
		{"bad site code", []string{"site", "init", "--dir", t.TempDir() + "/s", "--site-code", "toolong", "--intranet-name", "a.b", "--internet-name", "c.d"}, exitUsage},
		{"revoke without serial", []string{"ca", "revoke", "--ca", "https://x", "--cert", "c", "--key", "k", "--ca-root", "r"}, exitUsage},
		{"admin command without identity", []string{"ca", "list"}, exitUsage},
		{"config validate without files", []string{"config", "validate"}, exitUsage},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			app := newApp()
			var out bytes.Buffer
			app.Writer, app.ErrWriter = &out, &out
			err := cliapp.Run(context.Background(), app, append([]string{"ibcm"}, tc.args...))
			if err == nil || exitCode(err) != tc.want {
				t.Fatalf("err = %v (exit %d), want exit %d", err, exitCode(err), tc.want)
			}
			if strings.TrimSpace(err.Error()) == "" {
				t.Error("empty error message")
			}
		})
	}
}
