package ca

import (
	"testing"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// A device (or a copy of one) that renews its newest certificate again and again at once
// is refused before long: every renewal is a certificate the site keeps, and every one it
// presents is a row at the MP and a site event that each MP of the site checks against
// the store (mp: kindSuperseded). Today the CA renews back to back without limit, so one
// device key grows the certificates table and the MPs' event traffic at signing speed.
// Security review finding; the limit (a minimum age before a certificate is renewed
// again, or a per-line rate) is a policy choice left to the maintainers.
func TestRenewalChurnIsBounded(t *testing.T) {
	t.Skip("REPRODUCES: a device renews its newest certificate 50 times in a row and the CA signs every one (no renewal rate limit)")
	c := newTestCA(t, sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite)))
	cur := enrollClient(t, c, "pc-churn")
	for range 50 {
		chain, err := renewFor(t, c, cur, newKey(t))
		if err != nil {
			return // refused: bounded
		}
		cur = chain[0]
	}
	t.Fatal("50 renewals in a row were all signed")
}
