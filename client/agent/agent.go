package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/client/spool"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Version is the agent version reported to the MP.
const Version = "0.3.0"

// Files of the state directory the agent adds to the identity's.
const (
	PolicyFile = "policy.json" // the last policy, with its ETag
	SocketFile = "agent.sock"  // the control socket of a running agent
	SpoolDir   = "spool"
)

// Options configure the agent.
type Options struct {
	Dir        string // the state directory made by `ibcm-client enroll`
	ResolvConf string // default /etc/resolv.conf
	// Log is where the agent logs (internal/logging builds it for `ibcm-client run`); the
	// zero Logger logs nothing. The agent adds component=agent.
	Log zerolog.Logger
	// WatchEvery is how often the resolv.conf file is checked for changes (200ms when zero).
	WatchEvery time.Duration
	// SpoolMax bounds the status spool (10000 when zero).
	SpoolMax int
	// ShareSocket is where local users' `ibcm-client share` and `consent` reach the agent
	// (remote/device); empty: no share socket (sessions then have nobody to ask).
	ShareSocket string
	// Shells is how session shells start: "systemd" (a transient unit each, outside the
	// agent unit's sandbox), "direct" (children of the agent), or "" to pick systemd when
	// the agent runs as a systemd service.
	Shells string
	// DirectAddrs are the addresses the agent reports at hello and check-in, and the only
	// ones its session port listens on (at most 16); empty: every address of the machine's
	// interfaces but loopback and link-local ones.
	DirectAddrs []net.IP
	// NoConsoleSessions refuses the remote sessions of the web console (they end at the MP,
	// not end to end with the helper): the device's own setting, not the site's policy.
	NoConsoleSessions bool
	// CacheSize bounds the deployments' blob cache (client/deploy.DefaultCacheSize when
	// zero); StallTimeout abandons a DP that sends nothing for so long (30s when zero).
	CacheSize    int64
	StallTimeout time.Duration
}

// Status is what a running agent reports (`ibcm-client status`).
type Status struct {
	DeviceID      string          `json:"device_id"`
	Subject       string          `json:"subject"`
	Serial        string          `json:"serial"`
	NotAfter      time.Time       `json:"not_after"`
	RenewAt       time.Time       `json:"renew_at"`
	Location      string          `json:"location"`
	MP            string          `json:"mp"`
	Reason        string          `json:"reason,omitempty"`
	DetectedAt    time.Time       `json:"detected_at"`
	LastCheckin   *time.Time      `json:"last_checkin,omitempty"`
	LastError     string          `json:"last_error,omitempty"`
	SpoolDepth    int             `json:"spool_depth"`
	SpoolDropped  int             `json:"spool_dropped"`
	PolicyName    string          `json:"policy_name,omitempty"`
	PolicyVersion int             `json:"policy_version,omitempty"`
	Notify        bool            `json:"notify_connected"`
	Evidence      []location.Step `json:"evidence,omitempty"`
}

// Agent is the running device agent.
type Agent struct {
	o     Options
	log   zerolog.Logger
	spool *spool.Spool

	mu      sync.Mutex
	id      *client.Identity
	policy  *cachedPolicy
	status  Status
	current location.Decision

	// writeMu makes the agent the one writer of the identity: its renewals and those asked
	// for over the control socket (`ibcm-client renew`, `enroll --force`) take turns.
	writeMu sync.Mutex
	detect  chan bool     // true: the current MP failed
	renew   chan struct{} // renew now
	rewrote chan struct{} // the identity was replaced: the renewal schedule starts again
	kick    chan struct{} // send the spool now
	restart chan struct{} // the MP or the certificate changed: new session

	contested string // serial (hex) of the certificate contestSuperseded renewed for

	remote *remoteState // remote control (remote/device)
	deploy *deployState // deployments (client/deploy)
}

type cachedPolicy struct {
	Policy wire.Policy `json:"policy"`
	ETag   string      `json:"etag"`
}

