package mp

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// handleStatus stores a batch of status messages. Each message is stored once per device
// whatever how often it is sent (its id is the key), and the answer lists exactly the ids
// stored, in the same transaction: an acknowledged message is never lost, and a resent one
// is never duplicated. A bad message refuses the whole batch, so nothing is half-written.
func (m *MP) handleStatus(w http.ResponseWriter, r *http.Request, p *peer) error {
	var b wire.StatusBatch
	if err := api.Decode(w, r, &b); err != nil {
		return err
	}
	if len(b.Messages) == 0 || len(b.Messages) > wire.MaxStatusBatch {
		return api.BadRequest("messages: between 1 and %d per batch", wire.MaxStatusBatch)
	}
	deploys := map[int]deployState{}
	for i, msg := range b.Messages {
		if err := msg.Check(); err != nil {
			return api.BadRequest("messages[%d].%v", i, err)
		}
		if msg.Component == wire.DeploymentComponent {
			s, err := parseDeployState(msg)
			if err != nil {
				return api.BadRequest("messages[%d].%v", i, err)
			}
			deploys[i] = s
		}
	}
	now := m.now().Unix()
	ack := wire.StatusAck{Acked: make([]string, 0, len(b.Messages))}
	err := m.db.Tx(r.Context(), func(tx *sitedb.Tx) error {
		for i, msg := range b.Messages {
			if s, ok := deploys[i]; ok {
				if err := m.recordDeployState(tx, p.id.ID, s); err != nil {
					return err
				}
			}
			fields, _ := json.Marshal(msg.Fields)
			if _, err := tx.Exec(`INSERT INTO status_messages (device_id, id, time, time_ns, severity, component, text, fields, received_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, id) DO NOTHING`,
				p.id.ID, msg.ID, msg.Time.Unix(), msg.Time.UnixNano(), msg.Severity, msg.Component, msg.Text, string(fields), now); err != nil {
				return err
			}
			ack.Acked = append(ack.Acked, msg.ID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, ack)
	return nil
}

// Messages returns the status messages of a device sent at or after since (the zero time:
// all of them), oldest first. At most limit are returned (1 to wire.MaxMessagesPage), the
// newest ones; Truncated says older ones were left out.
func (m *MP) Messages(ctx context.Context, id string, since time.Time, limit int) (wire.DeviceMessages, error) {
	if limit < 1 || limit > wire.MaxMessagesPage {
		return wire.DeviceMessages{}, api.BadRequest("limit: between 1 and %d", wire.MaxMessagesPage)
	}
	var one int
	err := m.db.QueryRow(ctx, `SELECT 1 FROM devices WHERE id = ?`, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return wire.DeviceMessages{}, api.Wrap(ErrNoDevice, http.StatusNotFound, "not_found", fmt.Sprintf("no device %q", id))
	}
	if err != nil {
		return wire.DeviceMessages{}, err
	}
	var from int64 // every message of the device when since is zero
	if !since.IsZero() {
		from = since.Unix()
	}
	rows, err := m.db.Query(ctx, `SELECT id, time, time_ns, severity, component, text, fields, received_at FROM status_messages
		WHERE device_id = ? AND time >= ? ORDER BY time DESC, time_ns DESC, received_at DESC, id DESC LIMIT ?`, id, from, limit+1)
	if err != nil {
		return wire.DeviceMessages{}, err
	}
	defer rows.Close()
	out := wire.DeviceMessages{DeviceID: id, Messages: []wire.DeviceMessage{}}
	for rows.Next() {
		var dm wire.DeviceMessage
		var at, atNS, received int64
		var fields string
		if err := rows.Scan(&dm.ID, &at, &atNS, &dm.Severity, &dm.Component, &dm.Text, &fields, &received); err != nil {
			return wire.DeviceMessages{}, err
		}
		dm.Time, dm.ReceivedAt = time.Unix(at, 0).UTC(), time.Unix(received, 0).UTC()
		if atNS != 0 {
			dm.Time = time.Unix(0, atNS).UTC()
		}
		if fields != "" && fields != "null" {
			_ = json.Unmarshal([]byte(fields), &dm.Fields) // written by handleStatus from a map
		}
		out.Messages = append(out.Messages, dm)
	}
	if err := rows.Err(); err != nil {
		return wire.DeviceMessages{}, err
	}
	if len(out.Messages) > limit {
		out.Messages, out.Truncated = out.Messages[:limit], true
	}
	slices.Reverse(out.Messages) // newest last
	return out, nil
}

// messagesQuery reads the query of GET /v1/admin/devices/{id}/messages strictly: since (an
// RFC 3339 time) and limit (1 to wire.MaxMessagesPage, default the most), each at most
// once, nothing else.
func messagesQuery(q url.Values) (since time.Time, limit int, err error) {
	limit = wire.MaxMessagesPage
	for k, vs := range q {
		if len(vs) != 1 {
			return time.Time{}, 0, api.BadRequest("query parameter %q: give it once", truncate(k))
		}
		v := vs[0]
		switch k {
		case "since":
			if since, err = time.Parse(time.RFC3339Nano, v); err != nil {
				return time.Time{}, 0, api.BadRequest("since %q: want an RFC 3339 time such as 2026-01-02T15:04:05Z", truncate(v))
			}
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > wire.MaxMessagesPage {
				return time.Time{}, 0, api.BadRequest("limit %q: want a whole number from 1 to %d", truncate(v), wire.MaxMessagesPage)
			}
			limit = n
		default:
			return time.Time{}, 0, api.BadRequest("unknown query parameter %q: since and limit are allowed", truncate(k))
		}
	}
	return since, limit, nil
}

// truncate keeps an echoed input short.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
