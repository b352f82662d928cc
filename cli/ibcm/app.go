package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
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
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"IBCM_LOG_LEVEL"}},
		},
		Commands:       []*cli.Command{siteCommand(), caCommand(), mpCommand(), deviceCommand(), groupCommand(), policyCommand(), configCommand()},
		ExitErrHandler: func(*cli.Context, error) {}, // main prints and exits
	}
}

// logger makes the process logger: JSON on stderr, or the console writer on a terminal.
func logger(c *cli.Context) zerolog.Logger {
	level, err := zerolog.ParseLevel(c.String("log-level"))
	if err != nil || level == zerolog.NoLevel {
		level = zerolog.InfoLevel
	}
	var l zerolog.Logger
	if isatty.IsTerminal(os.Stderr.Fd()) {
		l = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr})
	} else {
		l = zerolog.New(os.Stderr)
	}
	return l.Level(level).With().Timestamp().Logger()
}
