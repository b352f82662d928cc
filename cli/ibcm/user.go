package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The users of the site (admin API of the CA, ManageAccess): `ibcm user add` prints the
// one-time login token the new user spends with `ibcm login` on their own machine.

func userCommand() *cli.Command {
	return &cli.Command{
		Name:  "user",
		Usage: "the site's helpers and administrators: add, list, show, disable, enable, new login token",
		Commands: []*cli.Command{
			userAddCommand(), userListCommand(), userShowCommand(), userTokenCommand(),
			userStateCommand("disable", "disable a user: revokes their certificates (every server refuses them) and unspent login tokens"),
			userStateCommand("enable", "enable a disabled user again (they need a new login: ibcm user token)"),
		},
	}
}

func loginTTLFlag() *cli.DurationFlag {
	return &cli.DurationFlag{Name: "ttl", Value: 24 * time.Hour, Usage: "how long the login token stays usable, such as 2h (at most 168h)", Sources: cli.EnvVars("IBCM_LOGIN_TTL"),
		Validator: cliapp.Positive}
}

func userAddCommand() *cli.Command {
	return &cli.Command{
		Name:      "add",
		Usage:     "add a user with a role; prints their one-time login token alone on stdout (shown once)",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `Adds the user and gives them ROLE over the --scope device groups (none: every device
and the site). The login token is printed once; hand it to the user, who runs ibcm login
with it on their own machine, so their key never leaves it.

EXAMPLES:
   ibcm user add alice --role "Help Desk Operator" --scope helpdesk-eu --display-name "Alice Martin" --title "Service desk"
   TOKEN=$(ibcm user add bob --role "Read-only Analyst" --org "Audit" --ttl 2h)
   ibcm user add carol --dir /srv/ibcm --role "Full Administrator"`,
		Flags: append(adminFlags(),
			&cli.StringFlag{Name: "role", Required: true, Usage: "the user's role (see ibcm role list)", Sources: cli.EnvVars("IBCM_USER_ROLE")},
			scopeFlag(),
			&cli.StringFlag{Name: "display-name", Usage: "the user's full name", Sources: cli.EnvVars("IBCM_USER_DISPLAY_NAME")},
			&cli.StringFlag{Name: "title", Usage: "the user's job title", Sources: cli.EnvVars("IBCM_USER_TITLE")},
			&cli.StringFlag{Name: "org", Usage: "the user's organisation or department", Sources: cli.EnvVars("IBCM_USER_ORG")},
			loginTTLFlag(),
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var t wire.UserToken
			if err := a.do(ctx, http.MethodPost, "/v1/admin/users", wire.UserCreateRequest{
				Name: c.StringArg("NAME"), DisplayName: c.String("display-name"), Title: c.String("title"), Org: c.String("org"),
				Role: c.String("role"), Scopes: c.StringSlice("scope"), TTL: c.Duration("ttl").String(),
			}, &t); err != nil {
				return err
			}
			printLoginToken(c, a, t)
			return nil
		},
	}
}

// printLoginToken prints the secret alone on stdout and, on stderr, the ibcm login the
// user runs with it (the CA's URL as this admin reaches it).
func printLoginToken(c *cli.Command, a *adminClient, t wire.UserToken) {
	fmt.Fprintln(c.Root().Writer, t.Token)
	fmt.Fprintf(c.Root().ErrWriter, "login token for user %s, one use, expires %s; on their machine they run\n  ibcm login --ca %s --root-sha256 %s --token TOKEN\n",
		t.User.Name, t.ExpiresAt.Format(time.RFC3339), a.base, a.root)
}

func scopeFlag() *cli.StringSliceFlag {
	return &cli.StringSliceFlag{Name: "scope", Usage: "device `GROUP` the role covers; repeat for more (none: every device and the site)", Sources: cli.EnvVars("IBCM_SCOPE")}
}

func userListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the users with their roles",
		Description: `EXAMPLES:
   ibcm user list
   ibcm user list --dir /srv/ibcm --json`,
		Flags: append(adminFlags(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var us []wire.User
			if err := a.do(ctx, http.MethodGet, "/v1/admin/users", nil, &us); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, us)
			}
			w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tDISPLAY NAME\tROLES\tSTATE\tCREATED")
			for _, u := range us {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", u.Name, dash(u.DisplayName), assignments(u.Roles), userState(u), u.CreatedAt.Format(time.RFC3339))
			}
			return w.Flush()
		},
	}
}

func userShowCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "show one user: roles, scopes and the permissions they give",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `EXAMPLES:
   ibcm user show alice
   ibcm user show alice --json | jq .roles`,
		Flags: append(adminFlags(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var u wire.User
			if err := a.do(ctx, http.MethodGet, "/v1/admin/users/"+url.PathEscape(c.StringArg("NAME")), nil, &u); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, u)
			}
			return printUser(c.Root().Writer, u)
		},
	}
}

func printUser(out io.Writer, u wire.User) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "name\t%s\n", u.Name)
	for _, f := range []struct{ k, v string }{{"display name", u.DisplayName}, {"title", u.Title}, {"org", u.Org}} {
		if f.v != "" {
			fmt.Fprintf(w, "%s\t%s\n", f.k, f.v)
		}
	}
	fmt.Fprintf(w, "state\t%s\n", userState(u))
	fmt.Fprintf(w, "roles\t%s\n", assignments(u.Roles))
	fmt.Fprintf(w, "site permissions\t%s\n", dash(strings.Join(u.Permissions, ", ")))
	fmt.Fprintf(w, "created\t%s by %s\n", u.CreatedAt.Format(time.RFC3339), u.CreatedBy)
	return w.Flush()
}

func userState(u wire.User) string {
	if u.Disabled {
		if u.DisabledAt != nil {
			return "disabled since " + u.DisabledAt.Format(time.RFC3339)
		}
		return "disabled"
	}
	return "enabled"
}

// assignments reads "Role (all devices), Role over group".
func assignments(as []wire.Assignment) string {
	var parts []string
	for _, a := range as {
		if a.Scope == "" {
			parts = append(parts, a.Role+" (all)")
		} else {
			parts = append(parts, a.Role+" over "+a.Scope)
		}
	}
	return dash(strings.Join(parts, ", "))
}

func userTokenCommand() *cli.Command {
	return &cli.Command{
		Name:      "token",
		Usage:     "make a new one-time login token for a user (a new machine, a lost key); prints it alone on stdout",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `EXAMPLES:
   ibcm user token alice
   TOKEN=$(ibcm user token alice --ttl 2h)`,
		Flags: append(adminFlags(), loginTTLFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var t wire.UserToken
			if err := a.do(ctx, http.MethodPost, "/v1/admin/users/"+url.PathEscape(c.StringArg("NAME"))+"/token",
				map[string]string{"ttl": c.Duration("ttl").String()}, &t); err != nil {
				return err
			}
			printLoginToken(c, a, t)
			return nil
		},
	}
}

// userStateCommand is ibcm user disable or enable.
func userStateCommand(verb, usage string) *cli.Command {
	return &cli.Command{
		Name:      verb,
		Usage:     usage,
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: fmt.Sprintf(`EXAMPLES:
   ibcm user %s alice
   ibcm user %s alice --dir /srv/ibcm --json`, verb, verb),
		Flags: append(adminFlags(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			name := c.StringArg("NAME")
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			path := "/v1/admin/users/" + url.PathEscape(name) + "/" + verb
			if verb == "enable" {
				var u wire.User
				if err := a.do(ctx, http.MethodPost, path, struct{}{}, &u); err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(c.Root().Writer, u)
				}
				fmt.Fprintf(c.Root().Writer, "user %s enabled\n", u.Name)
				return nil
			}
			var d wire.UserDisabled
			if err := a.do(ctx, http.MethodPost, path, struct{}{}, &d); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, d)
			}
			fmt.Fprintf(c.Root().Writer, "user %s disabled\n", d.User.Name)
			for _, sn := range d.Revoked {
				fmt.Fprintf(c.Root().Writer, "  revoked certificate %s\n", sn)
			}
			return nil
		},
	}
}
