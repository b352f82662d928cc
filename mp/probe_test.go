package mp

import (
	"net/http"
	"testing"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestProbe: GET /v1/probe names the listener the request came in on and the certificate
// the MP saw, and is answered even while the MP sheds load.
func TestProbe(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{MaxInFlight: 1})
	pc := f.device(t, "pc-probe")
	for _, tc := range []struct{ base, want string }{{f.intranet, wire.Intranet}, {f.internet, wire.Internet}} {
		var p wire.Probe
		if status, e := call(t, f.client(&pc), "GET", tc.base+wire.ProbePath, nil, &p); status != 200 || p.Location != tc.want || p.Serial != wire.FormatSerial(pc.Leaf.SerialNumber) {
			t.Fatalf("probe of the %s listener: %d %+v %+v", tc.want, status, e, p)
		}
	}

	// register the device first, so that holding the slot below races with no registration
	if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/whoami", nil, nil); status != 200 {
		t.Fatal("whoami")
	}
	f.holdSlot(t, &pc)
	if status, _ := call(t, f.client(&pc), "GET", f.intranet+"/v1/whoami", nil, nil); status != http.StatusServiceUnavailable {
		t.Fatalf("whoami not shed while the only slot is taken (status %d)", status)
	}
	var p wire.Probe
	if status, e := call(t, f.client(&pc), "GET", f.intranet+wire.ProbePath, nil, &p); status != 200 || p.Location != wire.Intranet {
		t.Fatalf("probe while shedding load: %d %+v", status, e)
	}
}
