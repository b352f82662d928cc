package dp

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// TestPullDPSyncsFromTheOrigin: a DP that is not origin, with no pull.sources, pulls what
// is distributed to it from the origin DP the MP lists, serves it, and reports it ready;
// a blob corrupted on its disk is quarantined by validation and fetched again.
func TestPullDPSyncsFromTheOrigin(t *testing.T) {
	p := newPKI(t)
	file := testData(300_000)
	pkg := p.sign(t, "tool", "1.0", map[string][]byte{"bin/tool": file})

	originMP := newFakeMP(t, p)
	originMP.assignments = wire.DPAssignments{Packages: []wire.DPPackage{pkg}}
	origSettings := settingsFor(p, originMP, t.TempDir())
	origSettings.Origin = true
	origin := startDP(t, origSettings, true)
	sum := blob(t, origin, file)

	mp := newFakeMP(t, p)
	mp.assignments = wire.DPAssignments{Packages: []wire.DPPackage{pkg},
		DPs: []wire.DPInfo{{ID: "dp1", Mode: wire.DPModeIntranet, IntranetURL: origin.urls["dp-intranet"], Origin: true, Online: true}}}
	ps := settingsFor(p, mp, t.TempDir())
	ps.ID, ps.TLSCert, ps.TLSKey = "dp2", p.dp2CertFile, p.dp2KeyFile
	puller := startDP(t, ps, true)

	waitState := func(want string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			mp.mu.Lock()
			var last wire.DPStateReport
			if len(mp.states) > 0 {
				last = mp.states[len(mp.states)-1]
			}
			mp.mu.Unlock()
			if len(last.Packages) == 1 && last.Packages[0].State == want {
				return
			}
			select {
			case <-mp.reported:
			case <-deadline:
				t.Fatalf("the pull-DP did not report %s: %+v", want, last)
			}
		}
	}
	waitState(wire.DPReady)
	if !puller.dp.Library().Has(sum) {
		t.Fatal("ready, but the blob is not in the pull-DP's library")
	}
	res := curl(t, p, p.client(t, "device"), "GET", puller.urls["dp-intranet"]+"/v1/content/"+sum)
	if res.status != 200 || !bytes.Equal(res.body, file) {
		t.Fatalf("the pulled blob: %d %d bytes", res.status, len(res.body))
	}
	mp.mu.Lock()
	mp.states = nil
	mp.mu.Unlock()
	// Corrupt it: validation quarantines it, the puller fetches it again.
	if err := os.WriteFile(puller.dp.Library().Path(sum), testData(300_001), 0o644); err != nil {
		t.Fatal(err)
	}
	if bad := puller.dp.Validate(t.Context()); len(bad) != 1 {
		t.Fatalf("Validate = %v", bad)
	}
	waitState(wire.DPReady)
	if !puller.dp.Library().Has(sum) {
		t.Fatal("the quarantined blob was not fetched again")
	}
}
