package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/site"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "work with configuration files",
		Commands: []*cli.Command{{
			Name:      "validate",
			Usage:     "check a site.yaml: unknown keys, bad values (the error names the key)",
			Arguments: []cli.Argument{cliapp.Rest("FILE", 1)},
			Description: `Decodes each file strictly, applies defaults and validates it. Exit 0 when all are valid.

EXAMPLES:
   ibcm config validate /srv/ibcm/site.yaml
   ibcm config validate etc/*.yaml`,
			Action: func(ctx context.Context, c *cli.Command) error {
				for _, f := range c.StringArgs("FILE") {
					if _, err := site.Load(f); err != nil {
						return err
					}
					fmt.Fprintf(c.Root().Writer, "%s: valid\n", f)
				}
				return nil
			},
		}},
	}
}
