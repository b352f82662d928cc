// Package clitest owns the check every command tree of ibcm must pass (STYLE.md habit 3):
// command names unique, Usage set, every flag named once, described and settable from an
// environment variable with the binary's prefix, and every command that runs something
// ending its help with EXAMPLES.
package clitest

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// CheckTree walks app's commands and reports every rule broken.
func CheckTree(t *testing.T, app *cli.App, envPrefix string) {
	t.Helper()
	checkFlags(t, app.Name, app.Flags, envPrefix)
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		names := map[string]bool{}
		for _, cmd := range cmds {
			full := strings.TrimSpace(path + " " + cmd.Name)
			for _, n := range cmd.Names() {
				if names[n] {
					t.Errorf("%s: command name %q used twice", path, n)
				}
				names[n] = true
			}
			if cmd.Usage == "" {
				t.Errorf("%s: Usage is empty", full)
			}
			if cmd.Action == nil && len(cmd.Subcommands) == 0 {
				t.Errorf("%s: neither an Action nor subcommands", full)
			}
			if cmd.Action != nil {
				if i := strings.LastIndex(cmd.Description, "EXAMPLES"); i < 0 {
					t.Errorf("%s: Description has no EXAMPLES section", full)
				} else if strings.Contains(cmd.Description[i:], "\n\n\n") {
					t.Errorf("%s: the EXAMPLES section is not the last one", full)
				}
			}
			checkFlags(t, full, cmd.Flags, envPrefix)
			walk(full, cmd.Subcommands)
		}
	}
	walk(app.Name, app.Commands)
}

func checkFlags(t *testing.T, where string, fs []cli.Flag, envPrefix string) {
	t.Helper()
	flags, envs := map[string]bool{}, map[string]bool{}
	for _, f := range fs {
		name := f.Names()[0]
		for _, n := range f.Names() {
			if flags[n] {
				t.Errorf("%s: flag %q defined twice", where, n)
			}
			flags[n] = true
		}
		df, ok := f.(cli.DocGenerationFlag)
		if !ok {
			t.Errorf("%s --%s: flag type %T has no Usage or EnvVars to check", where, name, f)
			continue
		}
		if df.GetUsage() == "" {
			t.Errorf("%s --%s: Usage is empty", where, name)
		}
		if len(df.GetEnvVars()) == 0 {
			t.Errorf("%s --%s: no EnvVars", where, name)
		}
		for _, e := range df.GetEnvVars() {
			if !strings.HasPrefix(e, envPrefix) {
				t.Errorf("%s --%s: environment variable %s does not start with %s", where, name, e, envPrefix)
			}
			if envs[e] {
				t.Errorf("%s: environment variable %s used by two flags", where, e)
			}
			envs[e] = true
		}
	}
}
