// Command ibcm-client is the agent that runs on devices: it enrolls the device with the
// site's CA, renews its certificate and reports its identity. It links only the client
// package, internal/wire and urfave/cli (DESIGN.md §2).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

// defaultDir is where the agent keeps its identity unless --dir says otherwise.
const defaultDir = "/var/lib/ibcm-client"

func newApp() *cli.App {
	return &cli.App{
		Name:  "ibcm-client",
		Usage: "the ibcm device agent: enrollment, certificate renewal and status",
		Description: "ibcm-client holds the device's identity: a key made on the device and a certificate\n" +
			"from the site's CA, kept in a state directory (" + defaultDir + " by default).\n" +
			"Every flag can also be set from its IBCM_CLIENT_... environment variable.",
		Commands:             []*cli.Command{enrollCommand(), renewCommand(), runCommand(), locationCommand(), statusCommand(), reportCommand()},
		HideHelpCommand:      true,
		EnableBashCompletion: false,
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newApp().RunContext(ctx, os.Args)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ibcm-client: %v\n", err)
		os.Exit(1)
	}
}
