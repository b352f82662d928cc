package mp

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// seenCert is the certificate this MP process registered for a device (MP.seen).
type seenCert struct {
	serial   string
	notAfter int64 // unix seconds
}

// ErrCertificateSuperseded refuses a device certificate whose renewal the device already
// presented at an MP: the agent never goes back to an older certificate, a copy of it does.
var ErrCertificateSuperseded = errors.New("certificate superseded by its renewal")

// registerDevice records a device on its first contact with this MP process (and on its
// first contact with a new certificate): first contact registers the device. A
// certificate whose renewal the device has already presented is refused (403
// certificate_superseded) and the device gets a clone warning, and the channels that
// present it on this MP are closed; the refusal is remembered (MP.superseded), so neither
// answer costs a query after the first.
func (m *MP) registerDevice(w http.ResponseWriter, r *http.Request, p *peer) error {
	err := m.registerCert(r.Context(), p)
	if errors.Is(err, ErrCertificateSuperseded) {
		w.Header().Set("Connection", "close") // its connection ends with the refusal
	}
	return err
}

// registerCert is registerDevice without the answer.
func (m *MP) registerCert(ctx context.Context, p *peer) error {
	serial := p.leaf.SerialNumber.String()
	if v, ok := m.seen.Load(p.id.ID); ok && v.(seenCert).serial == serial {
		return nil
	}
	if v, ok := m.superseded.Load(serial); ok {
		return supersededError(serial, v.(seenCert).serial)
	}
	succ, err := trust.PresentedRenewal(ctx, m.db, p.id.ID, serial)
	if err != nil {
		return fmt.Errorf("checking device %s: %w", p.id.ID, err)
	}
	if succ != "" {
		msg := fmt.Sprintf("probable clone: certificate %s is still presented although the device already presented its renewal %s",
			wire.FormatDecimalSerial(serial), wire.FormatDecimalSerial(succ))
		m.log.Warn().Str("device_id", p.id.ID).Str("serial", wire.FormatDecimalSerial(serial)).Str("successor_serial", wire.FormatDecimalSerial(succ)).Str("location", p.location).
			Msg("probable clone: superseded certificate refused")
		if err := m.addWarning(ctx, p.id.ID, msg); err != nil {
			return fmt.Errorf("recording a clone warning for device %s: %w", p.id.ID, err)
		}
		m.superseded.Store(serial, seenCert{serial: succ, notAfter: p.leaf.NotAfter.Unix()})
		// A channel the copy opened before the device presented the renewal goes too (its
		// request connections get this answer at their next request).
		m.hub.closeChannels(p.id.ID, p.leaf.SerialNumber, "certificate superseded")
		return supersededError(serial, succ)
	}
	now := m.now().Unix()
	err = m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		if _, err := tx.Exec(`INSERT INTO devices (id, name, cert_serial, pubkey_hash, first_seen, last_seen, last_location)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET name = excluded.name, cert_serial = excluded.cert_serial,
				pubkey_hash = excluded.pubkey_hash, last_seen = excluded.last_seen, last_location = excluded.last_location`,
			p.id.ID, p.leaf.Subject.CommonName, serial, trust.PublicKeyHash(p.leaf), now, now, p.location); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO device_certificates (device_id, serial, first_seen) VALUES (?, ?, ?)
			ON CONFLICT (device_id, serial) DO NOTHING`, p.id.ID, serial, now)
		return err
	})
	if err != nil {
		return fmt.Errorf("registering device %s: %w", p.id.ID, err)
	}
	m.seen.Store(p.id.ID, seenCert{serial: serial, notAfter: p.leaf.NotAfter.Unix()}) // a renewal replaces the old one
	return nil
}

func supersededError(serial, succ string) error {
	return api.Wrap(ErrCertificateSuperseded, http.StatusForbidden, "certificate_superseded",
		fmt.Sprintf("certificate %s was renewed as %s, which this device already uses", wire.FormatDecimalSerial(serial), wire.FormatDecimalSerial(succ)))
}

// forgetExpired drops from MP.seen the devices whose registered certificate has expired,
// and from MP.superseded the refused certificates that have: such a certificate can no
// longer connect, and a new one registers again. With one entry per device, seen holds at
// most the devices with a valid certificate that came to this MP.
func (m *MP) forgetExpired() {
	now := m.now().Unix()
	for _, set := range []*sync.Map{&m.seen, &m.superseded} {
		set.Range(func(k, v any) bool {
			if now > v.(seenCert).notAfter {
				set.Delete(k)
			}
			return true
		})
	}
}

func (m *MP) handleWhoami(w http.ResponseWriter, r *http.Request) error {
	p := peerOf(r)
	out := wire.Whoami{Subject: p.leaf.Subject.CommonName, Serial: wire.FormatSerial(p.leaf.SerialNumber), Location: p.location, Profile: p.id.Kind}
	if p.id.Kind == trust.KindDevice {
		out.DeviceID, out.Profile = p.id.ID, "client"
		if err := m.registerDevice(w, r, p); err != nil {
			return err
		}
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

// Limits on what a device may tell about itself.
const (
	maxField     = 256
	maxAddresses = 32
	maxWarnings  = 10
)

func checkField(key, v string) error {
	if len(v) > maxField {
		return api.BadRequest("%s: at most %d bytes", key, maxField)
	}
	if strings.ContainsAny(v, "\n\r\x00") {
		return api.BadRequest("%s: control characters are not allowed", key)
	}
	return nil
}

func checkAddresses(addrs []string) error {
	if len(addrs) > maxAddresses {
		return api.BadRequest("addresses: at most %d", maxAddresses)
	}
	for _, a := range addrs {
		if net.ParseIP(a) == nil {
			if _, _, err := net.ParseCIDR(a); err != nil {
				return api.BadRequest("addresses: %q is not an IP address", a)
			}
		}
	}
	return nil
}

func (m *MP) handleHello(w http.ResponseWriter, r *http.Request, p *peer) error {
	var h wire.Hello
	if err := api.Decode(w, r, &h); err != nil {
		return err
	}
	for k, v := range map[string]string{"name": h.Name, "fqdn": h.FQDN, "os": h.OS, "agent_version": h.AgentVersion, "hardware_id": h.HardwareID} {
		if err := checkField(k, v); err != nil {
			return err
		}
	}
	if err := checkAddresses(h.Addresses); err != nil {
		return err
	}
	ctx := r.Context()
	_, err := m.db.Exec(ctx, `UPDATE devices SET fqdn = ?, os = ?, agent_version = ?, hardware_id = ?, addresses = ?, last_seen = ?, last_location = ?
		WHERE id = ?`, h.FQDN, h.OS, h.AgentVersion, h.HardwareID, strings.Join(h.Addresses, ","), m.now().Unix(), p.location, p.id.ID)
	if err != nil {
		return fmt.Errorf("recording hello: %w", err)
	}
	resp := wire.HelloResponse{DeviceID: p.id.ID}
	if h.HardwareID != "" {
		others, err := m.devicesWithHardwareID(ctx, h.HardwareID, p.id.ID)
		if err != nil {
			return err
		}
		for _, other := range others {
			msg := fmt.Sprintf("probable clone: hardware id %s is also reported by device %s", h.HardwareID, other)
			m.log.Warn().Str("device_id", p.id.ID).Str("other_device_id", other).Str("hardware_id", h.HardwareID).Msg("probable clone")
			if err := m.addWarning(ctx, p.id.ID, msg); err != nil {
				return err
			}
			if err := m.addWarning(ctx, other, fmt.Sprintf("probable clone: hardware id %s is also reported by device %s", h.HardwareID, p.id.ID)); err != nil {
				return err
			}
			resp.Warnings = append(resp.Warnings, msg)
		}
	}
	api.WriteJSON(w, http.StatusOK, resp)
	return nil
}

func (m *MP) devicesWithHardwareID(ctx context.Context, hw, except string) ([]string, error) {
	rows, err := m.db.Query(ctx, `SELECT id FROM devices WHERE hardware_id = ? AND id <> ? AND blocked_at IS NULL ORDER BY id`, hw, except)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// addWarning appends a warning to a device (once; the newest maxWarnings are kept).
func (m *MP) addWarning(ctx context.Context, device, msg string) error {
	_, err := m.addWarningOnce(ctx, device, msg)
	return err
}

// addWarningOnce is addWarning that also tells whether the warning is new.
func (m *MP) addWarningOnce(ctx context.Context, device, msg string) (added bool, err error) {
	err = m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var cur string
		if err := tx.QueryRow(`SELECT warnings FROM devices WHERE id = ?`, device).Scan(&cur); err != nil {
			return err
		}
		ws := splitLines(cur)
		for _, w := range ws {
			if w == msg {
				return nil
			}
		}
		ws = append(ws, msg)
		if len(ws) > maxWarnings {
			ws = ws[len(ws)-maxWarnings:]
		}
		_, err := tx.Exec(`UPDATE devices SET warnings = ? WHERE id = ?`, strings.Join(ws, "\n"), device)
		added = err == nil
		return err
	})
	return added && err == nil, err
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func (m *MP) handleCheckin(w http.ResponseWriter, r *http.Request, p *peer) error {
	var c wire.Checkin
	if err := api.Decode(w, r, &c); err != nil {
		return err
	}
	if c.Location != wire.Intranet && c.Location != wire.Internet {
		return api.BadRequest("location: must be intranet or internet")
	}
	switch c.Compliance {
	case "":
		c.Compliance = "unknown"
	case "compliant", "noncompliant", "unknown":
	default:
		return api.BadRequest("compliance: must be compliant, noncompliant or unknown")
	}
	if err := checkField("agent_version", c.AgentVersion); err != nil {
		return err
	}
	if err := checkAddresses(c.Addresses); err != nil {
		return err
	}
	pol, err := m.devicePolicy(r.Context(), p.id.ID)
	if err != nil {
		return err
	}
	if c.Location != p.location {
		if err := m.flagLocationMismatch(r.Context(), p, c.Location); err != nil {
			return err
		}
	}
	m.checkins.add(p.id.ID, c, p.location, m.now()) // the listener's location is recorded, the claim kept beside it
	every, _ := time.ParseDuration(pol.Client.CheckinInterval)
	api.WriteJSON(w, http.StatusOK, wire.CheckinResponse{NextCheckinSeconds: int(every / time.Second), PolicyETag: policyETag(pol)})
	return nil
}

func (m *MP) handleBundle(w http.ResponseWriter, r *http.Request) error {
	var pem strings.Builder
	for _, c := range m.verifier.Anchors.Roots {
		pem.WriteString(encodeCert(c))
	}
	api.WriteJSON(w, http.StatusOK, wire.Bundle{Roots: pem.String()})
	return nil
}

// handleLocate lists the site's MPs for the caller's location: the intranet URLs of MPs
// that take intranet connections, or the internet URLs of those that take internet ones.
// An MP that stopped heartbeating (mpDeadAfter) is not listed.
func (m *MP) handleLocate(w http.ResponseWriter, r *http.Request) error {
	p := peerOf(r)
	col, modes := "intranet_url", []any{ModeIntranet, ModeBoth}
	if p.location == wire.Internet {
		col, modes = "internet_url", []any{ModeInternet, ModeBoth}
	}
	rows, err := m.db.Query(r.Context(), `SELECT `+col+` FROM management_points WHERE mode IN (?, ?) AND last_seen >= ? ORDER BY id`,
		append(modes, m.aliveSince())...)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := wire.Locate{Location: p.location, MPs: []string{}, DPs: []string{}}
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return err
		}
		out.MPs = append(out.MPs, u)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

// ErrNoDevice is returned for an unknown device id.
var ErrNoDevice = errors.New("no such device")

const deviceColumns = `id, name, fqdn, os, agent_version, cert_serial, pubkey_hash, hardware_id, first_seen, last_seen,
	last_location, claimed_location, addresses, compliance, blocked_at, warnings`

func scanDevice(row interface{ Scan(...any) error }) (wire.Device, error) {
	var d wire.Device
	var first, last int64
	var addrs, warnings string
	var blocked sql.NullInt64
	if err := row.Scan(&d.ID, &d.Name, &d.FQDN, &d.OS, &d.AgentVersion, &d.Serial, &d.PublicKeyHash, &d.HardwareID,
		&first, &last, &d.LastLocation, &d.ClaimedLocation, &addrs, &d.Compliance, &blocked, &warnings); err != nil {
		return wire.Device{}, err
	}
	d.Serial = wire.FormatDecimalSerial(d.Serial) // stored in decimal
	d.FirstSeen, d.LastSeen = time.Unix(first, 0).UTC(), time.Unix(last, 0).UTC()
	if addrs != "" {
		d.Addresses = strings.Split(addrs, ",")
	}
	d.Warnings = splitLines(warnings)
	if blocked.Valid {
		at := time.Unix(blocked.Int64, 0).UTC()
		d.Blocked, d.BlockedAt = true, &at
	}
	return d, nil
}

// Device returns one device with its groups and live channels.
func (m *MP) Device(ctx context.Context, id string) (wire.Device, error) {
	if err := m.checkins.flush(ctx); err != nil {
		return wire.Device{}, err
	}
	d, err := scanDevice(m.db.QueryRow(ctx, `SELECT `+deviceColumns+` FROM devices WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return wire.Device{}, api.Wrap(ErrNoDevice, http.StatusNotFound, "not_found", fmt.Sprintf("no device %q", id))
	}
	if err != nil {
		return wire.Device{}, err
	}
	ds := []wire.Device{d}
	if err := m.addLiveFacts(ctx, ds, id); err != nil {
		return wire.Device{}, err
	}
	return ds[0], nil
}

