package location

import (
	"testing"

	"github.com/ibcm-project/ibcm/internal/wire"
)

func TestHysteresis(t *testing.T) {
	intra1 := Decision{Location: wire.Intranet, MP: "https://mp1.corp.test:443"}
	intra2 := Decision{Location: wire.Intranet, MP: "https://mp2.corp.test:443"}
	inet := Decision{Location: wire.Internet, MP: "https://mp.example.com:443"}
	inetNone := Decision{Location: wire.Internet}
	type obs struct {
		d        Decision
		failed   bool
		switched bool
		current  Decision
	}
	for _, tc := range []struct {
		name string
		need int
		obs  []obs
	}{
		{"first result taken", 2, []obs{{intra1, false, true, intra1}}},
		{"needs two in a row", 2, []obs{
			{intra1, false, true, intra1},
			{inet, false, false, intra1},
			{inet, false, true, inet},
		}},
		{"flapping does not switch", 2, []obs{
			{intra1, false, true, intra1},
			{inet, false, false, intra1},
			{intra1, false, false, intra1},
			{inet, false, false, intra1},
			{intra2, false, false, intra1},
			{inet, false, false, intra1},
		}},
		{"current MP failed: switch at once", 2, []obs{
			{intra1, false, true, intra1},
			{inet, true, true, inet},
		}},
		{"same location keeps its MP", 2, []obs{
			{intra1, false, true, intra1},
			{intra2, false, false, intra1},
		}},
		{"same location, MP failed: take the new MP", 2, []obs{
			{intra1, false, true, intra1},
			{intra2, true, true, intra2},
		}},
		{"same location, no MP yet: take one", 2, []obs{
			{inetNone, false, true, inetNone},
			{inet, false, true, inet},
		}},
		{"need 3", 3, []obs{
			{inet, false, true, inet},
			{intra1, false, false, inet},
			{intra2, false, false, inet},
			{intra1, false, true, intra1},
		}},
		{"need 1 switches at once", 1, []obs{
			{inet, false, true, inet},
			{intra1, false, true, intra1},
		}},
		{"need 0 means the default", 0, []obs{
			{inet, false, true, inet},
			{intra1, false, false, inet},
			{intra1, false, true, intra1},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHysteresis(tc.need)
			for i, o := range tc.obs {
				switched, current := h.Observe(o.d, o.failed)
				if switched != o.switched || current.Location != o.current.Location || current.MP != o.current.MP {
					t.Fatalf("observation %d (%s %s, failed=%v): switched=%v current=%s %s, want switched=%v current=%s %s",
						i, o.d.Location, o.d.MP, o.failed, switched, current.Location, current.MP, o.switched, o.current.Location, o.current.MP)
				}
			}
			if cur, ok := h.Current(); !ok || cur.MP != tc.obs[len(tc.obs)-1].current.MP {
				t.Errorf("Current() = %+v, %v", cur, ok)
			}
		})
	}
}
