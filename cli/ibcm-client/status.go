package main

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/agent"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "print the device's identity and, from the running agent, its location, MP, last check-in and spool",
		Description: `status reads the state directory and prints the device's identity; when an agent runs on
the directory it adds what the agent knows now (location, MP, last check-in, spool depth),
asked over its control socket, so a location switch shows at once. It does not contact the
CA. The serial is printed in upper-case hex, as openssl x509 -serial prints it.

EXAMPLES:
   ibcm-client status

   ibcm-client status --dir /srv/agent --json`,
		Flags: []cli.Flag{
			dirFlag(),
			&cli.BoolFlag{Name: "json", Sources: cli.EnvVars("IBCM_CLIENT_JSON"), Usage: "print JSON"},
		},
		Action: runStatus,
	}
}

// statusReport is what status prints.
type statusReport struct {
	DeviceID  string    `json:"device_id"`
	Subject   string    `json:"subject"`
	Name      string    `json:"name"`
	FQDN      string    `json:"fqdn,omitempty"`
	Serial    string    `json:"serial"` // as openssl prints it
	KeyType   string    `json:"key_type"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	RenewAt   time.Time `json:"renew_at"`
	RenewDue  bool      `json:"renew_due"`
	Expired   bool      `json:"expired"`
	CAURL     string    `json:"ca_url"`
	Dir       string    `json:"dir"`
	// From the running agent (empty when none runs on this state directory).
	AgentRunning bool       `json:"agent_running"`
	Location     string     `json:"location"`
	MP           string     `json:"mp,omitempty"`
	LastCheckin  *time.Time `json:"last_checkin,omitempty"`
	SpoolDepth   int        `json:"spool_depth"`
	Notify       bool       `json:"notify_connected"`
	Policy       string     `json:"policy,omitempty"`
	PolicyVer    int        `json:"policy_version,omitempty"`
	LastError    string     `json:"last_error,omitempty"`
}

func runStatus(ctx context.Context, c *cli.Command) error {
	id, err := client.Load(c.String("dir"))
	if err != nil {
		return err
	}
	now := time.Now()
	r := statusReport{
		DeviceID: id.DeviceID, Subject: id.Leaf.Subject.String(), Name: id.Name, FQDN: id.FQDN,
		Serial: id.SerialHex(), KeyType: string(id.KeyType),
		NotBefore: id.NotBefore.UTC(), NotAfter: id.NotAfter.UTC(), RenewAt: id.RenewAt().UTC(),
		RenewDue: id.RenewDue(now), Expired: id.Expired(now), CAURL: id.CAURL, Dir: id.Dir,
	}
	if st, err := agent.Query(ctx, id.Dir); err == nil {
		r.AgentRunning, r.Location, r.MP, r.LastCheckin = true, st.Location, st.MP, st.LastCheckin
		r.SpoolDepth, r.Notify, r.LastError = st.SpoolDepth, st.Notify, st.LastError
		r.Policy, r.PolicyVer = st.PolicyName, st.PolicyVersion
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.Root().Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	due := "no, from " + r.RenewAt.Format(timeFormat)
	switch {
	case r.Expired:
		due = "EXPIRED: enroll again"
	case r.RenewDue:
		due = "yes"
	}
	w := tabwriter.NewWriter(c.Root().Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "device id:\t%s\n", r.DeviceID)
	fmt.Fprintf(w, "subject:\t%s\n", r.Subject)
	if r.FQDN != "" {
		fmt.Fprintf(w, "dns:\t%s\n", r.FQDN)
	}
	fmt.Fprintf(w, "serial:\t%s\n", r.Serial)
	fmt.Fprintf(w, "key type:\t%s\n", r.KeyType)
	fmt.Fprintf(w, "not before:\t%s\n", r.NotBefore.Format(timeFormat))
	fmt.Fprintf(w, "not after:\t%s\n", r.NotAfter.Format(timeFormat))
	fmt.Fprintf(w, "renew due:\t%s\n", due)
	fmt.Fprintf(w, "ca:\t%s\n", r.CAURL)
	if !r.AgentRunning {
		fmt.Fprintf(w, "agent:\tnot running (ibcm-client run)\n")
		return w.Flush()
	}
	fmt.Fprintf(w, "location:\t%s\n", r.Location)
	fmt.Fprintf(w, "mp:\t%s\n", r.MP)
	last := "never"
	if r.LastCheckin != nil {
		last = r.LastCheckin.Format(timeFormat)
	}
	fmt.Fprintf(w, "last check-in:\t%s\n", last)
	fmt.Fprintf(w, "notifications:\t%v\n", r.Notify)
	fmt.Fprintf(w, "spool depth:\t%d\n", r.SpoolDepth)
	fmt.Fprintf(w, "policy:\t%s (version %d)\n", r.Policy, r.PolicyVer)
	if r.LastError != "" {
		fmt.Fprintf(w, "last error:\t%s\n", r.LastError)
	}
	return w.Flush()
}
