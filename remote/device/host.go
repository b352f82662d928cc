package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/atomicfile"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// Files of the state directory the host keeps.
const (
	SeenFile       = "tickets-used.json" // ticket ids used, until they expire
	SessionLogFile = "sessions.log"      // the local session log (JSON lines, 0600)
	RecordingsDir  = "recordings"        // sealed recordings waiting for their upload
	CRLFile        = "crl.der"           // the last verified CRL (e2e.CRL)
)

// Refusal codes of the host besides ticket.Code's.
const (
	CodePolicyDisabled   = "policy_disabled"    // remote control is off, or access level none
	CodePolicyMode       = "policy_mode"        // the mode asked for is not allowed by the device's policy
	CodeNoUnattended     = "unattended_refused" // unattended without allow_unattended
	CodeE2E              = "e2e_refused"        // the end-to-end TLS failed (helper certificate, key, CRL)
	CodeWrongUser        = "consent_wrong_user" // a local user answered another user's prompt
	CodeNoPrompt         = "consent_no_prompt"  // an answer to no pending prompt
	CodeTransport        = "transport_failed"   // no transport came up
	CodeSessionDuplicate = "session_duplicate"  // a second helper ticket for a session already here
	CodeSharerBusy       = "sharer_busy"        // the sharer's shared terminal is in another session
	CodeNoAuditKey       = "recording_no_key"   // policy records sessions but carries no audit key
	CodeConsoleForbidden = "console_forbidden"  // a web-console session, which this device's local setting forbids
)

// Policy is what the host enforces: the device's remote-control settings and the site's
// audit key.
type Policy struct {
	RC       wire.RemoteControlSettings
	AuditKey string
}

// Config is what the agent gives the host.
type Config struct {
	DeviceID string
	SiteCode string
	// ForbidConsole refuses the sessions of the web console (tickets with Console: they end
	// at the MP, not end to end with the helper): a setting of the device itself
	// (`ibcm-client run --console-sessions=false`), which the site's policy cannot change.
	ForbidConsole bool
	// Identity, when set, gives the device id and site code at each ticket instead (they
	// change with a new enrollment).
	Identity func() (deviceID, siteCode string)
	// Cert is the device certificate (with its chain) for the end-to-end TLS; Roots the
	// site's roots. Both are read at each session, so a renewal takes effect.
	Cert  func() tls.Certificate
	Roots func() *x509.CertPool
	// Policy is the device's policy now.
	Policy func() Policy
	// Revoked is the agent's verified CRL (nil checks nothing); RefreshCRL, when set, is
	// called before each session.
	Revoked    func(*x509.Certificate) bool
	RefreshCRL func(ctx context.Context)
	// Relay dials the device's relay leg of a session and returns the spliced stream.
	Relay func(ctx context.Context, session, ticketID string) (io.ReadWriteCloser, error)
	// Report tells the MP about a session (POST /v1/sessions/{id}/report).
	Report func(ctx context.Context, session string, r wire.SessionReport) error
	// Upload sends a sealed recording (POST /v1/sessions/{id}/recording).
	Upload func(ctx context.Context, session string, sealed []byte) error
	// Audit spools a status message (the device's audit trail at the MP).
	Audit func(severity, text string)
	// Intranet reports whether the device is on the intranet now; DirectAddrs are its
	// intranet addresses (the session port listens on those only).
	Intranet    func() bool
	DirectAddrs func() []net.IP
	// Notice tells the logged-in terminals that a session waits (default: wall(1)).
	Notice func(text string)
	// Shells starts shells: nil = on a PTY as a child of the agent (own session, own
	// cgroup when possible).
	Shells ShellStarter
	// ScreenDir is where screen sessions make their private directory for the VNC
	// server's socket (os.TempDir when empty).
	ScreenDir string
	// ScreenSystemd, when set, starts the x11vnc of attended screen sessions as transient
	// services (outside the agent unit's sandbox); ScreenDir must then be visible outside it.
	ScreenSystemd *SystemdShells
	// StateDir keeps the used tickets, the session log and the recordings waiting.
	StateDir string
	Log      zerolog.Logger
	Now      func() time.Time
}

// Host is the device's side of remote control.
type Host struct {
	c    Config
	log  zerolog.Logger
	hub  *hub
	seen seenStore

	wg       sync.WaitGroup // the sessions' goroutines
	mu       sync.Mutex
	sessions map[string]*session // by session id
	ctx      context.Context
}

