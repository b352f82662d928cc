package console

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/rfb"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// The bridge against a fake device (the framed conversation over a pipe, as the device's
// end of DialSession would speak it) and a fake cookie check; the real MP, agent and
// terminal are integration/console_session_test.go's.

const (
	testOrigin = "https://console.test:9445"
	testCSRF   = "csrf-token-of-alice"
	testTicket = "0123456789abcdef0123456789abcdef"
)

// testSession is the session id of the running test (newBridge makes a new one: the live
// sessions of a test that ended may still be going away).
var testSession string

// bridgeDevice is the device's side of one session.
type bridgeDevice struct {
	screen bool
	stall  chan struct{}    // when not nil: after its greeting the device reads nothing until it closes
	got    chan frame.Frame // what the helper sent (Data, Resize, Chat, Mode, End)
	end    chan string      // the test ends the session from the device with this message
}

func (d *bridgeDevice) serve(conn net.Conn) {
	defer conn.Close()
	r := frame.NewReader(conn)
	var wmu sync.Mutex
	write := func(t frame.Type, p []byte) { wmu.Lock(); _ = frame.Write(conn, t, p); wmu.Unlock() }
	writeJSON := func(t frame.Type, v any) { b, _ := json.Marshal(v); write(t, b) }
	if f, err := r.Next(); err != nil || f.Type != frame.Hello {
		return
	}
	g := frame.Greeting{Session: testSession, Mode: "control", Sharer: "bob", Terminal: "new-shell"}
	if d.screen {
		g.Terminal = "screen"
	}
	writeJSON(frame.Hello, g)
	if d.screen {
		si := binary.BigEndian.AppendUint16(nil, 64)
		si = binary.BigEndian.AppendUint16(si, 48)
		si = append(si, make([]byte, 16)...)
		si = binary.BigEndian.AppendUint32(si, 4)
		write(frame.Data, append(si, "desk"...))
	}
	if d.stall != nil {
		<-d.stall
		return
	}
	go func() {
		if msg, ok := <-d.end; ok {
			writeJSON(frame.End, frame.Ending{Outcome: wire.OutcomeCompleted, Message: msg})
			conn.Close()
		}
	}()
	for {
		f, err := r.Next()
		if err != nil {
			return
		}
		f.Payload = append([]byte(nil), f.Payload...)
		select {
		case d.got <- f:
		default:
		}
		switch f.Type {
		case frame.Data:
			write(frame.Data, append([]byte("echo:"), f.Payload...))
		case frame.Chat:
			write(frame.Chat, append([]byte("got: "), f.Payload...))
		case frame.Mode:
			var m frame.ModeChange
			_ = json.Unmarshal(f.Payload, &m)
			writeJSON(frame.Mode, frame.ModeChange{Mode: m.Mode, Granted: m.Mode != "elevated", Reason: map[bool]string{true: "denied"}[m.Mode == "elevated"]})
		case frame.Ping:
			write(frame.Pong, nil)
		case frame.End:
			writeJSON(frame.End, frame.Ending{Outcome: wire.OutcomeCompleted, Message: "the helper ended it"})
			return
		}
	}
}

// bridgeBackend dials fake devices.
type bridgeBackend struct {
	revoked string // a serial CertificateRevoked says is revoked
	mu      sync.Mutex
	dev     *bridgeDevice
	dialErr error
	dials   []string      // user/session/ticket
	closed  chan struct{} // when not nil: closed when the console closes the dialled connection
}

// closeConn tells when the console closes its end of a session.
type closeConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *closeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (b *bridgeBackend) ConsoleAPI(user string) http.Handler {
	return api.Handle(zerolog.Nop(), func(w http.ResponseWriter, r *http.Request) error {
		if r.URL.Path != "/v1/admin/sessions/"+testSession || user != "alice" {
			return api.Errorf(http.StatusNotFound, "not_found", "no")
		}
		api.WriteJSON(w, http.StatusOK, wire.Session{ID: testSession, Device: "dev-1", DeviceName: "pc-1", Helper: user})
		return nil
	})
}

