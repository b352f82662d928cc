package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/helper"
	"github.com/ibcm-project/ibcm/remote/ticket"
	"github.com/ibcm-project/ibcm/site"
)

// exitRefused: the site or the device refused or ended the session (denied,
// consent_timeout, device_offline, forbidden, …); the error names the code.
const exitRefused = 4

func remoteCommand() *cli.Command {
	return &cli.Command{
		Name:  "remote",
		Usage: "remote control: start, join, sessions, code, show, end, recording",
		Commands: []*cli.Command{
			remoteStartCommand(),
			remoteJoinCommand(),
			remoteSessionsCommand(),
			remoteCodeCommand(),
			{
				Name:      "show",
				Usage:     "show one session as the audit keeps it",
				Arguments: []cli.Argument{cliapp.Arg("ID")},
				Description: `EXAMPLES:
   ibcm remote show 0f3c2a9e41d84b7c9a1e5d2f6b8c0a17
   ibcm remote show --json 0f3c2a9e41d84b7c9a1e5d2f6b8c0a17`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(ctx context.Context, c *cli.Command) error {
					hc, err := remoteClient(c)
					if err != nil {
						return err
					}
					s, err := hc.Session(ctx, c.StringArg("ID"))
					if err != nil {
						return remoteError(err)
					}
					if c.Bool("json") {
						return printJSON(c.Root().Writer, s)
					}
					return printSession(c.Root().Writer, s)
				},
			},
			{
				Name:      "end",
				Usage:     "end a session at the site (its helper, or ManageDevices on its device)",
				Arguments: []cli.Argument{cliapp.Arg("ID")},
				Description: `The device ends every leg of the session, direct ones included.

EXAMPLES:
   ibcm remote end 0f3c2a9e41d84b7c9a1e5d2f6b8c0a17`,
				Flags: adminFlags(),
				Action: func(ctx context.Context, c *cli.Command) error {
					hc, err := remoteClient(c)
					if err != nil {
						return err
					}
					if err := hc.End(ctx, c.StringArg("ID")); err != nil {
						return remoteError(err)
					}
					fmt.Fprintf(c.Root().Writer, "ended session %s\n", c.StringArg("ID"))
					return nil
				},
			},
			{
				Name:      "recording",
				Usage:     "write the decrypted recording of a session (asciicast v2; ReadAudit)",
				Arguments: []cli.Argument{cliapp.Arg("ID")},
				Description: `Writes to stdout, or to --out FILE (made 0600: a recording holds what the session showed).
Play it with asciinema play.

EXAMPLES:
   ibcm remote recording 0f3c2a9e41d84b7c9a1e5d2f6b8c0a17 > session.cast
   ibcm remote recording --out session.cast 0f3c2a9e41d84b7c9a1e5d2f6b8c0a17 && asciinema play session.cast`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Usage: "file to write (default: stdout)", Sources: cli.EnvVars("IBCM_RECORDING_OUT"), TakesFile: true},
				),
				Action: remoteRecording,
			},
		},
	}
}

