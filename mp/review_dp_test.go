package mp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Security review: POST /v1/dp/authorize answers for the certificate a DP's handshake saw,
// about the one permission a DP asks (ManageContent, for uploads). A compromised DP cannot
// use it to learn which users hold which permissions: not with another user's serial, a
// made-up one, a serial of a device certificate, nor about other permissions.
func TestReviewDPAuthorizeBound(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	carol := f.user(t, "carol", access.ContentAdministrator)
	root := f.user(t, "root", access.FullAdministrator)
	pc := f.device(t, "pc-1")
	dpc := f.client(ptr(f.dpCert(t, "dp1")))
	ask := func(user string, serial fmt.Stringer, perm string) (int, string) {
		st, e := call(t, dpc, "POST", f.intranet+"/v1/dp/authorize", wire.DPAuthorize{User: user, Serial: serial.String(), Permission: perm}, nil)
		return st, e.Error.Code
	}
	if st, code := ask("carol", carol.Leaf.SerialNumber, "ManageContent"); st != http.StatusNoContent {
		t.Fatalf("carol with her certificate: HTTP %d %q, want 204", st, code)
	}
	for _, tc := range []struct {
		name, user string
		serial     fmt.Stringer
		perm       string
	}{
		{"another user's serial", "root", carol.Leaf.SerialNumber, "ManageContent"},
		{"a made-up serial", "root", bigInt(123456789), "ManageContent"},
		{"a device's serial", "root", pc.Leaf.SerialNumber, "ManageContent"},
		{"a permission DPs never need", "root", root.Leaf.SerialNumber, "ManageAccess"},
		{"another permission of carol", "carol", carol.Leaf.SerialNumber, "ManageDevices"},
	} {
		if st, code := ask(tc.user, tc.serial, tc.perm); st != http.StatusForbidden {
			t.Errorf("%s: HTTP %d %q, want 403", tc.name, st, code)
		}
	}
}

// Security review: a device's deployment report counts only for a deployment of one of its
// groups; one about another group's deployment is ignored (it would show, as if done, once
// the device joined that group).
func TestReviewDeployStateOnlyForOwnDeployments(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	ctx := context.Background()
	admin := f.client(ptr(f.user(t, "carol", access.ContentAdministrator)))
	pc1, pc2 := f.device(t, "pc-1"), f.device(t, "pc-2")
	for _, c := range []tls.Certificate{pc1, pc2} {
		if st, _ := call(t, f.client(&c), "GET", f.intranet+"/v1/whoami", nil, nil); st != 200 {
			t.Fatal("whoami")
		}
	}
	if err := f.mp.CreateGroup(ctx, wire.Group{Name: "lab"}); err != nil {
		t.Fatal(err)
	}
	if err := f.mp.SetMember(ctx, "lab", deviceID(pc1), true); err != nil {
		t.Fatal(err)
	}
	if st, _ := call(t, admin, "POST", f.intranet+"/v1/admin/content", f.signed(t, "tool", "1.0", hashOf('a')), nil); st != 201 {
		t.Fatal("content add")
	}
	var d wire.DeploymentInfo
	if st, e := call(t, admin, "POST", f.intranet+"/v1/admin/deployments", wire.DeploymentCreate{Package: "tool", Version: "1.0", Group: "lab"}, &d); st != 201 {
		t.Fatalf("deploy create: %d %+v", st, e.Error)
	}
	// pc-2, outside lab, claims it installed lab's deployment.
	b := wire.StatusBatch{Messages: []wire.StatusMessage{{ID: "x1", Time: time.Now(), Severity: "info", Component: wire.DeploymentComponent,
		Text: "deployment", Fields: map[string]string{"deployment_id": d.ID, "state": "installed", "exit_code": "0"}}}}
	if st, _ := call(t, f.client(&pc2), "POST", f.intranet+"/v1/status", b, nil); st != 200 {
		t.Fatalf("status: HTTP %d", st)
	}
	if err := f.mp.SetMember(ctx, "lab", deviceID(pc2), true); err != nil {
		t.Fatal(err)
	}
	if st, _ := call(t, admin, "GET", f.intranet+"/v1/admin/deployments/"+d.ID, nil, &d); st != 200 {
		t.Fatal("deploy status")
	}
	if d.Counts[wire.DeployInstalled] != 0 || d.Counts[wire.DeployPending] != 2 {
		t.Fatalf("a report from outside the group counts: %+v", d.Counts)
	}
}

// Security review: certificates that are not a DP's — a content signer's (codeSigning
// only), an OCSP signer's, a CA site-server's — never reach /v1/dp/*.
func TestReviewDPRoutesRefuseOtherSiteCertificates(t *testing.T) {
	f := newFixture(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)), Options{})
	mk := func(cn, role string, eku ...x509.ExtKeyUsage) tls.Certificate {
		return handmade(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: eku, URIs: []*url.URL{{Scheme: "urn", Opaque: "ibcm:site:TST:role:" + role}}})
	}
	for name, cert := range map[string]tls.Certificate{
		"content signer":  mk("dp1", "content", x509.ExtKeyUsageCodeSigning),
		"ocsp signer":     mk("dp1", "dp", x509.ExtKeyUsageOCSPSigning),
		"CA site-server":  mk("dp1", "ca", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth),
		"serverAuth only": mk("dp1", "dp", x509.ExtKeyUsageServerAuth),
	} {
		c := f.client(&cert)
		for _, r := range dpRoutes {
			req, _ := http.NewRequest(r.method, f.intranet+r.path, strings.NewReader(r.body))
			resp, err := c.Do(req)
			if err != nil {
				continue // the handshake refused it
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s: %s %s: HTTP %d, want 403 or a refused handshake", name, r.method, r.path, resp.StatusCode)
			}
		}
	}
}

func bigInt(n int64) fmt.Stringer { return big.NewInt(n) }
