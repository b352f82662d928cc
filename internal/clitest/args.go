package clitest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
)

// CheckArgs runs every command of the tree that newApp builds (a fresh tree per run, as
// cliapp.Setup leaves it) with its action replaced by a recorder, so nothing is served or
// called. Each command runs with its positional arguments first and every flag it accepts
// (its own and the persistent ones above it) after them; the recorder must see each
// argument and each flag set. A command that takes a bounded number of arguments must
// refuse one more with a usage error that says "unexpected", and its action must not run.
// A command with subcommands must refuse an unknown one by name. values gives a value
// for flags that need a particular one (by name, without dashes); other flags get a
// value of their type or their default.
func CheckArgs(t *testing.T, newApp func() *cli.Command, values map[string]string) {
	t.Helper()
	var paths [][]string
	var walk func(path []string, cmds []*cli.Command)
	walk = func(path []string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := append(slices.Clone(path), c.Name)
			paths = append(paths, p)
			walk(p, c.Commands)
		}
	}
	walk(nil, newApp().Commands)
	for _, path := range paths {
		t.Run(strings.Join(path, " "), func(t *testing.T) {
			app := newApp()
			cmd, chain := find(app, path)
			if len(cmd.Commands) > 0 {
				err := run(app, append(path, "no-such-command"))
				want := fmt.Sprintf("unknown command %q for %q", "no-such-command", strings.Join(append([]string{app.Name}, path...), " "))
				if err == nil || !strings.Contains(err.Error(), want) || cliapp.ExitCode(err) != cliapp.ExitUsage {
					t.Errorf("an unknown subcommand: %v (exit %d), want %q (exit %d)", err, cliapp.ExitCode(err), want, cliapp.ExitUsage)
				}
				return
			}
			min, max := cliapp.Arity(cmd)
			n := max
			if max < 0 {
				n = min + 1
			}
			var positional []string
			for i := range n {
				positional = append(positional, fmt.Sprintf("arg-%d", i+1))
			}
			var flagArgs []string
			want := map[string]string{} // flag name -> value given ("" for a bool)
			for _, c := range chain {
				for _, f := range c.Flags {
					if c != cmd {
						if lf, ok := f.(cli.LocalFlag); !ok || lf.IsLocal() {
							continue
						}
					}
					name := f.Names()[0]
					v, ok := values[name]
					if !ok {
						v = sample(f)
					}
					want[name] = v
					if v == "" {
						flagArgs = append(flagArgs, "--"+name)
					} else {
						flagArgs = append(flagArgs, "--"+name, v)
					}
				}
			}

			var ran bool
			var gotArgs []string
			gotFlags := map[string]bool{}
			gotValues := map[string]string{}
			cmd.Action = func(_ context.Context, c *cli.Command) error {
				ran = true
				for _, a := range c.Arguments {
					switch v := a.Get().(type) {
					case string:
						if v != "" {
							gotArgs = append(gotArgs, v)
						}
					case []string:
						gotArgs = append(gotArgs, v...)
					}
				}
				gotArgs = append(gotArgs, c.Args().Slice()...)
				for name := range want {
					gotFlags[name] = c.IsSet(name)
					if _, isString := findFlag(chain, name).(*cli.StringFlag); isString {
						gotValues[name] = c.String(name)
					}
				}
				return nil
			}
			args := append(append(slices.Clone(path), positional...), flagArgs...)
			if err := run(app, args); err != nil || !ran {
				t.Fatalf("%s: %v (action ran: %v)", strings.Join(args, " "), err, ran)
			}
			if !slices.Equal(gotArgs, positional) {
				t.Errorf("%s: the action saw arguments %q, want %q", strings.Join(args, " "), gotArgs, positional)
			}
			for name, v := range want {
				if !gotFlags[name] {
					t.Errorf("%s: --%s after the arguments was not seen", strings.Join(args, " "), name)
				}
				if got, ok := gotValues[name]; ok && got != v {
					t.Errorf("%s: --%s = %q, want %q", strings.Join(args, " "), name, got, v)
				}
			}

			if max < 0 {
				return
			}
			app = newApp()
			cmd, _ = find(app, path)
			ran = false
			cmd.Action = func(context.Context, *cli.Command) error { ran = true; return nil }
			args = append(append(append(slices.Clone(path), positional...), "unexpected-word"), flagArgs...)
			err := run(app, args)
			if err == nil || ran || cliapp.ExitCode(err) != cliapp.ExitUsage || !strings.Contains(err.Error(), `unexpected argument "unexpected-word"`) {
				t.Errorf("%s: %v (exit %d, action ran: %v), want a usage error naming the unexpected argument", strings.Join(args, " "), err, cliapp.ExitCode(err), ran)
			}
		})
	}
}

// run runs args on app with its output discarded.
func run(app *cli.Command, args []string) error {
	app.Writer, app.ErrWriter = io.Discard, io.Discard
	return cliapp.Run(context.Background(), app, append([]string{app.Name}, args...))
}

// find returns the command at path and the chain of commands from the root to it.
func find(app *cli.Command, path []string) (*cli.Command, []*cli.Command) {
	cmd, chain := app, []*cli.Command{app}
	for _, name := range path {
		i := slices.IndexFunc(cmd.Commands, func(c *cli.Command) bool { return c.Name == name })
		if i < 0 {
			panic(errors.New("no command " + strings.Join(path, " ")))
		}
		cmd = cmd.Commands[i]
		chain = append(chain, cmd)
	}
	return cmd, chain
}

func findFlag(chain []*cli.Command, name string) cli.Flag {
	for _, c := range chain {
		for _, f := range c.Flags {
			if slices.Contains(f.Names(), name) {
				return f
			}
		}
	}
	return nil
}

// sample is a value the flag's type accepts: its default when it has one ("" for a bool:
// the flag alone).
func sample(f cli.Flag) string {
	switch f := f.(type) {
	case *cli.BoolFlag:
		return ""
	case *cli.StringFlag:
		if f.Value != "" {
			return f.Value
		}
		return "value"
	case *cli.IntFlag:
		return "7"
	case *cli.DurationFlag:
		return "90m"
	case *cli.StringSliceFlag:
		return "item"
	}
	return "value"
}

// CheckHelp runs --help of every command without subcommands and of the root: the help
// must end with the EXAMPLES section, after the options.
func CheckHelp(t *testing.T, newApp func() *cli.Command) {
	t.Helper()
	var paths [][]string
	var walk func(path []string, cmds []*cli.Command)
	walk = func(path []string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := append(slices.Clone(path), c.Name)
			if len(c.Commands) == 0 {
				paths = append(paths, p)
			}
			walk(p, c.Commands)
		}
	}
	walk(nil, newApp().Commands)
	for _, path := range append(paths, nil) {
		app := newApp()
		var out strings.Builder
		err := cliapp.Run(context.Background(), withWriters(app, &out), append(append([]string{app.Name}, path...), "--help"))
		help := out.String()
		i := strings.LastIndex(help, "\nEXAMPLES:\n")
		if err != nil || i < 0 || sectionRE.MatchString(help[i+1:]) || !strings.Contains(help[:i], "OPTIONS:") {
			t.Errorf("%s --help does not end with EXAMPLES after the options (err %v):\n%s", strings.Join(append([]string{app.Name}, path...), " "), err, help)
		}
	}
}

// sectionRE finds a section heading of a help text.
var sectionRE = regexp.MustCompile(`\n\n[A-Z][A-Z ]*:\n`)

func withWriters(app *cli.Command, w io.Writer) *cli.Command {
	app.Writer, app.ErrWriter = w, w
	return app
}
