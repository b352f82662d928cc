package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/dp"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/site"
)

func siteCommand() *cli.Command {
	return &cli.Command{
		Name:  "site",
		Usage: "create, run and check a whole site on this server",
		Commands: []*cli.Command{
			{
				Name:  "init",
				Usage: "create a new site: CA hierarchy, database, certificates, first admin",
				Description: `Creates DIR with site.yaml, the root and issuing CA (the issuing key encrypted with the
CA password), the database, the TLS certificates of the CA, the MP and the site's (origin)
distribution point dp1, and a first admin identity in DIR/admin. It never prompts and refuses to overwrite an existing site. Without
--password-file or IBCM_CA_PASSWORD it makes a random password in DIR/ca/password (0600).

EXAMPLES:
   ibcm site init --dir /srv/ibcm --site-code P01 --intranet-name ibcm.corp.example --internet-name ibcm.example.com
   ibcm site init --dir ./site --site-code LAB --mp-mode internet --mp-internet-addr 0.0.0.0:443 --intranet-name ca.lab.test --internet-name ca.example.net \
       --ca-addr 127.0.0.1:9443 --ca-public-addr 127.0.0.1:9080 --key-type p384 --offline-root /media/usb/ibcm-root
   ibcm site init --dir /srv/ibcm --site-code P01 --intranet-name a.corp --internet-name a.example \
       --store postgres --dsn 'postgres://ibcm@db.corp.example/ibcm?sslmode=verify-full'`,
				Flags: []cli.Flag{
					dirFlag(true),
					&cli.StringFlag{Name: "site-code", Required: true, Usage: "three upper-case letters or digits", Sources: cli.EnvVars("IBCM_SITE_CODE")},
					&cli.StringFlag{Name: "intranet-name", Required: true, Usage: "the site servers' intranet FQDN", Sources: cli.EnvVars("IBCM_INTRANET_NAME")},
					&cli.StringFlag{Name: "internet-name", Required: true, Usage: "the site servers' internet FQDN", Sources: cli.EnvVars("IBCM_INTERNET_NAME")},
					&cli.StringFlag{Name: "ca-addr", Value: "127.0.0.1:8443", Usage: "HTTPS listener of the CA (enroll, renew, admin API)", Sources: cli.EnvVars("IBCM_CA_ADDR")},
					&cli.StringFlag{Name: "ca-public-addr", Value: "127.0.0.1:8080", Usage: "plain-HTTP listener of the CA (CRL, OCSP, CA certificates)", Sources: cli.EnvVars("IBCM_CA_PUBLIC_ADDR")},
					&cli.StringFlag{Name: "mp-intranet-addr", Value: "127.0.0.1:9443", Usage: "MP intranet listener (mutual TLS)", Sources: cli.EnvVars("IBCM_MP_INTRANET_ADDR")},
					&cli.StringFlag{Name: "mp-internet-addr", Value: "127.0.0.1:9444", Usage: "MP internet listener (mutual TLS)", Sources: cli.EnvVars("IBCM_MP_INTERNET_ADDR")},
					&cli.StringFlag{Name: "mp-mode", Value: "both", Usage: "MP connection mode: intranet, internet or both", Sources: cli.EnvVars("IBCM_MP_MODE"),
						Validator: cliapp.OneOf("intranet", "internet", "both")},
					&cli.StringFlag{Name: "console-addr", Value: "127.0.0.1:9445", Usage: `web console listener (HTTPS, no client certificate; "" for none)`, Sources: cli.EnvVars("IBCM_CONSOLE_ADDR")},
					&cli.StringFlag{Name: "dp-intranet-addr", Value: dp.DefaultIntranetListen, Usage: "intranet listener of the site's distribution point (mutual TLS)", Sources: cli.EnvVars("IBCM_DP_INTRANET_ADDR")},
					&cli.StringFlag{Name: "dp-internet-addr", Value: dp.DefaultInternetListen, Usage: "internet listener of the site's distribution point (mutual TLS)", Sources: cli.EnvVars("IBCM_DP_INTERNET_ADDR")},
					&cli.StringFlag{Name: "dp-mode", Value: "both", Usage: "DP connection mode: intranet, internet or both", Sources: cli.EnvVars("IBCM_DP_MODE"),
						Validator: cliapp.OneOf("intranet", "internet", "both")},
					&cli.StringFlag{Name: "store", Value: "sqlite", Usage: "sqlite (DIR/site.db) or postgres", Sources: cli.EnvVars("IBCM_STORE"),
						Validator: cliapp.OneOf("sqlite", "postgres")},
					&cli.StringFlag{Name: "dsn", Usage: "PostgreSQL DSN with --store postgres", Sources: cli.EnvVars("IBCM_DSN")},
					&cli.StringFlag{Name: "key-type", Value: "p256", Usage: "CA key type: p256, p384, rsa2048, rsa3072", Sources: cli.EnvVars("IBCM_KEY_TYPE"),
						Validator: keyType},
					&cli.StringFlag{Name: "password-file", Usage: "file holding the password that encrypts the CA keys", Sources: cli.EnvVars("IBCM_CA_PASSWORD_FILE")},
					&cli.StringFlag{Name: "offline-root", Usage: "write the root key here instead of into DIR (then take it off the server)", Sources: cli.EnvVars("IBCM_OFFLINE_ROOT")},
					&cli.StringFlag{Name: "admin", Value: "admin", Usage: "name of the first admin", Sources: cli.EnvVars("IBCM_ADMIN_NAME")},
				},
				Action: func(ctx context.Context, c *cli.Command) error {
					if err := site.CheckSiteCode(c.String("site-code")); err != nil {
						return usageError("--site-code: %v", err)
					}
					_, err := site.Init(ctx, site.InitOptions{
						Dir: c.String("dir"), SiteCode: c.String("site-code"),
						IntranetName: c.String("intranet-name"), InternetName: c.String("internet-name"),
						CAAddr: c.String("ca-addr"), CAPublicAddr: c.String("ca-public-addr"),
						MPIntranetAddr: c.String("mp-intranet-addr"), MPInternetAddr: c.String("mp-internet-addr"), MPMode: c.String("mp-mode"),
						ConsoleAddr: c.String("console-addr"), NoConsole: c.String("console-addr") == "",
						DPIntranetAddr: c.String("dp-intranet-addr"), DPInternetAddr: c.String("dp-internet-addr"), DPMode: c.String("dp-mode"),
						Store: c.String("store"), DSN: c.String("dsn"), KeyType: c.String("key-type"),
						PasswordFile: c.String("password-file"), OfflineRoot: c.String("offline-root"), AdminName: c.String("admin"),
					}, c.Root().Writer)
					return flagNamesForKeys(err)
				},
			},
			{
				Name:  "up",
				Usage: "run every role of the site in this process",
				Description: `Runs the site's roles (CA, MP, and the origin DP of the dp section) until SIGINT or
SIGTERM, printing each listener's URL once it accepts connections. Every listener answers GET /healthz.

EXAMPLES:
   ibcm site up --dir /srv/ibcm
   IBCM_CA_PASSWORD=... ibcm site up --dir /srv/ibcm --log-level debug`,
				Flags: []cli.Flag{dirFlag(true)},
				Action: func(ctx context.Context, c *cli.Command) error {
					return serve(ctx, c, filepath.Join(c.String("dir"), site.FileName))
				},
			},
			{
				Name:  "status",
				Usage: "check every listener of the site; exit 0 only when all are healthy",
				Description: `Asks GET /healthz of each listener in site.yaml and prints a table (or JSON).
Exit status 0 when all are healthy, 3 when any is not.

EXAMPLES:
   ibcm site status --dir /srv/ibcm
   ibcm site status --dir /srv/ibcm --json | jq '.[] | select(.healthy|not)'`,
				Flags: []cli.Flag{dirFlag(true), jsonFlag()},
				Action: func(ctx context.Context, c *cli.Command) error {
					cfg, err := site.Load(filepath.Join(c.String("dir"), site.FileName))
					if err != nil {
						return err
					}
					hs, err := site.Status(ctx, cfg)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						enc := json.NewEncoder(c.Root().Writer)
						enc.SetIndent("", "  ")
						_ = enc.Encode(hs)
					} else {
						w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
						fmt.Fprintln(w, "ROLE\tURL\tHEALTH\tLATENCY")
						for _, h := range hs {
							state := "ok"
							if !h.Healthy {
								state = "DOWN: " + h.Error
							}
							fmt.Fprintf(w, "%s\t%s\t%s\t%dms\n", h.Role, h.URL, state, h.LatencyMS)
						}
						w.Flush()
					}
					for _, h := range hs {
						if !h.Healthy {
							return exitErr{exitUnhealthy, fmt.Errorf("%s is not healthy", h.Role)}
						}
					}
					return nil
				},
			},
		},
	}
}

