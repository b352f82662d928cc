// Package clitest owns the check every command tree of ibcm must pass (STYLE.md habit 3):
// command names unique, Usage set, every flag named once, described and settable from an
// environment variable with the binary's prefix, every command without subcommands
// ending its help with EXAMPLES, and no help text naming an environment variable that
// command does not read; and (CheckArgs) that every command takes its flags before and
// after its positional arguments and refuses arguments it does not take.
package clitest

import (
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"
)

// CheckTree walks app's commands and reports every rule broken. documented lists the
// environment variables the code reads besides the flags' own (such as IBCM_CA_PASSWORD),
// which help texts may name as well.
func CheckTree(t testing.TB, app *cli.Command, envPrefix string, documented ...string) {
	t.Helper()
	checkEnvMentions(t, app, envPrefix, documented)
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
			if cmd.Action == nil && len(cmd.Commands) == 0 {
				t.Errorf("%s: neither an Action nor subcommands", full)
			}
			if len(cmd.Commands) == 0 {
				if i := strings.LastIndex(cmd.Description, "EXAMPLES"); i < 0 {
					t.Errorf("%s: Description has no EXAMPLES section", full)
				} else if strings.Contains(cmd.Description[i:], "\n\n\n") {
					t.Errorf("%s: the EXAMPLES section is not the last one", full)
				}
			}
			checkFlags(t, full, cmd.Flags, envPrefix)
			walk(full, cmd.Commands)
		}
	}
	walk(app.Name, app.Commands)
}

func checkFlags(t testing.TB, where string, fs []cli.Flag, envPrefix string) {
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

// checkEnvMentions reports every environment variable of the binary's family (the first
// word of envPrefix: IBCM_ for IBCM_CLIENT_ too) that a help text names but no flag in
// reach reads: a command's Usage, UsageText, ArgsUsage, Description and its flags' Usage
// may name the variables of its own flags, its parent commands' and the app's; the app's
// texts may name any flag's. The documented variables may be named anywhere. A name that
// ends in _ ("IBCM_CLIENT_...") stands for the family and is not checked.
func checkEnvMentions(t testing.TB, app *cli.Command, envPrefix string, documented []string) {
	t.Helper()
	family := strings.SplitAfter(envPrefix, "_")[0]
	mention := regexp.MustCompile(`\b` + regexp.QuoteMeta(family) + `[A-Z0-9_]*`)
	envsOf := func(fs []cli.Flag, into map[string]bool) {
		for _, f := range fs {
			if df, ok := f.(cli.DocGenerationFlag); ok {
				for _, e := range df.GetEnvVars() {
					into[e] = true
				}
			}
		}
	}
	check := func(where string, known map[string]bool, texts []string, fs []cli.Flag) {
		t.Helper()
		for _, f := range fs {
			if df, ok := f.(cli.DocGenerationFlag); ok {
				texts = append(texts, df.GetUsage())
			}
		}
		for _, text := range texts {
			for _, name := range mention.FindAllString(text, -1) {
				if !strings.HasSuffix(name, "_") && !known[name] {
					t.Errorf("%s: help names %s, which no flag of this command reads (nor is it documented as read by the code)", where, name)
				}
			}
		}
	}
	base := map[string]bool{}
	for _, d := range documented {
		base[d] = true
	}
	envsOf(app.Flags, base)

	all := map[string]bool{}
	var collect func(cmds []*cli.Command)
	collect = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			envsOf(cmd.Flags, all)
			collect(cmd.Commands)
		}
	}
	collect(app.Commands)
	for e := range base {
		all[e] = true
	}
	check(app.Name, all, []string{app.Usage, app.UsageText, app.ArgsUsage, app.Description}, app.Flags)

	var walk func(path string, inherited map[string]bool, cmds []*cli.Command)
	walk = func(path string, inherited map[string]bool, cmds []*cli.Command) {
		t.Helper()
		for _, cmd := range cmds {
			full := strings.TrimSpace(path + " " + cmd.Name)
			known := map[string]bool{}
			for e := range inherited {
				known[e] = true
			}
			envsOf(cmd.Flags, known)
			check(full, known, []string{cmd.Usage, cmd.UsageText, cmd.ArgsUsage, cmd.Description}, cmd.Flags)
			walk(full, known, cmd.Commands)
		}
	}
	walk(app.Name, base, app.Commands)
}
