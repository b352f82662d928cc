package console

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/helper"
	"github.com/ibcm-project/ibcm/remote/rfb"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// The WebSockets of browser sessions:
//
//	GET /ws/sessions/{id}?ticket=T&csrf=C[&rows=R&cols=C]   the control WebSocket
//	GET /ws/sessions/{id}/screen?ticket=T&csrf=C            noVNC's RFB, for a screen session
//
// Both need the console's Origin exactly, a live cookie session and the session's CSRF
// token in the query, all checked before the upgrade. The control WebSocket dials the
// session (Backend.DialSession: the MP is the helper's end of the end-to-end TLS) and
// carries, for a terminal, the terminal's bytes as binary messages both ways; everything
// else is one JSON object per text message. Browser → console: resize, chat, mode, end
// (parseClientMessage). Console → browser: card first, then status, chat, mode, and end
// last, after which the WebSocket closes. For a screen session the control WebSocket
// carries JSON only and the screen WebSocket, opened by the same cookie session once the
// card came, speaks RFB 3.8 with security None to noVNC (the browser is authenticated by
// the cookie, Origin and CSRF), bridged to the device's screen stream.
//
// When the browser goes (either WebSocket closes, or stops answering pings) the session
// ends; when the session ends, the WebSockets close with the end message first. A logout
// or a revocation on this console ends the live sessions concerned at once (endLive); every
// keepalive tick the cookie session is checked again too, for a disabled user, an expiry,
// or a revocation made through another MP's console.

// MaxWSMessage bounds one message a browser sends on either WebSocket.
const MaxWSMessage = 64 << 10

// bridgeKeepalive is how often the console pings the browser and the device, and checks the
// cookie session again.
var bridgeKeepalive = 20 * time.Second

// bridgeDialTimeout bounds the wait for the device (the sharer's consent comes first).
const bridgeDialTimeout = 10 * time.Minute

// screenAttachTimeout is how long a screen session waits for its screen WebSocket.
var screenAttachTimeout = time.Minute

// bridgeWriteTimeout bounds one write towards the device: a device that reads nothing for
// that long (hung, or a dead link the relay has not noticed) loses the session, rather than
// holding the bridge's goroutines, and the keepalive and cookie checks behind them, forever.
var bridgeWriteTimeout = time.Minute

// bridgeEndWait is how long an end waits for the device's own End before closing.
const bridgeEndWait = 5 * time.Second

// authFunc authenticates a request to its cookie session: the user and the session's CSRF
// token (Console.sessionOf).
type authFunc func(r *http.Request) (login, error)

// bridgeRoutes adds the two WebSocket routes of browser sessions.
func (c *Console) bridgeRoutes(mux *http.ServeMux) { c.bridgeRoutesWith(mux, c.sessionOf) }

// bridgeRoutesWith is bridgeRoutes with the cookie check given (tests).
func (c *Console) bridgeRoutesWith(mux *http.ServeMux, auth authFunc) {
	mux.Handle("GET /ws/sessions/{id}", c.wsRoute(auth, false))
	mux.Handle("GET /ws/sessions/{id}/screen", c.wsRoute(auth, true))
	mux.Handle("/ws/", c.noRoute())
}

// wsQuery is a WebSocket route's query, read strictly.
type wsQuery struct {
	Ticket, CSRF string
	Rows, Cols   uint16
}

