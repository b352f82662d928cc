// Command ibcm-client is the agent that runs on devices: it enrolls the device with the
// site's CA, renews its certificate and reports its identity, serves remote-control
// sessions, gives local users `share`, `consent` and `sessions`, and carries out
// deployments (`deployments`, `download`). It links only the client package, remote/device
// and the remote contracts, dp/manifest and dp/fetch, internal/wire, internal/cliapp,
// internal/logging, zerolog, creack/pty, x/term and urfave/cli (DESIGN.md §2).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/logging"
)

// defaultDir is where the agent keeps its identity unless --dir says otherwise.
const defaultDir = "/var/lib/ibcm-client"

func newApp() *cli.Command {
	return cliapp.Setup(&cli.Command{
		Name:  "ibcm-client",
		Usage: "the ibcm device agent: enrollment, certificate renewal and status",
		Description: "ibcm-client holds the device's identity: a key made on the device and a certificate\n" +
			"from the site's CA, kept in a state directory (" + defaultDir + " by default).\n" +
			"Flags go before or after the arguments, and every flag can also be set from its\n" +
			"IBCM_CLIENT_... environment variable.\n\n" +
			"EXAMPLES:\n" +
			"   ibcm-client enroll --ca https://ca.corp.example:8443 --root-sha256 3f1a...9c --token-file /run/secrets/ibcm-token\n" +
			"   ibcm-client status --json\n" +
			"   source <(ibcm-client completion bash)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Sources: cli.EnvVars("IBCM_CLIENT_LOG_LEVEL"), Usage: "debug, info, warn or error",
				Validator: cliapp.OneOf("debug", "info", "warn", "error")},
			&cli.StringFlag{Name: "log-format", Value: "auto", Sources: cli.EnvVars("IBCM_CLIENT_LOG_FORMAT"), Usage: "auto (console on a terminal, else JSON), json or console",
				Validator: cliapp.OneOf("auto", "json", "console")},
		},
		Commands: []*cli.Command{enrollCommand(), renewCommand(), runCommand(), locationCommand(), statusCommand(), reportCommand(),
			shareCommand(), consentCommand(), sessionsCommand(), deploymentsCommand(), downloadCommand()},
		HideHelpCommand: true,
	})
}

// logger is the agent's logger on stderr, as --log-level and --log-format say
// (internal/logging, as the site's).
func logger(c *cli.Command) zerolog.Logger {
	l, err := logging.New(os.Stderr, c.String("log-level"), c.String("log-format"))
	if err != nil { // not reached: the flags' validators refuse what logging.New refuses
		return zerolog.New(os.Stderr).With().Timestamp().Logger()
	}
	return l
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	app := newApp()
	err := cliapp.Run(ctx, app, os.Args)
	stop()
	if err != nil {
		cliapp.Report(os.Stderr, app, err)
		os.Exit(cliapp.ExitCode(err))
	}
}
