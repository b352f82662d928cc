package mp

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/guestcode"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// The sessions table is the audit of remote control (DESIGN.md §9 step 8): every session,
// refused and offline ones included, with its legs' tickets beside it.

// sessionRow is a session as stored, with what the broker needs beyond wire.Session.
type sessionRow struct {
	wire.Session
	HelperSerial string
	DeviceMP     string
}

const sessionColumns = `id, device_id, device_name, helper, helper_name, helper_serial, sharer, sharer_name, reason, state, outcome,
	error, mode, modes, location, transport, direct_error, e2e, mp_id, device_mp, requested_at, started_at, ended_at, bytes_in, bytes_out, recorded, console, kind`

func scanSession(row interface{ Scan(...any) error }) (sessionRow, error) {
	var s sessionRow
	var modes string
	var e2e, recorded, console int
	var requested int64
	var started, ended sql.NullInt64
	if err := row.Scan(&s.ID, &s.Device, &s.DeviceName, &s.Helper, &s.HelperName, &s.HelperSerial, &s.Sharer, &s.SharerName, &s.Reason,
		&s.State, &s.Outcome, &s.Error, &s.Mode, &modes, &s.Location, &s.Transport, &s.DirectError, &e2e, &s.MP, &s.DeviceMP, &requested,
		&started, &ended, &s.BytesIn, &s.BytesOut, &recorded, &console, &s.Kind); err != nil {
		return sessionRow{}, err
	}
	s.E2E, s.Recorded, s.Console = e2e != 0, recorded != 0, console != 0
	s.RequestedAt = time.Unix(requested, 0).UTC()
	if started.Valid {
		t := time.Unix(started.Int64, 0).UTC()
		s.StartedAt = &t
	}
	if ended.Valid {
		t := time.Unix(ended.Int64, 0).UTC()
		s.EndedAt = &t
	}
	s.Modes = []wire.SessionMode{}
	if modes != "" {
		_ = json.Unmarshal([]byte(modes), &s.Modes) // written only by this package
	}
	return s, nil
}

// ErrNoSession is returned for an unknown session id.
var ErrNoSession = errors.New("no such session")

func noSession(id string) error {
	return api.Wrap(ErrNoSession, http.StatusNotFound, "not_found", fmt.Sprintf("no session %q", id))
}

// session reads one session with its viewers.
func (m *MP) session(ctx context.Context, id string) (sessionRow, error) {
	s, err := scanSession(m.db.QueryRow(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return sessionRow{}, noSession(id)
	}
	if err != nil {
		return sessionRow{}, fmt.Errorf("reading session %s: %w", id, err)
	}
	rows, err := m.db.Query(ctx, `SELECT DISTINCT helper FROM session_tickets WHERE session_id = ? AND role = 'viewer' ORDER BY helper`, id)
	if err != nil {
		return sessionRow{}, fmt.Errorf("reading the viewers of session %s: %w", id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return sessionRow{}, err
		}
		s.Viewers = append(s.Viewers, v)
	}
	return s, rows.Err()
}

// sessionFilter selects sessions for GET /v1/admin/sessions.
type sessionFilter struct {
	Active bool
	Device string
	Helper string
	Since  time.Time
}

// maxSessionList bounds one answer of the session list.
const maxSessionList = 10000

// sessions lists sessions, newest first.
func (m *MP) sessions(ctx context.Context, f sessionFilter) ([]wire.Session, error) {
	var where []string
	var args []any
	if f.Active {
		where = append(where, `state <> ?`)
		args = append(args, wire.SessionEnded)
	}
	if f.Device != "" {
		where = append(where, `device_id = ?`)
		args = append(args, f.Device)
	}
	if f.Helper != "" {
		where = append(where, `helper = ?`)
		args = append(args, f.Helper)
	}
	if !f.Since.IsZero() {
		where = append(where, `requested_at >= ?`)
		args = append(args, f.Since.Unix())
	}
	q := `SELECT ` + sessionColumns + ` FROM sessions`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	rows, err := m.db.Query(ctx, q+fmt.Sprintf(` ORDER BY requested_at DESC, id LIMIT %d`, maxSessionList), args...)
	if err != nil {
		return nil, fmt.Errorf("listing sessions: %w", err)
	}
	defer rows.Close()
	out := []wire.Session{}
	for rows.Next() {
		s, err := scanSession(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s.Session)
	}
	return out, rows.Err()
}

// insertSession records a session (a refused or offline one already ended).
func insertSession(tx *sitedb.Tx, s sessionRow) error {
	modes, _ := json.Marshal(s.Modes)
	var ended any
	if s.EndedAt != nil {
		ended = s.EndedAt.Unix()
	}
	_, err := tx.Exec(`INSERT INTO sessions (id, device_id, device_name, helper, helper_name, helper_serial, reason, state, outcome, error,
		mode, modes, location, mp_id, device_mp, requested_at, ended_at, console, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		s.ID, s.Device, s.DeviceName, s.Helper, s.HelperName, s.HelperSerial, s.Reason, s.State, s.Outcome, s.Error,
		s.Mode, string(modes), s.Location, s.MP, s.DeviceMP, s.RequestedAt.Unix(), ended, boolInt(s.Console), s.Kind)
	if err != nil {
		return fmt.Errorf("recording session %s: %w", s.ID, err)
	}
	return nil
}

// ticketRow is a leg's ticket as stored.
type ticketRow struct {
	ID, Session, Role, Helper, HelperKey, HelperSerial string
	ExpiresAt                                          time.Time
	// Console: the web console's ticket, whose helper end is this site's MP (DialSession).
	Console bool
}

func insertTicket(tx *sitedb.Tx, t ticketRow, now time.Time) error {
	_, err := tx.Exec(`INSERT INTO session_tickets (id, session_id, role, helper, helper_key, helper_serial, expires_at, created_at, console)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, t.ID, t.Session, t.Role, t.Helper, t.HelperKey, t.HelperSerial, t.ExpiresAt.Unix(), now.Unix(), boolInt(t.Console))
	if err != nil {
		return fmt.Errorf("recording the ticket of session %s: %w", t.Session, err)
	}
	return nil
}

// ticket reads a leg's ticket by id; nil when there is none.
func (m *MP) ticket(ctx context.Context, id string) (*ticketRow, error) {
	var t ticketRow
	var exp int64
	var console int
	err := m.db.QueryRow(ctx, `SELECT id, session_id, role, helper, helper_key, helper_serial, expires_at, console FROM session_tickets WHERE id = ?`, id).
		Scan(&t.ID, &t.Session, &t.Role, &t.Helper, &t.HelperKey, &t.HelperSerial, &exp, &console)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading ticket: %w", err)
	}
	t.ExpiresAt, t.Console = time.Unix(exp, 0), console != 0
	return &t, nil
}

