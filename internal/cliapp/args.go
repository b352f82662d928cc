package cliapp

import (
	"context"
	"fmt"
	"strings"

	"github.com/urfave/cli/v3"
)

// Arg declares a required positional argument, read with cmd.StringArg(name).
func Arg(name string) cli.Argument {
	return &cli.StringArg{Name: name, Required: true, UsageText: name}
}

// OptionalArg declares a positional argument that may be left out.
func OptionalArg(name string) cli.Argument {
	return &cli.StringArg{Name: name, UsageText: "[" + name + "]"}
}

// Rest declares min or more positional arguments, read with cmd.StringArgs(name).
func Rest(name string, min int) cli.Argument {
	usage := name + "..."
	if min == 0 {
		usage = "[" + usage + "]"
	}
	return &cli.StringArgs{Name: name, Min: min, Max: -1, UsageText: usage}
}

// Arity is how many positional arguments a command takes: at least min, at most max
// (-1: no limit).
func Arity(cmd *cli.Command) (min, max int) {
	for _, a := range cmd.Arguments {
		switch a := a.(type) {
		case *cli.StringArg:
			max++
			if a.Required {
				min++
			}
		case *cli.StringArgs:
			min += a.Min
			if a.Max < 0 || max < 0 {
				max = -1
			} else {
				max += a.Max
			}
		default:
			return min, -1
		}
	}
	return min, max
}

// checkArgs refuses a command run with fewer or more positional arguments than it
// declares. It runs for the command whose action is about to run (flags are parsed by
// then, wherever they stood).
func checkArgs(_ context.Context, cmd *cli.Command) error {
	if isGroup(cmd) || cmd.Name == "help" {
		return nil // a group reports unknown commands itself; help takes a command name
	}
	min, max := Arity(cmd)
	got := cmd.Args().Slice()
	switch {
	case len(got) < min:
		var missing []string
		for _, a := range cmd.Arguments {
			missing = append(missing, a.Usage())
		}
		return &UsageError{cmd: cmd, err: fmt.Errorf("%s needs %s", cmd.FullName(), strings.Join(missing, " "))}
	case max >= 0 && len(got) > max:
		extra := got[max:]
		quoted := make([]string, len(extra))
		for i, e := range extra {
			quoted[i] = fmt.Sprintf("%q", e)
		}
		noun := "argument"
		if len(extra) > 1 {
			noun = "arguments"
		}
		return &UsageError{cmd: cmd, err: fmt.Errorf("unexpected %s %s: %s", noun, strings.Join(quoted, " "), takes(cmd, max))}
	}
	return nil
}

func takes(cmd *cli.Command, max int) string {
	if max == 0 {
		return cmd.FullName() + " takes no arguments"
	}
	var names []string
	for _, a := range cmd.Arguments {
		names = append(names, a.Usage())
	}
	n := "one argument"
	if max > 1 {
		n = fmt.Sprintf("%d arguments", max)
	} else if min, _ := Arity(cmd); min == 0 {
		n = "at most one argument"
	}
	return fmt.Sprintf("%s takes %s, %s", cmd.FullName(), n, strings.Join(names, " "))
}
