package mp

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
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

// refusedCert is a certificate this MP refused as superseded (MP.superseded).
type refusedCert struct {
	successor string // the renewal the device presented
	notAfter  int64  // of the refused certificate, unix seconds
	checked   int64  // when the store last said so, unix seconds
}

// supersededRecheck is how long a refusal is answered from MP.superseded before the store
// is asked again: the line may have been contested since (a renewal the CA refused
// afterwards), and then the refused certificate may be the real device's.
const supersededRecheck = time.Minute

// ErrCertificateSuperseded refuses a device certificate whose renewal the device already
// presented at an MP: the agent never goes back to an older certificate, a copy of it does.
var ErrCertificateSuperseded = errors.New("certificate superseded by its renewal")

// registerDevice records a device on its first contact with this MP process (and on its
// first contact with a new certificate): first contact registers the device. A
// certificate whose renewal the device has already presented is refused (403
// certificate_superseded) and the device gets a clone warning, and the channels that
// present it on this MP are closed; the refusal is remembered (MP.superseded, for
// supersededRecheck), so neither answer costs a query after the first. The first
// presentation of a renewal is announced to every MP of the site (kindSuperseded): each
// drops the older certificate from its cache and closes what presents it (supersedeOlder).
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
	entry := seenCert{serial: serial, notAfter: p.leaf.NotAfter.Unix()}
	cached := false
	if v, ok := m.seen.Load(p.id.ID); ok && v.(seenCert).serial == serial {
		if m.eventsLive.Load() {
			return nil // a renewal presented since at any MP would have dropped it
		}
		cached = true // renewals may go unheard of meanwhile: the store decides
	}
	refused, wasRefused := m.superseded.Load(serial)
	if wasRefused && m.now().Unix()-refused.(refusedCert).checked < int64(supersededRecheck/time.Second) {
		return supersededError(serial, refused.(refusedCert).successor)
	}
	gen := m.supersedes.Load() // before the store is read: see below
	succ, err := trust.PresentedRenewal(ctx, m.db, p.id.ID, serial)
	if err != nil {
		return fmt.Errorf("checking device %s: %w", p.id.ID, err)
	}
	if wasRefused && succ == "" {
		m.superseded.CompareAndDelete(serial, refused) // contested since: served again
	}
	if succ != "" {
		msg := fmt.Sprintf("probable clone: certificate %s is still presented although the device already presented its renewal %s",
			wire.FormatDecimalSerial(serial), wire.FormatDecimalSerial(succ))
		m.log.Warn().Str("device_id", p.id.ID).Str("serial", wire.FormatDecimalSerial(serial)).Str("successor_serial", wire.FormatDecimalSerial(succ)).Str("location", p.location).
			Msg("probable clone: superseded certificate refused")
		if err := m.addWarning(ctx, p.id.ID, msg); err != nil {
			return fmt.Errorf("recording a clone warning for device %s: %w", p.id.ID, err)
		}
		m.superseded.Store(serial, refusedCert{successor: succ, notAfter: p.leaf.NotAfter.Unix(), checked: m.now().Unix()})
		m.seen.CompareAndDelete(p.id.ID, entry)
		// A channel the copy opened before the device presented the renewal goes too (its
		// request connections get this answer at their next request).
		m.hub.closeChannels(p.id.ID, p.leaf.SerialNumber, "certificate superseded")
		return supersededError(serial, succ)
	}
	if cached {
		return nil
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
		res, err := tx.Exec(`INSERT INTO device_certificates (device_id, serial, first_seen) VALUES (?, ?, ?)
			ON CONFLICT (device_id, serial) DO NOTHING`, p.id.ID, serial, now)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return err // presented before: announced then
		}
		return m.announceRenewal(tx, p.id.ID, serial)
	})
	if err != nil {
		return fmt.Errorf("registering device %s: %w", p.id.ID, err)
	}
	m.seen.Store(p.id.ID, entry) // a renewal replaces the old one
	if m.supersedes.Load() != gen {
		// A renewal was heard of while this one was checked, maybe before the store had
		// it: it may supersede serial, and supersedeOlder may have looked at seen before
		// the Store above. The store decides at the next request.
		m.seen.CompareAndDelete(p.id.ID, entry)
	}
	return nil
}

// announceRenewal tells every MP of the site, when tx commits, that device presented
// serial for the first time, when serial is a renewal (the CA's certificates.renewed_from).
func (m *MP) announceRenewal(tx *sitedb.Tx, device, serial string) error {
	var from sql.NullString
	err := tx.QueryRow(`SELECT renewed_from FROM certificates WHERE serial = ?`, serial).Scan(&from)
	if errors.Is(err, sql.ErrNoRows) || err == nil && from.String == "" {
		return nil // not issued by a renewal
	}
	if err != nil {
		return fmt.Errorf("reading what certificate %s renews: %w", wire.FormatDecimalSerial(serial), err)
	}
	return m.hub.publish(tx, siteEvent{Kind: kindSuperseded, Device: device, Serial: from.String, Successor: serial})
}

