package mp

import (
	"encoding/csv"
	"net/http"
	"slices"
	"testing"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// A screen session's kind travels in the signed ticket; a bad kind, or a screen session in
// elevated mode, is a bad request.
func TestSessionStartScreenKind(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	hd := f.user(t, "hd", access.HelpDeskOperator)
	var out wire.SessionStart
	status, e := call(t, f.client(&hd), "POST", f.intranet+"/v1/admin/sessions", wire.SessionStartRequest{Device: "pc-1", Mode: ticket.ModeView, Kind: ticket.KindScreen}, &out)
	if status != http.StatusCreated {
		t.Fatalf("start: %d %+v", status, e)
	}
	if tk := ticketEvent(t, f, ws, deviceID(pc)); tk.Kind != ticket.KindScreen || tk.Mode != ticket.ModeView {
		t.Errorf("ticket %+v", tk)
	}
	for _, req := range []wire.SessionStartRequest{
		{Device: "pc-1", Mode: ticket.ModeView, Kind: "desktop"},
		{Device: "pc-1", Mode: ticket.ModeElevated, Kind: ticket.KindScreen},
	} {
		if status, e := call(t, f.client(&hd), "POST", f.intranet+"/v1/admin/sessions", req, nil); status != http.StatusBadRequest {
			t.Errorf("%+v: %d %+v", req, status, e)
		}
	}
}

// A session's kind is stored and returned (show, list, CSV); a second helper's join of an
// active screen session gets a viewer ticket of kind screen, and a terminal's join one of
// the terminal kind.
func TestSessionKindStoredAndJoin(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, ws := online(t, f, f.mp, f.intranet, "pc-1")
	hd := f.user(t, "hd", access.HelpDeskOperator)
	hd2 := f.user(t, "hd2", access.HelpDeskOperator)
	var scr wire.SessionStart
	if status, e := call(t, f.client(&hd), "POST", f.intranet+"/v1/admin/sessions", wire.SessionStartRequest{Device: "pc-1", Mode: ticket.ModeControl, Kind: ticket.KindScreen}, &scr); status != http.StatusCreated {
		t.Fatalf("start: %d %+v", status, e)
	}
	if scr.Session.Kind != ticket.KindScreen {
		t.Errorf("the start's session has kind %q", scr.Session.Kind)
	}
	ticketEvent(t, f, ws, deviceID(pc))
	_, term, _ := startSession(t, f, f.intranet, hd, "pc-1", ticket.ModeControl)
	ticketEvent(t, f, ws, deviceID(pc))
	for _, s := range []wire.SessionStart{scr, term} {
		report(t, f, f.intranet, pc, s.Session.ID, wire.SessionReport{Ticket: s.TicketID, Event: wire.ReportStarted})
	}
	var got wire.Session
	if status, e := call(t, f.client(&hd), "GET", f.intranet+"/v1/admin/sessions/"+scr.Session.ID, nil, &got); status != 200 || got.Kind != ticket.KindScreen {
		t.Errorf("show: %d %+v kind %q", status, e, got.Kind)
	}
	var list []wire.Session
	if status, e := call(t, f.client(&hd), "GET", f.intranet+"/v1/admin/sessions", nil, &list); status != 200 || len(list) != 2 {
		t.Fatalf("list: %d %+v %d", status, e, len(list))
	}
	kinds := map[string]string{}
	for _, s := range list {
		kinds[s.ID] = s.Kind
	}
	if kinds[scr.Session.ID] != ticket.KindScreen || kinds[term.Session.ID] != ticket.KindTerminal {
		t.Errorf("listed kinds %v", kinds)
	}
	// The Remote Help report names the kind of each session.
	resp, err := f.client(&hd).Get(f.intranet + "/v1/admin/sessions?format=csv")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(resp.Body).ReadAll()
	resp.Body.Close()
	if err != nil || len(recs) != 3 {
		t.Fatalf("csv: %v %v", recs, err)
	}
	col := slices.Index(recs[0], "kind")
	if col < 0 {
		t.Fatalf("no kind column in %v", recs[0])
	}
	csvKinds := map[string]string{recs[1][0]: recs[1][col], recs[2][0]: recs[2][col]}
	if csvKinds[scr.Session.ID] != "screen" || csvKinds[term.Session.ID] != "terminal" {
		t.Errorf("csv kinds %v", csvKinds)
	}
	// Joins: the viewer's ticket carries the session's kind.
	for _, c := range []struct {
		s    wire.SessionStart
		kind string
	}{{scr, ticket.KindScreen}, {term, ticket.KindTerminal}} {
		var v wire.SessionStart
		if status, e := call(t, f.client(&hd2), "POST", f.intranet+"/v1/admin/sessions/"+c.s.Session.ID+"/join", nil, &v); status != http.StatusCreated || v.Role != ticket.RoleViewer {
			t.Fatalf("join: %d %+v", status, e)
		}
		if v.Session.Kind != c.kind {
			t.Errorf("the join's session has kind %q, want %q", v.Session.Kind, c.kind)
		}
		tk := ticketEvent(t, f, ws, deviceID(pc))
		if tk.Role != ticket.RoleViewer || tk.Mode != ticket.ModeView || tk.Kind != c.kind || tk.ID != v.TicketID || tk.Session != c.s.Session.ID {
			t.Errorf("viewer ticket %+v, want kind %q", tk, c.kind)
		}
	}
}
