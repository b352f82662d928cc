package integration

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/internal/bindtest"
)

// TestLocationSpoofWithInternetMP: a hostile resolver (a café's, here a real BIND serving
// its own corp.test zone) answers the intranet SRV query with the site's internet MP
// listener of the real `ibcm site up`, an MP of this site whose certificate (the MP runs
// in both modes) carries the intranet name too. Neither `ibcm-client location` nor the
// detector API may call that intranet; the same BIND pointing at the intranet listener
// gives intranet.
func TestLocationSpoofWithInternetMP(t *testing.T) {
	s := startSite(t, "sqlite")
	dev := enrollDevice(t, s, "pc-cafe")
	port := func(u string) string { return u[strings.LastIndex(u, ":")+1:] }
	cafe := bindtest.Start(t, "corp.test.")
	cafe.NSUpdate(t,
		"update add ibcm.corp.test. 60 A 127.0.0.1",
		"update add _ibcm-mp._tcp.corp.test. 60 SRV 0 0 "+port(s.mpInternet)+" ibcm.corp.test.",
	)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolv(t, resolv, cafe.Addr)

	type step struct{ Kind, Target, Result, Error string }
	var d struct {
		Location string `json:"location"`
		MP       string `json:"mp"`
		Evidence []step `json:"evidence"`
	}
	detectCLI := func() string {
		t.Helper()
		out := must(t, bin.client, "location", "--dir", dev, "--resolv-conf", resolv, "--json")
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("ibcm-client location: %v\n%s", err, out)
		}
		return out
	}
	// the detector API, configured as the agent configures it from its enrollment
	id, err := client.Load(dev)
	if err != nil {
		t.Fatal(err)
	}
	b := id.Bootstrap
	cfg := location.Config{SiteCode: b.SiteCode, IntranetSuffixes: b.IntranetDNSSuffixes, SRVNames: b.SRVNames, InternetMPs: b.InternetMPs,
		ResolvConf: resolv, Roots: id.Roots, ClientCert: &id.Certificate}

	out := detectCLI()
	if d.Location != "internet" {
		t.Fatalf("SRV -> the site's internet MP: ibcm-client location decided %s\n%s", d.Location, out)
	}
	var probed bool
	for _, e := range d.Evidence {
		if e.Kind == location.KindProbe && strings.HasPrefix(e.Target, "ibcm.corp.test:"+port(s.mpInternet)) {
			probed = true
			if !strings.Contains(e.Error, "says this is its internet listener") {
				t.Errorf("probe of the internet listener: %+v, want its internet answer", e)
			}
		}
	}
	if !probed {
		t.Errorf("the internet listener named by the SRV record was not probed:\n%s", out)
	}
	if api := location.Detect(context.Background(), cfg); api.Location != "internet" {
		t.Errorf("SRV -> the site's internet MP: location.Detect decided %s: %s", api.Location, api.Reason)
	}

	cafe.NSUpdate(t,
		"update delete _ibcm-mp._tcp.corp.test. SRV",
		"update add _ibcm-mp._tcp.corp.test. 60 SRV 0 0 "+port(s.mpIntranet)+" ibcm.corp.test.",
	)
	if out := detectCLI(); d.Location != "intranet" || d.MP != "https://ibcm.corp.test:"+port(s.mpIntranet) {
		t.Errorf("SRV -> the intranet listener: ibcm-client location decided %s %s\n%s", d.Location, d.MP, out)
	}
	if api := location.Detect(context.Background(), cfg); api.Location != "intranet" {
		t.Errorf("SRV -> the intranet listener: location.Detect decided %s: %s", api.Location, api.Reason)
	}
}
