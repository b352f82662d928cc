package mp

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/ibcm-project/ibcm/internal/access"
	"math/big"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/guestcode"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/recording"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrate creates or updates the MP's tables in the site database.
func Migrate(ctx context.Context, db *sitedb.DB) error {
	ms, err := sitedb.LoadMigrations(migrationFS, "migrations")
	if err != nil {
		return err
	}
	return db.Migrate(ctx, "mp", ms)
}

// Connection modes, as in Configuration Manager.
const (
	ModeIntranet = "intranet"
	ModeInternet = "internet"
	ModeBoth     = "both"
)

// defaultMaxChannelsPerDevice is Options.MaxChannelsPerDevice when zero: an agent holds one
// channel, and a reconnection may overlap a dying one for a moment.
const defaultMaxChannelsPerDevice = 3

// Options configure a management point.
type Options struct {
	ID          string // unique per MP of the site
	Mode        string // intranet, internet or both
	IntranetURL string // how intranet devices reach this MP (empty in internet mode)
	InternetURL string // how internet devices reach this MP (empty in intranet mode)
	// DefaultPolicy is stored as the "default" policy when the site has none yet.
	DefaultPolicy wire.Policy
	MaxInFlight   int // requests served at once before 503 + Retry-After; 1024 when zero
	MaxNotify     int // notification channels at once before 503; 200000 when zero
	// MaxChannelsPerDevice bounds the notification channels of one device across the
	// site; a new one beyond it closes the oldest. 3 when zero.
	MaxChannelsPerDevice int
	PingInterval         time.Duration
	// SiteKey and SiteChain (leaf first) are the MP's own site-server key and certificate:
	// it signs session tickets with them and presents them to the other MPs of the site when
	// it forwards a relay leg. Without them, sessions are refused (503).
	SiteKey   crypto.Signer
	SiteChain []*x509.Certificate
	// AuditKey is the site's audit private key (remote/recording): its public half goes in
	// every policy served to devices, and it opens recordings for ReadAudit users.
	AuditKey []byte
	// OriginDPs are the DP ids allowed to register as origin (uploads, default pull
	// source); a DP claiming origin that is not listed is refused.
	OriginDPs []string
	// SessionRetention is how long ended sessions are kept in the audit; 30 days when zero.
	SessionRetention time.Duration
	// MaxDPFeeds bounds the DP feeds (GET /v1/dp/feed) open at once; 1024 when zero.
	MaxDPFeeds int
	// DPPingInterval is how often a DP feed carries a ping; 15 s when zero.
	DPPingInterval time.Duration
	// SecurityCodes lets helpers make security codes for unenrolled devices and the
	// guests' certificates reach their sessions' relay (guest.go); off by default.
	SecurityCodes bool
	// ConsoleLinks makes and revokes the web console's logins (*console.Console); nil when
	// the site has no console (its routes answer 404 console_disabled).
	ConsoleLinks ConsoleLinks
	Now          func() time.Time
	Log          zerolog.Logger
}

// MP is a management point.
type MP struct {
	db       *sitedb.DB
	verifier *trust.Verifier
	o        Options
	now      func() time.Time
	log      zerolog.Logger

	inflight chan struct{}
	hub      *hub
	checkins *checkinBuffer
	policies *policyCache
	seen     sync.Map // device id → seenCert registered by this process; expired ones go each minute
	// superseded: decimal serial → refusedCert of each certificate refused because its
	// device already presented a renewal of it; expired ones go too.
	superseded sync.Map
	// supersedes counts the renewals heard of (supersedeOlder), so that a registration that
	// raced one does not cache a certificate the renewal superseded (registerCert).
	supersedes atomic.Uint64
	// supersedesDone counts the renewal announcements handled to the end (tests wait on it).
	supersedesDone atomic.Uint64
	// eventsLive: the site's events reach this MP, so MP.seen is trusted; false while the
	// subscription has lost its connection. syncedAt is when it was last known to hear of
	// every event (unix seconds): a catch-up looks for the renewals presented since.
	eventsLive atomic.Bool
	syncedAt   atomic.Int64
	bg         sync.WaitGroup

	mu      sync.RWMutex
	blocked map[string]bool // device ids, kept current by device events

	access *access.Store // who may use which admin route (access.go)

	relays   *relays       // relay legs of sessions (relay.go)
	uploads  chan struct{} // recordings being received at once (each up to recording.MaxSealed in memory)
	auditPub string        // public half of Options.AuditKey

	feeds *dpFeeds // the DP feeds open on this MP (dps.go)

	consoleOnce sync.Once
	consoleMux  *http.ServeMux // the routes without a gate, for ConsoleAPI (console.go)
}