func remoteStartCommand() *cli.Command {
	return &cli.Command{
		Name:      "start",
		Usage:     "start a session with a device and attach this terminal",
		Arguments: []cli.Argument{cliapp.Arg("DEVICE")},
		Description: `DEVICE is a device id, a unique prefix of one, or a device name. The management point checks
your permission for the mode, the device's remote-control policy and that the device is
online; the device's user is asked to consent when its policy says so. The device's identity
card, the sharer and any compliance warning are printed on stderr.

On a terminal, this terminal is attached in raw mode and follows its window size. Ctrl-]
opens a menu: c request control, e request elevated, v back to view, t chat (type a line,
Enter sends), q end the session; Ctrl-] twice sends a Ctrl-]. When stdin is not a terminal,
it is sent as it is (no menu) and its end ends the session.

With --screen, the session shows the device's display instead (RFB, for any VNC viewer): the
device's agent starts its VNC server on the sharer's X display (the sharer runs
` + "`ibcm-client share --screen`" + `), or on a fresh virtual display for unattended; this command opens
a local VNC port on 127.0.0.1 (--vnc-listen) that takes one connection and prints its
one-time VNC password. In view mode the device drops the viewer's keys, pointer and
clipboard. Lines on stdin: c asks for control, v goes back to view, q ends the session.

Exit status: 0 when the session completed, 4 when the site or the device refused or ended it
(the error names the code: device_offline, denied, consent_timeout, forbidden, …), 2 for bad
input, 1 for anything else.

EXAMPLES:
   ibcm remote start --mode control --reason "ticket 4711: printer queue" kiosk-12
   ibcm remote start --mode view 6defabdb
   ibcm remote start --mode unattended --dir /srv/ibcm 6defabdb-743f-4a34-9830-20527b338cb5
   printf 'uptime\nexit\n' | ibcm remote start --mode control kiosk-12
   ibcm remote start --screen --mode view kiosk-12   # then: gvncviewer 127.0.0.1:<display>`,
		Flags: append(adminFlags(),
			&cli.StringFlag{Name: "mode", Value: "control", Usage: "view, control, elevated or unattended", Sources: cli.EnvVars("IBCM_REMOTE_MODE"),
				Validator: cliapp.OneOf("view", "control", "elevated", "unattended")},
			&cli.BoolFlag{Name: "screen", Usage: "a screen session (VNC) instead of a terminal", Sources: cli.EnvVars("IBCM_REMOTE_SCREEN")},
			&cli.StringFlag{Name: "vnc-listen", Value: "127.0.0.1:0", Usage: "the local VNC port of --screen (`HOST:PORT`, loopback only)", Sources: cli.EnvVars("IBCM_REMOTE_VNC_LISTEN")},
			reasonFlag("why, shown to the device's user and kept in the audit"),
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			hc, err := remoteClient(c)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			req := wire.SessionStartRequest{Device: c.StringArg("DEVICE"), Mode: c.String("mode"), Reason: c.String("reason")}
			if c.Bool("screen") {
				if req.Mode == "elevated" {
					return exitErr{code: exitUsage, err: errors.New("--screen: the mode is view, control or unattended")}
				}
				req.Kind = ticket.KindScreen
			}
			start, err := hc.Start(ctx, req)
			if err != nil {
				return remoteError(err)
			}
			if req.Kind == ticket.KindScreen {
				t := newTerminal(c)
				return attachScreen(ctx, hc, start, c.String("vnc-listen"), t.in, t.errw)
			}
			return attach(ctx, hc, start, newTerminal(c))
		},
	}
}

func remoteJoinCommand() *cli.Command {
	return &cli.Command{
		Name:      "join",
		Usage:     "watch a session as a viewer",
		Arguments: []cli.Argument{cliapp.Arg("ID")},
		Description: `Needs ViewScreen on the session's device and a policy whose permitted_viewers names you
(or your role); the device's user is asked first when its policy prompts. A viewer sees
the terminal and the chat and cannot type into the shell. Ctrl-] opens the menu: t chat,
q leave.

A screen session is joined the same way: this command opens a local VNC port on 127.0.0.1
(--vnc-listen) that takes one connection and prints its one-time VNC password, as
` + "`remote start --screen`" + ` does. The device gives the viewer a connection of its own to the
session's VNC server and drops its keys, pointer and clipboard whatever the session's mode.
Type q and Enter to leave; leaving does not end the session, its end ends yours.

EXAMPLES:
   ibcm remote join 0f3c2a9e41d84b7c9a1e5d2f6b8c0a17
   ibcm remote join --vnc-listen 127.0.0.1:5911 0f3c2a9e41d84b7c9a1e5d2f6b8c0a17   # a screen session: gvncviewer 127.0.0.1:11`,
		Flags: append(adminFlags(),
			&cli.StringFlag{Name: "vnc-listen", Value: "127.0.0.1:0", Usage: "the local VNC port when the session is a screen session (`HOST:PORT`, loopback only)", Sources: cli.EnvVars("IBCM_REMOTE_VNC_LISTEN")},
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			hc, err := remoteClient(c)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			start, err := hc.Join(ctx, c.StringArg("ID"))
			if err != nil {
				return remoteError(err)
			}
			if start.Session.Kind == ticket.KindScreen {
				t := newTerminal(c)
				return attachScreen(ctx, hc, start, c.String("vnc-listen"), t.in, t.errw)
			}
			return attach(ctx, hc, start, newTerminal(c))
		},
	}
}

