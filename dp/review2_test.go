package dp

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
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

// Security review: the feed's state kept on disk made a restarted DP serve with the MP down
// however old it was: a device revoked or blocked in the months since got in. Past
// MaxFeedAge without word from the MP the DP answers 503 (a fresh enough state still
// serves, TestNoSnapshotNoService).
func TestStaleSavedFeedServesNobody(t *testing.T) {
	p := newPKI(t)
	s := settingsFor(p, nil, t.TempDir()) // no MP at all
	state := filepath.Join(s.Library, stateDirName)
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	old, _ := json.Marshal(feedState{Revoked: []string{}, Blocked: []string{}, Saved: time.Now().Add(-MaxFeedAge - time.Hour).UTC()})
	if err := os.WriteFile(filepath.Join(state, feedFile), old, 0o600); err != nil {
		t.Fatal(err)
	}
	r := startDP(t, s, false)
	res := curl(t, p, p.client(t, "device"), "GET", r.urls["dp-intranet"]+"/v1/content/"+sha([]byte("x")))
	if res.status != 503 {
		t.Fatalf("a DP on a feed state older than %s answered %d %v %s", MaxFeedAge, res.status, res.err, res.body)
	}
}

// Security review (holds): the site's content-signer certificate (codeSigning only) is no
// TLS client of a DP; another DP's certificate is (a pull-DP fetches with it), but it
// uploads nothing.
func TestSignerIsNoClient(t *testing.T) {
	p := newPKI(t)
	m := newFakeMP(t, p)
	s := settingsFor(p, m, t.TempDir())
	s.Origin = true
	r := startDP(t, s, true)
	u := r.urls["dp-intranet"] + "/v1/content/" + sha([]byte("x"))
	signer := p.writeIdentity(t, "signer", p.signer, p.signerKey, p.issuing)
	if res := curl(t, p, signer, "GET", u); res.err == nil {
		t.Fatalf("the content signer got HTTP %d", res.status)
	}
	dp2 := &identity{certFile: p.dp2CertFile, keyFile: p.dp2KeyFile}
	if res := curl(t, p, dp2, "GET", u); res.status != 404 {
		t.Fatalf("another DP: %d %v", res.status, res.err)
	}
	if res := curl(t, p, dp2, "GET", r.urls["dp-intranet"]+"/v1/admin/uploads/"+sha([]byte("x"))); res.status != 403 {
		t.Fatalf("another DP asking to upload: %d %v", res.status, res.err)
	}
}
