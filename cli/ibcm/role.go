package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The roles of the site (admin API of the CA, ManageAccess): the built-in ones and custom
// sets of permissions, and which user holds which over which device groups.

func roleCommand() *cli.Command {
	return &cli.Command{
		Name:  "role",
		Usage: "roles: list, show, create, delete, and assign them to users over device groups",
		Commands: []*cli.Command{
			roleListCommand(), roleShowCommand(), roleCreateCommand(), roleDeleteCommand(),
			roleAssignCommand("assign", "give USER the role ROLE over the --scope device groups (none: every device and the site)"),
			roleAssignCommand("unassign", "take the role ROLE from USER over the --scope device groups (none: every scope)"),
		},
	}
}

func roleListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the roles and their permissions",
		Description: `EXAMPLES:
   ibcm role list
   ibcm role list --dir /srv/ibcm --json`,
		Flags: append(adminFlags(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var rs []wire.Role
			if err := a.do(ctx, http.MethodGet, "/v1/admin/roles", nil, &rs); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, rs)
			}
			w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tKIND\tPERMISSIONS")
			for _, r := range rs {
				fmt.Fprintf(w, "%s\t%s\t%s\n", r.Name, roleKind(r), dash(strings.Join(r.Permissions, ", ")))
			}
			return w.Flush()
		},
	}
}

func roleKind(r wire.Role) string {
	if r.BuiltIn {
		return "built-in"
	}
	return "custom"
}

func roleShowCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "show one role",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `EXAMPLES:
   ibcm role show "Help Desk Operator"
   ibcm role show "Help Desk Operator" --json | jq -r '.permissions[]'`,
		Flags: append(adminFlags(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var r wire.Role
			if err := a.do(ctx, http.MethodGet, "/v1/admin/roles/"+url.PathEscape(c.StringArg("NAME")), nil, &r); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, r)
			}
			w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "name\t%s\nkind\t%s\n", r.Name, roleKind(r))
			if r.Description != "" {
				fmt.Fprintf(w, "description\t%s\n", r.Description)
			}
			fmt.Fprintf(w, "permissions\t%s\n", dash(strings.Join(r.Permissions, ", ")))
			return w.Flush()
		},
	}
}

func roleCreateCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "create a custom role from permission names",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `PERMISSION is one of ViewScreen, FullControl, Elevation, Unattended,
OfferRemoteAssistance, ReadDevices, ManageDevices, ManagePolicy, ManagePKI,
ManageContent, ManageAccess, ReadAudit; repeat --permission or separate them by commas.

EXAMPLES:
   ibcm role create "Remote Viewer" --permission ViewScreen --permission ReadDevices
   ibcm role create "Policy Editor" --permission ReadDevices,ManagePolicy --description "edits policies"`,
		Flags: append(adminFlags(), jsonFlag(),
			&cli.StringSliceFlag{Name: "permission", Required: true, Usage: "permission the role gives; repeat for more", Sources: cli.EnvVars("IBCM_ROLE_PERMISSION")},
			&cli.StringFlag{Name: "description", Usage: "what the role is for", Sources: cli.EnvVars("IBCM_ROLE_DESCRIPTION")},
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var r wire.Role
			if err := a.do(ctx, http.MethodPost, "/v1/admin/roles", wire.Role{
				Name: c.StringArg("NAME"), Description: c.String("description"), Permissions: c.StringSlice("permission"),
			}, &r); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, r)
			}
			fmt.Fprintf(c.Root().Writer, "role %s created: %s\n", r.Name, dash(strings.Join(r.Permissions, ", ")))
			return nil
		},
	}
}

func roleDeleteCommand() *cli.Command {
	return &cli.Command{
		Name:      "delete",
		Usage:     "delete a custom role nobody holds",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `EXAMPLES:
   ibcm role delete "Remote Viewer"`,
		Flags: adminFlags(),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			name := c.StringArg("NAME")
			if err := a.do(ctx, http.MethodDelete, "/v1/admin/roles/"+url.PathEscape(name), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.Root().Writer, "role %s deleted\n", name)
			return nil
		},
	}
}

// roleAssignCommand is ibcm role assign or unassign.
func roleAssignCommand(verb, usage string) *cli.Command {
	return &cli.Command{
		Name:      verb,
		Usage:     usage,
		Arguments: []cli.Argument{cliapp.Arg("USER"), cliapp.Arg("ROLE")},
		Description: fmt.Sprintf(`EXAMPLES:
   ibcm role %s alice "Help Desk Operator" --scope helpdesk-eu --scope kiosks
   ibcm role %s bob "Read-only Analyst" --dir /srv/ibcm`, verb, verb),
		Flags: append(adminFlags(), jsonFlag(), scopeFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var u wire.User
			if err := a.do(ctx, http.MethodPost, "/v1/admin/users/"+url.PathEscape(c.StringArg("USER"))+"/"+verb,
				wire.AssignRequest{Role: c.StringArg("ROLE"), Scopes: c.StringSlice("scope")}, &u); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, u)
			}
			return printUser(c.Root().Writer, u)
		},
	}
}
