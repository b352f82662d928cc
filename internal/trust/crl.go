package trust

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/ibcm-project/ibcm/internal/sitedb"
)

// ErrNoCRL means the issuing CAs have stored no CRL yet.
var ErrNoCRL = errors.New("no CRL stored")

// CurrentCRL returns the current CRL (DER) of the first of the issuing CAs that has one, as
// the CA stores it (table crls, keyed by the first 8 bytes of the CA's subject key id in hex).
func CurrentCRL(ctx context.Context, db *sitedb.DB, issuing []*x509.Certificate) ([]byte, error) {
	for _, c := range issuing {
		id := c.SubjectKeyId
		if len(id) > 8 {
			id = id[:8]
		}
		var der []byte
		err := db.QueryRow(ctx, `SELECT der FROM crls WHERE issuer_id = ?`, hex.EncodeToString(id)).Scan(&der)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading the CRL: %w", err)
		}
		return der, nil
	}
	return nil, ErrNoCRL
}