// initFlags are the flags of site init that set a key of site.yaml.
var initFlags = map[string]string{
	"site.code": "--site-code", "site.intranet_name": "--intranet-name", "site.internet_name": "--internet-name",
	"ca.listen": "--ca-addr", "ca.public_listen": "--ca-public-addr",
	"mp.intranet_listen": "--mp-intranet-addr", "mp.internet_listen": "--mp-internet-addr", "mp.mode": "--mp-mode",
	"mp.console_listen": "--console-addr", "mp.console_url": "--console-addr",
	"dp.intranet_listen": "--dp-intranet-addr", "dp.internet_listen": "--dp-internet-addr", "dp.mode": "--dp-mode",
	"store.driver": "--store", "store.dsn": "--dsn",
}

// flagNamesForKeys names the flag instead of the site.yaml key in each line of a
// validation error of site init: the user gave a flag, not the key.
func flagNamesForKeys(err error) error {
	if err == nil {
		return nil
	}
	lines := strings.Split(err.Error(), "\n")
	renamed := false
	for i, l := range lines {
		key, rest, ok := strings.Cut(l, ": ")
		if f, known := initFlags[key]; ok && known {
			lines[i], renamed = f+": "+rest, true
		}
	}
	if !renamed {
		return err
	}
	return usageError("%s", strings.Join(lines, "\n"))
}

