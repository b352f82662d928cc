package trust

import (
	"context"
	"fmt"
	"math/big"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
)

// CloneWarnings returns, by device id, a warning for every renewal the CA refused because
// the certificate had already been renewed for another key (the CA's renewal_conflicts
// table): a copy of the device's key and certificate exists. For device "" it returns the
// warnings of every device. The CA records a refusal in the same database whether or not
// an MP is running, so reading it here, when a device is shown, needs no event and misses
// none.
func CloneWarnings(ctx context.Context, db *sitedb.DB, device string) (map[string][]string, error) {
	q := `SELECT device_id, old_serial, successor_serial, attempts, last_at FROM renewal_conflicts`
	var args []any
	if device != "" {
		q += ` WHERE device_id = ?`
		args = append(args, device)
	} else {
		q += ` WHERE device_id <> ''`
	}
	rows, err := db.Query(ctx, q+` ORDER BY first_at, old_serial`, args...)
	if err != nil {
		return nil, fmt.Errorf("reading refused renewals: %w", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var id, old, succ string
		var attempts, last int64
		if err := rows.Scan(&id, &old, &succ, &attempts, &last); err != nil {
			return nil, fmt.Errorf("reading refused renewals: %w", err)
		}
		out[id] = append(out[id], fmt.Sprintf("probable clone: certificate %s was already renewed as %s; %d renewal(s) of it with another key refused, the last at %s",
			hexSerial(old), hexSerial(succ), attempts, time.Unix(last, 0).UTC().Format(time.RFC3339)))
	}
	return out, rows.Err()
}

// hexSerial writes a decimal serial as openssl prints it.
func hexSerial(dec string) string {
	n, ok := new(big.Int).SetString(dec, 10)
	if !ok {
		return dec
	}
	s := fmt.Sprintf("%X", n)
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}
