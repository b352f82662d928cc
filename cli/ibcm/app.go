package main

import (
	"errors"
	"os"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/logging"
)

// Exit codes.
const (
	exitError     = 1                // anything else
	exitUsage     = cliapp.ExitUsage // bad flags or arguments
	exitUnhealthy = 3                // site status: a listener is not healthy
)

type exitErr struct {
	code int
	err  error
}

func (e exitErr) Error() string { return e.err.Error() }
func (e exitErr) Unwrap() error { return e.err }

// usageError is input the user has to change; it exits 2 and prints the command's usage line.
func usageError(format string, args ...any) error { return cliapp.UsageErrorf(format, args...) }

func exitCode(err error) int {
	var e exitErr
	if errors.As(err, &e) {
		return e.code
	}
	return cliapp.ExitCode(err)
}

func newApp() *cli.Command {
	return cliapp.Setup(&cli.Command{
		Name:  "ibcm",
		Usage: "internet-based client management: site roles and admin commands",
		Description: `ibcm runs the roles of an ibcm site (certificate authority now; management and
distribution points later) and is the admin's command line. Flags go before or after
the arguments, and every flag can also be set from its IBCM_... environment variable.

EXAMPLES:
   ibcm site init --dir /srv/ibcm --site-code P01 --intranet-name ibcm.corp.example --internet-name ibcm.example.com
   ibcm site up --dir /srv/ibcm
   ibcm ca token create --dir /srv/ibcm --profile client
   source <(ibcm completion bash)`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", Sources: cli.EnvVars("IBCM_LOG_LEVEL"),
				Validator: cliapp.OneOf("debug", "info", "warn", "error")},
			&cli.StringFlag{Name: "log-format", Value: "auto", Usage: "auto (console on a terminal, else JSON), json or console", Sources: cli.EnvVars("IBCM_LOG_FORMAT"),
				Validator: cliapp.OneOf("auto", "json", "console")},
		},
		Commands: []*cli.Command{siteCommand(), caCommand(), mpCommand(), deviceCommand(), groupCommand(), policyCommand(),
			userCommand(), roleCommand(), remoteCommand(), loginCommand(), consoleCommand(), configCommand(),
			contentCommand(),
			deployCommand(),
			dpCommand(),
		},
	})
}

// logger makes the process logger on stderr (internal/logging, as the agent's): JSON, or
// the console writer (by default on a terminal).
func logger(c *cli.Command) zerolog.Logger {
	l, err := logging.New(os.Stderr, c.String("log-level"), c.String("log-format"))
	if err != nil { // not reached: the flags' validators refuse what logging.New refuses
		return zerolog.New(os.Stderr).With().Timestamp().Logger()
	}
	return l
}