// supersedeOlder ends on this MP what presents a certificate that device has renewed:
// successor (a decimal serial) is a renewal it just presented at an MP of the site. For
// each other certificate of the device that this MP holds (cached in MP.seen, or presented
// by a notification channel or a tracked request connection), the store says whether the
// device has presented a renewal of it (trust.PresentedRenewal, which leaves a contested
// line alone). Such a certificate leaves the cache, so its next request is refused as
// superseded with the clone warning (registerCert), and its channels and connections are
// closed now. It raises no warning itself: the channel may be the real device's own, open
// until its agent moves to the new certificate. When the store cannot be read, the
// cached certificate is dropped all the same: the next request asks the store.
func (m *MP) supersedeOlder(ctx context.Context, device, successor string) error {
	m.supersedes.Add(1) // before seen is read (registerCert)
	defer m.supersedesDone.Add(1)
	held := m.hub.serialsOf(device)
	if v, ok := m.seen.Load(device); ok {
		held[v.(seenCert).serial] = true
	}
	delete(held, successor)
	for serial := range held {
		succ, err := trust.PresentedRenewal(ctx, m.db, device, serial)
		if err == nil && succ == "" {
			continue // not renewed, or a contested line
		}
		if v, ok := m.seen.Load(device); ok && (v.(seenCert).serial == serial || err != nil && v.(seenCert).serial != successor) {
			m.seen.CompareAndDelete(device, v) // not one a registration stored since
		}
		if err != nil {
			return err // the cached certificate went, whichever serial failed
		}
		sn, _ := new(big.Int).SetString(serial, 10)
		n := m.hub.closeConns(device, sn) // first: once a channel hears why, all is closed
		n += m.hub.closeChannels(device, sn, "certificate superseded")
		m.log.Info().Str("device_id", device).Str("serial", wire.FormatDecimalSerial(serial)).Str("successor_serial", wire.FormatDecimalSerial(succ)).Int("connections", n).
			Msg("certificate superseded by its renewal: connections closed")
	}
	return nil
}

// resyncSuperseded does what the renewal announcements missed since the last catch-up
// would have done (supersedeOlder for each renewal presented since, give or take
// resyncSlack of clock difference between MPs). When the store cannot be read, every
// cached certificate is dropped instead (each device's next request asks the store) and
// the error is returned: the channels a missed renewal supersedes make no request, so the
// catch-up is done again (hub.retryLater).
func (m *MP) resyncSuperseded(ctx context.Context) error {
	since := m.syncedAt.Swap(m.now().Unix())
	err := func() error {
		rows, err := m.db.Query(ctx, `SELECT d.device_id, d.serial FROM device_certificates d
			JOIN certificates c ON c.serial = d.serial
			WHERE d.first_seen >= ? AND c.renewed_from IS NOT NULL AND c.renewed_from <> ''`, since-int64(resyncSlack/time.Second))
		if err != nil {
			return err
		}
		defer rows.Close()
		var renewals [][2]string
		for rows.Next() {
			var device, serial string
			if err := rows.Scan(&device, &serial); err != nil {
				return err
			}
			renewals = append(renewals, [2]string{device, serial})
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows.Close()
		for _, r := range renewals {
			if err := m.supersedeOlder(ctx, r[0], r[1]); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil && ctx.Err() == nil {
		m.log.Warn().Err(err).Msg("catching up on renewals presented at other MPs; every cached device certificate is checked again")
		m.syncedAt.Store(since) // the next catch-up looks back as far
		m.supersedes.Add(1)
		m.seen.Clear()
	}
	return err
}

// resyncSlack is how far before the last catch-up resyncSuperseded looks: the clocks of
// the MPs that stamp device_certificates.first_seen may differ by as much.
const resyncSlack = 5 * time.Minute

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
	m.seen.Range(func(k, v any) bool {
		if now > v.(seenCert).notAfter {
			m.seen.CompareAndDelete(k, v)
		}
		return true
	})
	m.superseded.Range(func(k, v any) bool {
		if now > v.(refusedCert).notAfter {
			m.superseded.CompareAndDelete(k, v)
		}
		return true
	})
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
	rows.Close()
	if out.DPs, err = m.locateDPs(r.Context(), col, modes); err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

// locateDPs lists the URLs (column col) of the live DPs in modes: lower priority first,
// in random order among equal priorities, so that devices spread over them. A DP is live
// when seen within dpLiveFor (content_store.go).
func (m *MP) locateDPs(ctx context.Context, col string, modes []any) ([]string, error) {
	rows, err := m.db.Query(ctx, `SELECT `+col+`, priority FROM dps WHERE mode IN (?, ?) AND last_seen >= ? AND `+col+` <> '' ORDER BY priority`,
		append(modes, m.dpLiveSince())...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	type dp struct {
		url  string
		prio int
	}
	var dps []dp
	for rows.Next() {
		var d dp
		if err := rows.Scan(&d.url, &d.prio); err != nil {
			return nil, err
		}
		dps = append(dps, d)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	mrand.Shuffle(len(dps), func(i, j int) { dps[i], dps[j] = dps[j], dps[i] })
	slices.SortStableFunc(dps, func(a, b dp) int { return a.prio - b.prio })
	out := make([]string, 0, len(dps))
	for _, d := range dps {
		out = append(out, d.url)
	}
	return out, nil
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
