package main

import (
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/client"
)

// Flags several commands share.

func dirFlag() *cli.StringFlag {
	return &cli.StringFlag{
		Name: "dir", Value: defaultDir, Sources: cli.EnvVars("IBCM_CLIENT_DIR"), TakesFile: true,
		Usage: "state directory `DIR` holding the device's key, certificate, trust bundle and state",
	}
}

func timeoutFlag() *cli.DurationFlag {
	return &cli.DurationFlag{
		Name: "timeout", Value: client.DefaultTimeout, Sources: cli.EnvVars("IBCM_CLIENT_TIMEOUT"),
		Usage: "how long (`DURATION`) each request to the CA may take",
	}
}

// timeFormat is how the commands print times.
const timeFormat = time.RFC3339
