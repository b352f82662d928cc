package mp

import (
	"encoding/json"
	"net/http"

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
	for i, msg := range b.Messages {
		if err := msg.Check(); err != nil {
			return api.BadRequest("messages[%d].%v", i, err)
		}
	}
	now := m.now().Unix()
	ack := wire.StatusAck{Acked: make([]string, 0, len(b.Messages))}
	err := m.db.Tx(r.Context(), func(tx *sitedb.Tx) error {
		for _, msg := range b.Messages {
			fields, _ := json.Marshal(msg.Fields)
			if _, err := tx.Exec(`INSERT INTO status_messages (device_id, id, time, severity, component, text, fields, received_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, id) DO NOTHING`,
				p.id.ID, msg.ID, msg.Time.Unix(), msg.Severity, msg.Component, msg.Text, string(fields), now); err != nil {
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
