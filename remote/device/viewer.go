package device

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/rfb"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// CodeNoSession refuses a viewer's ticket for a session this device is not serving.
const CodeNoSession = "session_not_here"

// CodeViewerKind refuses a viewer's ticket whose kind is not the session's.
const CodeViewerKind = "viewer_kind"

// viewer is a second helper's leg: it sees what the helper sees and types nothing. Of a
// screen session, it has a connection of its own to the session's x11vnc (screen), its
// RFB through a filter of view mode whatever the session's mode.
type viewer struct {
	t         *ticket.Ticket
	c         *tls.Conn
	transport string
	wmu       sync.Mutex
	bytesOut  atomic.Int64
	once      sync.Once
	screen    net.Conn
}

// legError ends a viewer's leg with an outcome of its own.
type legError struct{ outcome, why string }

func (e *legError) Error() string { return e.why }

func (v *viewer) send(t frame.Type, p []byte) error {
	v.wmu.Lock()
	defer v.wmu.Unlock()
	_ = v.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return frame.Write(v.c, t, p)
}

func (v *viewer) sendJSON(t frame.Type, x any) error {
	v.wmu.Lock()
	defer v.wmu.Unlock()
	_ = v.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return frame.WriteJSON(v.c, t, x)
}

// joinViewer serves a viewer's ticket for a session already here: consent when policy
// prompts, its own transport and end-to-end TLS, then view only.
func (h *Host) joinViewer(ctx context.Context, t *ticket.Ticket) error {
	h.mu.Lock()
	s := h.sessions[t.Session]
	h.mu.Unlock()
	if s == nil {
		err := errors.New("a viewer's ticket for a session this device is not serving")
		h.refuse(ctx, t, CodeNoSession, err)
		return err
	}
	if t.Kind != s.t.Kind {
		err := fmt.Errorf("a viewer's ticket of kind %q for a session of kind %q", t.Kind, s.t.Kind)
		h.refuse(ctx, t, CodeViewerKind, err)
		return err
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		s.addViewer(t)
	}()
	return nil
}

func (s *session) reportLeg(t *ticket.Ticket, r wire.SessionReport) {
	r.Ticket = t.ID
	s.h.report(s.ctx, s.t.Session, r)
}

func (s *session) addViewer(t *ticket.Ticket) {
	select { // a viewer joins a session that runs
	case <-s.serving:
	case <-s.endCh:
		s.reportLeg(t, wire.SessionReport{Event: wire.ReportRefused, Outcome: wire.OutcomeRefused, Code: CodeNoSession, Message: "the session ended before the viewer joined"})
		return
	}
	log := s.log.With().Str("viewer", t.Helper).Str("viewer_ticket", t.ID).Logger()
	peer := frame.Peer{User: t.Helper, DisplayName: t.Card.DisplayName, Title: t.Card.Title, Organization: t.Card.Organization, Role: ticket.RoleViewer, Mode: ticket.ModeView}
	if s.p.RC.PromptUser && s.sharerUID >= 0 {
		s.reportLeg(t, wire.SessionReport{Event: wire.ReportConsentAsked, Mode: ticket.ModeView})
		ctx, cancel := context.WithTimeout(s.ctx, s.consentTimeout())
		ans := s.h.hub.ask(ctx, s.sharerUID, frame.ConsentPrompt{Session: s.t.Session, Helper: peer, Mode: ticket.ModeView, Kind: s.t.Kind, Reason: "join as a viewer", Timeout: int(s.consentTimeout() / time.Second)})
		cancel()
		if ans != "accepted" {
			outcome, ev := wire.OutcomeDenied, wire.ReportDenied
			if ans == "consent-timeout" {
				outcome, ev = wire.OutcomeConsentTimeout, wire.ReportConsentTimeout
			}
			log.Info().Str("outcome", outcome).Msg("viewer not admitted")
			s.reportLeg(t, wire.SessionReport{Event: ev, Outcome: outcome})
			return
		}
	}
	s.reportLeg(t, wire.SessionReport{Event: wire.ReportAccepted, Mode: ticket.ModeView})
	conn, transport, err := s.connect(t)
	if err != nil {
		log.Warn().Err(err).Msg("viewer's leg failed")
		s.h.c.Audit("warning", fmt.Sprintf("remote session %s: the viewer %s refused: %v", s.t.Session, t.Helper, err))
		s.reportLeg(t, wire.SessionReport{Event: wire.ReportRefused, Outcome: wire.OutcomeRefused, Code: CodeE2E, Message: err.Error()})
		return
	}
	v := &viewer{t: t, c: conn, transport: transport}
	if err := v.sendJSON(frame.Hello, frame.Greeting{Session: s.t.Session, Mode: ticket.ModeView, Sharer: s.sharer.Name, SharerName: s.sharer.FullName, Terminal: s.terminal}); err != nil {
		conn.Close()
		return
	}
	r := frame.NewReader(conn)
	helloTimer := time.AfterFunc(30*time.Second, func() { conn.Close() })
	f, err := r.Next()
	helloTimer.Stop()
	if err != nil || f.Type != frame.Hello {
		conn.Close()
		return
	}
	var in *rfb.Filter
	if s.terminal == TerminalScreen {
		// A connection of the viewer's own to x11vnc (s.screen is set before serving
		// closes): its ServerInit first, then what x11vnc sends it. The filter has no
		// mode: view always, keys, pointer and clipboard dropped.
		sc, init, err := s.screen.Dial(s.ctx)
		if err != nil {
			log.Warn().Err(err).Msg("viewer's screen connection failed")
			s.closeViewer(v, wire.OutcomeFailed, "the screen's VNC server: "+err.Error())
			return
		}
		v.screen = sc
		if err := v.send(frame.Data, init); err != nil {
			s.closeViewer(v, wire.OutcomeCompleted, "writing to the viewer: "+err.Error())
			return
		}
		v.bytesOut.Add(int64(len(init)))
		in = &rfb.Filter{Dst: sc}
	}
	log.Info().Str("transport", transport).Msg("viewer joined")
	s.reportLeg(t, wire.SessionReport{Event: wire.ReportStarted, Mode: ticket.ModeView, Transport: transport})
	s.post(event{src: fromViewer, viewer: v})
	go func() { // a safety net: a viewer whose joining the loop never saw ends with the session
		<-s.endCh
		time.Sleep(5 * time.Second)
		s.closeViewer(v, wire.OutcomeCompleted, "the session ended")
	}()
	if v.screen != nil {
		go s.viewerScreen(v)
	}
	for {
		f, err := r.Next()
		if err != nil {
			s.post(event{src: fromViewer, viewer: v, err: err})
			return
		}
		if in != nil && f.Type == frame.Data {
			// Here, not in the loop: the filter's mode never changes, and a slow x11vnc
			// holds this viewer only.
			if _, err := in.Write(f.Payload); err != nil {
				outcome := wire.OutcomeCompleted
				if errors.Is(err, rfb.ErrForbidden) || errors.Is(err, rfb.ErrTooLarge) {
					outcome = wire.OutcomeFailed
					log.Warn().Err(err).Msg("the viewer's VNC client sent a message the screen filter refuses")
					s.h.c.Audit("warning", fmt.Sprintf("remote session %s: the viewer %s ended: %v", s.t.Session, t.Helper, err))
				}
				s.post(event{src: fromViewer, viewer: v, err: &legError{outcome: outcome, why: "the viewer's screen: " + err.Error()}})
				return
			}
			continue
		}
		s.post(event{src: fromViewer, viewer: v, f: frame.Frame{Type: f.Type, Payload: append([]byte(nil), f.Payload...)}})
	}
}

