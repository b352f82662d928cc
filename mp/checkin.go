package mp

import (
	"context"
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
}

type pendingCheckin struct {
	wire.Checkin
	at time.Time
}

func (b *checkinBuffer) add(device string, c wire.Checkin, at time.Time) {
	b.mu.Lock()
	b.pending[device] = pendingCheckin{Checkin: c, at: at}
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
			if _, err := tx.Exec(`UPDATE devices SET last_seen = ?, last_location = ?, addresses = ?, agent_version = CASE WHEN ? = '' THEN agent_version ELSE ? END, compliance = ?
				WHERE id = ?`, c.at.Unix(), c.Location, strings.Join(c.Addresses, ","), c.AgentVersion, c.AgentVersion, c.Compliance, id); err != nil {
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
