package mp

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// withConsolePeer is ctx carrying a web console's peer for user, as ConsoleAPI makes it: a
// user without a certificate, at location "console".
func withConsolePeer(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, peerKey{}, &peer{id: trust.Identity{Kind: trust.KindUser, ID: user}, location: "console"})
}

// consoleStart posts a session start as the web console does for user (ConsoleAPI: a
// peer without a certificate), through the session routes and their guards.
func consoleStart(t testing.TB, m *MP, user string, req wire.SessionStartRequest) (int, wire.SessionStart, wire.Error) {
	t.Helper()
	mux := http.NewServeMux()
	h := func(fn api.HandlerFunc) http.Handler { return api.Handle(m.log, fn) }
	m.sessionRoutes(mux, h, func(fn func(http.ResponseWriter, *http.Request, *peer) error) http.Handler {
		return h(func(http.ResponseWriter, *http.Request) error { return errors.New("not for the console") })
	})
	b, _ := json.Marshal(req)
	r := httptest.NewRequest("POST", "/v1/admin/sessions", bytes.NewReader(b)).WithContext(withConsolePeer(context.Background(), user))
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	var out wire.SessionStart
	var e wire.Error
	if w.Code == http.StatusCreated {
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
	} else {
		_ = json.Unmarshal(w.Body.Bytes(), &e)
	}
	return w.Code, out, e
}

// legConn is a relay leg's connection with what its response reader holds.
type legConn struct {
	*tls.Conn
	r io.Reader
}