// New loads the identity, the spool and the cached policy.
func New(o Options) (*Agent, error) {
	if o.ResolvConf == "" {
		o.ResolvConf = "/etc/resolv.conf"
	}
	if len(o.DirectAddrs) > 16 {
		return nil, fmt.Errorf("at most 16 direct addresses (got %d)", len(o.DirectAddrs))
	}
	for _, ip := range o.DirectAddrs {
		if ip == nil || ip.IsUnspecified() || ip.IsMulticast() {
			return nil, fmt.Errorf("direct address %v: want one unicast address of this machine", ip)
		}
	}
	if o.WatchEvery <= 0 {
		o.WatchEvery = 200 * time.Millisecond
	}
	id, err := client.Load(o.Dir)
	if err != nil {
		return nil, err
	}
	if err := client.CheckDir(o.Dir); err != nil { // Load lets root read another user's; the agent runs only in its own
		return nil, err
	}
	sp, err := spool.Open(filepath.Join(o.Dir, SpoolDir), o.SpoolMax)
	if err != nil {
		return nil, err
	}
	a := &Agent{o: o, log: o.Log.With().Str("component", "agent").Logger(), spool: sp, id: id,
		detect: make(chan bool, 1), renew: make(chan struct{}, 1), rewrote: make(chan struct{}, 1), kick: make(chan struct{}, 1), restart: make(chan struct{}, 1)}
	if b, err := os.ReadFile(filepath.Join(o.Dir, PolicyFile)); err == nil {
		var p cachedPolicy
		if json.Unmarshal(b, &p) == nil {
			a.policy = &p
		}
	}
	a.setIdentityStatus(id)
	if a.remote, err = a.newRemote(); err != nil {
		return nil, err
	}
	if a.deploy, err = a.newDeploy(); err != nil {
		return nil, err
	}
	if a.policy != nil {
		a.deploy.m.SetPolicy(a.policy.Policy.Deployments)
	}
	return a, nil
}

func (a *Agent) setIdentityStatus(id *client.Identity) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.id = id
	a.status.DeviceID, a.status.Subject, a.status.Serial = id.DeviceID, id.Name, id.SerialHex()
	a.status.NotAfter, a.status.RenewAt = id.NotAfter, id.RenewAt()
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Redetect asks for a location detection now; failed says the current MP failed (a switch
// then needs no confirmation).
func (a *Agent) Redetect(failed bool) {
	select {
	case a.detect <- failed:
	default:
		if failed { // make sure "failed" is not lost behind a plain request
			select {
			case <-a.detect:
			default:
			}
			select {
			case a.detect <- true:
			default:
			}
		}
	}
}

// Report spools a status message for the MP.
func (a *Agent) Report(severity, component, text string) error {
	before := a.spool.Dropped()
	if _, err := a.spool.Add(wire.StatusMessage{Time: time.Now().UTC(), Severity: severity, Component: component, Text: text}); err != nil {
		a.log.Warn().Err(err).Msg("spooling a status message")
		return err
	}
	if after := a.spool.Dropped(); after > before {
		a.log.Warn().Int("dropped", after-before).Int("dropped_total", after).Msg("status spool full: oldest messages dropped")
	}
	signal(a.kick)
	return nil
}

// Status returns the agent's current state.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.SpoolDepth, s.SpoolDropped = a.spool.Len(), a.spool.Dropped()
	if a.policy != nil {
		s.PolicyName, s.PolicyVersion = a.policy.Policy.Name, a.policy.Policy.Version
	}
	return s
}

func (a *Agent) setError(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		a.status.LastError = ""
	} else {
		a.status.LastError = err.Error()
	}
}

// Run runs the agent until ctx is done. It holds the state directory's writer lock the
// whole time (see client.LockDir).
func (a *Agent) Run(ctx context.Context) error {
	unlock, err := client.LockDir(a.o.Dir)
	if err != nil {
		return fmt.Errorf("%w: is another `ibcm-client run`, renew or enroll working on %s?", err, a.o.Dir)
	}
	defer unlock()
	// Another writer may have changed the identity between New and the lock.
	id, err := client.Load(a.o.Dir)
	if err != nil {
		return err
	}
	a.setIdentityStatus(id)
	stopSocket, err := a.serveControl(ctx)
	if err != nil {
		return err
	}
	defer stopSocket()
	a.Report("info", "agent", "agent "+Version+" started")

	var wg sync.WaitGroup
	run := func(fn func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); fn(ctx) }()
	}
	run(a.detectLoop)
	run(a.sessionLoop)
	run(a.renewLoop)
	run(a.runRemote)
	run(a.deploy.m.Run)
	run(func(ctx context.Context) {
		location.WatchFile(ctx, a.o.ResolvConf, a.o.WatchEvery, func() { a.Redetect(false) })
	})
	run(func(ctx context.Context) {
		// state.json is renamed into place last with every new identity (client.commit).
		location.WatchFile(ctx, filepath.Join(a.o.Dir, client.StateFile), a.o.WatchEvery, a.reloadIdentity)
	})
	run(func(ctx context.Context) {
		if err := location.WatchNetwork(ctx, func() { a.Redetect(false) }); err != nil {
			a.log.Info().Err(err).Msg("no netlink: address and route changes are seen by the timer only")
		}
	})
	<-ctx.Done()
	wg.Wait()
	return nil
}