func (b *bridgeBackend) CertificateRevoked(serial string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return serial == b.revoked
}

func (b *bridgeBackend) DialSession(ctx context.Context, user, sessionID, ticketID string) (net.Conn, error) {
	b.mu.Lock()
	b.dials = append(b.dials, user+"/"+sessionID+"/"+ticketID)
	dev, err := b.dev, b.dialErr
	b.mu.Unlock()
	if err != nil {
		return nil, err
	}
	a, c := net.Pipe()
	go dev.serve(c)
	if b.closed != nil {
		return &closeConn{Conn: a, closed: b.closed}, nil
	}
	return a, nil
}

// testAuth: the cookie "alice" is alice's session.
func testAuth(r *http.Request) (login, error) {
	if ck, err := r.Cookie(CookieName); err == nil {
		switch ck.Value {
		case "alice":
			return login{user: "alice", csrf: testCSRF, serial: testSerial}, nil
		case "alice-tab2": // another cookie session of alice's (another browser)
			return login{user: "alice", csrf: "csrf-of-alice-elsewhere", serial: testSerial}, nil
		case "mallory": // another user, who learnt alice's CSRF token
			return login{user: "mallory", csrf: testCSRF, serial: "777"}, nil
		}
	}
	return login{}, api.Errorf(http.StatusUnauthorized, "login_required", "no console session")
}

func newBridge(t *testing.T, dev *bridgeDevice) (*httptest.Server, *bridgeBackend) {
	t.Helper()
	testSession = ticket.NewID()
	be := &bridgeBackend{dev: dev}
	// No test logger: the bridge's goroutines may log after the test (hijacked connections
	// outlive httptest.Server.Close).
	c := &Console{backend: be, origin: testOrigin, log: zerolog.Nop()}
	mux := http.NewServeMux()
	c.bridgeRoutesWith(mux, testAuth)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, be
}

func wsURL(srv *httptest.Server, path string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + path
}

func dialWS(ctx context.Context, srv *httptest.Server, path string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	h := http.Header{"Origin": {testOrigin}, "Cookie": {CookieName + "=alice"}}
	for k, v := range hdr {
		if v == nil {
			h.Del(k)
		} else {
			h[k] = v
		}
	}
	return websocket.Dial(ctx, wsURL(srv, path), &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{"binary"}})
}

func controlPath(extra string) string {
	return "/ws/sessions/" + testSession + "?ticket=" + testTicket + "&csrf=" + testCSRF + extra
}

// readJSON reads the next text message (binary ones go to bin when not nil).
func readJSON(t *testing.T, ctx context.Context, ws *websocket.Conn, bin *[]byte) map[string]any {
	t.Helper()
	for {
		typ, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if typ == websocket.MessageBinary {
			if bin != nil {
				*bin = append(*bin, b...)
			}
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("not JSON: %q", b)
		}
		return m
	}
}

// next reads until a text message of type typ (others are skipped: status).
func next(t *testing.T, ctx context.Context, ws *websocket.Conn, typ string, bin *[]byte) map[string]any {
	t.Helper()
	for {
		if m := readJSON(t, ctx, ws, bin); m["type"] == typ {
			return m
		} else if m["type"] == "end" {
			t.Fatalf("ended waiting for %s: %v", typ, m)
		}
	}
}