func remoteSessionsCommand() *cli.Command {
	return &cli.Command{
		Name:  "sessions",
		Usage: "list sessions, newest first",
		Description: `--since takes a duration back from now (90m, 36h, 7d), a date (2026-12-01) or an RFC 3339
time. The table shows the outcome once a session ended, else its state.

EXAMPLES:
   ibcm remote sessions --active
   ibcm remote sessions --device kiosk-12 --since 7d
   ibcm remote sessions --helper alice --since 2026-12-01 --csv > sessions.csv
   ibcm remote sessions --json | jq '.[] | select(.outcome=="denied") | .id'`,
		Flags: append(adminFlags(),
			&cli.BoolFlag{Name: "active", Usage: "only sessions not ended", Sources: cli.EnvVars("IBCM_REMOTE_ACTIVE")},
			&cli.StringFlag{Name: "device", Usage: "only the sessions of this device (id, prefix or name)", Sources: cli.EnvVars("IBCM_REMOTE_DEVICE")},
			&cli.StringFlag{Name: "helper", Usage: "only the sessions of this helper (user name)", Sources: cli.EnvVars("IBCM_REMOTE_HELPER")},
			&cli.StringFlag{Name: "since", Usage: "only sessions requested since then: 36h, 7d, 2026-12-01 or an RFC 3339 time", Sources: cli.EnvVars("IBCM_REMOTE_SINCE")},
			jsonFlag(),
			&cli.BoolFlag{Name: "csv", Usage: "print CSV for spreadsheets", Sources: cli.EnvVars("IBCM_CSV")},
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			if c.Bool("json") && c.Bool("csv") {
				return usageError("--json or --csv, not both")
			}
			f := helper.SessionFilter{Active: c.Bool("active"), Device: c.String("device"), Helper: c.String("helper")}
			if s := c.String("since"); s != "" {
				t, err := sessionsSince(s, time.Now())
				if err != nil {
					return usageError("--since: %v (got %q)", err, s)
				}
				f.Since = t
			}
			hc, err := remoteClient(c)
			if err != nil {
				return err
			}
			w := c.Root().Writer
			if c.Bool("csv") { // the MP's report, as the web console exports it
				return remoteError(hc.SessionsCSV(ctx, f, w))
			}
			ss, err := hc.Sessions(ctx, f)
			if err != nil {
				return remoteError(err)
			}
			if c.Bool("json") {
				if ss == nil {
					ss = []wire.Session{}
				}
				return printJSON(w, ss)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tDEVICE\tHELPER\tSHARER\tKIND\tMODE\tSTATE\tTRANSPORT\tE2E\tCONSOLE\tREQUESTED\tSTARTED\tENDED")
			for _, s := range ss {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, dash(orDefault(s.DeviceName, s.Device)), dash(s.Helper), dash(s.Sharer),
					sessionKind(s.Kind), dash(s.Mode), sessionState(s), transportText(s), yesNo(s.E2E), yesNo(s.Console), s.RequestedAt.Format(time.RFC3339), timeOrDash(s.StartedAt), timeOrDash(s.EndedAt))
			}
			return tw.Flush()
		},
	}
}

// reasonFlag is --reason of a session: at most 512 bytes, as the MP takes it.
func reasonFlag(usage string) *cli.StringFlag {
	return &cli.StringFlag{Name: "reason", Usage: usage, Sources: cli.EnvVars("IBCM_REMOTE_REASON"),
		Validator: func(s string) error {
			if len(s) > 512 {
				return fmt.Errorf("must be at most 512 bytes (got %d)", len(s))
			}
			return nil
		}}
}

// remoteClient is the helper's client of the MP, with the identity and MP the admin
// commands use (--dir, --mp/--cert/--key/--ca-root, or the one of ibcm login).
func remoteClient(c *cli.Command) (*helper.Client, error) {
	a, err := newRoleClient(c, site.RoleMP)
	if err != nil {
		return nil, err
	}
	tr, ok := a.http.Transport.(*http.Transport)
	if !ok || tr.TLSClientConfig == nil {
		return nil, errors.New("internal error: the admin client has no TLS transport")
	}
	return helper.NewClient(a.base, tr.TLSClientConfig, tr.DialContext)
}

