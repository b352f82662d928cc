package main

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

func mpCommand() *cli.Command {
	return &cli.Command{
		Name:  "mp",
		Usage: "the management point",
		Subcommands: []*cli.Command{{
			Name:  "serve",
			Usage: "run the MP role alone",
			Description: `Runs the management point's listeners (intranet and/or internet, as mp.mode says) from a
site.yaml until SIGINT or SIGTERM. Several MPs share one PostgreSQL store; give each its own mp.id.
On a SQLite store every role runs in one process (ibcm site up): a second process serving the
same SQLite site is refused. mp.park_idle_channels: false keeps notification channels on
crypto/tls instead of parking them.

EXAMPLES:
   ibcm mp serve --config /etc/ibcm/mp1.yaml
   ibcm mp serve --config /etc/ibcm/mp-dmz.yaml --log-level debug`,
			Flags: []cli.Flag{
				configFlag(),
			},
			Action: func(c *cli.Context) error { return serve(c, c.String("config"), site.RoleMP) },
		}},
	}
}

func deviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "device",
		Usage: "devices: list, show, messages, block, unblock, notify",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list devices, most recently seen first",
				Description: `EXAMPLES:
   ibcm device list --dir /srv/ibcm
   ibcm device list --dir /srv/ibcm --json | jq '.[] | select(.last_location=="internet") | .name'`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(c *cli.Context) error {
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var ds []wire.Device
					if err := a.do(c.Context, http.MethodGet, "/v1/admin/devices", nil, &ds); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, ds)
					}
					w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "ID\tNAME\tLOCATION\tCLAIMED\tLAST SEEN\tSTATE")
					for _, d := range ds {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Name, dash(d.LastLocation), dash(d.ClaimedLocation), d.LastSeen.Format(time.RFC3339), deviceState(d))
					}
					return w.Flush()
				},
			},
			{
				Name:      "show",
				Usage:     "show one device",
				ArgsUsage: "ID",
				Description: `EXAMPLES:
   ibcm device show --dir /srv/ibcm 6defabdb-743f-4a34-9830-20527b338cb5
   ibcm device show --dir /srv/ibcm --json 6defabdb-743f-4a34-9830-20527b338cb5`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(c *cli.Context) error {
					id, err := oneArg(c, "ID")
					if err != nil {
						return err
					}
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var d wire.Device
					if err := a.do(c.Context, http.MethodGet, "/v1/admin/devices/"+url.PathEscape(id), nil, &d); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, d)
					}
					w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintf(w, "id\t%s\nname\t%s\nfqdn\t%s\nos\t%s\nagent\t%s\n", d.ID, d.Name, dash(d.FQDN), dash(d.OS), dash(d.AgentVersion))
					fmt.Fprintf(w, "certificate\t%s\nhardware id\t%s\n", d.Serial, dash(d.HardwareID))
					fmt.Fprintf(w, "first seen\t%s\nlast seen\t%s\nlocation\t%s (the MP listener it came in on)\nclaimed location\t%s (what the agent decided)\naddresses\t%s\n",
						d.FirstSeen.Format(time.RFC3339), d.LastSeen.Format(time.RFC3339), dash(d.LastLocation), dash(d.ClaimedLocation), dash(strings.Join(d.Addresses, ", ")))
					fmt.Fprintf(w, "groups\t%s\ncompliance\t%s\nconnected\t%d\nstate\t%s\n", dash(strings.Join(d.Groups, ", ")), d.Compliance, d.Connected, deviceState(d))
					for _, warn := range d.Warnings {
						fmt.Fprintf(w, "WARNING\t%s\n", warn)
					}
					return w.Flush()
				},
			},
			deviceMessagesCommand(),
			{
				Name:      "block",
				Usage:     "block a device: close its connections on every MP, refuse it, revoke its certificates",
				ArgsUsage: "ID",
				Description: `Marks the device blocked (every MP closes its live connections within a second and
refuses its handshakes), then revokes every certificate it has presented at the CA.

EXAMPLES:
   ibcm device block --dir /srv/ibcm 6defabdb-743f-4a34-9830-20527b338cb5
   ibcm device block --dir /srv/ibcm --reason keyCompromise 6defabdb-743f-4a34-9830-20527b338cb5`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "reason", Value: "privilegeWithdrawn", Usage: "RFC 5280 reason for the revocations", EnvVars: []string{"IBCM_BLOCK_REASON"}},
				),
				Action: func(c *cli.Context) error { return blockDevice(c, true) },
			},
			{
				Name:      "unblock",
				Usage:     "let a blocked device back in (it enrolls again: its old certificates stay revoked)",
				ArgsUsage: "ID",
				Description: `EXAMPLES:
   ibcm device unblock --dir /srv/ibcm 6defabdb-743f-4a34-9830-20527b338cb5`,
				Flags:  adminFlags(),
				Action: func(c *cli.Context) error { return blockDevice(c, false) },
			},
			{
				Name:      "notify",
				Usage:     "push an event to a device over its notification channel",
				ArgsUsage: "ID",
				Description: `EVENT is renew-cert, re-detect-location or policy-changed.

EXAMPLES:
   ibcm device notify --dir /srv/ibcm --event renew-cert 6defabdb-743f-4a34-9830-20527b338cb5`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "event", Required: true, Usage: "renew-cert, re-detect-location or policy-changed", EnvVars: []string{"IBCM_NOTIFY_EVENT"}},
				),
				Action: func(c *cli.Context) error {
					id, err := oneArg(c, "ID")
					if err != nil {
						return err
					}
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					if err := a.do(c.Context, http.MethodPost, "/v1/admin/devices/"+url.PathEscape(id)+"/notify", wire.Event{Type: c.String("event")}, nil); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "sent %s to %s\n", c.String("event"), id)
					return nil
				},
			},
		},
	}
}

