package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/client/deploy"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/remote/frame"
)

func deploymentsCommand() *cli.Command {
	return &cli.Command{
		Name:  "deployments",
		Usage: "list the deployments of this device and their local state",
		Description: `deployments prints the agent's local record of the deployments its policy asked for: the
package and version, the state (pending, downloading with its percentage, downloaded,
installing, installed, failed), the install command's exit code, the DP the content came
from, the last error, and when it changed. The record is deployments.json in the state
directory (0600), so it is for the device's administrator. A deployment the policy no
longer lists is marked "(removed)"; what it installed stays installed.

EXAMPLES:
   sudo ibcm-client deployments

   sudo ibcm-client deployments --json | jq 'select(.state == "failed")'`,
		Flags: []cli.Flag{dirFlag(),
			&cli.BoolFlag{Name: "json", Sources: cli.EnvVars("IBCM_CLIENT_JSON"), Usage: "print one JSON object a line, as recorded"}},
		Action: func(ctx context.Context, c *cli.Command) error {
			recs, err := deploy.ReadState(c.String("dir"))
			if err != nil {
				return err
			}
			out := c.Root().Writer
			if c.Bool("json") {
				enc := json.NewEncoder(out)
				for _, r := range recs {
					if err := enc.Encode(r); err != nil {
						return err
					}
				}
				return nil
			}
			w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tPACKAGE\tVERSION\tSTATE\tPERCENT\tEXIT\tDP\tUPDATED\tERROR")
			for _, r := range recs {
				state := r.State
				if !r.InPolicy {
					state += " (removed)"
				}
				exit := "-"
				if r.ExitCode != nil {
					exit = strconv.Itoa(*r.ExitCode)
				}
				// What a DP, the MP or an install command said is printed without terminal controls.
				p := frame.Printable
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d%%\t%s\t%s\t%s\t%s\n", p(r.ID), p(r.Package), p(r.Version), p(state), r.Percent, exit,
					dash(p(r.DP)), r.Updated.Format(timeFormat), dash(p(oneLine(r.Error))))
			}
			return w.Flush()
		},
	}
}

// oneLine keeps a table row on one line.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// parseSize reads a byte count: a number, optionally with K, M, G, T (powers of 1024,
// with or without "iB") or B.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	up := strings.ToUpper(t)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(up, u.suffix) {
			mult, t = u.m, strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, cliapp.UsageErrorf("size %q: a positive number of bytes, optionally with KiB, MiB, GiB or TiB", s)
	}
	return n * mult, nil
}
