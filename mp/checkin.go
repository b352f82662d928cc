package mp

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// checkinBuffer holds check-ins until the next flush: heartbeats of one device coalesce,
// and a flush writes all of them in one transaction. This keeps the check-in path close to
// the cost of the TLS request itself; a crash loses at most one flush interval of
// last-seen times, never a status message (those are written before they are acknowledged).
type checkinBuffer struct {
	db      *sitedb.DB
	mu      sync.Mutex
	pending map[string]pendingCheckin
	flushMu sync.Mutex // one flush at a time
	// mismatches holds device id + "/" + claimed + "/" + listener for every location
	// mismatch this process has flagged, so a device that keeps claiming the wrong
	// location costs the database and the log once, not at every check-in.
	mismatches sync.Map
}

type pendingCheckin struct {
	wire.Checkin        // Location is what the agent claims
	listener     string // the location of the listener it came in on: what is recorded
	at           time.Time
}

func (b *checkinBuffer) add(device string, c wire.Checkin, listener string, at time.Time) {
	b.mu.Lock()
	b.pending[device] = pendingCheckin{Checkin: c, listener: listener, at: at}
	b.mu.Unlock()
}

// flush writes the pending check-ins.
func (b *checkinBuffer) flush(ctx context.Context) error {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	b.mu.Lock()
	batch := b.pending
	b.pending = make(map[string]pendingCheckin, len(batch))
	b.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	err := b.db.Tx(ctx, func(tx *sitedb.Tx) error {
		for id, c := range batch {
			if _, err := tx.Exec(`UPDATE devices SET last_seen = ?, last_location = ?, claimed_location = ?, addresses = ?, agent_version = CASE WHEN ? = '' THEN agent_version ELSE ? END, compliance = ?
				WHERE id = ?`, c.at.Unix(), c.listener, c.Location, strings.Join(c.Addresses, ","), c.AgentVersion, c.AgentVersion, c.Compliance, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// put them back, unless newer ones arrived meanwhile
		b.mu.Lock()
		for id, c := range batch {
			if _, newer := b.pending[id]; !newer {
				b.pending[id] = c
			}
		}
		b.mu.Unlock()
	}
	return err
}

// flagLocationMismatch records, once, that device p checked in on the listener of
// p.location claiming to be on claimed: a device warning and one log line. The recorded
// location is always the listener's; the claim is only evidence (an agent fooled into
// the wrong decision, or a device lying).
func (m *MP) flagLocationMismatch(ctx context.Context, p *peer, claimed string) error {
	key := p.id.ID + "/" + claimed + "/" + p.location
	if _, seen := m.checkins.mismatches.LoadOrStore(key, struct{}{}); seen {
		return nil
	}
	msg := fmt.Sprintf("location mismatch: checks in on the %s listener but claims %s", p.location, claimed)
	added, err := m.addWarningOnce(ctx, p.id.ID, msg)
	if err != nil {
		m.checkins.mismatches.Delete(key) // flagged at the next check-in instead
		return fmt.Errorf("flagging a location mismatch: %w", err)
	}
	if added {
		m.log.Warn().Str("device_id", p.id.ID).Str("location", p.location).Str("claimed_location", claimed).
			Msg("location mismatch: the device claims another location than the listener it checked in on")
	}
	return nil
}

// run flushes every interval until ctx is done, then once more.
func (b *checkinBuffer) run(ctx context.Context, every time.Duration, onErr func(error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := b.flush(fctx); err != nil {
				onErr(err)
			}
			cancel()
			return
		case <-t.C:
			if err := b.flush(ctx); err != nil && ctx.Err() == nil {
				onErr(err)
			}
		}
	}
}
