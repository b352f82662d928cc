package mp

import (
	"net/http"
	"testing"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// security review: a session's reason reaches the device user's terminal in the consent
// question; the MP took any character but newline, carriage return and NUL, so a helper
// could send escape sequences that rewrite the question.
func TestSessionStartRefusesControlCharactersInReason(t *testing.T) {
	f := newFixture(t, sqliteDB(t), Options{})
	pc, _ := online(t, f, f.mp, f.intranet, "pc-1")
	hd := f.user(t, "hd", access.HelpDeskOperator)
	for _, reason := range []string{"\x1b[2K\x1b[1Aview only", "a\u009b2Jb", "bell\x07", "del\x7f", "tab\there"} {
		var out wire.SessionStart
		status, e := call(t, f.client(&hd), "POST", f.intranet+"/v1/admin/sessions",
			wire.SessionStartRequest{Device: deviceID(pc), Mode: ticket.ModeView, Reason: reason}, &out)
		if status != http.StatusBadRequest || e.Error.Code != "bad_request" {
			t.Errorf("reason %q: %d %+v", reason, status, e)
		}
	}
	var out wire.SessionStart
	if status, e := call(t, f.client(&hd), "POST", f.intranet+"/v1/admin/sessions",
		wire.SessionStartRequest{Device: deviceID(pc), Mode: ticket.ModeView, Reason: "imprimante 打印机 طابعة"}, &out); status != http.StatusCreated {
		t.Errorf("a reason in other scripts: %d %+v", status, e)
	}
}
