package location

import (
	"testing"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// FuzzParseProbe: whatever the body of a GET /v1/probe answer, parseProbe returns a valid
// location and serial, or an error; never a panic.
func FuzzParseProbe(f *testing.F) {
	for _, s := range []string{
		`{"location":"intranet","serial":"123"}`,
		`{"location":"internet","serial":"1","mp":"mp1"}`,
		`{"location":"intranet","serial":"123"}{}`,
		`{"location":"INTRANET","serial":"123"}`,
		`{"location":"intranet","serial":"-1"}`,
		`{"location":"intranet","serial":"0x10"}`,
		`[]`, `null`, ``, `{"location":`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseProbe(b)
		if err != nil {
			if p != (wire.Probe{}) {
				t.Fatalf("error %v with a result %+v", err, p)
			}
			return
		}
		if p.Location != wire.Intranet && p.Location != wire.Internet {
			t.Fatalf("accepted location %q", p.Location)
		}
		if n, err := wire.ParseSerial(p.Serial); err != nil || wire.FormatSerial(n) != p.Serial {
			t.Fatalf("accepted serial %q", p.Serial)
		}
	})
}
