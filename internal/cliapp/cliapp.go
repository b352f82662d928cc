// Package cliapp owns the conventions both ibcm command lines (ibcm and ibcm-client) keep
// on top of urfave/cli/v3: positional arguments declared on each command and counted
// before it runs, usage errors printed as the error and one line of usage, flag errors
// that name the flag and the form it wants, unknown commands named with their parent,
// --version from the build, shell completion, and man pages made from the command tree.
//
// A main builds its tree, passes the root to Setup, runs it with Run and hands an error to
// Report and ExitCode:
//
//	app := cliapp.Setup(&cli.Command{Name: "ibcm", ...})
//	if err := cliapp.Run(ctx, app, os.Args); err != nil {
//		cliapp.Report(os.Stderr, app, err)
//		os.Exit(cliapp.ExitCode(err))
//	}
//
// A command declares its positional arguments with Arg, OptionalArg or Rest in its
// Arguments and reads them with cmd.StringArg(name) or cmd.StringArgs(name); a command
// that declares none takes none. Flags go before or after the arguments; "--" ends them.
// An action returns UsageErrorf for input the user has to change.
package cliapp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/urfave/cli/v3"
)

// ExitUsage is the exit status of a usage error (bad flags or arguments); any other
// error exits 1 unless it carries its own code (cli.ExitCoder).
const ExitUsage = 2

// UsageError is input the user has to change: a bad flag value, a missing or unexpected
// argument, an unknown command. Report prints it with the usage line of its command.
type UsageError struct {
	cmd     *cli.Command // the command whose usage to show; nil until known
	err     error
	noUsage bool // the input was not on the command line (an environment variable)
}

func (e *UsageError) Error() string { return e.err.Error() }
func (e *UsageError) Unwrap() error { return e.err }

// UsageErrorf makes a usage error; the command it belongs to is filled in when the
// action that returns it was set up by Setup.
func UsageErrorf(format string, args ...any) error {
	return &UsageError{err: fmt.Errorf(format, args...)}
}

// ExitCode is the exit status for err: ExitUsage for a usage error, the code of a
// cli.ExitCoder, else 1.
func ExitCode(err error) int {
	var ue *UsageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) && ec.ExitCode() != 0 {
		return ec.ExitCode()
	}
	return 1
}

// Setup applies the conventions to a command tree and returns its root: version, shell
// completion (the completion command), suggestions, the argument count check, one-line
// usage errors on every command, unknown subcommands refused by name, and a hidden man
// command that writes the man pages. Call it once the tree is complete.
func Setup(root *cli.Command) *cli.Command {
	root.Version = Version()
	root.Suggest = true
	root.EnableShellCompletion = true
	root.ConfigureShellCompletionCommand = configureCompletion
	root.ExitErrHandler = func(context.Context, *cli.Command, error) {} // Report prints, main exits
	root.ArgValidator = checkArgs
	root.Commands = append(root.Commands, manCommand(root.Name))
	walk(root, setupCommand)
	helpTemplates(root, true)
	return root
}

// Run runs the tree like cli.Command.Run and turns a bad flag value from an environment
// variable, which the framework reports outside its usage error path, into a usage error.
func Run(ctx context.Context, root *cli.Command, args []string) error {
	err := root.Run(ctx, args)
	if err == nil {
		return nil
	}
	var ue *UsageError
	if errors.As(err, &ue) {
		return err
	}
	if explained, ok := explainSourceError(root, err); ok {
		return &UsageError{err: explained, noUsage: true}
	}
	if m := noHelpRE.FindStringSubmatch(err.Error()); m != nil {
		return &UsageError{err: fmt.Errorf("no help for %q: there is no such command", m[1])}
	}
	return err
}

// Report prints err for the user: "NAME: error", and for a usage error one more line with
// the usage of the command and where the full help is.
func Report(w io.Writer, root *cli.Command, err error) {
	fmt.Fprintf(w, "%s: %v\n", root.Name, err)
	var ue *UsageError
	if !errors.As(err, &ue) || ue.noUsage {
		return
	}
	cmd := ue.cmd
	if cmd == nil {
		cmd = root
	}
	fmt.Fprintf(w, "usage: %s  (see %s --help)\n", UsageLine(cmd), cmd.FullName())
}

// UsageLine is the one-line synopsis of a command: its full name, then its subcommands,
// or [options] and its arguments.
func UsageLine(cmd *cli.Command) string {
	var b strings.Builder
	b.WriteString(cmd.FullName())
	if !isGroup(cmd) {
		b.WriteString(" [options]")
	}
	if subs := visibleNames(cmd); len(subs) > 0 {
		fmt.Fprintf(&b, " COMMAND (%s)", strings.Join(subs, ", "))
	}
	for _, a := range cmd.Arguments {
		b.WriteString(" " + a.Usage())
	}
	return b.String()
}

func visibleNames(cmd *cli.Command) []string {
	var names []string
	for _, c := range cmd.Commands {
		if !c.Hidden && c.Name != "help" {
			names = append(names, c.Name)
		}
	}
	return names
}

// walk calls fn for cmd and every command below it.
func walk(cmd *cli.Command, fn func(*cli.Command)) {
	fn(cmd)
	for _, c := range cmd.Commands {
		walk(c, fn)
	}
}

var one = 1

// noHelpRE is the framework's answer to help for an unknown command (an exit code 3).
var noHelpRE = regexp.MustCompile(`^No help topic for '(.*)'`)

// isGroup reports whether cmd has subcommands (besides the framework's help command).
func isGroup(cmd *cli.Command) bool {
	for _, c := range cmd.Commands {
		if c.Name != "help" {
			return true
		}
	}
	return false
}

func setupCommand(cmd *cli.Command) {
	cmd.OnUsageError = onUsageError
	helpTemplates(cmd, false)
	if !isGroup(cmd) {
		cmd.HideHelpCommand = true // "help" is an argument like any other (--help shows help)
	}
	switch {
	case isGroup(cmd) && cmd.Action == nil:
		cmd.Action = groupAction
		// the first word that is not a subcommand ends the flags, so an unknown command
		// is reported as one even when flags follow it
		cmd.StopOnNthArg = &one
	case cmd.Action != nil:
		action := cmd.Action
		cmd.Action = func(ctx context.Context, c *cli.Command) error {
			err := action(ctx, c)
			var ue *UsageError
			if errors.As(err, &ue) && ue.cmd == nil {
				ue.cmd = c
			}
			return err
		}
	}
}

// groupAction runs for a command that has subcommands when none was named: help without
// arguments, else an unknown command.
func groupAction(_ context.Context, cmd *cli.Command) error {
	if cmd.NArg() == 0 {
		if cmd.Root() == cmd {
			return cli.ShowRootCommandHelp(cmd)
		}
		return cli.ShowSubcommandHelp(cmd)
	}
	name := cmd.Args().First()
	msg := fmt.Sprintf("unknown command %q for %q", name, cmd.FullName())
	if s := suggest(name, visibleNames(cmd)); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	return &UsageError{cmd: cmd, err: errors.New(msg)}
}

func onUsageError(_ context.Context, cmd *cli.Command, err error, _ bool) error {
	return &UsageError{cmd: cmd, err: explainFlagError(cmd, err)}
}

// suggest returns the candidate closest to s when it is close enough to be a typo or s
// is its prefix, else "".
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if len(s) >= 3 && strings.HasPrefix(c, s) {
			return c
		}
		if d := distance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
