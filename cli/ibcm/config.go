package main

import (
	"context"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/dp"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/site"
)

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "work with configuration files",
		Commands: []*cli.Command{{
			Name:      "validate",
			Usage:     "check a site.yaml or a DP's dp.yaml: unknown keys, bad values (the error names the key)",
			Arguments: []cli.Argument{cliapp.Rest("FILE", 1)},
			Description: `Decodes each file strictly, applies defaults and validates it. Exit 0 when all are valid. A file
   with a top-level dp: section and no site: section is a standalone DP's configuration
   (ibcm dp serve --config); any other is a site.yaml.

EXAMPLES:
   ibcm config validate /srv/ibcm/site.yaml
   ibcm config validate etc/*.yaml`,
			Action: func(ctx context.Context, c *cli.Command) error {
				for _, f := range c.StringArgs("FILE") {
					load := func(f string) error { _, err := site.Load(f); return err }
					if isDPConfig(f) {
						load = func(f string) error { _, err := dp.Load(f); return err }
					}
					if err := load(f); err != nil {
						return err
					}
					fmt.Fprintf(c.Root().Writer, "%s: valid\n", f)
				}
				return nil
			},
		}},
	}
}

// isDPConfig tells a standalone DP's configuration (a top-level dp: and no site:) from a
// site.yaml; a file that does not parse is left to site.Load to explain.
func isDPConfig(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var top map[string]yaml.Node
	if yaml.Unmarshal(b, &top) != nil {
		return false
	}
	_, hasDP := top["dp"]
	_, hasSite := top["site"]
	return hasDP && !hasSite
}
