package device

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// consoleTicket is alice's ticket through the web console: the MP (the fixture's MP
// certificate, common name "x") is the helper's end.
func (e *env) consoleTicket(mode string, modes ...string) string {
	now := time.Now()
	tk := ticket.Ticket{ID: ticket.NewID(), Session: ticket.NewID(), Device: deviceID, Helper: "alice", HelperKey: wire.PublicKeyHash(e.mpLeaf),
		Card: ticket.Card{User: "alice", DisplayName: "Alice Helper"}, Role: ticket.RoleHelper, Console: true,
		Mode: mode, Modes: modes, MP: e.mpLeaf.Subject.CommonName, IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)}
	return e.sign(tk, e.mp)
}

// The device's own setting forbids web-console sessions: refused with console_forbidden,
// reported and audited; a ticket of the command line still runs.
func TestConsoleSessionsForbiddenByTheDevice(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser = true, false
	e := newEnv(t, rc)
	e.host.c.ForbidConsole = true
	if err := e.host.Request(context.Background(), e.consoleTicket(ticket.ModeUnattended, ticket.ModeUnattended)); err == nil {
		t.Fatal("a console ticket was taken")
	}
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodeConsoleForbidden || r.Outcome != wire.OutcomeRefused {
		t.Errorf("%+v", r)
	}
	if !strings.Contains(e.auditText(), CodeConsoleForbidden) {
		t.Errorf("audit: %q", e.auditText())
	}
	signed, _ := e.ticketFor(ticket.ModeUnattended, ticket.ModeUnattended)
	if err := e.host.Request(context.Background(), signed); err != nil {
		t.Fatal(err)
	}
	h, err := e.connect(e.alice)
	if err != nil {
		t.Fatal(err)
	}
	h.send(frame.Data, []byte("echo cli-$((6*7))\r"))
	h.waitOutput("cli-42")
}

// A console ticket runs with the MP's certificate and refuses the user's own; the sharer's
// prompt says the helper is in the web console.
func TestConsoleSessionTakesTheMP(t *testing.T) {
	rc := defaultRC()
	rc.AllowUnattended, rc.PromptUser = true, false
	e := newEnv(t, rc)
	if err := e.host.Request(context.Background(), e.consoleTicket(ticket.ModeUnattended, ticket.ModeUnattended)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.connect(e.alice); err == nil {
		t.Log("the helper's handshake finished; the device refuses after it")
	}
	if r := e.rep.wait(t, wire.ReportRefused); r.Code != CodeE2E {
		t.Errorf("the user's certificate for a console ticket: %+v", r)
	}
	if err := e.host.Request(context.Background(), e.consoleTicket(ticket.ModeUnattended, ticket.ModeUnattended)); err != nil {
		t.Fatal(err)
	}
	h, err := e.connect(e.mp)
	if err != nil {
		t.Fatal(err)
	}
	h.send(frame.Data, []byte("echo console-$((6*7))\r"))
	h.waitOutput("console-42")
	if !strings.Contains(peerText(frame.Peer{User: "alice", Console: true}), "via the web console") {
		t.Error("the card does not say the web console")
	}
}
