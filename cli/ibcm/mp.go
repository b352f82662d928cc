package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"
	"gopkg.in/yaml.v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/config"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

func mpCommand() *cli.Command {
	return &cli.Command{
		Name:  "mp",
		Usage: "the management point",
		Commands: []*cli.Command{{
			Name:  "serve",
			Usage: "run the MP role alone",
			Description: `Runs the management point's listeners (intranet and/or internet, as mp.mode says) from a
site.yaml until SIGINT or SIGTERM. Several MPs share one PostgreSQL store; give each its own mp.id.
On a SQLite store every role runs in one process (ibcm site up): a second process serving the
same SQLite site is refused. mp.park_idle_channels: false keeps notification channels on
crypto/tls instead of parking them.

EXAMPLES:
   ibcm mp serve --dir /srv/ibcm
   ibcm mp serve --config /etc/ibcm/mp1.yaml
   ibcm mp serve --config /etc/ibcm/mp-dmz.yaml --log-level debug`,
			Flags: []cli.Flag{dirFlag(false), configFlag()},
			Action: func(ctx context.Context, c *cli.Command) error {
				path, err := serveConfig(c)
				if err != nil {
					return err
				}
				return serve(ctx, c, path, site.RoleMP)
			},
		}},
	}
}

func deviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "device",
		Usage: "devices: list, show, messages, block, unblock, notify",
		Commands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list devices, most recently seen first",
				Description: `EXAMPLES:
   ibcm device list --dir /srv/ibcm
   ibcm device list --dir /srv/ibcm --json | jq '.[] | select(.last_location=="internet") | .name'`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(ctx context.Context, c *cli.Command) error {
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var ds []wire.Device
					if err := a.do(ctx, http.MethodGet, "/v1/admin/devices", nil, &ds); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.Root().Writer, ds)
					}
					w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
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
				Arguments: []cli.Argument{cliapp.Arg("ID")},
				Description: `EXAMPLES:
   ibcm device show --dir /srv/ibcm 6defabdb-743f-4a34-9830-20527b338cb5
   ibcm device show --dir /srv/ibcm --json 6defabdb-743f-4a34-9830-20527b338cb5`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(ctx context.Context, c *cli.Command) error {
					id := c.StringArg("ID")
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var d wire.Device
					if err := a.do(ctx, http.MethodGet, "/v1/admin/devices/"+url.PathEscape(id), nil, &d); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.Root().Writer, d)
					}
					w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
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
				Arguments: []cli.Argument{cliapp.Arg("ID")},
				Description: `Marks the device blocked (every MP closes its live connections within a second and
refuses its handshakes), then revokes every certificate it has presented at the CA.

EXAMPLES:
   ibcm device block --dir /srv/ibcm 6defabdb-743f-4a34-9830-20527b338cb5
   ibcm device block --dir /srv/ibcm --reason keyCompromise 6defabdb-743f-4a34-9830-20527b338cb5`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "reason", Value: "privilegeWithdrawn", Usage: "RFC 5280 reason for the revocations", Sources: cli.EnvVars("IBCM_BLOCK_REASON")},
				),
				Action: func(ctx context.Context, c *cli.Command) error { return blockDevice(ctx, c, true) },
			},
			{
				Name:      "unblock",
				Usage:     "let a blocked device back in; prints a one-time token that re-enrolls it under the same device id",
				Arguments: []cli.Argument{cliapp.Arg("ID")},
				Description: `Its old certificates stay revoked, so the device enrolls again. unblock prints a re-enroll
token bound to the device (one use, valid --token-ttl, only its hash is kept): enrolling with
it makes a certificate for the same device id and name, so the device keeps its groups and
history. A running agent switches to the new identity without a restart. The token is printed
alone on stdout, the rest on stderr.

EXAMPLES:
   ibcm device unblock --dir /srv/ibcm 6defabdb-743f-4a34-9830-20527b338cb5 > token
   # then on the device:
   ibcm-client enroll --force --token-file token --ca https://ibcm.corp.example:8443 --root-sha256 3f1a...9c`,
				Flags: append(adminFlags(),
					&cli.DurationFlag{Name: "token-ttl", Value: time.Hour, Usage: "how long the re-enroll token stays usable (at most 24h)", Sources: cli.EnvVars("IBCM_REENROLL_TTL")},
				),
				Action: func(ctx context.Context, c *cli.Command) error { return blockDevice(ctx, c, false) },
			},
			{
				Name:      "notify",
				Usage:     "push an event to a device over its notification channel",
				Arguments: []cli.Argument{cliapp.Arg("ID")},
				Description: `EVENT is renew-cert, re-detect-location or policy-changed.

EXAMPLES:
   ibcm device notify --dir /srv/ibcm --event renew-cert 6defabdb-743f-4a34-9830-20527b338cb5`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "event", Required: true, Usage: "renew-cert, re-detect-location or policy-changed", Sources: cli.EnvVars("IBCM_NOTIFY_EVENT")},
				),
				Action: func(ctx context.Context, c *cli.Command) error {
					id := c.StringArg("ID")
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					if err := a.do(ctx, http.MethodPost, "/v1/admin/devices/"+url.PathEscape(id)+"/notify", wire.Event{Type: c.String("event")}, nil); err != nil {
						return err
					}
					fmt.Fprintf(c.Root().Writer, "sent %s to %s\n", c.String("event"), id)
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

func blockDevice(ctx context.Context, c *cli.Command, block bool) error {
	id := c.StringArg("ID")
	m, err := newRoleClient(c, site.RoleMP)
	if err != nil {
		return err
	}
	verb := "unblock"
	if block {
		verb = "block"
	}
	var res wire.BlockResult
	if err := m.do(ctx, http.MethodPost, "/v1/admin/devices/"+url.PathEscape(id)+"/"+verb, struct{}{}, &res); err != nil {
		return err
	}
	if !block {
		// As `ca token create`: the secret alone on stdout, the rest on stderr.
		fmt.Fprintf(c.Root().ErrWriter, "unblocked %s (%s); its old certificates stay revoked: enroll it again\n", res.Device.ID, res.Device.Name)
		ca, err := newAdminClient(c)
		if err != nil {
			return err
		}
		var t wire.TokenCreated
		if err := ca.do(ctx, http.MethodPost, "/v1/admin/tokens", wire.TokenCreateRequest{
			Profile: "client", DeviceID: res.Device.ID, TTL: c.Duration("token-ttl").String(),
		}, &t); err != nil {
			return fmt.Errorf("the device is unblocked, but making its re-enroll token failed (ibcm ca token create --device %s): %w", res.Device.ID, err)
		}
		fmt.Fprintln(c.Root().Writer, t.Secret)
		fmt.Fprintf(c.Root().ErrWriter, "token %s re-enrolls it (one use, until %s) as device %s, %s:\n  ibcm-client enroll --force --token-file FILE --ca %s --root-sha256 ROOT-SHA256\n",
			t.ID, t.ExpiresAt.Format(time.RFC3339), res.Device.ID, t.Subject, ca.base)
		return nil
	}
	fmt.Fprintf(c.Root().Writer, "blocked %s (%s): its connections are closed on every MP\n", res.Device.ID, res.Device.Name)
	ca, err := newAdminClient(c)
	if err != nil {
		return err
	}
	// Each certificate with its successors: the CA refuses to renew for a blocked device,
	// and revoking the line under the CA's locks also catches a renewal that raced the
	// listing.
	for _, serial := range res.Serials {
		var rev wire.Revoked
		err := ca.do(ctx, http.MethodPost, "/v1/admin/certificates/"+url.PathEscape(serial)+"/revoke", wire.RevokeRequest{Reason: c.String("reason"), Successors: true}, &rev)
		switch {
		case err != nil && strings.Contains(err.Error(), "already_revoked"):
			fmt.Fprintf(c.Root().Writer, "  certificate %s was already revoked\n", serial)
		case err != nil:
			return fmt.Errorf("the device is blocked, but revoking its certificate %s failed (run ibcm ca revoke): %w", serial, err)
		default:
			printRevoked(c.Root().Writer, "  ", rev)
		}
	}
	return nil
}

func groupCommand() *cli.Command {
	return &cli.Command{
		Name:  "group",
		Usage: "device groups: create, add, remove, list",
		Commands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "make a device group, optionally with the policy its devices follow",
				Arguments: []cli.Argument{cliapp.Arg("NAME")},
				Description: `A device in several groups follows the policy of the group with the lowest --priority.

EXAMPLES:
   ibcm group create --dir /srv/ibcm --policy kiosks --priority 10 kiosks
   ibcm group create --dir /srv/ibcm helpdesk-pilot`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "policy", Usage: "policy of the group's devices", Sources: cli.EnvVars("IBCM_GROUP_POLICY")},
					&cli.IntFlag{Name: "priority", Value: 100, Usage: "lower wins when a device is in several groups", Sources: cli.EnvVars("IBCM_GROUP_PRIORITY")},
				),
				Action: func(ctx context.Context, c *cli.Command) error {
					name := c.StringArg("NAME")
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					if err := a.do(ctx, http.MethodPost, "/v1/admin/groups", wire.Group{Name: name, Policy: c.String("policy"), Priority: c.Int("priority")}, nil); err != nil {
						return err
					}
					fmt.Fprintf(c.Root().Writer, "group %s created\n", name)
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
				Action: func(ctx context.Context, c *cli.Command) error {
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var gs []wire.Group
					if err := a.do(ctx, http.MethodGet, "/v1/admin/groups", nil, &gs); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.Root().Writer, gs)
					}
					w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
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
		Arguments: []cli.Argument{cliapp.Arg("GROUP"), cliapp.Arg("DEVICE-ID")},
		Description: fmt.Sprintf(`EXAMPLES:
   ibcm group %s --dir /srv/ibcm kiosks 6defabdb-743f-4a34-9830-20527b338cb5`, name),
		Flags: adminFlags(),
		Action: func(ctx context.Context, c *cli.Command) error {
			group, device := c.StringArg("GROUP"), c.StringArg("DEVICE-ID")
			a, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			path := "/v1/admin/groups/" + url.PathEscape(group) + "/members"
			if add {
				err = a.do(ctx, http.MethodPost, path, map[string]string{"device_id": device}, nil)
			} else {
				err = a.do(ctx, http.MethodDelete, path+"/"+url.PathEscape(device), nil, nil)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.Root().Writer, "%s: %s %s\n", group, name, device)
			return nil
		},
	}
}

