package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/site"
)

// Deployments (DESIGN.md §8): a package version targeted at a device group, which reaches
// the group's devices through their policy; the MP's admin API.

func deployCommand() *cli.Command {
	return &cli.Command{
		Name:  "deploy",
		Usage: "deployments of package versions to device groups: create, list, status, remove",
		Commands: []*cli.Command{
			deployCreateCommand(), deployListCommand(), deployStatusCommand(), deployRemoveCommand(),
		},
	}
}

func deployCreateCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "deploy a package version to a device group (download only, or --install)",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `The group's devices get the deployment with their policy, pinned to the manifest the CA
signed; each downloads the files from a DP of its location and verifies them, and with
--install runs the package's install command. Follow it with ibcm deploy status ID.
Needs ManageContent, and the group in your scope.

EXAMPLES:
   ibcm deploy create agent-tools --version 1.4.0 --group kiosks --install
   ibcm deploy create wallpaper --version 2026.12 --group all-desktops
   ID=$(ibcm deploy create agent-tools --version 1.4.0 --group lab --install --json | jq -r .id)`,
		Flags: append(adminFlags(), contentVersionFlag(),
			&cli.StringFlag{Name: "group", Required: true, Usage: "the device `GROUP` to deploy to", Sources: cli.EnvVars("IBCM_DEPLOY_GROUP"),
				Validator: func(s string) error {
					if strings.TrimSpace(s) == "" {
						return fmt.Errorf("must name a device group")
					}
					return nil
				}},
			&cli.BoolFlag{Name: "install", Usage: "run the package's install command on each device (default: download only)", Sources: cli.EnvVars("IBCM_DEPLOY_INSTALL")},
			jsonFlag(),
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			name, err := packageName(c)
			if err != nil {
				return err
			}
			mp, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			var d wire.DeploymentInfo
			if err := mp.do(ctx, http.MethodPost, "/v1/admin/deployments", wire.DeploymentCreate{
				Package: name, Version: c.String("version"), Group: c.String("group"), Install: c.Bool("install"),
			}, &d); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, d)
			}
			fmt.Fprintf(c.Root().Writer, "deployment %s: %s %s to group %s (%s)\n", d.ID, d.Package, d.Version, d.Group, installText(d.Install))
			fmt.Fprintf(c.Root().ErrWriter, "follow it with: ibcm deploy status %s\n", d.ID)
			return nil
		},
	}
}

func installText(install bool) string {
	if install {
		return "install"
	}
	return "download only"
}

func deployListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the deployments with their device counts per state",
		Description: `EXAMPLES:
   ibcm deploy list
   ibcm deploy list --json | jq -r '.[] | select(.counts.failed > 0) | .id'`,
		Flags: append(adminFlags(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			mp, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			var ds []wire.DeploymentInfo
			if err := mp.do(ctx, http.MethodGet, "/v1/admin/deployments", nil, &ds); err != nil {
				return err
			}
			if c.Bool("json") {
				if ds == nil {
					ds = []wire.DeploymentInfo{}
				}
				return printJSON(c.Root().Writer, ds)
			}
			w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tPACKAGE\tVERSION\tGROUP\tMODE\tDEVICES\tCREATED\tBY")
			for _, d := range ds {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Package, d.Version, d.Group, installText(d.Install), countsText(d.Counts),
					d.Created.Format(time.RFC3339), dash(d.CreatedBy))
			}
			return w.Flush()
		},
	}
}

// deployStates is the order the states are counted in.
var deployStates = []string{wire.DeployInstalled, wire.DeployDownloaded, wire.DeployInstalling, wire.DeployDownloading, wire.DeployPending, wire.DeployFailed}

// countsText reads "installed 3, downloading 1, failed 1 (5 devices)"; states without a
// device are left out.
func countsText(counts map[string]int) string {
	var parts []string
	total := 0
	keys := slices.Clone(deployStates)
	var others []string
	for k := range counts {
		if !slices.Contains(deployStates, k) {
			others = append(others, k)
		}
	}
	slices.Sort(others)
	for _, k := range append(keys, others...) {
		if n := counts[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", frame.Printable(k), n))
			total += n
		}
	}
	if total == 0 {
		return "no devices"
	}
	noun := "devices"
	if total == 1 {
		noun = "device"
	}
	return fmt.Sprintf("%s (%d %s)", strings.Join(parts, ", "), total, noun)
}

func deployStatusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show a deployment: counts per state, then each device's state, exit code, DP and error",
		Arguments: []cli.Argument{cliapp.Arg("ID")},
		Description: `A device of the group that has not reported yet counts as pending.

EXAMPLES:
   ibcm deploy status 7c0b5f5e2a4d4e0f9c1b3a2d5e6f7a8b
   ibcm deploy status 7c0b5f5e2a4d4e0f9c1b3a2d5e6f7a8b --json | jq '.devices[] | select(.state == "failed")'`,
		Flags: append(adminFlags(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			id := c.StringArg("ID")
			if strings.TrimSpace(id) == "" {
				return usageError("ID must not be empty (see ibcm deploy list)")
			}
			mp, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			var d wire.DeploymentInfo
			if err := mp.do(ctx, http.MethodGet, "/v1/admin/deployments/"+url.PathEscape(id), nil, &d); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, d)
			}
			return printDeployment(c.Root().Writer, d)
		},
	}
}

func printDeployment(out io.Writer, d wire.DeploymentInfo) error {
	fmt.Fprintf(out, "deployment %s: %s %s to group %s (%s), created %s by %s\n", d.ID, d.Package, d.Version, d.Group, installText(d.Install),
		d.Created.Format(time.RFC3339), dash(d.CreatedBy))
	fmt.Fprintln(out, countsText(d.Counts))
	if len(d.Devices) == 0 {
		return nil
	}
	fmt.Fprintln(out)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DEVICE\tNAME\tSTATE\tEXIT\tDP\tERROR\tUPDATED")
	for _, dev := range d.Devices {
		exit := "-"
		if dev.ExitCode != nil {
			exit = fmt.Sprint(*dev.ExitCode)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dev.DeviceID, dash(frame.Printable(dev.Name)), progressState(dev.State, dev.Percent), exit,
			dash(frame.Printable(dev.DP)), dash(frame.Printable(dev.Error)), timeOrDashValue(dev.Updated))
	}
	return w.Flush()
}

func deployRemoveCommand() *cli.Command {
	return &cli.Command{
		Name:      "remove",
		Usage:     "remove a deployment: it leaves the group's policy (nothing installed is undone)",
		Arguments: []cli.Argument{cliapp.Arg("ID")},
		Description: `EXAMPLES:
   ibcm deploy remove 7c0b5f5e2a4d4e0f9c1b3a2d5e6f7a8b`,
		Flags: adminFlags(),
		Action: func(ctx context.Context, c *cli.Command) error {
			id := c.StringArg("ID")
			if strings.TrimSpace(id) == "" {
				return usageError("ID must not be empty (see ibcm deploy list)")
			}
			mp, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			if err := mp.do(ctx, http.MethodDelete, "/v1/admin/deployments/"+url.PathEscape(id), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.Root().Writer, "removed deployment %s\n", id)
			return nil
		},
	}
}
