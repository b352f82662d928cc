package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/helper"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// attachScreen is `ibcm remote start --screen`, and `ibcm remote join` of a screen session:
// the session's screen on a local VNC port (loopback only) that takes one viewer, with a
// one-time VNC password printed on stderr. Lines on stdin: c asks for control, v goes back
// to view, q ends the session; a viewer's leg (start.Role viewer) has q only, which leaves.
func attachScreen(ctx context.Context, hc *helper.Client, start wire.SessionStart, listen string, in io.Reader, errw io.Writer) error {
	say := func(format string, a ...any) { fmt.Fprintf(errw, "ibcm: "+format+"\r\n", a...) }
	viewer := start.Role == ticket.RoleViewer
	say("%s", card(start))
	if start.ComplianceWarning != "" {
		say("WARNING: %s", frame.Printable(start.ComplianceWarning))
	}
	if viewer {
		say("joining screen session %s as a viewer (you see the screen and cannot control it): waiting for the device…", start.Session.ID)
	} else {
		say("screen session %s (mode %s): waiting for the device…", start.Session.ID, frame.Printable(orDefault(start.Session.Mode, "?")))
	}
	port, err := helper.ListenScreen(listen)
	if err != nil {
		return fmt.Errorf("the local VNC port: %w", err)
	}
	defer port.Close()
	s, err := hc.Connect(ctx, start, frame.Greeting{Session: start.Session.ID, Mode: start.Session.Mode})
	if err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted")
		}
		return remoteError(fmt.Errorf("reaching %s: %w", frame.Printable(orDefault(start.Device.Name, start.Device.ID)), err))
	}
	defer s.Close()
	say("connected over %s, end to end encrypted", s.Connection.Transport)
	say("%s", sharerLine(s.Device))
	a := port.Addr()
	say("VNC viewer: connect to %s (display %d), one-time password %s; it takes one connection", a, a.Port-5900, port.Password)
	if viewer {
		say("type q and Enter to leave")
	} else {
		say("type c and Enter for control, v for view, q to end")
	}

	ended := make(chan frame.Ending, 1)
	onEvent := func(ev helper.Event) {
		switch ev.Type {
		case frame.Mode:
			if ev.Mode.Granted {
				say("mode %s%s", frame.Printable(ev.Mode.Mode), messageSuffix(ev.Mode.Reason))
			} else {
				say("mode %s refused%s", frame.Printable(ev.Mode.Mode), messageSuffix(ev.Mode.Reason))
			}
		case frame.Chat:
			say("chat: %s", frame.Printable(ev.Text))
		case frame.Status:
			if ev.Presence.Message != "" {
				say("%s", frame.Printable(ev.Presence.Message))
			}
		case frame.End:
			ended <- ev.Ending
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // the helper's commands
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			switch cmd := strings.TrimSpace(sc.Text()); {
			case cmd == "c" && !viewer:
				_ = s.RequestMode("control")
			case cmd == "v" && !viewer:
				_ = s.RequestMode("view")
			case cmd == "q":
				cancel()
				return
			}
		}
	}()
	serveErr := port.Serve(ctx, s, onEvent)
	select {
	case e := <-ended: // the device ended it
		if e.Outcome == wire.OutcomeCompleted || e.Outcome == "" {
			say("session ended%s", messageSuffix(e.Message))
			return nil
		}
		return exitErr{code: exitRefused, err: &helper.EndedError{Outcome: frame.Printable(e.Outcome), Message: frame.Printable(e.Message)}}
	default:
	}
	why := "the viewer closed"
	if serveErr != nil {
		why = serveErr.Error()
	}
	if ctx.Err() != nil {
		why = "the helper ended the session"
		if viewer {
			why = "the viewer left"
		}
	}
	if err := s.End(why); err != nil {
		return fmt.Errorf("ending the session: %w", err)
	}
	timer := time.NewTimer(endWait)
	defer timer.Stop()
	select {
	case e := <-ended:
		say("session ended%s", messageSuffix(e.Message))
	case <-timer.C:
		say("the device did not confirm the end within %s", endWait)
	}
	if serveErr != nil && ctx.Err() == nil {
		return serveErr
	}
	return nil
}