// parseWSQuery reads ticket, csrf and (control WebSocket only) rows and cols: each at most
// once, nothing else.
func parseWSQuery(raw string, screen bool) (wsQuery, error) {
	if len(raw) > 1024 {
		return wsQuery{}, api.BadRequest("the query is longer than 1024 bytes")
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return wsQuery{}, api.BadRequest("the query is not URL-encoded key=value pairs: %v", err)
	}
	var out wsQuery
	for k, v := range q {
		if len(v) != 1 {
			return wsQuery{}, api.BadRequest("%s: once", k)
		}
		switch k {
		case "ticket":
			out.Ticket = v[0]
		case "csrf":
			out.CSRF = v[0]
		case "rows", "cols":
			if screen {
				return wsQuery{}, api.BadRequest("%s: the screen WebSocket has no terminal size", k)
			}
			n, err := strconv.ParseUint(v[0], 10, 16)
			if err != nil || n == 0 || n > 1000 {
				return wsQuery{}, api.BadRequest("%s: 1 to 1000", k)
			}
			if k == "rows" {
				out.Rows = uint16(n)
			} else {
				out.Cols = uint16(n)
			}
		default:
			return wsQuery{}, api.BadRequest("unknown query parameter %q (ticket, csrf, rows, cols)", k)
		}
	}
	if !ticket.ValidID(out.Ticket) {
		return wsQuery{}, api.BadRequest("ticket: the ticket id of the session's start (32 hex digits)")
	}
	return out, nil
}

// wsRoute checks a WebSocket upgrade (Origin exactly, cookie session, CSRF, the query)
// before accepting it, then runs the control or the screen side.
func (c *Console) wsRoute(auth authFunc, screen bool) http.Handler {
	return api.Handle(c.log, func(w http.ResponseWriter, r *http.Request) error {
		if err := c.checkOrigin(r, true); err != nil {
			return err
		}
		l, err := auth(r)
		if err != nil {
			return err
		}
		user, csrf := l.user, l.csrf
		q, err := parseWSQuery(r.URL.RawQuery, screen)
		if err != nil {
			return err
		}
		if err := checkCSRF(csrf, q.CSRF); err != nil {
			return err
		}
		id := r.PathValue("id")
		if !ticket.ValidID(id) {
			return api.Errorf(http.StatusNotFound, "not_found", "no session %q", id)
		}
		var ls *liveSession
		if screen {
			if ls, err = lives.attachScreen(id, user, csrf, q.Ticket); err != nil {
				return err
			}
		}
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
			Subprotocols: []string{"binary"}, // noVNC's
			// The Origin was checked above, exactly against the console's; the library's
			// own check compares with the Host header, which a proxy may rewrite.
			InsecureSkipVerify: true,
		})
		if err != nil {
			if ls != nil {
				ls.end("the screen connection failed")
			}
			return nil // Accept has answered
		}
		ws.SetReadLimit(MaxWSMessage)
		recheck := func(ctx context.Context) error {
			_, err := auth(r.Clone(ctx))
			return err
		}
		if screen {
			c.runScreen(r.Context(), ws, ls, recheck)
		} else {
			c.runControl(r.Context(), ws, l, id, q, recheck)
		}
		return nil
	})
}

// clientMessage is a browser's text message on the control WebSocket.
type clientMessage struct {
	Type string  `json:"type"` // resize, chat, mode, end
	Rows *uint16 `json:"rows,omitempty"`
	Cols *uint16 `json:"cols,omitempty"`
	Text *string `json:"text,omitempty"`
	Mode *string `json:"mode,omitempty"`
}

// errMessage is wrapped by every refusal of a browser's message.
var errMessage = errors.New("bad message")

