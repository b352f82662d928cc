package trust

import (
	"context"
	"fmt"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
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
			wire.FormatDecimalSerial(old), wire.FormatDecimalSerial(succ), attempts, time.Unix(last, 0).UTC().Format(time.RFC3339)))
	}
	return out, rows.Err()
}

// PresentedRenewal returns a renewal of certificate serial (decimal: its successor, or a
// successor's, as the CA's certificates.renewed_from records them) that device has
// already presented at an MP (the MP's device_certificates), or "" when it has presented
// none. The agent uses only its newest certificate once it has it, so whoever presents the
// older one afterwards holds a copy of the device's key and certificate.
//
// A contested line returns "": when the CA refused a renewal of serial or of a later
// certificate of its line (renewal_conflicts), the copy may be the one that renewed first,
// and refusing the older certificate would lock the real device out. Both then keep
// working until an admin acts on the clone warning the refusal raised (revoke with
// keyCompromise, enroll again).
func PresentedRenewal(ctx context.Context, db *sitedb.DB, device, serial string) (string, error) {
	rows, err := db.Query(ctx, `WITH RECURSIVE line(serial) AS (
			SELECT serial FROM certificates WHERE renewed_from = ?
			UNION
			SELECT c.serial FROM certificates c JOIN line ON c.renewed_from = line.serial
		) SELECT d.serial FROM device_certificates d JOIN line ON d.serial = line.serial
		WHERE d.device_id = ?
		AND NOT EXISTS (SELECT 1 FROM renewal_conflicts r WHERE r.old_serial = ? OR r.old_serial IN (SELECT serial FROM line))
		ORDER BY d.first_seen DESC, d.serial LIMIT 1`, serial, device, serial)
	if err != nil {
		return "", fmt.Errorf("reading the renewals of certificate %s: %w", wire.FormatDecimalSerial(serial), err)
	}
	defer rows.Close()
	var succ string
	if rows.Next() {
		if err := rows.Scan(&succ); err != nil {
			return "", fmt.Errorf("reading the renewals of certificate %s: %w", wire.FormatDecimalSerial(serial), err)
		}
	}
	return succ, rows.Err()
}
