package main

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/remote/device"
)

func sessionsCommand() *cli.Command {
	return &cli.Command{
		Name:  "sessions",
		Usage: "list the remote sessions of this device (its local session log)",
		Description: `sessions prints the agent's local session log: every remote session this device served or
refused, with the helper, the local user who shared or consented, the modes, the transport,
the outcome (and the refusal's code) and the bytes each way. The log is in the state
directory (0600), so it is for the device's administrator.

EXAMPLES:
   sudo ibcm-client sessions

   sudo ibcm-client sessions --json`,
		Flags: []cli.Flag{dirFlag(),
			&cli.BoolFlag{Name: "json", Sources: cli.EnvVars("IBCM_CLIENT_JSON"), Usage: "print JSON lines, as logged"}},
		Action: func(ctx context.Context, c *cli.Command) error {
			entries, err := device.ReadLog(c.String("dir"))
			if err != nil {
				return err
			}
			out := c.Root().Writer
			if c.Bool("json") {
				enc := json.NewEncoder(out)
				for _, e := range entries {
					if err := enc.Encode(e); err != nil {
						return err
					}
				}
				return nil
			}
			w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "ENDED\tSESSION\tHELPER\tSHARER\tMODE\tTRANSPORT\tOUTCOME\tBYTES IN/OUT")
			for _, e := range entries {
				outcome := e.Outcome
				if e.Code != "" {
					outcome += " (" + e.Code + ")"
				}
				sid := e.Session
				if len(sid) > 12 {
					sid = sid[:12]
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\n", e.Ended.Format(timeFormat), dash(sid), dash(e.Helper), dash(e.Sharer),
					dash(e.Mode), dash(e.Transport), outcome, e.BytesIn, e.BytesOut)
			}
			return w.Flush()
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
