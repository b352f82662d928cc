package trust

import (
	"context"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// RevokedChannel is the notification channel on which the CA announces each revocation;
// the payload is the revoked serial number in decimal.
const RevokedChannel = "ibcm_revoked"

// RevokedSet is the set of revoked certificate serial numbers of the site, held in memory so
// a TLS handshake can check it without a database round trip. The zero value is empty and
// ready to use.
type RevokedSet struct {
	mu       sync.RWMutex
	serials  map[string]struct{}
	watchers map[*func(string)]struct{}
}

// OnRevoke calls fn with each decimal serial that enters the set from now on (by Add or
// Replace), once Contains reports it, so a server can end the connections that already
// present it. fn runs on the goroutine that changed the set and must not block. stop ends
// the calls.
func (s *RevokedSet) OnRevoke(fn func(serial string)) (stop func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watchers == nil {
		s.watchers = map[*func(string)]struct{}{}
	}
	key := &fn
	s.watchers[key] = struct{}{}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.watchers, key)
	}
}

// watchersLocked lists the OnRevoke functions; the caller holds mu.
func (s *RevokedSet) watchersLocked() []func(string) {
	fns := make([]func(string), 0, len(s.watchers))
	for fn := range s.watchers {
		fns = append(fns, *fn)
	}
	return fns
}

// Contains reports whether serial is revoked.
func (s *RevokedSet) Contains(serial *big.Int) bool {
	if serial == nil {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.serials[serial.String()]
	return ok
}

// Len returns how many serials are in the set.
func (s *RevokedSet) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.serials)
}

// Add puts one decimal serial in the set.
func (s *RevokedSet) Add(serial string) {
	s.mu.Lock()
	if s.serials == nil {
		s.serials = make(map[string]struct{})
	}
	_, had := s.serials[serial]
	s.serials[serial] = struct{}{}
	fns := s.watchersLocked()
	s.mu.Unlock()
	if !had {
		for _, fn := range fns {
			fn(serial)
		}
	}
}

// Replace swaps the whole set for the given decimal serials.
func (s *RevokedSet) Replace(serials []string) {
	m := make(map[string]struct{}, len(serials))
	for _, sn := range serials {
		m[sn] = struct{}{}
	}
	s.mu.Lock()
	old := s.serials
	s.serials = m
	fns := s.watchersLocked()
	s.mu.Unlock()
	if len(fns) == 0 {
		return
	}
	for sn := range m {
		if _, had := old[sn]; !had {
			for _, fn := range fns {
				fn(sn)
			}
		}
	}
}

// LoadRevoked reads every revoked serial from the site database.
func LoadRevoked(ctx context.Context, db *sitedb.DB) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT serial FROM revoked_certificates`)
	if err != nil {
		return nil, fmt.Errorf("reading revoked serials: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var sn string
		if err := rows.Scan(&sn); err != nil {
			return nil, fmt.Errorf("reading revoked serials: %w", err)
		}
		out = append(out, sn)
	}
	return out, rows.Err()
}

// WatchRevoked keeps set current from the site database. It subscribes to RevokedChannel,
// loads the full set, and returns once the set is loaded; a goroutine then adds each
// announced serial as it arrives and reloads everything after a reconnect and every
// resync interval, until ctx is done.
func WatchRevoked(ctx context.Context, db *sitedb.DB, set *RevokedSet, resync time.Duration, log zerolog.Logger) error {
	events, err := db.Listen(ctx, RevokedChannel)
	if err != nil {
		return fmt.Errorf("subscribing to revocations: %w", err)
	}
	// The first event is the readiness signal: after it no revocation can be missed, so
	// the load that follows is complete.
	select {
	case <-events:
	case <-ctx.Done():
		return ctx.Err()
	}
	reload := func() error {
		serials, err := LoadRevoked(ctx, db)
		if err != nil {
			return err
		}
		set.Replace(serials)
		return nil
	}
	if err := reload(); err != nil {
		return err
	}
	if resync <= 0 {
		resync = 5 * time.Minute
	}
	go func() {
		tick := time.NewTicker(resync)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if err := reload(); err != nil && ctx.Err() == nil {
					log.Warn().Err(err).Msg("reloading revoked serials")
				}
			case sn, ok := <-events:
				if !ok {
					return
				}
				if sn != "" {
					set.Add(sn)
					log.Info().Str("serial", wire.FormatDecimalSerial(sn)).Msg("certificate revoked")
					continue
				}
				if err := reload(); err != nil && ctx.Err() == nil {
					log.Warn().Err(err).Msg("reloading revoked serials after reconnect")
				}
			}
		}
	}()
	return nil
}