// parseClientMessage reads one text message strictly: one JSON object of a known type with
// its fields and no others (resize: rows and cols 1 to 1000; chat: text, UTF-8, 1 to
// frame.MaxChat bytes; mode: a session mode; end: nothing).
func parseClientMessage(b []byte) (clientMessage, error) {
	var m clientMessage
	if len(b) > MaxWSMessage {
		return m, fmt.Errorf("%w: %d bytes", errMessage, len(b))
	}
	if !utf8.Valid(b) {
		return m, fmt.Errorf("%w: not UTF-8", errMessage)
	}
	if err := uniqueKeys(b); err != nil {
		return m, err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return clientMessage{}, fmt.Errorf("%w: %v", errMessage, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return clientMessage{}, fmt.Errorf("%w: data after the object", errMessage)
	}
	only := func(rows, cols, text, mode bool) error {
		if (m.Rows != nil) != rows || (m.Cols != nil) != cols || (m.Text != nil) != text || (m.Mode != nil) != mode {
			return fmt.Errorf("%w: %s takes %s", errMessage, m.Type, map[string]string{"resize": "rows and cols", "chat": "text",
				"mode": "mode", "end": "no field"}[m.Type])
		}
		return nil
	}
	var err error
	switch m.Type {
	case "resize":
		if err = only(true, true, false, false); err == nil && (*m.Rows == 0 || *m.Rows > 1000 || *m.Cols == 0 || *m.Cols > 1000) {
			err = fmt.Errorf("%w: resize: rows and cols 1 to 1000", errMessage)
		}
	case "chat":
		if err = only(false, false, true, false); err == nil {
			switch t := *m.Text; {
			case t == "" || len(t) > frame.MaxChat:
				err = fmt.Errorf("%w: chat: 1 to %d bytes", errMessage, frame.MaxChat)
			case !utf8.ValidString(t):
				err = fmt.Errorf("%w: chat: not UTF-8", errMessage)
			}
		}
	case "mode":
		if err = only(false, false, false, true); err == nil {
			switch *m.Mode {
			case "view", "control", "elevated", "unattended":
			default:
				err = fmt.Errorf("%w: mode: view, control, elevated or unattended", errMessage)
			}
		}
	case "end":
		err = only(false, false, false, false)
	default:
		err = fmt.Errorf("%w: type %q (resize, chat, mode, end)", errMessage, m.Type)
	}
	if err != nil {
		return clientMessage{}, err
	}
	return m, nil
}

// uniqueKeys refuses an object whose keys repeat, are not exactly (case included) the names
// of clientMessage's fields, or whose values are null: encoding/json would take the last,
// match "TEXT" or "Mode" to a field, or skip a null.
func uniqueKeys(b []byte) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("%w: not a JSON object", errMessage)
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %v", errMessage, err)
		}
		k, _ := t.(string)
		switch k {
		case "type", "rows", "cols", "text", "mode":
		default:
			return fmt.Errorf("%w: unknown field %q", errMessage, k)
		}
		if seen[k] {
			return fmt.Errorf("%w: %q twice", errMessage, k)
		}
		seen[k] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("%w: %v", errMessage, err)
		}
		if string(v) == "null" {
			return fmt.Errorf("%w: %q is null", errMessage, k)
		}
	}
	return nil
}

// Messages to the browser.
type (
	cardDevice struct {
		ID   string `json:"id"`
		Name string `json:"name,omitempty"`
	}
	cardMessage struct {
		Type       string     `json:"type"` // card
		Session    string     `json:"session"`
		Kind       string     `json:"kind"` // terminal or screen
		Device     cardDevice `json:"device"`
		Mode       string     `json:"mode"`
		Transport  string     `json:"transport"`
		Sharer     string     `json:"sharer,omitempty"`
		SharerName string     `json:"sharer_name,omitempty"`
	}
	textMessage struct {
		Type string `json:"type"` // status
		Text string `json:"text"`
	}
	chatMessage struct {
		Type string `json:"type"` // chat
		From string `json:"from"`
		Text string `json:"text"`
	}
	modeMessage struct {
		Type    string `json:"type"` // mode
		Mode    string `json:"mode"`
		Granted bool   `json:"granted"`
		Reason  string `json:"reason,omitempty"`
	}
	endMessage struct {
		Type   string `json:"type"` // end
		Reason string `json:"reason"`
	}
)

// liveSession is a browser session served by this console: the control WebSocket's, which
// a screen WebSocket of the same cookie session attaches to.
type liveSession struct {
	c                      *Console
	id, user, csrf, ticket string
	serial                 string // of the certificate the console login was made with
	s                      *helper.Session
	screen                 bool
	screenIn               *io.PipeReader // the device's RFB (screen sessions)
	screenAttached         chan struct{}  // closed when the screen WebSocket attached

	once   sync.Once
	done   chan struct{} // closed by end
	reason string        // why it ended, set before done closes
}

