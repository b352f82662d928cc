package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

// deviceMessagesCommand is `ibcm device messages`: the status messages a device's agent
// sent to the MP.
func deviceMessagesCommand() *cli.Command {
	return &cli.Command{
		Name:      "messages",
		Usage:     "list the status messages a device sent, newest last",
		Arguments: []cli.Argument{cliapp.Arg("ID")},
		Description: `ID is the device id (as device list shows it). --since is a duration back from now
(90m, 2h, 36h) or an RFC 3339 time (2026-03-01T08:00:00Z). At most --limit messages are
shown (1 to 1000), the newest; a note says when older ones were left out.

EXAMPLES:
   ibcm device messages --dir /srv/ibcm 6defabdb-743f-4a34-9830-20527b338cb5
   ibcm device messages --dir /srv/ibcm --since 2h 6defabdb-743f-4a34-9830-20527b338cb5
   ibcm device messages --dir /srv/ibcm --since 2026-03-01T08:00:00Z --json 6defabdb-743f-4a34-9830-20527b338cb5 | jq '.messages[] | select(.severity=="error")'`,
		Flags: append(adminFlags(), jsonFlag(),
			&cli.StringFlag{Name: "since", Usage: "only messages from this `TIME` on: a duration back from now (2h) or an RFC 3339 time", Sources: cli.EnvVars("IBCM_MESSAGES_SINCE")},
			&cli.IntFlag{Name: "limit", Value: wire.MaxMessagesPage, Usage: "show at most `N` messages, the newest (1 to 1000)", Sources: cli.EnvVars("IBCM_MESSAGES_LIMIT")},
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			id := c.StringArg("ID")
			q := url.Values{}
			if s := c.String("since"); s != "" {
				since, err := parseSince(s, time.Now())
				if err != nil {
					return usageError("%v", err)
				}
				q.Set("since", since.UTC().Format(time.RFC3339))
			}
			if n := c.Int("limit"); n < 1 || n > wire.MaxMessagesPage {
				return usageError("--limit %d: want 1 to %d", n, wire.MaxMessagesPage)
			}
			q.Set("limit", strconv.Itoa(c.Int("limit")))
			a, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			var out wire.DeviceMessages
			if err := a.do(ctx, http.MethodGet, "/v1/admin/devices/"+url.PathEscape(id)+"/messages?"+q.Encode(), nil, &out); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, out)
			}
			return printMessages(c.Root().Writer, out)
		},
	}
}

// parseSince reads --since: a duration back from now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--since %q: a duration back from now is positive (2h)", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want a duration back from now (90m, 2h) or an RFC 3339 time (2026-03-01T08:00:00Z)", s)
}

func printMessages(w io.Writer, out wire.DeviceMessages) error {
	if out.Truncated {
		fmt.Fprintf(w, "(older messages left out: use a later --since or a larger --limit)\n")
	}
	if len(out.Messages) == 0 {
		fmt.Fprintf(w, "no status messages from device %s\n", out.DeviceID)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSEVERITY\tCOMPONENT\tTEXT")
	for _, m := range out.Messages {
		text := m.Text
		if len(m.Fields) > 0 {
			keys := make([]string, 0, len(m.Fields))
			for k := range m.Fields {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				text += " " + k + "=" + strconv.Quote(m.Fields[k])
			}
		}
		// one message, one line: a newline in a text cannot fake another row
		text = strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", " ").Replace(text)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Time.Local().Format(time.RFC3339), m.Severity, m.Component, text)
	}
	return tw.Flush()
}