// serveConfig is the site.yaml a serve command runs: --config, or site.yaml in --dir.
func serveConfig(c *cli.Command) (string, error) {
	dir, config := c.String("dir"), c.String("config")
	switch {
	case dir != "" && config != "":
		return "", usageError("give --dir or --config, not both")
	case config != "":
		return config, nil
	case dir != "":
		return filepath.Join(dir, site.FileName), nil
	}
	return "", usageError("say which site to serve: --dir DIR (its site.yaml) or --config FILE")
}

// serve runs the roles of the config file until SIGINT/SIGTERM.
func serve(ctx context.Context, c *cli.Command, path string, roles ...string) error {
	cfg, err := site.Load(path)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return site.Run(ctx, cfg, c.Root().Writer, logger(c), roles...)
}

// keyType validates a --key-type flag.
var keyType = cliapp.OneOf("p256", "p384", "rsa2048", "rsa3072")

func dirFlag(required bool) *cli.StringFlag {
	return &cli.StringFlag{Name: "dir", Required: required, Usage: "the site directory (holds site.yaml)", Sources: cli.EnvVars("IBCM_DIR"), TakesFile: true}
}

func jsonFlag() *cli.BoolFlag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts", Sources: cli.EnvVars("IBCM_JSON")}
}

// configFlag names the site.yaml a role serves (instead of --dir).
func configFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "config", Usage: "site.yaml to serve (instead of --dir)", Sources: cli.EnvVars("IBCM_CONFIG"), TakesFile: true}
}
