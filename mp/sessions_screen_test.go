package mp

import (
	"net/http"
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