// New makes a host; Run runs its timers and Serve its share socket.
func New(c Config) (*Host, error) {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Notice == nil {
		c.Notice = wall
	}
	if c.Shells == nil {
		c.Shells = DirectShells{}
	}
	if c.Audit == nil {
		c.Audit = func(string, string) {}
	}
	if c.StateDir == "" {
		return nil, errors.New("remote: a state directory is required")
	}
	h := &Host{c: c, log: c.Log.With().Str("component", "remote").Logger(), sessions: map[string]*session{}, ctx: context.Background()}
	h.hub = newHub(h)
	h.seen = seenStore{path: filepath.Join(c.StateDir, SeenFile)}
	h.seen.load(c.Now())
	return h, nil
}

// Run retries the uploads of spooled recordings until ctx is done; sessions started
// while it runs end with ctx.
func (h *Host) Run(ctx context.Context) {
	h.mu.Lock()
	h.ctx = ctx
	h.mu.Unlock()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		h.RetryUploads(ctx)
		select {
		case <-ctx.Done():
			h.endAll("agent stopping")
			h.wg.Wait()
			return
		case <-t.C:
		}
	}
}

// identity is the device id and site code now.
func (h *Host) identity() (deviceID, siteCode string) {
	if h.c.Identity != nil {
		return h.c.Identity()
	}
	return h.c.DeviceID, h.c.SiteCode
}

func (h *Host) policy() Policy {
	if h.c.Policy == nil {
		return Policy{}
	}
	return h.c.Policy()
}

// Request handles a session-requested event: it checks the ticket and, when it holds,
// runs the session in the background. It returns the refusal, if any (already logged,
// reported and audited).
func (h *Host) Request(ctx context.Context, signed string) error {
	now := h.c.Now()
	s, err := ticket.Parse(signed)
	if err != nil {
		h.refuse(ctx, nil, ticket.Code(err), err)
		return err
	}
	if h.c.RefreshCRL != nil {
		h.c.RefreshCRL(ctx)
	}
	dev, site := h.identity()
	t, err := s.Verify(ticket.VerifyOptions{Roots: h.c.Roots(), SiteCode: site, Device: dev, Now: now, Revoked: h.c.Revoked})
	if err != nil {
		h.refuse(ctx, &s.Ticket, ticket.Code(err), fmt.Errorf("%w (signer %s)", err, signerName(s)))
		return err
	}
	if err := h.seen.use(t, now); err != nil {
		h.refuse(ctx, t, ticket.Code(err), fmt.Errorf("%w (signer %s)", err, signerName(s)))
		return err
	}
	if t.Console && h.c.ForbidConsole {
		err := errors.New("this device's own setting forbids web-console sessions (ibcm-client run --console-sessions=false)")
		h.refuse(ctx, t, CodeConsoleForbidden, err)
		return err
	}
	p := h.policy()
	if p.RC.Enabled && p.RC.RecordTerminal && p.AuditKey == "" {
		err := errors.New("the policy records sessions but carries no audit key to seal them to")
		h.refuse(ctx, t, CodeNoAuditKey, err)
		return err
	}
	if t.Role == ticket.RoleViewer {
		if code, err := checkPolicy(p.RC, &ticket.Ticket{Mode: ticket.ModeView}); err != nil {
			h.refuse(ctx, t, code, err)
			return err
		}
		return h.joinViewer(ctx, t)
	}
	if code, err := checkPolicy(p.RC, t); err != nil {
		h.refuse(ctx, t, code, err)
		return err
	}
	h.mu.Lock()
	if _, dup := h.sessions[t.Session]; dup {
		h.mu.Unlock()
		err := errors.New("a second helper ticket for a session already served")
		h.refuse(ctx, t, CodeSessionDuplicate, err)
		return err
	}
	sctx, cancel := context.WithCancel(h.ctx)
	ss := newSession(h, t, p, sctx, cancel)
	h.sessions[t.Session] = ss
	h.mu.Unlock()
	h.log.Info().Str("session_id", t.Session).Str("ticket_id", t.ID).Str("helper", t.Helper).Str("mode", t.Mode).Msg("session requested")
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer func() {
			h.mu.Lock()
			if h.sessions[t.Session] == ss {
				delete(h.sessions, t.Session)
			}
			h.mu.Unlock()
			cancel()
		}()
		ss.run()
	}()
	return nil
}

// End ends every leg of a session (a session-ended event), direct ones included, with the
// outcome the site recorded (completed, failed or interrupted; completed when it says none
// or another).
func (h *Host) End(session, outcome, reason string) bool {
	switch outcome {
	case wire.OutcomeFailed, wire.OutcomeInterrupted:
	default:
		outcome = wire.OutcomeCompleted
	}
	h.mu.Lock()
	ss := h.sessions[session]
	h.mu.Unlock()
	if ss == nil {
		return false
	}
	ss.end(outcome, "ended at the site: "+reason)
	return true
}