// locationConfig builds the detection settings: policy where it says, else bootstrap.
func (a *Agent) locationConfig() location.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	cfg := location.Config{ResolvConf: a.o.ResolvConf, Roots: a.id.Roots, ClientCert: &a.id.Certificate}
	if b := a.id.Bootstrap; b != nil {
		cfg.SiteCode, cfg.IntranetSuffixes, cfg.SRVNames, cfg.InternetMPs = b.SiteCode, b.IntranetDNSSuffixes, b.SRVNames, b.InternetMPs
	}
	if a.policy != nil {
		l := a.policy.Policy.Location
		cfg.IntranetSuffixes, cfg.SRVNames, cfg.InternetMPs, cfg.AlwaysInternet = l.IntranetDNSSuffixes, l.SRVNames, l.InternetMPNames, l.AlwaysInternet
	}
	return cfg
}

func (a *Agent) redetectInterval() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.policy != nil {
		if d, err := time.ParseDuration(a.policy.Policy.Location.RedetectInterval); err == nil && d > 0 {
			return d
		}
	}
	return time.Hour
}

// detectLoop detects the location at start, on every request (resolv.conf or network
// change, MP failure, re-detect-location event) and on a jittered timer. A new location
// takes over once seen twice in a row (hysteresis), or at once when the current MP failed;
// a first different result is confirmed right away rather than at the next trigger.
func (a *Agent) detectLoop(ctx context.Context) {
	h := location.NewHysteresis(2)
	timer := time.NewTimer(0)
	defer timer.Stop()
	failed := false
	noMP := backoff{base: 2 * time.Second, max: time.Minute} // while no MP answers
	for {
		select {
		case <-ctx.Done():
			return
		case failed = <-a.detect:
		case <-timer.C:
		}
		d := location.Detect(ctx, a.locationConfig())
		if ctx.Err() != nil {
			return
		}
		switched, cur := h.Observe(d, failed)
		a.mu.Lock()
		prev := a.current
		if switched {
			a.current = cur
			a.status.Location, a.status.MP, a.status.Reason, a.status.DetectedAt = cur.Location, cur.MP, cur.Reason, time.Now().UTC()
		}
		a.status.Evidence = d.Evidence
		a.mu.Unlock()
		next := jitter(a.redetectInterval(), 0.1)
		switch {
		case switched && (prev.Location != cur.Location || prev.MP != cur.MP):
			a.log.Info().Str("location", cur.Location).Str("mp", cur.MP).Str("reason", cur.Reason).Int64("duration_ms", d.Took.Milliseconds()).Msg("location")
			if prev.Location != "" {
				a.Report("info", "location", fmt.Sprintf("location changed from %s (%s) to %s (%s)", prev.Location, prev.MP, cur.Location, cur.MP))
			}
			signal(a.restart)
		case !switched && (d.Location != cur.Location || d.MP != cur.MP):
			next = 100 * time.Millisecond // confirm the change now
		}
		if cur.MP == "" {
			next = min(next, noMP.next()) // no MP reachable: look again soon, backing off
		} else {
			noMP.reset()
		}
		failed = false
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// renewLoop renews the certificate at two thirds of its life (with jitter), or at once on a
// renew-cert event (also during the backoff); failures retry with backoff while the current
// certificate stays in use.
// Every new identity (a renewal here or through the control socket, an enrollment)
// restarts the schedule.
func (a *Agent) renewLoop(ctx context.Context) {
	b := backoff{base: 30 * time.Second, max: time.Hour}
	for {
		a.mu.Lock()
		id := a.id
		a.mu.Unlock()
		wait := time.Until(id.RenewAt())
		if wait > 0 {
			wait = jitter(wait, 0.05)
		}
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-a.rewrote:
			t.Stop()
			b.reset()
			continue
		case <-a.renew:
			t.Stop()
		case <-t.C:
		}
		_, err := a.Renew(ctx, false)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			b.reset()
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-a.rewrote:
			b.reset()
			continue
		case <-a.renew: // a renew-cert event does not wait out the backoff
		case <-time.After(b.next()):
		}
		signal(a.renew)
	}
}