// New opens the MP over the site database: it applies the MP's migrations, stores the
// default policy if there is none, and registers this MP for GET /v1/locate.
func New(ctx context.Context, db *sitedb.DB, verifier *trust.Verifier, o Options) (*MP, error) {
	switch o.Mode {
	case ModeIntranet, ModeInternet, ModeBoth:
	default:
		return nil, fmt.Errorf("mp: mode %q: must be intranet, internet or both", o.Mode)
	}
	if o.ID == "" {
		return nil, errors.New("mp: an id is required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 1024
	}
	if o.MaxNotify <= 0 {
		o.MaxNotify = 200000
	}
	if o.MaxChannelsPerDevice <= 0 {
		o.MaxChannelsPerDevice = defaultMaxChannelsPerDevice
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 30 * time.Second
	}
	if o.SessionRetention <= 0 {
		o.SessionRetention = defaultSessionRetention
	}
	if o.MaxDPFeeds <= 0 {
		o.MaxDPFeeds = defaultMaxDPFeeds
	}
	if o.DPPingInterval <= 0 {
		o.DPPingInterval = dpPingEvery
	}
	if err := Migrate(ctx, db); err != nil {
		return nil, err
	}
	if err := guestcode.Migrate(ctx, db); err != nil {
		return nil, err
	}
	m := &MP{db: db, verifier: verifier, o: o, now: o.Now, log: o.Log, inflight: make(chan struct{}, o.MaxInFlight), blocked: map[string]bool{}}
	var err error
	if m.access, err = access.Open(ctx, db); err != nil {
		return nil, err
	}
	m.hub = newHub(m)
	m.feeds = newDPFeeds(o.MaxDPFeeds)
	m.relays = newRelays(m)
	m.uploads = make(chan struct{}, maxUploads)
	if len(o.AuditKey) > 0 {
		if m.auditPub, err = recording.PublicOf(o.AuditKey); err != nil {
			return nil, fmt.Errorf("mp: the audit key: %w", err)
		}
	}
	m.checkins = &checkinBuffer{db: db, pending: map[string]pendingCheckin{}}
	m.policies = &policyCache{byDevice: map[string]string{}, byName: map[string]*wire.Policy{}, deploys: map[string][]wire.Deployment{}}
	if err := m.ensureDefaultPolicy(ctx); err != nil {
		return nil, err
	}
	if err := m.register(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Start loads the blocked devices and subscribes to device events; it returns once the
// subscription is live, and keeps it until ctx is done.
func (m *MP) Start(ctx context.Context) error {
	if err := m.hub.listen(ctx); err != nil {
		return err
	}
	if rs := m.verifier.Revoked; rs != nil {
		stop := rs.OnRevoke(m.hub.closeSerial)
		context.AfterFunc(ctx, stop)
		stopSessions := rs.OnRevoke(func(serial string) { go m.endSessionsOfSerial(serial) })
		context.AfterFunc(ctx, stopSessions)
		stopFeeds := rs.OnRevoke(func(serial string) { m.feeds.broadcast("", wire.DPEvent{Type: wire.DPEventRevoked, Serial: serial}) })
		context.AfterFunc(ctx, stopFeeds)
	}
	// Sessions this MP brokered or relayed before it stopped lost their relay with it.
	if n, err := m.interruptSessions(ctx, `mp_id = ? OR device_mp = ?`, m.o.ID, m.o.ID); err != nil {
		return fmt.Errorf("marking the sessions of the previous run interrupted: %w", err)
	} else if n > 0 {
		m.log.Warn().Int("sessions", n).Msg("sessions of the previous run marked interrupted")
	}
	m.bg.Add(3)
	go func() { defer m.bg.Done(); m.purgeLoop(ctx) }()
	go func() { defer m.bg.Done(); m.heartbeat(ctx) }()
	go func() {
		defer m.bg.Done()
		m.checkins.run(ctx, 500*time.Millisecond, func(err error) { m.log.Warn().Err(err).Msg("writing check-ins") })
	}()
	return nil
}

// Close ends the MP after its listeners have shut down and the context given to Start is
// done: it cuts the notification channels (http.Server.Shutdown does not see hijacked
// connections) and waits for the last check-ins to be written.
func (m *MP) Close() {
	m.hub.closeAll(5 * time.Second)
	m.bg.Wait()
}

// register records this MP and clears notification channels a previous run left behind.
func (m *MP) register(ctx context.Context) error {
	if _, err := m.db.Exec(ctx, `DELETE FROM notify_connections WHERE mp_id = ?`, m.o.ID); err != nil {
		return fmt.Errorf("clearing stale connections: %w", err)
	}
	_, err := m.db.Exec(ctx, `INSERT INTO management_points (id, mode, intranet_url, internet_url, last_seen) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET mode = excluded.mode, intranet_url = excluded.intranet_url,
			internet_url = excluded.internet_url, last_seen = excluded.last_seen`,
		m.o.ID, m.o.Mode, m.o.IntranetURL, m.o.InternetURL, m.now().Unix())
	if err != nil {
		return fmt.Errorf("registering MP %s: %w", m.o.ID, err)
	}
	return nil
}

// An MP records that it is alive every heartbeatEvery. The channels of an MP not seen for
// mpDeadAfter are not live (it was killed, or lost the database): device show and clone
// detection ignore them, and they are deleted once it has been gone for forgetDeadMPAfter.
// An MP that starts again deletes its own at once (register).
const (
	heartbeatEvery    = 5 * time.Second
	mpDeadAfter       = 3 * heartbeatEvery
	forgetDeadMPAfter = time.Hour
)

// liveChannel is the condition on notify_connections that keeps the rows of live MPs; its
// argument is m.aliveSince().
const liveChannel = `mp_id IN (SELECT id FROM management_points WHERE last_seen >= ?)`

// aliveSince is the last_seen an MP must have reached to count as alive.
func (m *MP) aliveSince() int64 { return m.now().Add(-mpDeadAfter).Unix() }

func (m *MP) heartbeat(ctx context.Context) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := m.now()
		_, err := m.db.Exec(ctx, `UPDATE management_points SET last_seen = ? WHERE id = ?`, now.Unix(), m.o.ID)
		if err == nil {
			_, err = m.db.Exec(ctx, `DELETE FROM notify_connections WHERE mp_id IN (SELECT id FROM management_points WHERE last_seen < ?)`,
				now.Add(-forgetDeadMPAfter).Unix())
		}
		if err == nil {
			var n int
			dead := `SELECT id FROM management_points WHERE last_seen < ?`
			n, err = m.interruptSessions(ctx, `mp_id IN (`+dead+`) OR device_mp IN (`+dead+`)`, m.aliveSince(), m.aliveSince())
			if n > 0 {
				m.log.Warn().Int("sessions", n).Msg("sessions of a dead MP marked interrupted")
			}
		}
		if err == nil {
			err = m.expireSessions(ctx)
		}
		if err != nil && ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("MP heartbeat")
		}
		m.forgetExpired()
	}
}

