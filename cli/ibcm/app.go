package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/ibcm-project/ibcm/internal/logging"
)

// Exit codes.
const (
	exitError     = 1 // anything else
	exitUsage     = 2 // bad flags or arguments
	exitUnhealthy = 3 // site status: a listener is not healthy
)

type exitErr struct {
	code int
	err  error
}

func (e exitErr) Error() string { return e.err.Error() }
func (e exitErr) Unwrap() error { return e.err }

func usageError(format string, args ...any) error {
	return exitErr{exitUsage, fmt.Errorf(format, args...)}
}

func exitCode(err error) int {
	var e exitErr
	if errors.As(err, &e) {
		return e.code
	}
	return exitError
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "ibcm",
		Usage: "internet-based client management: site roles and admin commands",
		Description: `ibcm runs the roles of an ibcm site (certificate authority now; management and
distribution points later) and is the admin's command line.

EXAMPLES:
   ibcm site init --dir /srv/ibcm --site-code P01 --intranet-name ibcm.corp.example --internet-name ibcm.example.com
   ibcm site up --dir /srv/ibcm
   ibcm ca token create --dir /srv/ibcm --profile client`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: logging.Levels, EnvVars: []string{"IBCM_LOG_LEVEL"}},
			&cli.StringFlag{Name: "log-format", Value: logging.FormatAuto, Usage: "auto (console on a terminal, JSON otherwise), json or console", EnvVars: []string{"IBCM_LOG_FORMAT"}},
		},
		Commands:       []*cli.Command{siteCommand(), caCommand(), mpCommand(), deviceCommand(), groupCommand(), policyCommand(), configCommand()},
		ExitErrHandler: func(*cli.Context, error) {}, // main prints and exits
	}
}

// logger makes the process logger from --log-level and --log-format (internal/logging):
// JSON on stderr, or the console writer on a terminal.
func logger(c *cli.Context) (zerolog.Logger, error) {
	l, err := logging.New(os.Stderr, c.String("log-level"), c.String("log-format"))
	if err != nil {
		return l, usageError("%v", err)
	}
	return l, nil
}
