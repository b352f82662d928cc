package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/client/agent"
	"github.com/ibcm-project/ibcm/client/deploy"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/progress"
	"github.com/ibcm-project/ibcm/remote/frame"
)

func stallTimeoutFlag() *cli.DurationFlag {
	return &cli.DurationFlag{Name: "stall-timeout", Value: deploy.DefaultStallTimeout, Sources: cli.EnvVars("IBCM_CLIENT_STALL_TIMEOUT"),
		Usage: "abandon a DP that sends nothing for `DURATION` and go on with the next"}
}

func downloadCommand() *cli.Command {
	return &cli.Command{
		Name:      "download",
		Usage:     "fetch a package this device's policy deploys, by hand, without installing it",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `download fetches a package of the policy's deployments the way the agent does, without
installing it: it detects the location, asks that location's MP for its DPs, verifies the
signed manifest against the site's roots and the SHA-256 the policy pins, downloads every
file from the DPs in order (resuming, checking each chunk as it arrives, going on with the
next DP after bad bytes or a stall) and places the files in --output (default
./NAME-VERSION, which must not exist or be empty). What arrived before an interruption is
kept in OUTPUT.partial and resumed by the next run. A progress bar shows on a terminal.
It reads the device's key, so it runs as the agent's user (root).

EXAMPLES:
   sudo ibcm-client download firefox

   sudo ibcm-client download firefox --version 128.0.2 --output /tmp/firefox`,
		Flags: []cli.Flag{dirFlag(), resolvConfFlag(), stallTimeoutFlag(),
			&cli.StringFlag{Name: "version", Sources: cli.EnvVars("IBCM_CLIENT_VERSION"), Usage: "the `VERSION` (needed when the policy deploys several)"},
			&cli.StringFlag{Name: "output", Sources: cli.EnvVars("IBCM_CLIENT_OUTPUT"), TakesFile: true, Usage: "the `DIR` to place the files in (default ./NAME-VERSION)"},
		},
		Action: func(ctx context.Context, c *cli.Command) error {
			bar := progress.New(c.Root().ErrWriter, frame.Printable(c.StringArg("NAME")), 0)
			res, err := agent.Download(ctx, agent.HandDownload{Dir: c.String("dir"), ResolvConf: c.String("resolv-conf"),
				Name: c.StringArg("NAME"), Version: c.String("version"), Output: c.String("output"),
				StallTimeout: c.Duration("stall-timeout"), Progress: bar.Update})
			bar.Finish()
			if errors.Is(err, agent.ErrNoDeployment) {
				return cliapp.UsageErrorf("%v", err)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.Root().Writer, "%s %s: %d files, %s, from %s (%s), verified, in %s (not installed)\n",
				res.Package, res.Version, res.Files, progress.Bytes(res.Size), res.DP, res.Location, res.Output)
			return nil
		},
	}
}
