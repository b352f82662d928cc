package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/agent"
	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/internal/cliapp"
)

func resolvConfFlag() *cli.StringFlag {
	return &cli.StringFlag{
		Name: "resolv-conf", Value: "/etc/resolv.conf", Sources: cli.EnvVars("IBCM_CLIENT_RESOLV_CONF"), TakesFile: true,
		Usage: "resolver configuration `FILE` (resolv.conf format; nameserver lines may carry IP:PORT)",
	}
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run the agent: location detection, MP check-in, policy, notifications, status spool, renewal",
		Description: `run is the daemon (etc/ibcm-client.service runs it under systemd). It detects whether the
device is on the intranet or the internet, uses the MP for that location, re-detects when the
resolver configuration or the network changes, when the MP fails and on a timer, checks in,
keeps the notification channel open, delivers spooled status messages and renews the
certificate at two thirds of its life. It serves remote-control sessions: tickets from the
notification channel, consent through the share socket (--share-socket, any local user may
connect; see share and consent), the relay through the MP and, on the intranet, the session
port (--console-sessions=false refuses the sessions of the web console, which end at the
MP). It carries out the deployments of its policy (see deployments): the DPs of its
location, signed manifests, a download cache bounded by --cache-size, install commands run
as root outside the agent's sandbox (through systemd-run when session shells are). Logs go to stderr: JSON, or zerolog's console format
when stderr is a terminal (--log-format json keeps JSON there too).

EXAMPLES:
   ibcm-client run

   ibcm-client run --dir /srv/agent --resolv-conf /run/systemd/resolve/resolv.conf --log-level debug`,
		Flags: []cli.Flag{
			dirFlag(), resolvConfFlag(), shareSocketFlag(),
			&cli.StringFlag{Name: "session-shells", Value: "auto", Sources: cli.EnvVars("IBCM_CLIENT_SESSION_SHELLS"),
				Usage:     "how remote sessions start shells: systemd (a transient unit each, outside the agent's sandbox), direct (children of the agent), or auto (systemd when run as a systemd service)",
				Validator: cliapp.OneOf("auto", "systemd", "direct")},
			&cli.StringSliceFlag{Name: "direct-addr", Sources: cli.EnvVars("IBCM_CLIENT_DIRECT_ADDR"),
				Usage: "an address `IP` the agent reports at check-in and where its session port listens (repeatable; default: every non-loopback address)"},
			&cli.StringFlag{Name: "cache-size", Value: "4GiB", Sources: cli.EnvVars("IBCM_CLIENT_CACHE_SIZE"),
				Usage: "bound the deployments' blob cache to `SIZE` (bytes, or with KiB, MiB, GiB, TiB); least recently used blobs go first"},
			stallTimeoutFlag(),
			&cli.BoolFlag{Name: "console-sessions", Value: true, Sources: cli.EnvVars("IBCM_CLIENT_CONSOLE_SESSIONS"),
				Usage: "take remote sessions started from the web console (they end at the MP, not end to end with the helper); false refuses them (console_forbidden) whatever the site's policy says"},
		},
		Action: func(ctx context.Context, c *cli.Command) error {
			shells := c.String("session-shells")
			if shells == "auto" {
				shells = ""
			}
			var direct []net.IP
			for _, s := range c.StringSlice("direct-addr") {
				ip := net.ParseIP(s)
				if ip == nil {
					return fmt.Errorf("--direct-addr %q: not an IP address", s)
				}
				direct = append(direct, ip)
			}
			cacheSize, err := parseSize(c.String("cache-size"))
			if err != nil {
				return cliapp.UsageErrorf("--cache-size: %v", err)
			}
			a, err := agent.New(agent.Options{Dir: c.String("dir"), ResolvConf: c.String("resolv-conf"), Log: logger(c),
				ShareSocket: c.String("share-socket"), Shells: shells, DirectAddrs: direct,
				CacheSize: cacheSize, StallTimeout: c.Duration("stall-timeout"), NoConsoleSessions: !c.Bool("console-sessions")})
			if err != nil {
				return err
			}
			return a.Run(ctx)
		},
	}
}