// Devices lists every device, most recently seen first, with the same facts as Device.
func (m *MP) Devices(ctx context.Context) ([]wire.Device, error) {
	if err := m.checkins.flush(ctx); err != nil {
		return nil, err
	}
	rows, err := m.db.Query(ctx, `SELECT `+deviceColumns+` FROM devices ORDER BY last_seen DESC, id LIMIT 10000`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []wire.Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	if err := m.addLiveFacts(ctx, out, ""); err != nil {
		return nil, err
	}
	return out, nil
}

// addLiveFacts adds what the devices table does not hold to ds: clone warnings, groups
// and live notification channels, for one device (id) or for all ("") — one code path,
// so that device list and device show cannot disagree.
func (m *MP) addLiveFacts(ctx context.Context, ds []wire.Device, id string) error {
	byID := make(map[string]*wire.Device, len(ds))
	for i := range ds {
		byID[ds[i].ID] = &ds[i]
	}
	clones, err := trust.CloneWarnings(ctx, m.db, id)
	if err != nil {
		return err
	}
	for dev, ws := range clones {
		if d := byID[dev]; d != nil {
			d.Warnings = append(d.Warnings, ws...)
		}
	}
	where, args := "", []any{}
	if id != "" {
		where, args = " WHERE device_id = ?", []any{id}
	}
	rows, err := m.db.Query(ctx, `SELECT device_id, group_name FROM group_members`+where+` ORDER BY device_id, group_name`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var dev, g string
		if err := rows.Scan(&dev, &g); err != nil {
			return err
		}
		if d := byID[dev]; d != nil {
			d.Groups = append(d.Groups, g)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows.Close()
	and, args := "", []any{m.aliveSince()}
	if id != "" {
		and, args = " AND device_id = ?", append(args, id)
	}
	live, err := m.db.Query(ctx, `SELECT device_id, COUNT(*) FROM notify_connections WHERE `+liveChannel+and+` GROUP BY device_id`, args...)
	if err != nil {
		return err
	}
	defer live.Close()
	for live.Next() {
		var dev string
		var n int
		if err := live.Scan(&dev, &n); err != nil {
			return err
		}
		if d := byID[dev]; d != nil {
			d.Connected = n
		}
	}
	return live.Err()
}

func encodeCert(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}