// Everything is checked before the upgrade: the Origin exactly, the cookie, the CSRF
// token, the query; a screen WebSocket needs its live session.
func TestBridgeRefusesBeforeUpgrade(t *testing.T) {
	srv, be := newBridge(t, &bridgeDevice{got: make(chan frame.Frame, 10)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name, path string
		hdr        http.Header
		status     int
		code       string
	}{
		{"no Origin", controlPath(""), http.Header{"Origin": nil}, 403, "origin"},
		{"another Origin", controlPath(""), http.Header{"Origin": {"https://evil.test"}}, 403, "origin"},
		{"Origin with another port", controlPath(""), http.Header{"Origin": {"https://console.test"}}, 403, "origin"},
		{"no cookie", controlPath(""), http.Header{"Cookie": nil}, 401, "login_required"},
		{"no csrf", "/ws/sessions/" + testSession + "?ticket=" + testTicket, nil, 403, "csrf"},
		{"wrong csrf", "/ws/sessions/" + testSession + "?ticket=" + testTicket + "&csrf=x", nil, 403, "csrf"},
		{"no ticket", "/ws/sessions/" + testSession + "?csrf=" + testCSRF, nil, 400, "bad_request"},
		{"unknown parameter", controlPath("&x=1"), nil, 400, "bad_request"},
		{"twice", controlPath("&csrf=" + testCSRF), nil, 400, "bad_request"},
		{"rows 0", controlPath("&rows=0&cols=80"), nil, 400, "bad_request"},
		{"rows huge", controlPath("&rows=70000&cols=80"), nil, 400, "bad_request"},
		{"bad session id", "/ws/sessions/XYZ?ticket=" + testTicket + "&csrf=" + testCSRF, nil, 404, "not_found"},
		{"screen without its session", "/ws/sessions/" + testSession + "/screen?ticket=" + testTicket + "&csrf=" + testCSRF, nil, 404, "not_found"},
		{"screen with rows", "/ws/sessions/" + testSession + "/screen?ticket=" + testTicket + "&csrf=" + testCSRF + "&rows=3", nil, 400, "bad_request"},
		{"another path", "/ws/other", nil, 404, "not_found"},
	} {
		ws, resp, err := dialWS(ctx, srv, tc.path, tc.hdr)
		if err == nil {
			ws.CloseNow()
			t.Errorf("%s: upgraded", tc.name)
			continue
		}
		var e wire.Error
		if resp != nil {
			_ = json.NewDecoder(resp.Body).Decode(&e)
		}
		if resp == nil || resp.StatusCode != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s: %v %+v, want %d %s", tc.name, resp, e, tc.status, tc.code)
		}
	}
	if len(be.dials) != 0 {
		t.Errorf("dialled %v", be.dials)
	}
}

// A terminal: the card first, keystrokes and output as binary messages, chat, mode,
// resize, bad messages refused without ending, and the browser's end: the device is told,
// and the end message comes last before the close.
func TestBridgeTerminal(t *testing.T) {
	dev := &bridgeDevice{got: make(chan frame.Frame, 100), end: make(chan string)}
	srv, be := newBridge(t, dev)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := dialWS(ctx, srv, controlPath("&rows=30&cols=100"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	card := next(t, ctx, ws, "card", nil)
	if dev, _ := card["device"].(map[string]any); dev["id"] != "dev-1" || dev["name"] != "pc-1" || card["mode"] != "control" || card["kind"] != "terminal" || card["transport"] != "relay" {
		t.Errorf("card %v", card)
	}
	if be.dials[0] != "alice/"+testSession+"/"+testTicket {
		t.Errorf("dialled %v", be.dials)
	}
	if err := ws.Write(ctx, websocket.MessageBinary, []byte("ls\r")); err != nil {
		t.Fatal(err)
	}
	var out []byte
	for !strings.Contains(string(out), "echo:ls\r") {
		typ, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v (so far %q)", err, out)
		}
		if typ == websocket.MessageBinary {
			out = append(out, b...)
		}
	}
	if f := <-dev.got; f.Type != frame.Data || string(f.Payload) != "ls\r" {
		t.Errorf("the device got %s %q, want the keystrokes once", f.Type, f.Payload)
	}
	send := func(s string) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	send(`{"type":"chat","text":"hello"}`)
	if m := next(t, ctx, ws, "chat", nil); m["from"] != "sharer" || m["text"] != "got: hello" {
		t.Errorf("chat %v", m)
	}
	send(`{"type":"mode","mode":"view"}`)
	if m := next(t, ctx, ws, "mode", nil); m["mode"] != "view" || m["granted"] != true {
		t.Errorf("mode %v", m)
	}
	send(`{"type":"mode","mode":"elevated"}`)
	if m := next(t, ctx, ws, "mode", nil); m["mode"] != "elevated" || m["granted"] != false {
		t.Errorf("mode refused %v", m)
	}
	for _, bad := range []string{`{"type":"resize","rows":0,"cols":3}`, `{"type":"nope"}`, `not json`, `{"type":"end","text":"x"}`} {
		send(bad)
		if m := next(t, ctx, ws, "status", nil); !strings.HasPrefix(m["text"].(string), "refused: bad message") {
			t.Errorf("%s: %v", bad, m)
		}
	}
	send(`{"type":"resize","rows":40,"cols":120}`)
	for f := range dev.got {
		if f.Type == frame.Resize {
			if r, c, _ := frame.ParseResize(f.Payload); r != 40 || c != 120 {
				t.Errorf("resize %dx%d", r, c)
			}
			break
		}
	}
	send(`{"type":"end"}`)
	m := next(t, ctx, ws, "end", nil)
	if m["reason"] != "ended by you" {
		t.Errorf("end %v", m)
	}
	if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Errorf("after the end: %v", err)
	}
	for f := range dev.got {
		if f.Type == frame.End {
			break
		}
	}
}