func deviceState(d wire.Device) string {
	switch {
	case d.Blocked:
		return "blocked"
	case len(d.Warnings) > 0:
		return "warning"
	}
	return "ok"
}

func blockDevice(c *cli.Context, block bool) error {
	id, err := oneArg(c, "ID")
	if err != nil {
		return err
	}
	m, err := newRoleClient(c, site.RoleMP)
	if err != nil {
		return err
	}
	verb := "unblock"
	if block {
		verb = "block"
	}
	var res wire.BlockResult
	if err := m.do(c.Context, http.MethodPost, "/v1/admin/devices/"+url.PathEscape(id)+"/"+verb, struct{}{}, &res); err != nil {
		return err
	}
	if !block {
		fmt.Fprintf(c.App.Writer, "unblocked %s (%s); it needs a new certificate: enroll it again\n", res.Device.ID, res.Device.Name)
		return nil
	}
	fmt.Fprintf(c.App.Writer, "blocked %s (%s): its connections are closed on every MP\n", res.Device.ID, res.Device.Name)
	ca, err := newAdminClient(c)
	if err != nil {
		return err
	}
	// Each certificate with its successors: the CA refuses to renew for a blocked device,
	// and revoking the line under the CA's locks also catches a renewal that raced the
	// listing.
	for _, serial := range res.Serials {
		var rev wire.Revoked
		err := ca.do(c.Context, http.MethodPost, "/v1/admin/certificates/"+url.PathEscape(serial)+"/revoke", wire.RevokeRequest{Reason: c.String("reason"), Successors: true}, &rev)
		switch {
		case err != nil && strings.Contains(err.Error(), "already_revoked"):
			fmt.Fprintf(c.App.Writer, "  certificate %s was already revoked\n", serial)
		case err != nil:
			return fmt.Errorf("the device is blocked, but revoking its certificate %s failed (run ibcm ca revoke): %w", serial, err)
		default:
			printRevoked(c.App.Writer, "  ", rev)
		}
	}
	return nil
}