// isRevoked reports whether the certificate serial is in the site's revoked set.
func (m *MP) isRevoked(serial *big.Int) bool {
	rs := m.verifier.Revoked
	return rs != nil && rs.Contains(serial)
}

func (m *MP) isBlocked(deviceID string) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.blocked[deviceID]
}

func (m *MP) setBlocked(deviceID string, blocked bool) {
	m.mu.Lock()
	was := m.blocked[deviceID]
	if blocked {
		m.blocked[deviceID] = true
	} else {
		delete(m.blocked, deviceID)
	}
	m.mu.Unlock()
	if was != blocked {
		m.blockChanged(deviceID, blocked) // the DPs refuse the device too
	}
}

// defaultSessionRetention is Options.SessionRetention when zero; purgeEvery is how often
// ended sessions older than it are deleted.
const (
	defaultSessionRetention = 30 * 24 * time.Hour
	purgeEvery              = time.Hour
)

// purgeLoop deletes the sessions that ended more than SessionRetention ago, at once and
// every purgeEvery, until ctx is done.
func (m *MP) purgeLoop(ctx context.Context) {
	t := time.NewTicker(purgeEvery)
	defer t.Stop()
	for {
		n, err := m.purgeSessions(ctx, m.now().Add(-m.o.SessionRetention))
		if err != nil && ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("purging old sessions")
		} else if n > 0 {
			m.log.Info().Int64("sessions", n).Msg("old sessions purged")
		}
		// Security codes and their attempts are kept as long as the sessions' audit.
		if n, err := guestcode.Purge(ctx, m.db, m.now().Add(-m.o.SessionRetention)); err != nil && ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("purging old security codes")
		} else if n > 0 {
			m.log.Info().Int64("rows", n).Msg("old security codes and attempts purged")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