// end ends the live session once: the device is told (helper End), and every WebSocket
// of it closes with reason.
func (ls *liveSession) end(reason string) {
	ls.once.Do(func() {
		ls.reason = reason
		close(ls.done)
		if ls.screenIn != nil { // the device's screen bytes go nowhere now
			ls.screenIn.CloseWithError(io.EOF)
		}
	})
}

// liveSessions are the live sessions of this process by session id.
type liveSessions struct {
	mu sync.Mutex
	m  map[string]*liveSession
}

var lives = &liveSessions{m: map[string]*liveSession{}}

func (l *liveSessions) add(ls *liveSession) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.m[ls.id]; ok {
		return api.Errorf(http.StatusConflict, "session_open", "session %s is already open in a browser", ls.id)
	}
	l.m[ls.id] = ls
	return nil
}

func (l *liveSessions) remove(ls *liveSession) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m[ls.id] == ls {
		delete(l.m, ls.id)
	}
}

// endLive ends at once the live sessions of c for which match holds (a logout, a
// revocation), rather than at their next keepalive; it returns how many.
func (c *Console) endLive(match func(*liveSession) bool, reason string) int {
	lives.mu.Lock()
	var hit []*liveSession
	for _, ls := range lives.m {
		if ls.c == c && match(ls) {
			hit = append(hit, ls)
		}
	}
	lives.mu.Unlock()
	for _, ls := range hit {
		ls.end(reason)
	}
	return len(hit)
}

// endRevoked ends at once the live sessions whose console login was made with a certificate
// that is now revoked (the MP's revoked set, in memory: it is checked every
// revokedCheckEvery by Run), so that a revocation — disabling the user revokes their
// certificates too — reaches a browser's session within a second, as it reaches the
// certificate's own connections.
func (c *Console) endRevoked() int {
	return c.endLive(func(ls *liveSession) bool { return c.backend.CertificateRevoked(ls.serial) },
		"the certificate the console login was made with is revoked")
}

// revokedCheckEvery is how often Run looks for live sessions of revoked certificates.
var revokedCheckEvery = time.Second

// attachScreen finds the screen session id that the same cookie session (user, csrf) opened
// with ticket, not attached yet.
func (l *liveSessions) attachScreen(id, user, csrf, ticketID string) (*liveSession, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls := l.m[id]
	if ls == nil || ls.user != user || subtle.ConstantTimeCompare([]byte(ls.csrf), []byte(csrf)) != 1 || ls.ticket != ticketID {
		return nil, api.Errorf(http.StatusNotFound, "not_found", "session %s is not open in this browser: open its control WebSocket first", id)
	}
	if !ls.screen {
		return nil, api.Errorf(http.StatusConflict, "not_screen", "session %s is a terminal session", id)
	}
	select {
	case <-ls.screenAttached:
		return nil, api.Errorf(http.StatusConflict, "screen_attached", "session %s already has its screen", id)
	case <-ls.done:
		return nil, api.Errorf(http.StatusGone, "session_ended", "session %s has ended", id)
	default:
	}
	close(ls.screenAttached)
	return ls, nil
}

// writeJSON sends one text message.
func writeJSON(ctx context.Context, ws *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return ws.Write(wctx, websocket.MessageText, b)
}

// closeWith sends the end message and closes the WebSocket normally.
func closeWith(ws *websocket.Conn, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = writeJSON(ctx, ws, endMessage{Type: "end", Reason: reason})
	_ = ws.Close(websocket.StatusNormalClosure, closeReason(reason))
}

