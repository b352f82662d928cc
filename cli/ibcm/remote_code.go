package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
)

// remoteCodeCommand is `ibcm remote code create`: Remote Help's "get a security code" for a
// device that is not enrolled.
func remoteCodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "code",
		Usage: "security codes for devices that are not enrolled",
		Commands: []*cli.Command{{
			Name:  "create",
			Usage: "make a one-time security code, wait for the person at the device, and attach this terminal",
			Description: `Needs OfferRemoteAssistance (and FullControl for --mode control) and a site whose
site.yaml sets ca.security_codes: true. The code is printed on stdout, once: read it to the
person at the device, who runs
   ibcm-client share --code CODE --site CA_URL --root-sha256 ROOT_FINGERPRINT
within 10 minutes; it works once. The management point keeps only its hash, and the session
in the audit. Interrupting the command (Ctrl-C) before they connect ends the session and
the code with it. Once they have exchanged it and accepted, this terminal is attached as with
` + "`ibcm remote start`" + `; the device is shown as "not enrolled: guest <their user name>".

EXAMPLES:
   ibcm remote code create
   ibcm remote code create --mode control --reason "call 4711: printer"`,
			Flags: append(adminFlags(),
				&cli.StringFlag{Name: "mode", Value: "view", Usage: "view or control", Sources: cli.EnvVars("IBCM_REMOTE_MODE"),
					Validator: cliapp.OneOf("view", "control")},
				reasonFlag("why, shown to the person at the device and kept in the audit"),
			),
			Action: func(ctx context.Context, c *cli.Command) error {
				hc, err := remoteClient(c)
				if err != nil {
					return err
				}
				ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
				defer stop()
				var code wire.SecurityCode
				if err := hc.Do(ctx, http.MethodPost, "/v1/admin/sessions/codes", wire.SecurityCodeRequest{Mode: c.String("mode"), Reason: c.String("reason")}, &code); err != nil {
					return remoteError(err)
				}
				fmt.Fprintln(os.Stdout, code.Code)
				fmt.Fprintf(os.Stderr, "security code for session %s (%s), valid until %s, once; waiting for the person at the device…\n",
					code.Session, code.Mode, code.ExpiresAt.Local().Format("15:04:05"))
				start := code.Start
				s, err := waitGuest(ctx, func(ctx context.Context) (wire.Session, error) { return hc.Session(ctx, code.Session) }, code.ExpiresAt.Add(5*time.Minute))
				if err != nil {
					if s.State != wire.SessionEnded {
						// The helper gave up (Ctrl-C, time): the session ends, and its code with it,
						// so that nobody can use it once nobody waits at this end.
						endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
						if e := hc.End(endCtx, code.Session); e != nil {
							fmt.Fprintf(os.Stderr, "ibcm: ending session %s (its code stays valid until %s): %v\n",
								code.Session, code.ExpiresAt.Local().Format("15:04:05"), e)
						}
						cancel()
					}
					return remoteError(err)
				}
				start.Device.Name, start.Device.ID = s.DeviceName, s.Device // "not enrolled: guest <user>", urn:ibcm:guest:<session>
				return attach(ctx, hc, start, newTerminal(c))
			},
		}},
	}
}

// guestPoll is how often waitGuest asks the MP: a person reads and types a code in tens of
// seconds, and the MP learns of them only when their relay leg arrives (no event reaches
// the helper before that).
const guestPoll = time.Second

// waitGuest waits until the guest of a session has connected its relay leg (the session
// names its sharer), the session ended, or deadline.
func waitGuest(ctx context.Context, get func(context.Context) (wire.Session, error), deadline time.Time) (wire.Session, error) {
	t := time.NewTicker(guestPoll)
	defer t.Stop()
	for {
		s, err := get(ctx)
		if err != nil {
			return s, err
		}
		switch {
		case s.Sharer != "":
			return s, nil
		case s.State == wire.SessionEnded:
			return s, fmt.Errorf("session %s ended (%s) before the device connected", s.ID, frame.Printable(s.Outcome))
		case time.Now().After(deadline):
			return s, errors.New("nobody used the code in time")
		}
		select {
		case <-ctx.Done():
			return s, errors.New("interrupted")
		case <-t.C:
		}
	}
}
