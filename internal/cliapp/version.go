package cliapp

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v3"
)

// version and commit are set at build time (the Makefile sets them from git):
//
//	go build -ldflags "-X github.com/ibcm-project/ibcm/internal/cliapp.version=v1.2.0 \
//	    -X github.com/ibcm-project/ibcm/internal/cliapp.commit=1a2b3c4d5e6f"
//
// Without them the module version and VCS revision the Go toolchain stamped are used.
var version, commit string

// Version says which build this is: the version, the commit it was built from (with
// "modified" when the tree had changes) and the Go version, e.g.
// "v1.2.0 (commit 1a2b3c4d5e6f, go1.26.8)".
func Version() string {
	v, commit, modified := version, commit, false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if commit == "" {
					commit = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	var parts []string
	if commit != "" {
		if len(commit) > 12 {
			commit = commit[:12]
		}
		if modified {
			commit += ", modified"
		}
		parts = append(parts, "commit "+commit)
	}
	parts = append(parts, runtime.Version())
	return fmt.Sprintf("%s (%s)", v, strings.Join(parts, ", "))
}

// configureCompletion makes the framework's completion command a documented one that
// follows the tree's rules, for bash, zsh and fish.
func configureCompletion(c *cli.Command) {
	name := c.Root().Name
	c.Hidden = false
	c.Usage = "print the shell completion script for bash, zsh or fish"
	c.Description = fmt.Sprintf(`Prints a script that makes the shell complete %[1]s's commands and flags. Load it
from the shell's start-up file, or install it where the shell looks for completions.

EXAMPLES:
   source <(%[1]s completion bash)                        # in ~/.bashrc
   source <(%[1]s completion zsh)                         # in ~/.zshrc
   %[1]s completion fish > ~/.config/fish/completions/%[1]s.fish`, name)
	for _, sub := range c.Commands {
		sub.Hidden = sub.Name == "pwsh"
		sub.Usage = "print the " + sub.Name + " completion script"
		sub.Description = fmt.Sprintf("EXAMPLES:\n   %s completion %s", name, sub.Name)
	}
	walk(c, setupCommand)
}