func (c legConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// A session started from the console: the same checks and refusal audit as the command
// line, a ticket naming the MP's own key, over the relay only, audited console=1 and
// e2e=0 whatever the device reports; DialSession is the helper's end.
func TestConsoleSession(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{ID: "mp"}) // the fixture's MP certificate says CN=mp
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	id := deviceID(pc)
	hd := f.user(t, "hd", access.HelpDeskOperator)
	f.user(t, "ana", access.ReadOnlyAnalyst)

	if status, _, e := consoleStart(t, f.mp, "ana", wire.SessionStartRequest{Device: id, Mode: ticket.ModeView}); status != http.StatusForbidden {
		t.Errorf("Read-only Analyst: %d %+v", status, e)
	}
	f.setRemoteControl(t, func(rc *wire.RemoteControlSettings) { rc.AccessLevel = "view" })
	if status, _, e := consoleStart(t, f.mp, "hd", wire.SessionStartRequest{Device: id, Mode: ticket.ModeControl}); status != http.StatusForbidden || e.Error.Code != "access_level" {
		t.Errorf("policy: %d %+v", status, e)
	}
	f.setRemoteControl(t, func(rc *wire.RemoteControlSettings) { rc.AccessLevel, rc.AllowDirect = "full", true })
	refused := 0
	for _, s := range auditOf(t, f, id) {
		if s.Outcome == wire.OutcomeRefused && s.Error == "access_level" && s.Console && !s.E2E {
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("the refusal's audit: %+v", auditOf(t, f, id))
	}

	status, out, e := consoleStart(t, f.mp, "hd", wire.SessionStartRequest{Device: id, Mode: ticket.ModeControl})
	if status != http.StatusCreated || !out.Session.Console || out.Direct != nil {
		t.Fatalf("start: %d %+v %+v", status, e, out)
	}
	tk := ticketEvent(t, f, ws, id)
	if !tk.Console || tk.Direct || tk.Helper != "hd" || tk.MP != "mp" || tk.HelperKey != trust.PublicKeyHash(f.mp.o.SiteChain[0]) {
		t.Errorf("ticket %+v", tk)
	}

	// DialSession's refusals.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := func(err error) string {
		var ae *api.Error
		if errors.As(err, &ae) {
			return ae.Code
		}
		return "?" + err.Error()
	}
	if _, err := f.mp.DialSession(ctx, "ana", out.Session.ID, out.TicketID); code(err) != "not_your_ticket" {
		t.Errorf("another user's ticket: %v", err)
	}
	// Audited as the command line's relay audits it: a refused session of the user's,
	// naming the one they reached for.
	audited := false
	for _, x := range auditOf(t, f, id) {
		audited = audited || x.Helper == "ana" && x.Outcome == wire.OutcomeRefused && x.Error == "not_your_ticket" && x.Reason == "relay "+out.Session.ID && x.Console
	}
	if !audited {
		t.Errorf("another user's ticket is not audited: %+v", auditOf(t, f, id))
	}
	if _, err := f.mp.DialSession(ctx, "hd", ticket.NewID(), out.TicketID); code(err) != "not_found" {
		t.Errorf("another session: %v", err)
	}
	_, cli, _ := startSession(t, f, f.intranet, hd, id, ticket.ModeView)
	ticketEvent(t, f, ws, id)
	if _, err := f.mp.DialSession(ctx, "hd", cli.Session.ID, cli.TicketID); code(err) != "not_a_console_ticket" {
		t.Errorf("a command line ticket: %v", err)
	}
	if _, err := f.mp.DialSession(ctx, "hd", "x", out.TicketID); code(err) != "bad_request" {
		t.Errorf("a malformed id: %v", err)
	}
	// The console's ticket is not a relay leg for the user's certificate either.
	if r := waitLeg(t, dialLeg(t, f, f.intranet, hd, "/v1/admin/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID)); r.status != http.StatusForbidden {
		t.Errorf("the console's ticket with the user's certificate: %d %+v", r.status, r.err)
	}

	// The device's leg and its end of the end-to-end TLS, which takes the MP only.
	dev := dialLeg(t, f, f.internet, pc, "/v1/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID)
	waitPairs(t, f.mp, 1)
	type dialed struct {
		c   net.Conn
		err error
	}
	dc := make(chan dialed, 1)
	go func() { c, err := f.mp.DialSession(ctx, "hd", out.Session.ID, out.TicketID); dc <- dialed{c, err} }()
	d := waitLeg(t, dev)
	if d.status != http.StatusSwitchingProtocols {
		t.Fatalf("device leg %d %+v", d.status, d.err)
	}
	expect := e2e.HelperExpect{Roots: f.roots, User: tk.Helper, KeyHash: tk.HelperKey, Console: tk.Console, MP: tk.MP, Site: "TST"}
	srv := tls.Server(legConn{d.conn, d.br}, e2e.DeviceConfig(pc, expect))
	if err := srv.HandshakeContext(ctx); err != nil {
		t.Fatalf("device handshake: %v", err)
	}
	got := <-dc
	if got.err != nil {
		t.Fatalf("DialSession: %v", got.err)
	}
	defer got.c.Close()
	if _, err := got.c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("device read %q %v", buf, err)
	}
	if _, err := srv.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(got.c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("console read %q %v", buf, err)
	}
	// The device says it is end to end; the audit keeps e2e=0 for a console session.
	if status, e := report(t, f, f.internet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportStarted, Transport: wire.TransportRelay, Sharer: "alice"}); status != http.StatusNoContent {
		t.Fatalf("started: %d %+v", status, e)
	}
	if status, e := report(t, f, f.internet, pc, out.Session.ID, wire.SessionReport{Ticket: out.TicketID, Event: wire.ReportEnded, Outcome: wire.OutcomeCompleted, BytesIn: 10, BytesOut: 20}); status != http.StatusNoContent {
		t.Fatalf("ended: %d %+v", status, e)
	}
	s, err := f.mp.viewSession(ctx, out.Session.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Console || s.E2E || s.State != wire.SessionEnded || s.Outcome != wire.OutcomeCompleted || s.Transport != wire.TransportRelay || s.BytesOut < 20 {
		t.Errorf("audit %+v", s)
	}
	// An ended session's ticket dials nothing.
	if _, err := f.mp.DialSession(ctx, "hd", out.Session.ID, out.TicketID); code(err) != "session_ended" {
		t.Errorf("an ended session: %v", err)
	}
	if cs, _ := f.mp.viewSession(ctx, cli.Session.ID); cs.Console {
		t.Errorf("the command line's session says console: %+v", cs)
	}

	// Expired.
	_, out2, _ := consoleStart(t, f.mp, "hd", wire.SessionStartRequest{Device: id, Mode: ticket.ModeView})
	if err := f.db.Tx(ctx, func(tx *sitedb.Tx) error {
		_, err := tx.Exec(`UPDATE session_tickets SET expires_at = ? WHERE id = ?`, time.Now().Add(-time.Minute).Unix(), out2.TicketID)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.mp.DialSession(ctx, "hd", out2.Session.ID, out2.TicketID); code(err) != "ticket_expired" {
		t.Errorf("an expired ticket: %v", err)
	}
}

// The console's MP is not the one that holds the device's channel: DialSession forwards
// the helper's leg to the device's MP, as forwardLeg does for a helper's.
func TestConsoleSessionAcrossMPs(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{ID: "mp-d"})
	b := f.startMP(t, Options{ID: "mp-h"})
	pc, ws := online(t, f, f.mp, f.internet, "pc-1")
	f.user(t, "hd", access.HelpDeskOperator)
	status, out, e := consoleStart(t, b.mp, "hd", wire.SessionStartRequest{Device: deviceID(pc), Mode: ticket.ModeControl})
	if status != http.StatusCreated {
		t.Fatalf("start at the console's MP: %d %+v", status, e)
	}
	tk := ticketEvent(t, f, ws, deviceID(pc))
	if tk.MP != "mp-h" || tk.HelperKey != trust.PublicKeyHash(b.mp.o.SiteChain[0]) {
		t.Fatalf("ticket %+v", tk)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type dialed struct {
		c   net.Conn
		err error
	}
	dc := make(chan dialed, 1)
	go func() { c, err := b.mp.DialSession(ctx, "hd", out.Session.ID, out.TicketID); dc <- dialed{c, err} }()
	waitPairs(t, f.mp, 1) // the forwarded leg waits at the device's MP
	d := waitLeg(t, dialLeg(t, f, f.internet, pc, "/v1/sessions/"+out.Session.ID+"/relay?ticket="+out.TicketID))
	if d.status != http.StatusSwitchingProtocols {
		t.Fatalf("device leg %d %+v", d.status, d.err)
	}
	// The device's check as the agent makes it (remote/device passes the ticket's fields).
	// The fixture's MP certificates all say CN=mp, whatever the MP's id (mp-h here): as the
	// MPs of a site do that share one certificate (`ibcm mp serve` on a copy of site.yaml
	// with its own mp.id).
	expect := e2e.HelperExpect{Roots: f.roots, User: tk.Helper, KeyHash: tk.HelperKey, Console: tk.Console, MP: tk.MP, Site: "TST"}
	srv := tls.Server(legConn{d.conn, d.br}, e2e.DeviceConfig(pc, expect))
	if err := srv.HandshakeContext(ctx); err != nil {
		t.Fatalf("device handshake: %v", err)
	}
	got := <-dc
	if got.err != nil {
		t.Fatalf("DialSession: %v", got.err)
	}
	defer got.c.Close()
	if _, err := srv.Write([]byte("across")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(got.c, buf); err != nil || string(buf) != "across" {
		t.Fatalf("console read %q %v", buf, err)
	}
}