// closeReason fits a reason into a close frame (123 bytes).
func closeReason(s string) string {
	if len(s) <= 120 {
		return s
	}
	s = s[:120]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// browserMessage is one message read from the control WebSocket.
type browserMessage struct {
	typ  websocket.MessageType
	data []byte
}

// runControl is the control WebSocket: it dials the session, opens the framed conversation,
// and carries messages both ways until either side ends.
func (c *Console) runControl(rctx context.Context, ws *websocket.Conn, l login, id string, q wsQuery, recheck func(context.Context) error) {
	user, csrf := l.user, l.csrf
	ctx, cancel := context.WithCancel(rctx)
	defer cancel()
	// The browser's messages, read from the start: a close, or an end, while the device is
	// still being reached cancels the dial.
	in := make(chan browserMessage, 16)
	readErr := make(chan error, 1)
	go func() {
		for {
			typ, b, err := ws.Read(ctx)
			if err != nil {
				readErr <- err
				cancel()
				return
			}
			select {
			case in <- browserMessage{typ, b}:
			case <-ctx.Done():
				return
			}
		}
	}()
	log := c.log.With().Str("session", id).Str("user", user).Logger()
	_ = writeJSON(ctx, ws, textMessage{Type: "status", Text: "connecting to the device (its user may have to accept first)"})

	type dialed struct {
		s   *helper.Session
		err error
	}
	dc := make(chan dialed, 1)
	dctx, dcancel := context.WithTimeout(ctx, bridgeDialTimeout)
	defer dcancel()
	// abandon stops the dial; a session it opened all the same is ended with why.
	abandon := func(why string) {
		dcancel()
		if d := <-dc; d.s != nil {
			_ = d.s.End(why)
			_ = d.s.Close()
		}
	}
	go func() {
		raw, err := c.backend.DialSession(dctx, user, id, q.Ticket)
		if err != nil {
			dc <- dialed{nil, err}
			return
		}
		conn := deviceConn{raw}
		s, err := helper.Open(dctx, conn, frame.Greeting{Rows: q.Rows, Cols: q.Cols})
		if err != nil {
			_ = conn.Close()
		}
		dc <- dialed{s, err}
	}()
	var s *helper.Session
	for s == nil {
		select {
		case d := <-dc:
			if d.err != nil {
				log.Info().Err(d.err).Msg("console session not started")
				closeWith(ws, endReason(d.err))
				return
			}
			s = d.s
		case m := <-in:
			if m.typ == websocket.MessageText {
				if cm, err := parseClientMessage(m.data); err == nil && cm.Type == "end" {
					abandon("ended in the web console before it started")
					closeWith(ws, "ended by you")
					return
				}
			}
			// Anything else before the session is up is dropped.
		case <-readErr:
			abandon("the browser left")
			return
		}
	}
	defer s.Close()
	ls := &liveSession{c: c, id: id, user: user, csrf: csrf, serial: l.serial, ticket: q.Ticket, s: s, screen: s.Device.Terminal == "screen",
		screenAttached: make(chan struct{}), done: make(chan struct{})}
	var screenOut *io.PipeWriter
	if ls.screen {
		ls.screenIn, screenOut = io.Pipe()
	}
	if err := lives.add(ls); err != nil {
		_ = s.End("the session is already open in a browser")
		closeWith(ws, err.Error())
		return
	}
	defer lives.remove(ls)
	// A logout or revocation while the device was being reached (endLive did not see this
	// session yet) ends it now, not at the first keepalive.
	if err := recheck(ctx); err != nil {
		ls.end("the console session ended (logged out, revoked or expired)")
	}
	log.Info().Bool("screen", ls.screen).Msg("console session live")

	kind := "terminal"
	if ls.screen {
		kind = "screen"
	}
	card := cardMessage{Type: "card", Session: id, Kind: kind, Device: cardDevice{}, Mode: s.Device.Mode, Transport: wire.TransportRelay,
		Sharer: s.Device.Sharer, SharerName: s.Device.SharerName}
	if info, err := c.sessionInfo(ctx, user, id); err == nil {
		card.Device = cardDevice{ID: info.Device, Name: info.DeviceName}
	}
	if err := writeJSON(ctx, ws, card); err != nil {
		ls.end("the browser left")
	}

	// The device's frames.
	deviceDone := make(chan struct{})
	go func() {
		defer close(deviceDone)
		defer func() {
			if screenOut != nil {
				screenOut.CloseWithError(io.EOF)
			}
		}()
		for {
			ev, err := s.Next()
			if err != nil {
				ls.end("the connection to the device was lost")
				return
			}
			var out any
			switch ev.Type {
			case frame.Data:
				if ls.screen {
					if _, err := screenOut.Write(ev.Data); err != nil {
						continue // the screen is gone; read on for the device's End
					}
					continue
				}
				if err := ws.Write(ctx, websocket.MessageBinary, ev.Data); err != nil {
					ls.end("the browser left")
				}
				continue
			case frame.Chat:
				out = chatMessage{Type: "chat", From: "sharer", Text: ev.Text}
			case frame.Mode:
				out = modeMessage{Type: "mode", Mode: ev.Mode.Mode, Granted: ev.Mode.Granted, Reason: ev.Mode.Reason}
			case frame.Status:
				out = textMessage{Type: "status", Text: presenceText(ev.Presence)}
			case frame.End:
				reason := ev.Ending.Outcome
				if ev.Ending.Message != "" {
					reason = ev.Ending.Message + " (" + ev.Ending.Outcome + ")"
				}
				ls.end(reason)
				return
			default: // Pong, Resize (the sharer's window): nothing for the page
				continue
			}
			if err := writeJSON(ctx, ws, out); err != nil {
				ls.end("the browser left")
			}
		}
	}()

	if ls.screen {
		// The screen WebSocket must come: until it does, the device's screen stream waits.
		t := time.AfterFunc(screenAttachTimeout, func() {
			select {
			case <-ls.screenAttached:
			default:
				ls.end("the browser did not open the screen")
			}
		})
		defer t.Stop()
	}

	tick := time.NewTicker(bridgeKeepalive)
	defer tick.Stop()
	endedByBrowser := false
loop:
	for {
		select {
		case <-ls.done:
			break loop
		case err := <-readErr:
			if errors.Is(err, websocket.ErrMessageTooBig) {
				ls.end(fmt.Sprintf("the browser sent a message over %d bytes", MaxWSMessage))
			} else {
				ls.end("the browser left")
			}
			endedByBrowser = true
			break loop
		case m := <-in:
			if m.typ == websocket.MessageBinary {
				if ls.screen {
					_ = writeJSON(ctx, ws, textMessage{Type: "status", Text: "refused: a screen session's control WebSocket carries JSON only"})
					continue
				}
				if _, err := s.Write(m.data); err != nil {
					ls.end("the connection to the device was lost")
				}
				continue
			}
			cm, err := parseClientMessage(m.data)
			if err != nil {
				_ = writeJSON(ctx, ws, textMessage{Type: "status", Text: "refused: " + err.Error()})
				continue
			}
			switch cm.Type {
			case "resize":
				err = s.Resize(*cm.Rows, *cm.Cols)
			case "chat":
				err = s.Chat(*cm.Text)
			case "mode":
				err = s.RequestMode(*cm.Mode)
			case "end":
				ls.end("ended by you")
				endedByBrowser = true
				break loop
			}
			if err != nil {
				ls.end("the connection to the device was lost")
			}
		case <-tick.C:
			pctx, pcancel := context.WithTimeout(ctx, bridgeKeepalive)
			err := ws.Ping(pctx)
			pcancel()
			if err != nil {
				ls.end("the browser stopped answering")
				endedByBrowser = true
				break loop
			}
			if err := recheck(ctx); err != nil {
				ls.end("the console session ended (logged out, revoked or expired)")
				endedByBrowser = true
				break loop
			}
			_ = s.Ping()
		}
	}
	<-ls.done
	// The device is told, and its own End awaited a moment (its outcome is the audit's);
	// not when it cannot be told (the connection is lost, or it reads nothing).
	if err := s.End("ended in the web console: " + ls.reason); err == nil {
		select {
		case <-deviceDone:
		case <-time.After(bridgeEndWait):
		}
	}
	_ = s.Close()
	closeWith(ws, ls.reason) // a browser that left has closed it already
	log.Info().Bool("by_browser", endedByBrowser).Str("reason", ls.reason).Msg("console session ended")
}

// runScreen is the screen WebSocket of a live screen session: RFB with security None
// towards noVNC, whose ServerInit is the device's, then the bytes both ways (the device
// filters the viewer's by mode).
func (c *Console) runScreen(rctx context.Context, ws *websocket.Conn, ls *liveSession, recheck func(context.Context) error) {
	ctx, cancel := context.WithCancel(rctx)
	defer cancel()
	nc := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	ws.SetReadLimit(MaxWSMessage) // NetConn lifts it
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()
	go func() {
		select {
		case <-ls.done:
		case <-ctx.Done():
		}
		_ = ws.Close(websocket.StatusNormalClosure, closeReason(ls.reason))
		cancel()
	}()
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	if _, err := rfb.AcceptNone(nc, func() (rfb.ServerInit, error) { return rfb.ReadServerInit(ls.screenIn) }); err != nil {
		c.log.Info().Err(err).Str("session", ls.id).Msg("console screen: the viewer's handshake")
		ls.end("the screen's handshake failed")
		return
	}
	_ = nc.SetDeadline(time.Time{})
	go func() {
		_, _ = io.Copy(nc, ls.screenIn)
		ls.end("the device's screen ended")
	}()
	_, err := io.Copy(ls.s, nc)
	if errors.Is(err, frame.ErrFrame) || errors.Is(err, websocket.ErrMessageTooBig) {
		ls.end("the screen sent a message the console refuses")
		return
	}
	ls.end("the browser closed the screen")
}

// deviceConn bounds every write towards the device by bridgeWriteTimeout. A write that
// times out leaves the TLS connection broken for good: the session is then lost, and its
// Close no longer waits for anything.
type deviceConn struct{ net.Conn }

func (c deviceConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(bridgeWriteTimeout))
	return c.Conn.Write(p)
}