// The device ends the session: end message, then a normal close. A browser that leaves
// ends the session at the device.
func TestBridgeEnds(t *testing.T) {
	dev := &bridgeDevice{got: make(chan frame.Frame, 100), end: make(chan string, 1)}
	srv, _ := newBridge(t, dev)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := dialWS(ctx, srv, controlPath(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	next(t, ctx, ws, "card", nil)
	dev.end <- "the sharer stopped sharing"
	if m := next(t, ctx, ws, "end", nil); !strings.Contains(m["reason"].(string), "the sharer stopped sharing") {
		t.Errorf("end %v", m)
	}
	if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Errorf("after the end: %v", err)
	}

	dev2 := &bridgeDevice{got: make(chan frame.Frame, 100)}
	srv2, _ := newBridge(t, dev2)
	ws2, _, err := dialWS(ctx, srv2, controlPath(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	next(t, ctx, ws2, "card", nil)
	ws2.CloseNow() // the tab closed
	for f := range dev2.got {
		if f.Type == frame.End {
			var e frame.Ending
			_ = json.Unmarshal(f.Payload, &e)
			if !strings.Contains(e.Message, "the browser left") {
				t.Errorf("ending %+v", e)
			}
			break
		}
	}
}

// A session that cannot start: the reason in the end message, then the close.
func TestBridgeDialFails(t *testing.T) {
	srv, be := newBridge(t, nil)
	be.dialErr = api.Errorf(http.StatusForbidden, "refused", "the device refused the session (console_forbidden)")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := dialWS(ctx, srv, controlPath(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := next(t, ctx, ws, "end", nil); !strings.Contains(m["reason"].(string), "console_forbidden") {
		t.Errorf("end %v", m)
	}
}

// A screen: the control WebSocket carries JSON only; the screen WebSocket of the same
// cookie session speaks RFB with security None and gets the device's ServerInit, and the
// bytes go both ways. A second screen WebSocket is refused.
func TestBridgeScreen(t *testing.T) {
	dev := &bridgeDevice{screen: true, got: make(chan frame.Frame, 100)}
	srv, _ := newBridge(t, dev)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := dialWS(ctx, srv, controlPath(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if card := next(t, ctx, ws, "card", nil); card["kind"] != "screen" {
		t.Fatalf("card %v", card)
	}
	screenPath := "/ws/sessions/" + testSession + "/screen?ticket=" + testTicket + "&csrf=" + testCSRF
	if _, resp, err := dialWS(ctx, srv, strings.Replace(screenPath, testTicket, strings.Repeat("0", 32), 1), nil); err == nil || resp.StatusCode != 404 {
		t.Errorf("another ticket's screen: %v", err)
	}
	// Only the cookie session that opened the control WebSocket attaches the screen: not
	// another user with the ticket and the token, not the same user's other browser.
	for name, c := range map[string][2]string{"another user": {"mallory", testCSRF}, "another cookie session": {"alice-tab2", "csrf-of-alice-elsewhere"}} {
		p := strings.Replace(screenPath, testCSRF, c[1], 1)
		if _, resp, err := dialWS(ctx, srv, p, http.Header{"Cookie": {CookieName + "=" + c[0]}}); err == nil || resp.StatusCode != 404 {
			t.Errorf("%s: %v", name, err)
		}
	}
	sws, _, err := dialWS(ctx, srv, screenPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sws.CloseNow()
	if sws.Subprotocol() != "binary" {
		t.Errorf("subprotocol %q", sws.Subprotocol())
	}
	if _, resp, err := dialWS(ctx, srv, screenPath, nil); err == nil || resp.StatusCode != http.StatusConflict {
		t.Errorf("a second screen: %v", err)
	}
	nc := websocket.NetConn(ctx, sws, websocket.MessageBinary)
	si, err := rfb.Dial(nc, "")
	if err != nil || si.Name() != "desk" {
		t.Fatalf("handshake: %v %v", si, err)
	}
	req := []byte{3, 0, 0, 0, 0, 0, 0, 64, 0, 48} // FramebufferUpdateRequest
	if _, err := nc.Write(req); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("echo:")+len(req))
	if _, err := io.ReadFull(nc, got); err != nil || string(got) != "echo:"+string(req) {
		t.Fatalf("screen bytes %q %v", got, err)
	}
	// Binary on the control WebSocket of a screen session is refused.
	if err := ws.Write(ctx, websocket.MessageBinary, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if m := next(t, ctx, ws, "status", nil); !strings.Contains(m["text"].(string), "JSON only") {
		t.Errorf("status %v", m)
	}
	// The screen closes: the session ends, end message on the control WebSocket.
	sws.Close(websocket.StatusNormalClosure, "")
	if m := next(t, ctx, ws, "end", nil); m["reason"] == "" {
		t.Errorf("end %v", m)
	}
}

func TestParseClientMessage(t *testing.T) {
	for _, ok := range []string{`{"type":"resize","rows":24,"cols":80}`, `{"type":"chat","text":"hé"}`, `{"type":"mode","mode":"control"}`,
		`{"type":"end"}`, ` {"type":"end"} `} {
		if _, err := parseClientMessage([]byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{``, `null`, `[]`, `{}`, `{"type":"END"}`, `{"type":"end"}{"type":"end"}`, `{"type":"end","x":1}`,
		`{"type":"resize","rows":24}`, `{"type":"resize","rows":-1,"cols":80}`, `{"type":"resize","rows":24,"cols":1001}`,
		`{"type":"resize","rows":24,"cols":80,"text":"x"}`, `{"type":"chat"}`, `{"type":"chat","text":""}`,
		`{"type":"chat","text":"` + strings.Repeat("x", frame.MaxChat+1) + `"}`, "{\"type\":\"chat\",\"text\":\"\xff\"}",
		`{"type":"mode","mode":"root"}`, `{"type":"mode"}`, `{"type":"mode","mode":"view","rows":1}`, `{"type":1}`,
		`{"type":"chat","text":"a","text":"b","rows":null}`, `{"TYPE":"end"}`, `{"type":"chat","text":"a","Text":"b"}`,
		`{"type":"mode","mode":"view","MODE":"unattended"}`} {
		if m, err := parseClientMessage([]byte(bad)); !errors.Is(err, errMessage) {
			t.Errorf("%q: %+v %v", bad, m, err)
		}
	}
}

func TestParseWSQuery(t *testing.T) {
	q, err := parseWSQuery("ticket="+testTicket+"&csrf=c&rows=24&cols=80", false)
	if err != nil || q.Rows != 24 || q.Cols != 80 || q.CSRF != "c" {
		t.Fatalf("%+v %v", q, err)
	}
	for _, bad := range []string{"", "ticket=x", "ticket=" + testTicket + "&rows=a", "%zz", "ticket=" + testTicket + "&cols=0",
		"ticket=" + strings.ToUpper(testTicket), "ticket=" + testTicket + "&" + strings.Repeat("a", 1100)} {
		if _, err := parseWSQuery(bad, false); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzParseClientMessage: no panic, and what passes is well formed for its type.
func FuzzParseClientMessage(f *testing.F) {
	for _, s := range []string{`{"type":"resize","rows":24,"cols":80}`, `{"type":"chat","text":"hi"}`, `{"type":"mode","mode":"view"}`, `{"type":"end"}`, `{"type":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseClientMessage(b)
		if err != nil {
			return
		}
		// The keys as written, exactly (encoding/json matches them without case): the
		// type's fields and nothing else, each once.
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatalf("passed, but not an object: %v", err)
		}
		keys := []string{}
		for k := range raw {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		want := map[string]string{"resize": "cols rows type", "chat": "text type", "mode": "mode type", "end": "type"}[m.Type]
		if strings.Join(keys, " ") != want {
			t.Fatalf("%s passed with the keys %q of %q", m.Type, keys, b)
		}
		switch m.Type {
		case "resize":
			if m.Rows == nil || m.Cols == nil || *m.Rows == 0 || *m.Cols == 0 || *m.Rows > 1000 || *m.Cols > 1000 || m.Text != nil || m.Mode != nil {
				t.Fatalf("resize %+v", m)
			}
		case "chat":
			if m.Text == nil || *m.Text == "" || len(*m.Text) > frame.MaxChat {
				t.Fatalf("chat %+v", m)
			}
		case "mode":
			if m.Mode == nil || m.Rows != nil {
				t.Fatalf("mode %+v", m)
			}
		case "end":
			if m.Rows != nil || m.Cols != nil || m.Text != nil || m.Mode != nil {
				t.Fatalf("end %+v", m)
			}
		default:
			t.Fatal(fmt.Sprintf("type %q passed", m.Type))
		}
	})
}

// A device that stops reading (hung, or a dead link the relay has not noticed) holds no
// console goroutine: a write to it gives up after bridgeWriteTimeout, the browser is told,
// and the connection is closed; a browser that leaves meanwhile does not wait for it either.
func TestBridgeDeviceStopsReading(t *testing.T) {
	defer func(d time.Duration) { bridgeWriteTimeout = d }(bridgeWriteTimeout)
	bridgeWriteTimeout = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, leaves := range []bool{false, true} {
		dev := &bridgeDevice{got: make(chan frame.Frame, 10), stall: make(chan struct{})}
		srv, be := newBridge(t, dev)
		be.closed = make(chan struct{})
		ws, _, err := dialWS(ctx, srv, controlPath(""), nil)
		if err != nil {
			t.Fatal(err)
		}
		next(t, ctx, ws, "card", nil)
		if err := ws.Write(ctx, websocket.MessageBinary, []byte("keystrokes nobody reads")); err != nil {
			t.Fatal(err)
		}
		if leaves {
			ws.CloseNow()
		} else if m := next(t, ctx, ws, "end", nil); !strings.Contains(m["reason"].(string), "device") {
			t.Errorf("end %v", m)
		}
		select {
		case <-be.closed:
		case <-ctx.Done():
			t.Fatalf("browser left %v: the connection to a device that reads nothing is still open", leaves)
		}
		ws.CloseNow()
		close(dev.stall)
	}
}

// A screen WebSocket whose viewer speaks no RFB (or a hostile one): nothing of the device's
// screen reaches it, and the session ends.
func TestBridgeScreenBadViewer(t *testing.T) {
	for _, hello := range [][]byte{[]byte("RFB 003.003\n"), []byte("GET / HTTP/1.1\r\n\r\n"), append([]byte("RFB 003.008\n"), 2)} {
		dev := &bridgeDevice{screen: true, got: make(chan frame.Frame, 100)}
		srv, _ := newBridge(t, dev)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ws, _, err := dialWS(ctx, srv, controlPath(""), nil)
		if err != nil {
			t.Fatal(err)
		}
		next(t, ctx, ws, "card", nil)
		sws, _, err := dialWS(ctx, srv, "/ws/sessions/"+testSession+"/screen?ticket="+testTicket+"&csrf="+testCSRF, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := sws.Write(ctx, websocket.MessageBinary, hello); err != nil {
			t.Fatal(err)
		}
		var got []byte
		for {
			typ, b, err := sws.Read(ctx)
			if err != nil {
				break
			}
			if typ == websocket.MessageBinary {
				got = append(got, b...)
			}
		}
		if strings.Contains(string(got), "desk") {
			t.Errorf("%q: the viewer got the device's ServerInit: %q", hello, got)
		}
		if m := next(t, ctx, ws, "end", nil); !strings.Contains(m["reason"].(string), "handshake") {
			t.Errorf("%q: end %v", hello, m)
		}
		for f := range dev.got {
			if f.Type == frame.Data {
				t.Errorf("%q: the device got screen bytes %q", hello, f.Payload)
			}
			if f.Type == frame.End {
				break
			}
		}
		ws.CloseNow()
		sws.CloseNow()
		cancel()
	}
}

// A logout or a revocation ends the user's live sessions on this console at once, not at
// the next keepalive: only that cookie session's for a logout, every one of the user's for
// a revocation.
func TestBridgeEndsOnLogoutAndRevoke(t *testing.T) {
	f := sqliteFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// Every keepalive of this test comes after its deadline.
	defer func(d time.Duration) { bridgeKeepalive = d }(bridgeKeepalive)
	bridgeKeepalive = time.Hour
	open := func(c *http.Client, csrf string) *websocket.Conn {
		t.Helper()
		dev := &bridgeDevice{got: make(chan frame.Frame, 100)}
		testSession = ticket.NewID()
		f.c.backend = &bridgeBackend{dev: dev}
		ws, _, err := websocket.Dial(ctx, "wss"+strings.TrimPrefix(f.url, "https")+"/ws/sessions/"+testSession+"?ticket="+testTicket+"&csrf="+csrf,
			&websocket.DialOptions{HTTPClient: c, HTTPHeader: http.Header{"Origin": {f.c.origin}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.CloseNow() })
		readJSON(t, ctx, ws, nil) // status: connecting
		if m := readJSON(t, ctx, ws, nil); m["type"] != "card" {
			t.Fatalf("want the card: %v", m)
		}
		return ws
	}
	ended := func(ws *websocket.Conn, want string) {
		t.Helper()
		if m := readJSON(t, ctx, ws, nil); m["type"] != "end" || !strings.Contains(m["reason"].(string), want) {
			t.Errorf("want the end (%s): %v", want, m)
		}
	}
	c1, c2 := f.browser(t), f.browser(t)
	csrf1, csrf2 := f.login(t, c1, "alice"), f.login(t, c2, "alice")
	ws1, ws2 := open(c1, csrf1), open(c2, csrf2)
	if a := do(t, c1, "POST", f.url+"/logout", nil, map[string]string{CSRFHeader: csrf1, "Origin": f.url}); a.status != http.StatusSeeOther {
		t.Fatalf("logout: HTTP %d", a.status)
	}
	ended(ws1, "logged out")
	// The other browser's session goes on.
	if err := ws2.Write(ctx, websocket.MessageText, []byte(`{"type":"chat","text":"still here"}`)); err != nil {
		t.Fatal(err)
	}
	if m := readJSON(t, ctx, ws2, nil); m["type"] != "chat" || m["text"] != "got: still here" {
		t.Errorf("the other cookie session's: %v", m)
	}
	ws3 := open(c2, csrf2)
	if _, err := f.c.RevokeUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	ended(ws2, "revoked")
	ended(ws3, "revoked")
}

// Revoking the certificate a console login was made with ends its live browser sessions
// within Run's second (disabling a user revokes their certificates too), not at the
// next keepalive; a session of another certificate's login goes on.
func TestBridgeEndsWhenTheLoginsCertificateIsRevoked(t *testing.T) {
	f := sqliteFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	defer func(d time.Duration) { bridgeKeepalive = d }(bridgeKeepalive)
	bridgeKeepalive = time.Hour
	be := &bridgeBackend{dev: &bridgeDevice{got: make(chan frame.Frame, 100)}}
	f.c.backend = be
	open := func(c *http.Client, csrf string) *websocket.Conn {
		t.Helper()
		testSession = ticket.NewID()
		ws, _, err := websocket.Dial(ctx, "wss"+strings.TrimPrefix(f.url, "https")+"/ws/sessions/"+testSession+"?ticket="+testTicket+"&csrf="+csrf,
			&websocket.DialOptions{HTTPClient: c, HTTPHeader: http.Header{"Origin": {f.c.origin}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.CloseNow() })
		readJSON(t, ctx, ws, nil) // status: connecting
		if m := readJSON(t, ctx, ws, nil); m["type"] != "card" {
			t.Fatalf("want the card: %v", m)
		}
		return ws
	}
	c1, c2 := f.browser(t), f.browser(t)
	csrf1 := f.login(t, c1, "alice") // made with testCert (serial testSerial)
	other := testCert()
	other.SerialNumber = big.NewInt(5151)
	u, _, err := f.c.CreateLink(ctx, "alice", other)
	if err != nil {
		t.Fatal(err)
	}
	do(t, c2, "GET", u, nil, nil)
	me := do(t, c2, "GET", f.url+"/api/me", nil, nil)
	var m2 struct{ CSRF string }
	if err := json.Unmarshal([]byte(me.body), &m2); err != nil || m2.CSRF == "" {
		t.Fatalf("/api/me: %v %s", err, me.body)
	}
	ws1 := open(c1, csrf1)
	ws2 := open(c2, m2.CSRF)
	defer func(d time.Duration) { revokedCheckEvery = d }(revokedCheckEvery)
	revokedCheckEvery = 50 * time.Millisecond
	go f.c.Run(ctx)
	be.mu.Lock()
	be.revoked = testSerial
	be.mu.Unlock()
	if m := readJSON(t, ctx, ws1, nil); m["type"] != "end" || !strings.Contains(m["reason"].(string), "revoked") {
		t.Errorf("want the end of the revoked certificate's session: %v", m)
	}
	if err := ws2.Write(ctx, websocket.MessageText, []byte(`{"type":"chat","text":"still here"}`)); err != nil {
		t.Fatal(err)
	}
	if m := readJSON(t, ctx, ws2, nil); m["type"] != "chat" || m["text"] != "got: still here" {
		t.Errorf("the other certificate's session: %v", m)
	}
}

// A message over MaxWSMessage ends the session (the device is told), whichever the
// WebSocket; the console holds no more of it than the limit.
func TestBridgeMessageTooBig(t *testing.T) {
	dev := &bridgeDevice{got: make(chan frame.Frame, 100)}
	srv, _ := newBridge(t, dev)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := dialWS(ctx, srv, controlPath(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	next(t, ctx, ws, "card", nil)
	_ = ws.Write(ctx, websocket.MessageText, []byte(`{"type":"chat","text":"`+strings.Repeat("x", MaxWSMessage)+`"}`))
	if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Errorf("after a message over the limit: %v", err)
	}
	for f := range dev.got {
		if f.Type == frame.Chat {
			t.Errorf("the device got the chat")
		}
		if f.Type == frame.End {
			var e frame.Ending
			_ = json.Unmarshal(f.Payload, &e)
			if !strings.Contains(e.Message, "over 65536 bytes") {
				t.Errorf("ending %+v", e)
			}
			break
		}
	}
}

// The same on the screen WebSocket, after noVNC's handshake.
func TestBridgeScreenMessageTooBig(t *testing.T) {
	dev := &bridgeDevice{screen: true, got: make(chan frame.Frame, 100)}
	srv, _ := newBridge(t, dev)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := dialWS(ctx, srv, controlPath(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	next(t, ctx, ws, "card", nil)
	sws, _, err := dialWS(ctx, srv, "/ws/sessions/"+testSession+"/screen?ticket="+testTicket+"&csrf="+testCSRF, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sws.CloseNow()
	nc := websocket.NetConn(ctx, sws, websocket.MessageBinary)
	if _, err := rfb.Dial(nc, ""); err != nil {
		t.Fatal(err)
	}
	_ = sws.Write(ctx, websocket.MessageBinary, make([]byte, MaxWSMessage+1))
	if m := next(t, ctx, ws, "end", nil); !strings.Contains(m["reason"].(string), "refuses") {
		t.Errorf("end %v", m)
	}
}