func locationCommand() *cli.Command {
	return &cli.Command{
		Name:  "location",
		Usage: "run one location detection and print the decision with its evidence",
		Description: `location detects, once, whether the device is on the intranet or the internet, the way the
agent does: SRV queries for the intranet MP to the configured resolvers, a TLS probe that must
meet a site-server certificate of an MP of this site whose answer to GET /v1/probe, over that
connection, says it is the intranet listener, and the internet MP probe at the same time. It
prints the decision, the queries, answers, probes and their timings. With --json the object
has "location": "intranet" or "internet" at its top level.

EXAMPLES:
   ibcm-client location

   ibcm-client location --dir /srv/agent --resolv-conf ./test-resolv.conf --json`,
		Flags: []cli.Flag{dirFlag(), resolvConfFlag(),
			&cli.BoolFlag{Name: "json", Sources: cli.EnvVars("IBCM_CLIENT_JSON"), Usage: "print JSON"}},
		Action: func(ctx context.Context, c *cli.Command) error {
			id, err := client.Load(c.String("dir"))
			if err != nil {
				return err
			}
			cfg := location.Config{ResolvConf: c.String("resolv-conf"), Roots: id.Roots, ClientCert: &id.Certificate}
			if b := id.Bootstrap; b != nil {
				cfg.SiteCode, cfg.IntranetSuffixes, cfg.SRVNames, cfg.InternetMPs = b.SiteCode, b.IntranetDNSSuffixes, b.SRVNames, b.InternetMPs
			}
			if p, ok := agent.CachedPolicy(id.Dir); ok {
				l := p.Location
				cfg.IntranetSuffixes, cfg.SRVNames, cfg.InternetMPs, cfg.AlwaysInternet = l.IntranetDNSSuffixes, l.SRVNames, l.InternetMPNames, l.AlwaysInternet
			}
			d := location.Detect(ctx, cfg)
			if c.Bool("json") {
				enc := json.NewEncoder(c.Root().Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(d)
			}
			fmt.Fprintf(c.Root().Writer, "location: %s\nmp:       %s\nreason:   %s\ntook:     %s\n\n", d.Location, d.MP, d.Reason, d.Took.Round(time.Millisecond))
			w := tabwriter.NewWriter(c.Root().Writer, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "STEP\tTARGET\tRESULT\tTOOK")
			for _, s := range d.Evidence {
				res := s.Result
				if s.Error != "" {
					res += " (" + s.Error + ")"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", s.Kind, s.Target, res, s.Took.Round(time.Microsecond))
			}
			return w.Flush()
		},
	}
}

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:  "report",
		Usage: "queue a status message for the MP (through the running agent, or into the spool)",
		Description: `report adds a status message to the agent's spool: delivered at least once, in order,
removed only when the MP acknowledges it, kept across restarts.

EXAMPLES:
   ibcm-client report --text "backup finished"

   ibcm-client report --dir /srv/agent --severity warning --component backup --text "disk 91% full"`,
		Flags: []cli.Flag{dirFlag(),
			&cli.StringFlag{Name: "severity", Value: "info", Sources: cli.EnvVars("IBCM_CLIENT_SEVERITY"), Usage: "info, warning or error"},
			&cli.StringFlag{Name: "component", Value: "user", Sources: cli.EnvVars("IBCM_CLIENT_COMPONENT"), Usage: "what the message is about"},
			&cli.StringFlag{Name: "text", Required: true, Sources: cli.EnvVars("IBCM_CLIENT_TEXT"), Usage: "the message"},
		},
		Action: func(ctx context.Context, c *cli.Command) error {
			err := agent.SendReport(ctx, c.String("dir"), c.String("severity"), c.String("component"), c.String("text"))
			if !errors.Is(err, agent.ErrNotRunning) {
				return err
			}
			// no agent running: spool it for the next run
			return agent.SpoolReport(c.String("dir"), c.String("severity"), c.String("component"), c.String("text"))
		},
	}
}