func (h *Host) endAll(reason string) {
	h.mu.Lock()
	var all []*session
	for _, s := range h.sessions {
		all = append(all, s)
	}
	h.mu.Unlock()
	for _, s := range all {
		s.end(wire.OutcomeInterrupted, reason)
	}
}

// Sessions returns the ids of the sessions served now.
func (h *Host) Sessions() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ids []string
	for id := range h.sessions {
		ids = append(ids, id)
	}
	return ids
}

func signerName(s *ticket.Signed) string {
	if len(s.Chain) == 0 {
		return "nobody"
	}
	id := wire.Identify(s.Chain[0])
	return fmt.Sprintf("%s %q site %q serial %s", id.Kind, id.ID, id.Site, wire.FormatSerial(s.Chain[0].SerialNumber))
}

// refuse logs a refusal once, reports it to the MP when the session is known, audits it
// in the spool and writes it to the local session log.
func (h *Host) refuse(ctx context.Context, t *ticket.Ticket, code string, err error) {
	ev := h.log.Warn().Str("code", code).Err(err)
	session, tid, helper := "", "", ""
	if t != nil {
		session, tid, helper = t.Session, t.ID, t.Helper
		ev = ev.Str("session_id", session).Str("ticket_id", tid).Str("helper", helper)
	}
	ev.Msg("remote session refused")
	h.c.Audit("warning", fmt.Sprintf("remote session %s refused (%s): %v", orDash(session), code, err))
	if t != nil {
		h.report(ctx, session, wire.SessionReport{Ticket: tid, Event: wire.ReportRefused, Code: code, Outcome: wire.OutcomeRefused, Message: err.Error()})
	}
	h.writeLog(LogEntry{Session: session, Ticket: tid, Helper: helper, Outcome: wire.OutcomeRefused, Code: code, Message: err.Error(), Ended: h.c.Now().UTC()})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (h *Host) report(ctx context.Context, session string, r wire.SessionReport) {
	if h.c.Report == nil || session == "" {
		return
	}
	if r.At.IsZero() {
		r.At = h.c.Now().UTC()
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := h.c.Report(rctx, session, r); err != nil {
		h.log.Warn().Err(err).Str("session_id", session).Str("event", r.Event).Msg("reporting a session event to the MP")
	}
}

// checkPolicy is the device's own check of a ticket against its policy.
func checkPolicy(p wire.RemoteControlSettings, t *ticket.Ticket) (string, error) {
	if !p.Enabled || p.AccessLevel == "none" {
		return CodePolicyDisabled, errors.New("remote control is disabled by this device's policy")
	}
	if t.Mode == ticket.ModeUnattended && !p.AllowUnattended {
		return CodeNoUnattended, errors.New("unattended sessions are not allowed by this device's policy")
	}
	if !modeAllowed(p, t.Mode) {
		return CodePolicyMode, fmt.Errorf("mode %s is not allowed by this device's policy (access level %s)", t.Mode, p.AccessLevel)
	}
	return "", nil
}

// modeAllowed: access level view allows view only; unattended needs allow_unattended.
func modeAllowed(p wire.RemoteControlSettings, mode string) bool {
	switch mode {
	case ticket.ModeView:
		return true
	case ticket.ModeUnattended:
		return p.AccessLevel != "view" && p.AllowUnattended
	default:
		return p.AccessLevel != "view"
	}
}

func durationOr(s string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return d
	}
	return def
}

// seenStore is ticket.Seen persisted: used ticket ids stay refused across restarts until
// they expire.
type seenStore struct {
	mu   sync.Mutex
	path string
	ids  map[string]time.Time
}

func (s *seenStore) load(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids = map[string]time.Time{}
	b, err := os.ReadFile(s.path)
	if err != nil || len(b) > 4<<20 {
		return
	}
	var m map[string]time.Time
	if json.Unmarshal(b, &m) == nil {
		for id, exp := range m {
			if !now.After(exp) {
				s.ids[id] = exp
			}
		}
	}
}

func (s *seenStore) use(t *ticket.Ticket, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, exp := range s.ids {
		if now.After(exp) {
			delete(s.ids, id)
		}
	}
	if _, ok := s.ids[t.ID]; ok {
		return fmt.Errorf("%w: %s", ticket.ErrReplayed, t.ID)
	}
	s.ids[t.ID] = t.ExpiresAt
	b, _ := json.Marshal(s.ids)
	if err := atomicfile.Write(s.path, b, 0o600); err != nil {
		// A ticket that cannot be recorded is not used: a restart could replay it.
		delete(s.ids, t.ID)
		return fmt.Errorf("%w: cannot record the ticket as used: %v", ticket.ErrReplayed, err)
	}
	return nil
}
