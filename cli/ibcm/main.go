// Command ibcm runs every site role of ibcm (CA, and later MP and DP) and every admin
// command. See `ibcm help`.
package main

import (
	"context"
	"os"

	"github.com/ibcm-project/ibcm/internal/cliapp"
)

func main() {
	app := newApp()
	if err := cliapp.Run(context.Background(), app, os.Args); err != nil {
		cliapp.Report(os.Stderr, app, err)
		os.Exit(exitCode(err))
	}
}
