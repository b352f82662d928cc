package main

import (
	"context"
	"fmt"
	"os"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/remote/device"
)

func consentCommand() *cli.Command {
	return &cli.Command{
		Name:      "consent",
		Usage:     "answer a remote helper's request, or watch for requests without sharing a terminal",
		ArgsUsage: "[ID]",
		Description: `consent --watch keeps you present for the agent without sharing your terminal: requests for
a session are printed and you answer them with y or n (then Enter); an accepted session gets
a new shell running as you. While a session runs, "/chat TEXT" sends a chat line, "/view"
drops the helper to view and "/end" ends it.

consent --accept or --deny answers one request: ID is the question's id or its session's
(the only request waiting when omitted). Only the user asked may answer; another user's
answer is refused (consent_wrong_user) and logged.

EXAMPLES:
   ibcm-client consent --watch

   ibcm-client consent --accept

   ibcm-client consent --deny 3f1a9c`,
		Flags: []cli.Flag{shareSocketFlag(),
			&cli.BoolFlag{Name: "watch", Sources: cli.EnvVars("IBCM_CLIENT_WATCH"), Usage: "stay present and answer requests as they come"},
			&cli.BoolFlag{Name: "accept", Sources: cli.EnvVars("IBCM_CLIENT_ACCEPT"), Usage: "accept the request"},
			&cli.BoolFlag{Name: "deny", Sources: cli.EnvVars("IBCM_CLIENT_DENY"), Usage: "deny the request"},
		},
		Action: func(ctx context.Context, c *cli.Command) error {
			n := 0
			for _, f := range []string{"watch", "accept", "deny"} {
				if c.Bool(f) {
					n++
				}
			}
			if n != 1 {
				return cliapp.UsageErrorf("give exactly one of --watch, --accept and --deny")
			}
			if c.NArg() > 1 {
				return cliapp.UsageErrorf("at most one ID")
			}
			sock := c.String("share-socket")
			if c.Bool("watch") {
				fmt.Fprintln(c.Root().Writer, "watching for remote session requests (Ctrl-C to stop)")
				return device.Watch(ctx, sock, os.Stdin, c.Root().Writer)
			}
			verdict, err := device.Answer(ctx, sock, c.Args().First(), c.Bool("accept"))
			if err != nil {
				return err
			}
			fmt.Fprintln(c.Root().Writer, verdict)
			return nil
		},
	}
}