// CloseWrite is the TLS close_notify of helper.Session.End, bounded the same way.
func (c deviceConn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return nil
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(bridgeWriteTimeout))
	return cw.CloseWrite()
}

// endReason is what the browser is told when the session could not start.
func endReason(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Message + " (" + ae.Code + ")"
	}
	var ee *helper.EndedError
	if errors.As(err, &ee) {
		return ee.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "the device did not answer in time"
	}
	return "the session could not start: " + err.Error()
}

// presenceText is a status frame for people.
func presenceText(p frame.Presence) string {
	var who []string
	for _, h := range p.Helpers {
		n := h.User
		if h.DisplayName != "" {
			n = h.DisplayName + " (" + h.User + ")"
		}
		if h.Role != "" && h.Role != "helper" {
			n += " [" + h.Role + "]"
		}
		who = append(who, n)
	}
	s := p.Message
	if len(who) > 0 {
		if s != "" {
			s += "; "
		}
		s += "connected: " + strings.Join(who, ", ")
	}
	if p.Mode != "" {
		s += " [" + p.Mode + "]"
	}
	return s
}

// sessionInfo reads the session's audit record for user through the MP's API (the device's
// id and name for the card).
func (c *Console) sessionInfo(ctx context.Context, user, id string) (wire.Session, error) {
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, "/v1/admin/sessions/"+id, nil)
	if err != nil {
		return wire.Session{}, err
	}
	r.RequestURI = r.URL.RequestURI()
	w := &recorder{h: http.Header{}, code: http.StatusOK}
	c.backend.ConsoleAPI(user).ServeHTTP(w, r)
	var s wire.Session
	if w.code != http.StatusOK {
		return s, fmt.Errorf("GET /v1/admin/sessions/%s: %d", id, w.code)
	}
	err = json.Unmarshal(w.body.Bytes(), &s)
	return s, err
}

// recorder keeps an in-process answer of the MP's API (at most 1 MiB of body).
type recorder struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func (r *recorder) Header() http.Header  { return r.h }
func (r *recorder) WriteHeader(code int) { r.code = code }
func (r *recorder) Write(p []byte) (int, error) {
	if r.body.Len()+len(p) > 1<<20 {
		return 0, errors.New("answer too long")
	}
	return r.body.Write(p)
}
