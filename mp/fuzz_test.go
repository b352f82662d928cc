package mp

import (
	"crypto/tls"
	"crypto/x509"
	"github.com/ibcm-project/ibcm/internal/access"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// FuzzRequests sends arbitrary bodies to every MP endpoint that parses one, as a device and
// as an admin: each answer is a success or a 4xx JSON error, never a panic or a 500.
func FuzzRequests(f *testing.F) {
	fx := newFixture(f, sitedbtest.Open(f, sitedb.SQLite, sitedbtest.NewDSN(f, sitedb.SQLite)), Options{})
	device := fx.device(f, "pc-fuzz")
	admin := fx.user(f, "alice", access.FullAdministrator)
	h := fx.mp.Handler(wire.Intranet)
	routes := []struct {
		method, path string
		cert         tls.Certificate
	}{
		{"POST", "/v1/hello", device},
		{"POST", "/v1/checkin", device},
		{"POST", "/v1/status", device},
		{"PUT", "/v1/admin/policies/fuzz", admin},
		{"POST", "/v1/admin/groups", admin},
		{"POST", "/v1/admin/groups/none/members", admin},
		{"POST", "/v1/admin/devices/" + deviceID(device) + "/notify", admin},
		{"POST", "/v1/admin/sessions", admin},
		{"POST", "/v1/sessions/00000000000000000000000000000000/report", device},
	}
	for _, seed := range []string{
		`{"fqdn":"pc.corp.test","addresses":["10.0.0.1"],"hardware_id":"hw"}`,
		`{"location":"intranet","compliance":"compliant"}`,
		`{"messages":[{"id":"1","time":"2026-01-01T00:00:00Z","severity":"info","component":"a","text":"b"}]}`,
		`{"name":"fuzz","client":{"checkin_interval":"5m","renewal_threshold":0.7}}`,
		`{"device":"pc-fuzz","mode":"view"}`, `{"ticket":"00000000000000000000000000000000","event":"started"}`,
		`{"name":"g1","priority":3}`, `{"device_id":"x"}`, `{"type":"renew-cert"}`, `{`, `[]`, `null`, "",
	} {
		for i := range routes {
			f.Add(uint8(i), []byte(seed))
		}
	}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		rt := routes[int(route)%len(routes)]
		req := httptest.NewRequest(rt.method, rt.path, strings.NewReader(string(body)))
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{rt.cert.Leaf}}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%s %s: HTTP %d %s for %q", rt.method, rt.path, w.Code, w.Body.String(), body)
		}
		if w.Code >= 400 && !strings.Contains(w.Body.String(), `"error"`) {
			t.Fatalf("%s %s: HTTP %d without a JSON error", rt.method, rt.path, w.Code)
		}
	})
}
