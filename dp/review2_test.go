package dp

import (
	"crypto/tls"
	"crypto/x509"
	"net/http/httptest"
	"testing"
	"time"
)

// Security review: the MP link trusted any certificate of the site valid for mp_url's
// host, so another DP (an untrusted mirror that was broken into, with a certificate for
// the same names, as a site's DP beside its MP has) could stand in for the MP: feed an
// empty revoked set and let revoked clients in, assign what it likes, answer the
// ManageContent check. The link takes only a management point of this site.
func TestMPLinkRefusesAnotherDP(t *testing.T) {
	p := newPKI(t)
	real := newFakeMP(t, p)
	dp2, err := tls.LoadX509KeyPair(p.dp2CertFile, p.dp2KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	impostor := httptest.NewUnstartedServer(real.srv.Config.Handler)
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	impostor.TLS = &tls.Config{Certificates: []tls.Certificate{dp2}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	impostor.StartTLS()
	t.Cleanup(impostor.Close)

	s := settingsFor(p, real, t.TempDir())
	s.MPURL = impostor.URL
	r := startDP(t, s, false)
	select {
	case ev := <-r.events:
		t.Fatalf("the DP took a %q event from a DP's certificate posing as its MP", ev.Type)
	case <-time.After(1500 * time.Millisecond):
	}
	if r.dp.isReady() {
		t.Fatal("ready on an impostor's snapshot")
	}
}