// viewerScreen carries what x11vnc sends on the viewer's connection to the viewer.
func (s *session) viewerScreen(v *viewer) {
	buf := make([]byte, frame.MaxData)
	for {
		n, err := v.screen.Read(buf)
		if n > 0 {
			if werr := v.send(frame.Data, buf[:n]); werr != nil {
				s.post(event{src: fromViewer, viewer: v, err: &legError{outcome: wire.OutcomeCompleted, why: "writing to the viewer: " + werr.Error()}})
				return
			}
			v.bytesOut.Add(int64(n))
		}
		if err != nil {
			s.post(event{src: fromViewer, viewer: v, err: &legError{outcome: wire.OutcomeCompleted, why: "the screen's VNC server closed the viewer's connection"}})
			return
		}
	}
}

// viewerEvent runs in the session's loop.
func (s *session) viewerEvent(e event) {
	v := e.viewer
	if e.f.Type == 0 && e.err == nil { // joined
		if s.ended() {
			s.dropViewer(v, "the session ended")
			return
		}
		s.viewers = append(s.viewers, v)
		s.presence("a viewer joined")
		return
	}
	if e.err != nil {
		var le *legError
		if errors.As(e.err, &le) {
			s.endViewer(v, le.outcome, le.why)
		} else {
			s.dropViewer(v, "the viewer left")
		}
		return
	}
	switch e.f.Type {
	case frame.Ping:
		_ = v.send(frame.Pong, nil)
	case frame.End:
		s.dropViewer(v, "the viewer left")
	case frame.Mode:
		_ = v.sendJSON(frame.Mode, frame.ModeChange{Mode: ticket.ModeView, Reason: "not-permitted"})
	case frame.Chat:
		if s.p.RC.AllowChat && s.sharerUID >= 0 {
			s.h.hub.broadcast(s.sharerUID, frame.Chat, append([]byte(v.t.Helper+": "), e.f.Payload...))
		}
	default:
		// Data and the rest: a viewer types nothing.
	}
}

func (s *session) dropViewer(v *viewer, why string) { s.endViewer(v, wire.OutcomeCompleted, why) }

// endViewer ends a viewer's leg with outcome, in the loop; the session goes on.
func (s *session) endViewer(v *viewer, outcome, why string) {
	for i, x := range s.viewers {
		if x == v {
			s.viewers = append(s.viewers[:i], s.viewers[i+1:]...)
			break
		}
	}
	s.closeViewer(v, outcome, why)
}

// closeViewer ends a viewer's leg once: its End, its connections, its report.
func (s *session) closeViewer(v *viewer, outcome, why string) {
	v.once.Do(func() {
		_ = v.sendJSON(frame.End, frame.Ending{Outcome: outcome, Message: why})
		_ = v.c.Close()
		if v.screen != nil {
			_ = v.screen.Close()
		}
		s.log.Info().Str("viewer", v.t.Helper).Str("outcome", outcome).Str("why", why).Msg("viewer left")
		s.h.report(context.Background(), s.t.Session, wire.SessionReport{Ticket: v.t.ID, Event: wire.ReportEnded, Outcome: outcome, Message: why, BytesOut: v.bytesOut.Load()})
	})
}
