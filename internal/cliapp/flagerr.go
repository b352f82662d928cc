package cliapp

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v3"
)

// The framework's flag errors, by their text (urfave/cli/v3 has no error types for them).
// TestFlagErrors pins each one, so a change in the framework fails there.
var (
	invalidValueRE = regexp.MustCompile(`(?s)^invalid value "(.*)" for flag -([^:]+): (.*)$`)
	sourceValueRE  = regexp.MustCompile(`(?s)^could not parse "(.*)" as \S+ value from environment variable "([^"]+)" for flag ([^:]+): (.*)$`)
	unknownFlagRE  = regexp.MustCompile(`^flag provided but not defined: -+(.+)$`)
	needsValueRE   = regexp.MustCompile(`^flag needs an argument: -+(.+)$`)
	requiredRE     = regexp.MustCompile(`^Required flags? "(.*)" not set$`)
)

// OneOf is a flag Validator that accepts only the given values.
func OneOf(values ...string) func(string) error {
	return func(s string) error {
		for _, v := range values {
			if s == v {
				return nil
			}
		}
		return fmt.Errorf("must be %s", list(values, "or"))
	}
}

// AtLeast is a flag Validator for a number of at least n.
func AtLeast(n int) func(int) error {
	return func(v int) error {
		if v < n {
			return fmt.Errorf("must be at least %d", n)
		}
		return nil
	}
}

// Positive is a flag Validator for a duration above zero.
func Positive(d time.Duration) error {
	if d <= 0 {
		return errors.New("must be more than 0s")
	}
	return nil
}

// list writes "a, b or c" (conj "or") or "a, b and c".
func list(vs []string, conj string) string {
	if len(vs) < 2 {
		return strings.Join(vs, "")
	}
	return strings.Join(vs[:len(vs)-1], ", ") + " " + conj + " " + vs[len(vs)-1]
}

// flagName is how a user types the flag: --name, or -n for a one-letter name.
func flagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// explainFlagError rewrites the framework's flag parsing errors on cmd so they name the
// flag as typed and the form it wants ("--ttl: must be a duration such as 2h or 30m (got
// "2")"); other errors pass unchanged.
func explainFlagError(cmd *cli.Command, err error) error {
	msg := err.Error()
	if m := invalidValueRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s: %s (got %q)", flagName(m[2]), why(findFlag(cmd, m[2]), m[1], m[3]), m[1])
	}
	if m := unknownFlagRE.FindStringSubmatch(msg); m != nil {
		name := strings.SplitN(m[1], "=", 2)[0]
		out := fmt.Sprintf("unknown flag %s for %q", flagName(name), cmd.FullName())
		if s := suggest(name, flagNames(cmd)); s != "" {
			out += fmt.Sprintf("; did you mean %s?", flagName(s))
		}
		return errors.New(out)
	}
	if m := needsValueRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s needs a value", flagName(m[1]))
	}
	if m := requiredRE.FindStringSubmatch(msg); m != nil {
		var names []string
		for _, n := range strings.Split(m[1], ", ") {
			names = append(names, flagName(n))
		}
		verb := "is"
		if len(names) > 1 {
			verb = "are"
		}
		return fmt.Errorf("%s %s required", list(names, "and"), verb)
	}
	return err
}

// explainSourceError rewrites a bad flag value read from an environment variable.
func explainSourceError(root *cli.Command, err error) (error, bool) {
	m := sourceValueRE.FindStringSubmatch(err.Error())
	if m == nil {
		return err, false
	}
	var f cli.Flag
	walk(root, func(c *cli.Command) {
		if f == nil {
			f = localFlag(c, m[3])
		}
	})
	return fmt.Errorf("%s (%s): %s (got %q)", m[2], flagName(m[3]), why(f, m[1], m[4]), m[1]), true
}

// why says what a flag wants when value did not parse, or passes the validator's reason.
func why(f cli.Flag, value, reason string) string {
	switch f.(type) {
	case *cli.DurationFlag:
		if _, err := time.ParseDuration(value); err != nil {
			return "must be a duration such as 2h or 30m"
		}
	case *cli.IntFlag:
		if _, err := strconv.ParseInt(value, 0, 64); err != nil {
			return "must be a whole number"
		}
	case *cli.BoolFlag:
		if _, err := strconv.ParseBool(value); err != nil {
			return "must be true or false"
		}
	}
	return reason
}

func localFlag(cmd *cli.Command, name string) cli.Flag {
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

// findFlag finds a flag cmd accepts: its own or an ancestor's.
func findFlag(cmd *cli.Command, name string) cli.Flag {
	for _, c := range cmd.Lineage() {
		if f := localFlag(c, name); f != nil {
			return f
		}
	}
	return nil
}

func flagNames(cmd *cli.Command) []string {
	var names []string
	for _, c := range cmd.Lineage() {
		for _, f := range c.Flags {
			names = append(names, f.Names()...)
		}
	}
	return names
}