func policyCommand() *cli.Command {
	return &cli.Command{
		Name:  "policy",
		Usage: "policy documents: show, set",
		Commands: []*cli.Command{
			{
				Name:      "show",
				Usage:     "print a policy as YAML (the default policy without NAME)",
				Arguments: []cli.Argument{cliapp.OptionalArg("NAME")},
				Description: `EXAMPLES:
   ibcm policy show --dir /srv/ibcm > default.yaml
   ibcm policy show --dir /srv/ibcm --json kiosks`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(ctx context.Context, c *cli.Command) error {
					name := c.StringArg("NAME")
					if name == "" {
						name = "default"
					}
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var p wire.Policy
					if err := a.do(ctx, http.MethodGet, "/v1/admin/policies/"+url.PathEscape(name), nil, &p); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.Root().Writer, p)
					}
					enc := yaml.NewEncoder(c.Root().Writer)
					enc.SetIndent(2)
					return enc.Encode(p)
				},
			},
			{
				Name:      "set",
				Usage:     "store a new version of a policy from a YAML file; devices fetch it at once",
				Arguments: []cli.Argument{cliapp.Arg("NAME")},
				Description: `The file has the shape ibcm policy show prints. Unknown keys are errors, and a bad value
is named by its key (client.checkin_interval: ...). The version is assigned by the MP.

EXAMPLES:
   ibcm policy show --dir /srv/ibcm > kiosks.yaml && $EDITOR kiosks.yaml
   ibcm policy set --dir /srv/ibcm --file kiosks.yaml kiosks`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "policy YAML", Sources: cli.EnvVars("IBCM_POLICY_FILE")},
				),
				Action: func(ctx context.Context, c *cli.Command) error {
					name := c.StringArg("NAME")
					data, err := os.ReadFile(c.String("file"))
					if err != nil {
						return err
					}
					var p wire.Policy
					if err := config.Decode(c.String("file"), data, &p); err != nil {
						return usageError("%v", err)
					}
					p.Name = name
					a, err := newRoleClient(c, site.RoleMP)
					if err != nil {
						return err
					}
					var stored wire.Policy
					if err := a.do(ctx, http.MethodPut, "/v1/admin/policies/"+url.PathEscape(name), p, &stored); err != nil {
						return err
					}
					fmt.Fprintf(c.Root().Writer, "policy %s is now version %d\n", stored.Name, stored.Version)
					return nil
				},
			},
		},
	}
}