// endSessions ends the sessions that where selects (not ended yet) with outcome and code,
// and announces each end to every MP (kindSession) and, when tellDevice, to its device
// (session-ended) when tx commits. It returns the ids it ended.
func (m *MP) endSessions(tx *sitedb.Tx, outcome, code string, tellDevice bool, where string, args ...any) ([]string, error) {
	rows, err := tx.Query(`SELECT id, device_id FROM sessions WHERE state <> 'ended' AND (`+where+`)`, args...)
	if err != nil {
		return nil, err
	}
	type sd struct{ id, device string }
	var found []sd
	for rows.Next() {
		var s sd
		if err := rows.Scan(&s.id, &s.device); err != nil {
			rows.Close()
			return nil, err
		}
		found = append(found, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	now := m.now()
	var ids []string
	for _, s := range found {
		res, err := tx.Exec(`UPDATE sessions SET state = 'ended', outcome = ?, error = ?, ended_at = ? WHERE id = ? AND state <> 'ended'`,
			outcome, code, now.Unix(), s.id)
		if err != nil {
			return nil, err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			continue
		}
		ids = append(ids, s.id)
		if err := guestcode.EndSession(tx, s.id, now); err != nil {
			return nil, err
		}
		if err := m.hub.publish(tx, siteEvent{Kind: kindSession, Session: s.id, Outcome: outcome, Code: code}); err != nil {
			return nil, err
		}
		if !tellDevice {
			continue
		}
		ev := wire.Event{Type: wire.EventSessionEnded, Time: now.UTC(), Data: map[string]string{wire.EventDataSession: s.id, wire.EventDataOutcome: outcome}}
		if code != "" {
			ev.Data[wire.EventDataReason] = code
		}
		if err := m.hub.publish(tx, siteEvent{Kind: kindPush, Device: s.device, Event: &ev}); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// interruptSessions marks interrupted the sessions where selects (those this MP brokered
// or relayed, at its start; those of dead MPs, in the heartbeat). Their devices are told.
func (m *MP) interruptSessions(ctx context.Context, where string, args ...any) (int, error) {
	if found, err := m.anyOpenSession(ctx, where, args...); err != nil || !found {
		return 0, err
	}
	var n int
	err := m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		ids, err := m.endSessions(tx, wire.OutcomeInterrupted, "", true, where, args...)
		n = len(ids)
		return err
	})
	return n, err
}

// expireSessions ends the sessions that never started although every ticket they could
// start with has expired (the device never answered, or lost its channel meanwhile).
func (m *MP) expireSessions(ctx context.Context) error {
	where, cutoff := `state IN ('requested', 'waiting') AND requested_at < ?`, m.now().Add(-ticket.MaxLifetime).Unix()
	if found, err := m.anyOpenSession(ctx, where, cutoff); err != nil || !found {
		return err
	}
	return m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		ids, err := m.endSessions(tx, wire.OutcomeFailed, "not_started", true, where, cutoff)
		if len(ids) > 0 {
			m.log.Info().Strs("sessions", ids).Msg("sessions that never started ended: their tickets expired")
		}
		return err
	})
}

// anyOpenSession reports whether a session not ended matches where: the heartbeat's checks
// cost one read, not a transaction, when there is nothing to do.
func (m *MP) anyOpenSession(ctx context.Context, where string, args ...any) (bool, error) {
	var one int
	err := m.db.QueryRow(ctx, `SELECT 1 FROM sessions WHERE state <> 'ended' AND (`+where+`) LIMIT 1`, args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// purgeSessions deletes the sessions that ended before cutoff, with their tickets and
// recordings.
func (m *MP) purgeSessions(ctx context.Context, cutoff time.Time) (int64, error) {
	var n int64
	err := m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		old := `SELECT id FROM sessions WHERE state = 'ended' AND ended_at < ?`
		if _, err := tx.Exec(`DELETE FROM session_tickets WHERE session_id IN (`+old+`)`, cutoff.Unix()); err != nil {
			return err
		}
		if _, err := tx.Exec(`DELETE FROM session_recordings WHERE session_id IN (`+old+`)`, cutoff.Unix()); err != nil {
			return err
		}
		res, err := tx.Exec(`DELETE FROM sessions WHERE state = 'ended' AND ended_at < ?`, cutoff.Unix())
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		return nil
	})
	return n, err
}