// Renew renews the certificate now, as the one writer of the state directory (see
// client.Renew), and switches the agent to the new identity.
func (a *Agent) Renew(ctx context.Context, keepKey bool) (*client.Identity, error) {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	a.mu.Lock()
	id := a.id
	a.mu.Unlock()
	newID, err := client.Renew(ctx, client.RenewOptions{Dir: a.o.Dir, KeepKey: keepKey, DialContext: location.DialContext(a.o.ResolvConf)})
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		left := time.Until(id.NotAfter)
		ev := a.log.Warn()
		if left < id.NotAfter.Sub(id.NotBefore)/10 {
			ev = a.log.Error()
		}
		ev.Err(err).Str("serial", id.SerialHex()).Str("expires_in", left.Round(time.Second).String()).Msg("certificate renewal failed; the current certificate stays in use")
		a.setError(fmt.Errorf("renewal: %w", err))
		var se *client.ServerError
		switch {
		case errors.As(err, &se) && se.Code == "renewal_superseded":
			a.log.Error().Str("serial", id.SerialHex()).Msg("renewal refused: this certificate was already renewed with another key; a copy of this device's key and certificate exists (probable clone)")
			a.Report("error", "renewal", "renewal refused, probable clone: "+se.Message)
		case errors.As(err, &se) && (se.Code == "certificate_revoked" || se.Code == "certificate_expired"):
			a.Report("error", "renewal", "renewal refused: "+se.Message)
		}
		return nil, err
	}
	a.setIdentityStatus(newID)
	a.setError(nil)
	a.log.Info().Str("serial", newID.SerialHex()).Str("renewed_from", id.SerialHex()).Time("not_after", newID.NotAfter).Msg("certificate renewed")
	a.Report("info", "renewal", "certificate renewed: serial "+newID.SerialHex())
	signal(a.rewrote)
	signal(a.restart)
	return newID, nil
}

// contestSuperseded answers an MP that refuses the current certificate as superseded (403
// certificate_superseded): a renewal of it was presented at an MP, and this agent never
// goes back to an older certificate, so a copy of its key and certificate renewed first.
// The agent renews at once (once per certificate): the CA refuses with renewal_superseded
// and records the conflict, so the line is contested and the MPs serve this device again,
// flagged as a probable clone, instead of refusing it until its renewal is due (weeks
// for a copy that renewed early).
func (a *Agent) contestSuperseded() {
	a.mu.Lock()
	serial := a.id.SerialHex()
	first := a.contested != serial
	a.contested = serial
	a.mu.Unlock()
	if !first {
		return
	}
	a.log.Error().Str("serial", serial).Msg("the MP refuses this certificate as superseded by a renewal this device never made: a copy of its key and certificate exists (probable clone); renewing now to contest it")
	_ = a.Report("error", "identity", "certificate "+serial+" refused as superseded by a renewal this device never made: probable clone")
	signal(a.renew)
}

// reloadIdentity switches the agent to an identity that appeared in its state directory
// without going through it (a restored backup, a provisioning tool, an older ibcm-client):
// new certificate and key for the MP connections and the channel, renewal schedule from
// the new certificate. The agent's own writes change the file too; they already switched.
func (a *Agent) reloadIdentity() {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	// As in New: Load lets root read another user's directory; the agent takes an identity
	// only from one it owns (checked again after reading, for a directory swapped meanwhile).
	err := client.CheckDir(a.o.Dir)
	var id *client.Identity
	if err == nil {
		id, err = client.Load(a.o.Dir)
	}
	if err == nil {
		err = client.CheckDir(a.o.Dir)
	}
	if err != nil {
		a.log.Warn().Err(err).Msg("the state directory changed but holds no usable identity; the current one stays in use")
		return
	}
	a.mu.Lock()
	cur := a.id
	a.mu.Unlock()
	if cur.DeviceID == id.DeviceID && cur.Serial.Cmp(id.Serial) == 0 {
		return
	}
	a.setIdentityStatus(id)
	a.setError(nil)
	a.log.Info().Str("device_id", id.DeviceID).Str("serial", id.SerialHex()).Time("not_after", id.NotAfter).Msg("new identity in the state directory")
	a.Report("info", "agent", "switched to the identity found in the state directory: device "+id.DeviceID+", serial "+id.SerialHex())
	signal(a.rewrote)
	signal(a.restart)
}

// Enroll replaces the identity with a new enrollment (`ibcm-client enroll --force` while
// the agent runs), as the one writer of the state directory, and switches to it.
func (a *Agent) Enroll(ctx context.Context, opts client.EnrollOptions) (*client.Identity, error) {
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	opts.Dir = a.o.Dir
	id, err := client.Enroll(ctx, opts)
	if err != nil {
		return nil, err
	}
	a.setIdentityStatus(id)
	a.setError(nil)
	a.log.Info().Str("device_id", id.DeviceID).Str("serial", id.SerialHex()).Time("not_after", id.NotAfter).Msg("enrolled again")
	a.Report("info", "agent", "enrolled again: device "+id.DeviceID+", serial "+id.SerialHex())
	signal(a.rewrote)
	signal(a.restart)
	return id, nil
}
