package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/dp"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

// dpGCPercent is the Go collector's GOGC of `ibcm dp serve` unless GOGC is set. A DP's
// live heap is mostly its connections (a slow download holds about 30 KiB: net/http's
// buffers, the TLS state, the client's certificate; 4 KiB of goroutine stacks beside) and
// the default 100 lets the heap grow to twice that before a collection: a thousand slow
// downloads took 62 KiB of RSS each at 50, 55 KiB at 25 (bench -suite dp). Bulk transfers
// allocate next to nothing (pooled pieces and TLS records), so the collector hardly runs
// during them; what runs it more often is handshakes (some 50 KiB of garbage each).
const dpGCPercent = 25

func dpCommand() *cli.Command {
	return &cli.Command{
		Name:  "dp",
		Usage: "distribution points: serve one, list the site's",
		Commands: []*cli.Command{
			{
				Name:  "serve",
				Usage: "run a distribution point from its own configuration file",
				Description: `Runs a standalone distribution point (DP) until SIGINT or SIGTERM, printing each
listener's URL once it accepts connections. The file (see etc/dp.yaml) names the DP's
certificate (a site-server certificate of role dp whose common name is the DP's id), the
site's roots and an MP: the DP has no database settings, it registers with that MP and learns
revocations, blocked devices and what is distributed to it there. A DP that has never heard
from its MP answers 503 until it has; one that has serves from what it kept on disk.
The site's own (origin) DP runs with ibcm site up instead. Unless GOGC is set, the DP runs
its Go collector at GOGC=25, which bounds its memory per connection.

EXAMPLES:
   ibcm ca issue --dir /srv/ibcm --profile site-server --role dp --subject dp2 --dns dp2.corp.example --out dp2.crt --key-out dp2.key
   ibcm dp serve --config /etc/ibcm/dp.yaml
   IBCM_DP_CONFIG=/etc/ibcm/dp.yaml ibcm dp serve --log-level debug`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "config", Required: true, Usage: "the DP's configuration file (version: 1, dp: ...)", Sources: cli.EnvVars("IBCM_DP_CONFIG"), TakesFile: true},
				},
				Action: func(ctx context.Context, c *cli.Command) error {
					cfg, err := dp.Load(c.String("config"))
					if err != nil {
						return usageError("%v", err)
					}
					d, err := dp.New(dp.Options{Settings: cfg.DP, Log: logger(c), Version: cliapp.Version()})
					if err != nil {
						return err
					}
					if os.Getenv("GOGC") == "" {
						debug.SetGCPercent(dpGCPercent)
					}
					ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
					defer stop()
					return d.Serve(ctx, c.Root().Writer)
				},
			},
			{
				Name:  "list",
				Usage: "list the site's distribution points and the state of each package on each",
				Description: `Asks the MP (GET /v1/admin/dps) for every registered DP: its mode, priority, whether it
is the origin and online, and per package version its state: pending, n % while syncing,
ready, or failed with the reason.

EXAMPLES:
   ibcm dp list --dir /srv/ibcm
   ibcm dp list --json | jq '.[] | select(.online|not) | .id'`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(ctx context.Context, c *cli.Command) error {
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var dps []wire.DPInfo
					if err := a.do(ctx, http.MethodGet, "/v1/admin/dps", nil, &dps); err != nil {
						return err
					}
					if c.Bool("json") {
						if dps == nil {
							dps = []wire.DPInfo{}
						}
						return printJSON(c.Root().Writer, dps)
					}
					return printDPs(c.Root().Writer, dps, time.Now())
				},
			},
		},
	}
}

// printDPs writes one line per DP and package version (a DP with none gets one line).
func printDPs(out io.Writer, dps []wire.DPInfo, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tMODE\tPRIORITY\tORIGIN\tONLINE\tLAST SEEN\tURL\tPACKAGE\tSTATE")
	for _, d := range dps {
		urls := []string{}
		for _, u := range []string{d.IntranetURL, d.InternetURL} {
			if u != "" {
				urls = append(urls, u)
			}
		}
		seen := "-"
		if !d.LastSeen.IsZero() {
			seen = d.LastSeen.UTC().Format(time.RFC3339)
		}
		head := fmt.Sprintf("%s\t%s\t%d\t%s\t%s\t%s\t%s", d.ID, d.Mode, d.Priority, yesNo(d.Origin), yesNo(d.Online), seen, dash(strings.Join(urls, " ")))
		pkgs := append([]wire.DPPackageState(nil), d.Packages...)
		sort.Slice(pkgs, func(i, j int) bool {
			if pkgs[i].Name != pkgs[j].Name {
				return pkgs[i].Name < pkgs[j].Name
			}
			return pkgs[i].Version < pkgs[j].Version
		})
		if len(pkgs) == 0 {
			fmt.Fprintf(w, "%s\t-\t-\n", head)
		}
		for _, p := range pkgs {
			fmt.Fprintf(w, "%s\t%s %s\t%s\n", head, p.Name, p.Version, dpState(p))
		}
	}
	return w.Flush()
}

// dpState is a package's state as a person reads it: pending, 42 %, ready, failed: why.
func dpState(p wire.DPPackageState) string {
	switch p.State {
	case wire.DPSyncing:
		return fmt.Sprintf("%d %%", p.Percent)
	case wire.DPFailed:
		if p.Error != "" {
			return "failed: " + strings.ReplaceAll(p.Error, "\t", " ")
		}
		return "failed"
	case "":
		return "-"
	}
	return p.State
}
