package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ibcm-project/ibcm/site"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "work with configuration files",
		Subcommands: []*cli.Command{{
			Name:      "validate",
			Usage:     "check a site.yaml: unknown keys, bad values (the error names the key)",
			ArgsUsage: "FILE...",
			Description: `Decodes each file strictly, applies defaults and validates it. Exit 0 when all are valid.

EXAMPLES:
   ibcm config validate /srv/ibcm/site.yaml
   ibcm config validate etc/*.yaml`,
			Action: func(c *cli.Context) error {
				if c.NArg() == 0 {
					return usageError("config validate needs at least one FILE")
				}
				for _, f := range c.Args().Slice() {
					if _, err := site.Load(f); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s: valid\n", f)
				}
				return nil
			},
		}},
	}
}
