package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

// consoleCommand is `ibcm console login|logout`: the web console's logins, made with the
// user's certificate so that no key goes into a browser.
func consoleCommand() *cli.Command {
	return &cli.Command{
		Name:  "console",
		Usage: "the web console: a one-time login URL for your browser, or logging out everywhere",
		Commands: []*cli.Command{{
			Name:  "login",
			Usage: "print a one-time URL that logs your browser into the web console as you",
			Description: `Asks the management point, with your ibcm certificate, for a login link. The URL is
printed alone on stdout: open it in your browser within 5 minutes; it works once, and
the browser's session lasts 8 hours (log out in the console, or ibcm console logout).
The console listener is mp.console_listen of site.yaml (mp.console_url).

EXAMPLES:
   ibcm console login
   xdg-open "$(ibcm console login)"`,
			Flags: adminFlags(),
			Action: func(ctx context.Context, c *cli.Command) error {
				a, err := newRoleClient(c, site.RoleMP)
				if err != nil {
					return err
				}
				var link wire.ConsoleLink
				if err := a.do(ctx, http.MethodPost, "/v1/admin/console/links", struct{}{}, &link); err != nil {
					return err
				}
				fmt.Fprintln(c.Root().Writer, link.URL)
				fmt.Fprintf(c.Root().ErrWriter, "open it in your browser before %s (once; it is a secret: do not share it)\n",
					link.ExpiresAt.Local().Format("15:04:05"))
				return nil
			},
		}, {
			Name:  "logout",
			Usage: "end every web-console session of yours (or, with ManageAccess, another user's)",
			Description: `Revokes the console sessions of the user at once, in every browser, and the login
links not opened yet.

EXAMPLES:
   ibcm console logout
   ibcm console logout --user alice`,
			Flags: append(adminFlags(),
				&cli.StringFlag{Name: "user", Usage: "whose sessions to end (default: yours; another's needs ManageAccess)", Sources: cli.EnvVars("IBCM_CONSOLE_USER"),
					Validator: func(s string) error { return access.ValidUserName(s) }},
			),
			Action: func(ctx context.Context, c *cli.Command) error {
				a, err := newRoleClient(c, site.RoleMP)
				if err != nil {
					return err
				}
				var res wire.ConsoleRevokeResult
				if err := a.do(ctx, http.MethodPost, "/v1/admin/console/revoke", wire.ConsoleRevokeRequest{User: c.String("user")}, &res); err != nil {
					return err
				}
				if u := c.String("user"); u != "" {
					fmt.Fprintf(c.Root().Writer, "ended %d web-console session(s) of %s\n", res.Revoked, u)
				} else {
					fmt.Fprintf(c.Root().Writer, "ended %d of your web-console session(s)\n", res.Revoked)
				}
				return nil
			},
		}},
	}
}