// remoteError gives a refusal of the site or the device its exit status.
func remoteError(err error) error {
	if err == nil {
		return nil
	}
	if code := helper.Code(err); code != "" {
		return exitErr{code: exitRefused, err: err}
	}
	return err
}

// sessionsSince reads --since: a duration back from now (with d for days), a date, or an
// RFC 3339 time.
func sessionsSince(s string, now time.Time) (time.Time, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if d, err := strconv.Atoi(n); err == nil && d >= 0 && d <= 36500 {
			return now.AddDate(0, 0, -d), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, errors.New("must be a duration such as 36h or 7d, a date such as 2026-12-01, or an RFC 3339 time")
}

// sessionKind names a session's kind: terminal ("") or screen.
func sessionKind(kind string) string {
	if kind == "" {
		return "terminal"
	}
	return frame.Printable(kind)
}

func sessionState(s wire.Session) string {
	if s.State == wire.SessionEnded && s.Outcome != "" {
		return s.Outcome
	}
	return dash(s.State)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func timeOrEmpty(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// transportText is the transport of a session, with why direct lost when it did.
func transportText(s wire.Session) string {
	if s.DirectError != "" {
		return dash(s.Transport) + " (direct: " + s.DirectError + ")"
	}
	return dash(s.Transport)
}

func printSession(w io.Writer, s wire.Session) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\ndevice\t%s (%s)\nhelper\t%s\n", s.ID, dash(s.DeviceName), s.Device, withName(s.Helper, s.HelperName))
	fmt.Fprintf(tw, "sharer\t%s\nreason\t%s\nkind\t%s\nstate\t%s\noutcome\t%s\n", withName(s.Sharer, s.SharerName), dash(s.Reason), sessionKind(s.Kind), dash(s.State), dash(s.Outcome))
	if s.Error != "" {
		fmt.Fprintf(tw, "error\t%s\n", s.Error)
	}
	var modes []string
	for _, m := range s.Modes {
		modes = append(modes, m.Mode+" at "+m.At.Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "mode\t%s\nmodes\t%s\n", dash(s.Mode), dash(strings.Join(modes, ", ")))
	transport := transportText(s)
	e2eText := yesNo(s.E2E)
	if s.Console {
		e2eText += " (web console: the session ends at the management point)"
	}
	fmt.Fprintf(tw, "location\t%s\ntransport\t%s\nend to end\t%s\nmanagement point\t%s\nviewers\t%s\n",
		dash(s.Location), transport, e2eText, dash(s.MP), dash(strings.Join(s.Viewers, ", ")))
	fmt.Fprintf(tw, "requested\t%s\nstarted\t%s\nended\t%s\n", s.RequestedAt.Format(time.RFC3339), timeOrDash(s.StartedAt), timeOrDash(s.EndedAt))
	fmt.Fprintf(tw, "bytes to device\t%d\nbytes from device\t%d\nrecorded\t%s\n", s.BytesIn, s.BytesOut, yesNo(s.Recorded))
	return tw.Flush()
}

func withName(user, name string) string {
	switch {
	case user == "":
		return "-"
	case name == "":
		return user
	}
	return user + " (" + name + ")"
}

func remoteRecording(ctx context.Context, c *cli.Command) error {
	hc, err := remoteClient(c)
	if err != nil {
		return err
	}
	id, out := c.StringArg("ID"), c.String("out")
	if out == "" || out == "-" {
		_, err := hc.Recording(ctx, id, c.Root().Writer)
		return remoteError(err)
	}
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return usageError("--out: %v", errors.Unwrap(err))
	}
	defer os.Remove(f.Name()) // after the rename, nothing
	n, err := hc.Recording(ctx, id, f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return remoteError(err)
	}
	if err := os.Rename(f.Name(), out); err != nil {
		return err
	}
	fmt.Fprintf(c.Root().ErrWriter, "wrote %d bytes to %s\n", n, out)
	return nil
}