func groupCommand() *cli.Command {
	return &cli.Command{
		Name:  "group",
		Usage: "device groups: create, add, remove, list",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "make a device group, optionally with the policy its devices follow",
				ArgsUsage: "NAME",
				Description: `A device in several groups follows the policy of the group with the lowest --priority.

EXAMPLES:
   ibcm group create --dir /srv/ibcm --policy kiosks --priority 10 kiosks
   ibcm group create --dir /srv/ibcm helpdesk-pilot`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "policy", Usage: "policy of the group's devices", EnvVars: []string{"IBCM_GROUP_POLICY"}},
					&cli.IntFlag{Name: "priority", Value: 100, Usage: "lower wins when a device is in several groups", EnvVars: []string{"IBCM_GROUP_PRIORITY"}},
				),
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "NAME")
					if err != nil {
						return err
					}
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					if err := a.do(c.Context, http.MethodPost, "/v1/admin/groups", wire.Group{Name: name, Policy: c.String("policy"), Priority: c.Int("priority")}, nil); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "group %s created\n", name)
					return nil
				},
			},
			memberCommand("add", "put a device in a group", true),
			memberCommand("remove", "take a device out of a group", false),
			{
				Name:  "list",
				Usage: "list groups with their policies and devices",
				Description: `EXAMPLES:
   ibcm group list --dir /srv/ibcm
   ibcm group list --dir /srv/ibcm --json`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(c *cli.Context) error {
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var gs []wire.Group
					if err := a.do(c.Context, http.MethodGet, "/v1/admin/groups", nil, &gs); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, gs)
					}
					w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "GROUP\tPRIORITY\tPOLICY\tDEVICES")
					for _, g := range gs {
						fmt.Fprintf(w, "%s\t%d\t%s\t%d\n", g.Name, g.Priority, dash(g.Policy), len(g.Devices))
					}
					return w.Flush()
				},
			},
		},
	}
}

func memberCommand(name, usage string, add bool) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "GROUP DEVICE-ID",
		Description: fmt.Sprintf(`EXAMPLES:
   ibcm group %s --dir /srv/ibcm kiosks 6defabdb-743f-4a34-9830-20527b338cb5`, name),
		Flags: adminFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usageError("group %s takes GROUP and DEVICE-ID", name)
			}
			group, device := c.Args().Get(0), c.Args().Get(1)
			a, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			path := "/v1/admin/groups/" + url.PathEscape(group) + "/members"
			if add {
				err = a.do(c.Context, http.MethodPost, path, map[string]string{"device_id": device}, nil)
			} else {
				err = a.do(c.Context, http.MethodDelete, path+"/"+url.PathEscape(device), nil, nil)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "%s: %s %s\n", group, name, device)
			return nil
		},
	}
}

func policyCommand() *cli.Command {
	return &cli.Command{
		Name:  "policy",
		Usage: "policy documents: show, set",
		Subcommands: []*cli.Command{
			{
				Name:      "show",
				Usage:     "print a policy as YAML (the default policy without NAME)",
				ArgsUsage: "[NAME]",
				Description: `EXAMPLES:
   ibcm policy show --dir /srv/ibcm > default.yaml
   ibcm policy show --dir /srv/ibcm --json kiosks`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(c *cli.Context) error {
					name := "default"
					if c.NArg() > 1 {
						return usageError("policy show takes at most one NAME")
					} else if c.NArg() == 1 {
						name = c.Args().First()
					}
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var p wire.Policy
					if err := a.do(c.Context, http.MethodGet, "/v1/admin/policies/"+url.PathEscape(name), nil, &p); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, p)
					}
					enc := yaml.NewEncoder(c.App.Writer)
					enc.SetIndent(2)
					return enc.Encode(p)
				},
			},
			{
				Name:      "set",
				Usage:     "store a new version of a policy from a YAML file; devices fetch it at once",
				ArgsUsage: "NAME",
				Description: `The file has the shape ibcm policy show prints. Unknown keys are errors, and a bad value
is named by its key (client.checkin_interval: ...). The version is assigned by the MP.

EXAMPLES:
   ibcm policy show --dir /srv/ibcm > kiosks.yaml && $EDITOR kiosks.yaml
   ibcm policy set --dir /srv/ibcm --file kiosks.yaml kiosks`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "policy YAML", EnvVars: []string{"IBCM_POLICY_FILE"}},
				),
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "NAME")
					if err != nil {
						return err
					}
					f, err := os.Open(c.String("file"))
					if err != nil {
						return err
					}
					defer f.Close()
					dec := yaml.NewDecoder(f)
					dec.KnownFields(true)
					var p wire.Policy
					if err := dec.Decode(&p); err != nil {
						return usageError("%s: %v", c.String("file"), err)
					}
					p.Name = name
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var stored wire.Policy
					if err := a.do(c.Context, http.MethodPut, "/v1/admin/policies/"+url.PathEscape(name), p, &stored); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "policy %s is now version %d\n", stored.Name, stored.Version)
					return nil
				},
			},
		},
	}
}
