package mp

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/recording"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// The session broker (DESIGN.md §9 steps 1, 2 and 8): who may start which session on
// which device, the ticket of each leg, the device's reports, and the audit.

// Defaults of the remote-control policy fields added after policies were first stored.
const (
	defaultConsentTimeout = 30 * time.Second
	defaultDirectPort     = 2701
)

// relayAfterMS is how long a helper given direct addresses tries them before it starts the
// relay in parallel.
const relayAfterMS = 200

// modePerm is the permission each mode needs on the device.
var modePerm = map[string]access.Permission{
	ticket.ModeView:       access.ViewScreen,
	ticket.ModeControl:    access.FullControl,
	ticket.ModeElevated:   access.Elevation,
	ticket.ModeUnattended: access.Unattended,
}

var allModes = []string{ticket.ModeView, ticket.ModeControl, ticket.ModeElevated, ticket.ModeUnattended}

// consentTimeout is the policy's consent timeout, or the default.
func consentTimeout(p wire.Policy) time.Duration {
	if d, err := time.ParseDuration(p.RemoteControl.ConsentTimeout); err == nil && d > 0 {
		return d
	}
	return defaultConsentTimeout
}

// siteCode is the site of this MP's own site-server certificate.
func (m *MP) siteCode() string {
	if len(m.o.SiteChain) == 0 {
		return ""
	}
	return trust.Identify(m.o.SiteChain[0]).Site
}

// sessionRoutes adds the routes of remote-control sessions (internal/wire/session.go).
func (m *MP) sessionRoutes(mux *http.ServeMux, h func(api.HandlerFunc) http.Handler,
	device func(fn func(w http.ResponseWriter, r *http.Request, p *peer) error) http.Handler) {
	anyRemote := func(fn adminHandler) http.Handler {
		return m.guard(h, func(_ *http.Request, name string, g access.Grants) error { return anyScope(name, g, access.ViewScreen) }, fn)
	}
	anyUser := func(fn adminHandler) http.Handler {
		return m.guard(h, func(*http.Request, string, access.Grants) error { return nil }, fn)
	}
	mux.Handle("POST /v1/admin/sessions", anyRemote(m.handleSessionStart))
	mux.Handle("GET /v1/admin/sessions", anyUser(m.handleSessionList))
	mux.Handle("GET /v1/admin/sessions/{id}", anyUser(m.handleSessionShow))
	mux.Handle("POST /v1/admin/sessions/{id}/end", anyUser(m.handleSessionEnd))
	mux.Handle("POST /v1/admin/sessions/{id}/join", anyRemote(m.handleSessionJoin))
	mux.Handle("GET /v1/admin/sessions/{id}/recording", m.admin(h, access.ReadAudit, m.handleRecordingGet))
	mux.Handle("GET /v1/admin/sessions/{id}/relay", anyRemote(m.handleHelperRelay))
	mux.Handle("GET /v1/sessions/{id}/relay", device(m.handleDeviceRelay))
	mux.Handle("POST /v1/sessions/{id}/report", device(m.handleSessionReport))
	mux.Handle("POST /v1/sessions/{id}/recording", device(m.handleRecordingPut))
	mux.Handle("GET /v1/relay/{id}", h(m.handleForwardedRelay))
	mux.Handle("GET /v1/crl", h(m.handleCRL))
}

// resolveDevice finds DEVICE (an id, a unique id prefix, or a name) among the devices on
// which g grants perm: unknown or out of scope is 404, several is 409 naming them.
func (m *MP) resolveDevice(ctx context.Context, g access.Grants, perm access.Permission, q string) (wire.Device, error) {
	if q == "" || len(q) > 128 || strings.ContainsAny(q, "\n\r\x00") {
		return wire.Device{}, api.BadRequest("device: an id, a unique id prefix or a name (1-128 bytes)")
	}
	notFound := api.Wrap(ErrNoDevice, http.StatusNotFound, "not_found", fmt.Sprintf("no device %q", q))
	if err := m.checkins.flush(ctx); err != nil {
		return wire.Device{}, err
	}
	rows, err := m.db.Query(ctx, `SELECT `+deviceColumns+` FROM devices WHERE id = ? OR name = ? OR substr(id, 1, ?) = ? ORDER BY id LIMIT 100`,
		q, q, len(q), q)
	if err != nil {
		return wire.Device{}, fmt.Errorf("looking the device up: %w", err)
	}
	var ds []wire.Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			rows.Close()
			return wire.Device{}, err
		}
		ds = append(ds, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return wire.Device{}, err
	}
	if ds, err = m.inScope(ctx, g, perm, ds); err != nil {
		return wire.Device{}, err
	}
	found := func(d wire.Device) (wire.Device, error) {
		var err error
		d.Groups, err = m.groupsOf(ctx, d.ID) // the permissions of each mode are checked through them
		return d, err
	}
	for _, d := range ds {
		if d.ID == q {
			return found(d)
		}
	}
	switch len(ds) {
	case 0:
		return wire.Device{}, notFound
	case 1:
		return found(ds[0])
	}
	var names []string
	for _, d := range ds {
		names = append(names, d.ID+" ("+d.Name+")")
	}
	return wire.Device{}, api.Errorf(http.StatusConflict, "ambiguous_device", "%q names %d devices: %s", q, len(ds), strings.Join(names, ", "))
}

// policyRefusal is why the device's policy refuses mode for user (nil: it allows it).
func (m *MP) policyRefusal(ctx context.Context, pol wire.Policy, mode, user string) (*api.Error, error) {
	rc := pol.RemoteControl
	switch {
	case !rc.Enabled:
		return api.Errorf(http.StatusForbidden, "remote_control_disabled", "remote control is disabled on this device by policy %q", pol.Name), nil
	case rc.AccessLevel == "none":
		return api.Errorf(http.StatusForbidden, "access_level", "policy %q allows no remote access to this device", pol.Name), nil
	case rc.AccessLevel == "view" && mode != ticket.ModeView:
		return api.Errorf(http.StatusForbidden, "access_level", "policy %q allows only view on this device", pol.Name), nil
	case mode == ticket.ModeUnattended && !rc.AllowUnattended:
		return api.Errorf(http.StatusForbidden, "unattended_not_allowed", "policy %q does not allow unattended sessions", pol.Name), nil
	}
	ok, err := m.permittedViewer(ctx, rc.PermittedViewers, user)
	if err != nil {
		return nil, err
	}
	if !ok {
		return api.Errorf(http.StatusForbidden, "not_permitted_viewer", "user %q is not among the permitted viewers of policy %q", user, pol.Name), nil
	}
	return nil, nil
}

// permittedViewer reports whether user is in list (user names, or "role:<name>" for the
// holders of a role); an empty list permits everyone.
func (m *MP) permittedViewer(ctx context.Context, list []string, user string) (bool, error) {
	if len(list) == 0 || slices.Contains(list, user) {
		return true, nil
	}
	as, err := m.access.Assignments(ctx, user)
	if err != nil && !errors.Is(err, access.ErrUnknownUser) {
		return false, err
	}
	for _, a := range as {
		if slices.Contains(list, "role:"+a.Role) {
			return true, nil
		}
	}
	return false, nil
}

// allowedModes is the modes g allows on a device of groups, within what pol allows.
func allowedModes(g access.Grants, groups []string, pol wire.Policy) []string {
	var out []string
	for _, mode := range allModes {
		rc := pol.RemoteControl
		if !g.OnDevice(modePerm[mode], groups) || rc.AccessLevel == "view" && mode != ticket.ModeView ||
			mode == ticket.ModeUnattended && !rc.AllowUnattended {
			continue
		}
		out = append(out, mode)
	}
	return out
}

// deviceChannelMP is the MP that holds the device's newest live notification channel ("" when
// the device is offline).
func (m *MP) deviceChannelMP(ctx context.Context, device string) (string, error) {
	var id string
	err := m.db.QueryRow(ctx, `SELECT mp_id FROM notify_connections WHERE device_id = ? AND `+liveChannel+`
		ORDER BY opened_ns DESC LIMIT 1`, device, m.aliveSince()).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return id, err
}

// audit records a session that ended before it began (refused at the MP, or offline).
func (m *MP) auditRefusal(ctx context.Context, s sessionRow, outcome, code string) {
	now := m.now().UTC()
	s.State, s.Outcome, s.Error, s.EndedAt = wire.SessionEnded, outcome, code, &now
	err := m.db.Tx(ctx, func(tx *sitedb.Tx) error { return insertSession(tx, s) })
	if err != nil {
		m.log.Error().Err(err).Str("session", s.ID).Msg("auditing a refused session")
	}
}

// auditDevice records a refusal of a device's session request (a relay leg, report or
// recording for a session not addressed to it) among that device's status messages, the
// device's audit, and returns e.
func (m *MP) auditDevice(ctx context.Context, device string, e *api.Error) error {
	now := m.now()
	_, err := m.db.Exec(ctx, `INSERT INTO status_messages (device_id, id, time, time_ns, severity, component, text, fields, received_at)
		VALUES (?, ?, ?, ?, 'warning', 'remote-control', ?, '{}', ?) ON CONFLICT (device_id, id) DO NOTHING`,
		device, "mp-"+ticket.NewID(), now.Unix(), now.UnixNano(), fmt.Sprintf("refused by MP %s: %s (%s)", m.o.ID, e.Message, e.Code), now.Unix())
	if err != nil {
		m.log.Error().Err(err).Str("device_id", device).Msg("auditing a refusal")
	}
	return e
}

func checkText(key, v string, max int) error {
	if len(v) > max {
		return api.BadRequest("%s: at most %d bytes", key, max)
	}
	// Any control character (C0, C1, DEL, the line and paragraph separators): the reason
	// reaches the device user's terminal in the consent question.
	if strings.ContainsFunc(v, frame.IsTerminalControl) {
		return api.BadRequest("%s: control characters are not allowed", key)
	}
	return nil
}

func (m *MP) handleSessionStart(w http.ResponseWriter, r *http.Request, name string) error {
	var req wire.SessionStartRequest
	if err := api.Decode(w, r, &req); err != nil {
		return err
	}
	if !ticket.ValidMode(req.Mode) {
		return api.BadRequest("mode: view, control, elevated or unattended (got %q)", req.Mode)
	}
	if err := checkText("reason", req.Reason, 512); err != nil {
		return err
	}
	if req.Kind != ticket.KindTerminal && req.Kind != ticket.KindScreen {
		return api.BadRequest("kind: empty (terminal) or screen (got %q)", req.Kind)
	}
	if req.Kind == ticket.KindScreen && req.Mode == ticket.ModeElevated {
		return api.BadRequest("mode: a screen session is view, control or unattended")
	}
	ctx := r.Context()
	g := access.FromContext(ctx)
	d, err := m.resolveDevice(ctx, g, access.ViewScreen, req.Device)
	if err != nil {
		return err
	}
	p := peerOf(r)
	// A peer without a certificate is the web console's user (ConsoleAPI): the MP will be
	// the helper's end of the end-to-end TLS (DialSession), over the relay only.
	console := p.leaf == nil
	s := sessionRow{Session: wire.Session{ID: ticket.NewID(), Device: d.ID, DeviceName: d.Name, Helper: name, Reason: req.Reason,
		Mode: req.Mode, Modes: []wire.SessionMode{}, Location: d.LastLocation, MP: m.o.ID, RequestedAt: m.now().UTC(), Console: console,
		Kind: req.Kind}}
	if !console {
		s.HelperSerial = p.leaf.SerialNumber.String()
	}
	if u, err := m.access.User(ctx, name); err == nil {
		s.HelperName = u.DisplayName // for the audit of a refusal too
	}
	refuse := func(e *api.Error) error {
		m.auditRefusal(ctx, s, wire.OutcomeRefused, e.Code)
		return e
	}
	if !g.OnDevice(modePerm[req.Mode], d.Groups) {
		return refuse(api.Errorf(http.StatusForbidden, "forbidden", "user %q does not have the %s permission on device %s", name, modePerm[req.Mode], d.ID))
	}
	pol, err := m.devicePolicy(ctx, d.ID)
	if err != nil {
		return err
	}
	if e, err := m.policyRefusal(ctx, pol, req.Mode, name); err != nil {
		return err
	} else if e != nil {
		return refuse(e)
	}
	deviceMP, err := m.deviceChannelMP(ctx, d.ID)
	if err != nil {
		return err
	}
	if deviceMP == "" {
		m.auditRefusal(ctx, s, wire.OutcomeOffline, "device_offline")
		return api.Errorf(http.StatusConflict, "device_offline", "device %s (%s) is offline: it has no live notification channel", d.ID, d.Name)
	}
	s.DeviceMP = deviceMP
	// Direct: both ends on the intranet, policy allows it, and the device told its addresses.
	direct := !console && p.location == wire.Intranet && pol.RemoteControl.AllowDirect && d.LastLocation == wire.Intranet && len(d.Addresses) > 0
	out, err := m.issueLeg(ctx, s, p, pol, ticket.RoleHelper, req.Mode, allowedModes(g, d.Groups, pol), direct, true)
	if err != nil {
		return err
	}
	out.Device = wire.DeviceCard{ID: d.ID, Name: d.Name, FQDN: d.FQDN, OS: d.OS, Location: d.LastLocation, Addresses: d.Addresses, Compliance: d.Compliance}
	if d.Compliance == "noncompliant" {
		out.ComplianceWarning = fmt.Sprintf("device %s is not compliant with its policy", d.Name)
	}
	if direct {
		port := pol.RemoteControl.DirectPort
		if port == 0 {
			port = defaultDirectPort
		}
		for _, a := range d.Addresses {
			if ip, _, err := net.ParseCIDR(a); err == nil {
				a = ip.String()
			}
			out.Direct = append(out.Direct, net.JoinHostPort(a, fmt.Sprint(port)))
		}
		out.RelayAfterMS = relayAfterMS
	}
	m.log.Info().Str("session", s.ID).Str("device_id", d.ID).Str("helper", name).Str("mode", req.Mode).Str("device_mp", deviceMP).Msg("session requested")
	api.WriteJSON(w, http.StatusCreated, out)
	return nil
}

// issueLeg signs a ticket for one leg, records it (and the session when newSession), and
// pushes it to the device through the site-event path, all in one transaction.
func (m *MP) issueLeg(ctx context.Context, s sessionRow, p *peer, pol wire.Policy, role, mode string, modes []string, direct, newSession bool) (wire.SessionStart, error) {
	if m.o.SiteKey == nil || len(m.o.SiteChain) == 0 {
		return wire.SessionStart{}, api.Errorf(http.StatusServiceUnavailable, "sessions_unavailable", "this management point has no site-server key to sign session tickets")
	}
	// The helper's end of the end-to-end TLS: the user's certificate, or for the web
	// console (a peer without one) this MP's own site-server certificate.
	console := p.leaf == nil
	var helper, helperKey, helperSerial string
	if console {
		if p.id.Kind != trust.KindUser || p.id.ID == "" || role != ticket.RoleHelper {
			return wire.SessionStart{}, api.Errorf(http.StatusForbidden, "not_admin", "a console session is started by a user, as its helper")
		}
		helper, helperKey = p.id.ID, trust.PublicKeyHash(m.o.SiteChain[0])
	} else {
		helper, helperKey, helperSerial = trust.Identify(p.leaf).ID, trust.PublicKeyHash(p.leaf), p.leaf.SerialNumber.String()
	}
	card := ticket.Card{User: helper}
	if u, err := m.access.User(ctx, helper); err == nil {
		card.DisplayName, card.Title, card.Organization = u.DisplayName, u.Title, u.Org
	} else if !errors.Is(err, access.ErrUnknownUser) {
		return wire.SessionStart{}, err
	}
	if newSession {
		s.HelperName = card.DisplayName
	}
	now := m.now()
	t := ticket.Ticket{ID: ticket.NewID(), Session: s.ID, Device: s.Device, Helper: helper, HelperKey: helperKey,
		Card: card, Role: role, Mode: mode, Modes: modes, Kind: s.Kind, Reason: s.Reason, Direct: direct && !console, Console: console, MP: m.o.ID,
		IssuedAt: now.UTC(), ExpiresAt: now.UTC().Add(min(consentTimeout(pol)+2*time.Minute, ticket.MaxLifetime))}
	signed, err := ticket.Sign(t, m.o.SiteKey, m.o.SiteChain)
	if err != nil {
		return wire.SessionStart{}, fmt.Errorf("signing the session ticket: %w", err)
	}
	err = m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		if newSession {
			s.State = wire.SessionRequested
			s.Modes = []wire.SessionMode{{Mode: mode, At: now.UTC()}}
			if err := insertSession(tx, s); err != nil {
				return err
			}
		}
		if err := insertTicket(tx, ticketRow{ID: t.ID, Session: s.ID, Role: role, Helper: helper, HelperKey: t.HelperKey,
			HelperSerial: helperSerial, ExpiresAt: t.ExpiresAt, Console: console}, now); err != nil {
			return err
		}
		ev := wire.Event{Type: wire.EventSessionRequested, Time: now.UTC(), Data: map[string]string{wire.EventDataTicket: signed}}
		return m.hub.publish(tx, siteEvent{Kind: kindPush, Device: s.Device, Event: &ev})
	})
	if err != nil {
		return wire.SessionStart{}, err
	}
	if newSession {
		s.State, s.Modes = wire.SessionRequested, []wire.SessionMode{{Mode: mode, At: now.UTC()}}
	}
	return wire.SessionStart{Session: s.Session, TicketID: t.ID, Role: role, Modes: modes}, nil
}

func (m *MP) handleSessionJoin(w http.ResponseWriter, r *http.Request, name string) error {
	ctx := r.Context()
	s, err := m.session(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	g := access.FromContext(ctx)
	groups, err := m.groupsOf(ctx, s.Device)
	if err != nil {
		return err
	}
	if !g.OnDevice(access.ViewScreen, groups) {
		return noSession(s.ID)
	}
	if s.State != wire.SessionActive {
		return api.Errorf(http.StatusConflict, "session_not_active", "session %s is %s: only an active session can be joined", s.ID, s.State)
	}
	pol, err := m.devicePolicy(ctx, s.Device)
	if err != nil {
		return err
	}
	if e, err := m.policyRefusal(ctx, pol, ticket.ModeView, name); err != nil {
		return err
	} else if e != nil { // audited as a refused session of the viewer's, naming the one joined
		m.auditRefusal(ctx, sessionRow{Session: wire.Session{ID: ticket.NewID(), Device: s.Device, DeviceName: s.DeviceName, Helper: name,
			Reason: "join " + s.ID, Kind: s.Kind, Mode: ticket.ModeView, Modes: []wire.SessionMode{}, Location: s.Location, MP: m.o.ID, RequestedAt: m.now().UTC()}},
			wire.OutcomeRefused, e.Code)
		return e
	}
	d, err := m.Device(ctx, s.Device)
	if err != nil {
		return err
	}
	out, err := m.issueLeg(ctx, s, peerOf(r), pol, ticket.RoleViewer, ticket.ModeView, []string{ticket.ModeView}, false, false)
	if err != nil {
		return err
	}
	if out.Session, err = m.viewSession(ctx, s.ID); err != nil {
		return err
	}
	out.Device = wire.DeviceCard{ID: d.ID, Name: d.Name, FQDN: d.FQDN, OS: d.OS, Location: d.LastLocation, Addresses: d.Addresses, Compliance: d.Compliance}
	if d.Compliance == "noncompliant" {
		out.ComplianceWarning = fmt.Sprintf("device %s is not compliant with its policy", d.Name)
	}
	m.log.Info().Str("session", s.ID).Str("viewer", name).Msg("viewer ticket issued")
	api.WriteJSON(w, http.StatusCreated, out)
	return nil
}

func (m *MP) viewSession(ctx context.Context, id string) (wire.Session, error) {
	s, err := m.session(ctx, id)
	return s.Session, err
}

func (m *MP) handleSessionList(w http.ResponseWriter, r *http.Request, name string) error {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return api.BadRequest("the query is not URL-encoded key=value pairs: %v", err)
	}
	format, err := sessionListFormat(q)
	if err != nil {
		return err
	}
	var f sessionFilter
	switch q.Get("active") {
	case "", "0", "false":
	case "1", "true":
		f.Active = true
	default:
		return api.BadRequest("active: 1 or 0")
	}
	f.Device, f.Helper = q.Get("device"), q.Get("helper")
	if err := errors.Join(checkText("device", f.Device, 128), checkText("helper", f.Helper, 128)); err != nil {
		return api.BadRequest("%v", err)
	}
	if s := q.Get("since"); s != "" {
		if f.Since, err = time.Parse(time.RFC3339, s); err != nil {
			return api.BadRequest("since: an RFC 3339 time (got %q)", s)
		}
	}
	if !access.FromContext(r.Context()).Allows(access.ReadAudit) {
		if f.Helper != "" && f.Helper != name {
			return writeSessionList(w, format, []wire.Session{})
		}
		f.Helper = name // their own
	}
	out, err := m.sessions(r.Context(), f)
	if err != nil {
		return err
	}
	return writeSessionList(w, format, out)
}

// mayRead reports whether name may see session s: ReadAudit, or they helped or viewed it.
func mayRead(g access.Grants, name string, s sessionRow) bool {
	return g.Allows(access.ReadAudit) || s.Helper == name || slices.Contains(s.Viewers, name)
}

func (m *MP) handleSessionShow(w http.ResponseWriter, r *http.Request, name string) error {
	s, err := m.session(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	if !mayRead(access.FromContext(r.Context()), name, s) {
		return noSession(s.ID)
	}
	api.WriteJSON(w, http.StatusOK, s.Session)
	return nil
}

func (m *MP) handleSessionEnd(w http.ResponseWriter, r *http.Request, name string) error {
	ctx := r.Context()
	s, err := m.session(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	g := access.FromContext(ctx)
	if s.Helper != name {
		groups, err := m.groupsOf(ctx, s.Device)
		if err != nil {
			return err
		}
		if !g.OnDevice(access.ManageDevices, groups) {
			if mayRead(g, name, s) {
				return forbidden(name, access.ManageDevices)
			}
			return noSession(s.ID)
		}
	}
	if s.State == wire.SessionEnded {
		return api.Errorf(http.StatusConflict, "session_ended", "session %s has already ended", s.ID)
	}
	err = m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		_, err := m.endSessions(tx, wire.OutcomeCompleted, "ended_by_"+map[bool]string{true: "helper", false: "admin"}[s.Helper == name], true, `id = ?`, s.ID)
		return err
	})
	if err != nil {
		return err
	}
	m.log.Info().Str("session", s.ID).Str("by", name).Msg("session ended at the site")
	out, err := m.viewSession(ctx, s.ID)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

// checkReport validates a device's report strictly.
func checkReport(rep *wire.SessionReport) error {
	if !ticket.ValidID(rep.Ticket) {
		return api.BadRequest("ticket: the ticket id (32 hex digits)")
	}
	switch rep.Event {
	case wire.ReportConsentAsked, wire.ReportAccepted, wire.ReportDenied, wire.ReportConsentTimeout, wire.ReportStarted,
		wire.ReportMode, wire.ReportEnded, wire.ReportRefused:
	default:
		return api.BadRequest("event: %q is not a session report event", rep.Event)
	}
	if rep.Mode != "" && !ticket.ValidMode(rep.Mode) {
		return api.BadRequest("mode: view, control, elevated or unattended (got %q)", rep.Mode)
	}
	if rep.Event == wire.ReportMode && rep.Mode == "" {
		return api.BadRequest("mode: required with event mode")
	}
	switch rep.Transport {
	case "", wire.TransportRelay, wire.TransportDirect:
	default:
		return api.BadRequest("transport: relay or direct (got %q)", rep.Transport)
	}
	// The outcome, when given, is one the event can have: an end is completed, failed or
	// interrupted (the agent stopped); a refusal names itself.
	if rep.Outcome != "" {
		allowed := map[string][]string{
			wire.ReportEnded:          {wire.OutcomeCompleted, wire.OutcomeFailed, wire.OutcomeInterrupted},
			wire.ReportDenied:         {wire.OutcomeDenied},
			wire.ReportConsentTimeout: {wire.OutcomeConsentTimeout},
			wire.ReportRefused:        {wire.OutcomeRefused},
		}[rep.Event]
		if !slices.Contains(allowed, rep.Outcome) {
			return api.BadRequest("outcome: %q is not an outcome of event %s (want one of %s)", rep.Outcome, rep.Event, strings.Join(allowed, ", "))
		}
	}
	if rep.BytesIn < 0 || rep.BytesOut < 0 {
		return api.BadRequest("bytes_in, bytes_out: not negative")
	}
	for k, v := range map[string]string{"sharer": rep.Sharer, "sharer_name": rep.SharerName, "code": rep.Code} {
		if err := checkText(k, v, 256); err != nil {
			return err
		}
	}
	if len(rep.Message) > 1024 {
		return api.BadRequest("message: at most 1024 bytes")
	}
	return nil
}

// decodeReport reads a report body (strict JSON, size-limited) and checks it.
func decodeReport(b []byte) (wire.SessionReport, error) {
	var rep wire.SessionReport
	if err := api.DecodeBytes(b, &rep); err != nil {
		return rep, err
	}
	return rep, checkReport(&rep)
}

func (m *MP) handleSessionReport(w http.ResponseWriter, r *http.Request, p *peer) error {
	var rep wire.SessionReport
	if err := api.Decode(w, r, &rep); err != nil {
		return err
	}
	if err := checkReport(&rep); err != nil {
		return err
	}
	ctx := r.Context()
	s, err := m.session(ctx, r.PathValue("id"))
	if errors.Is(err, ErrNoSession) {
		return m.auditDevice(ctx, p.id.ID, api.Errorf(http.StatusForbidden, "not_your_session", "no session %q for this device", r.PathValue("id")))
	}
	if err != nil {
		return err
	}
	if s.Device != p.id.ID {
		return m.auditDevice(ctx, p.id.ID, api.Errorf(http.StatusForbidden, "not_your_session", "session %s is not addressed to this device", s.ID))
	}
	t, err := m.ticket(ctx, rep.Ticket)
	if err != nil {
		return err
	}
	if t == nil || t.Session != s.ID {
		return m.auditDevice(ctx, p.id.ID, api.Errorf(http.StatusForbidden, "not_your_session", "ticket %s is not of session %s", rep.Ticket, s.ID))
	}
	at := m.now()
	if t.Role == ticket.RoleViewer {
		// A viewer's leg: its refusal or end closes that leg only.
		switch rep.Event {
		case wire.ReportDenied, wire.ReportConsentTimeout, wire.ReportEnded, wire.ReportRefused:
			outcome := map[string]string{wire.ReportDenied: wire.OutcomeDenied, wire.ReportConsentTimeout: wire.OutcomeConsentTimeout,
				wire.ReportRefused: wire.OutcomeRefused}[rep.Event]
			err := m.db.Tx(ctx, func(tx *sitedb.Tx) error {
				return m.hub.publish(tx, siteEvent{Kind: kindSession, Session: s.ID, Ticket: t.ID, Outcome: outcome, Code: rep.Code})
			})
			if err != nil {
				return err
			}
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	conflict := func() error {
		return api.Errorf(http.StatusConflict, "bad_transition", "session %s is %s: %q does not apply", s.ID, s.State, rep.Event)
	}
	if s.State == wire.SessionEnded {
		return conflict()
	}
	pending := s.State == wire.SessionRequested || s.State == wire.SessionWaiting
	err = m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		set := func(q string, args ...any) error {
			res, err := tx.Exec(`UPDATE sessions SET `+q+` WHERE id = ? AND state = ?`, append(args, s.ID, s.State)...)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return conflict() // it changed meanwhile
			}
			return nil
		}
		end := func(outcome, code string) error {
			ids, err := m.endSessions(tx, outcome, code, false, `id = ? AND state = ?`, s.ID, s.State)
			if err == nil && len(ids) == 0 {
				return conflict()
			}
			return err
		}
		switch rep.Event {
		case wire.ReportConsentAsked:
			if s.State == wire.SessionActive {
				return nil // an escalation asks again
			}
			if !pending {
				return conflict()
			}
			return set(`state = ?`, wire.SessionWaiting)
		case wire.ReportAccepted:
			if s.State == wire.SessionActive {
				return nil
			}
			if !pending {
				return conflict()
			}
			return set(`state = ?, sharer = ?, sharer_name = ?`, wire.SessionWaiting, rep.Sharer, rep.SharerName)
		case wire.ReportDenied, wire.ReportConsentTimeout:
			if s.State == wire.SessionActive {
				return nil // an escalation was refused: the session goes on in its mode
			}
			if !pending {
				return conflict()
			}
			return end(map[string]string{wire.ReportDenied: wire.OutcomeDenied, wire.ReportConsentTimeout: wire.OutcomeConsentTimeout}[rep.Event], "")
		case wire.ReportStarted:
			if !pending {
				return conflict()
			}
			transport := rep.Transport
			if transport == "" {
				transport = wire.TransportRelay
			}
			// A session that went direct has no direct error, whatever the helper's relay leg said.
			return set(`state = ?, transport = ?, direct_error = CASE WHEN ? = 'direct' THEN '' ELSE direct_error END,
				e2e = CASE WHEN console = 0 THEN 1 ELSE 0 END, started_at = ?, sharer = CASE WHEN ? = '' THEN sharer ELSE ? END,
				sharer_name = CASE WHEN ? = '' THEN sharer_name ELSE ? END`,
				wire.SessionActive, transport, transport, at.Unix(), rep.Sharer, rep.Sharer, rep.SharerName, rep.SharerName)
		case wire.ReportMode:
			if s.State != wire.SessionActive {
				return conflict()
			}
			modes := append(s.Modes, wire.SessionMode{Mode: rep.Mode, At: at.UTC()})
			if len(modes) > 100 {
				return api.Errorf(http.StatusConflict, "too_many_modes", "session %s has changed mode too often", s.ID)
			}
			b, _ := json.Marshal(modes)
			return set(`mode = ?, modes = ?`, rep.Mode, string(b))
		case wire.ReportEnded:
			outcome := rep.Outcome
			if outcome == "" {
				outcome = wire.OutcomeCompleted
			}
			if err := end(outcome, rep.Code); err != nil {
				return err
			}
			// The relay's own counts stay when the device says less, whichever came first.
			_, err := tx.Exec(`UPDATE sessions SET bytes_in = CASE WHEN bytes_in < ? THEN ? ELSE bytes_in END,
				bytes_out = CASE WHEN bytes_out < ? THEN ? ELSE bytes_out END WHERE id = ?`,
				rep.BytesIn, rep.BytesIn, rep.BytesOut, rep.BytesOut, s.ID)
			return err
		case wire.ReportRefused:
			code := rep.Code
			if code == "" {
				code = "refused"
			}
			return end(wire.OutcomeRefused, code)
		}
		return nil
	})
	if err != nil {
		return err
	}
	m.log.Info().Str("session", s.ID).Str("device_id", p.id.ID).Str("event", rep.Event).Str("code", rep.Code).Msg("session report")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// maxUploads bounds the recordings an MP receives at once: each is held in memory.
const maxUploads = 4

func (m *MP) handleRecordingPut(w http.ResponseWriter, r *http.Request, p *peer) error {
	select {
	case m.uploads <- struct{}{}:
		defer func() { <-m.uploads }()
	default:
		w.Header().Set("Retry-After", "30")
		return api.Errorf(http.StatusServiceUnavailable, "overloaded", "too many recordings being uploaded; retry after the Retry-After seconds")
	}
	ctx := r.Context()
	s, err := m.session(ctx, r.PathValue("id"))
	if errors.Is(err, ErrNoSession) || err == nil && s.Device != p.id.ID {
		return m.auditDevice(ctx, p.id.ID, api.Errorf(http.StatusForbidden, "not_your_session", "session %q is not addressed to this device", r.PathValue("id")))
	}
	if err != nil {
		return err
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, recording.MaxSealed))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(http.StatusRequestEntityTooLarge, "too_large", "a recording is at most %d bytes", recording.MaxSealed)
		}
		return api.BadRequest("reading the recording: %v", err)
	}
	if len(b) == 0 {
		return api.BadRequest("the recording is empty")
	}
	err = m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		if _, err := tx.Exec(`INSERT INTO session_recordings (session_id, data, uploaded_at) VALUES (?, ?, ?)`, s.ID, b, m.now().Unix()); err != nil {
			if sitedb.IsUniqueViolation(err) {
				return api.Errorf(http.StatusConflict, "recording_exists", "session %s already has its recording", s.ID)
			}
			return err
		}
		_, err := tx.Exec(`UPDATE sessions SET recorded = 1 WHERE id = ?`, s.ID)
		return err
	})
	if err != nil {
		return err
	}
	m.log.Info().Str("session", s.ID).Int("bytes", len(b)).Msg("session recording stored")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (m *MP) handleRecordingGet(w http.ResponseWriter, r *http.Request, name string) error {
	ctx := r.Context()
	id := r.PathValue("id")
	var sealed []byte
	err := m.db.QueryRow(ctx, `SELECT data FROM session_recordings WHERE session_id = ?`, id).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Errorf(http.StatusNotFound, "not_found", "session %q has no recording", id)
	}
	if err != nil {
		return err
	}
	if len(m.o.AuditKey) == 0 {
		return api.Errorf(http.StatusServiceUnavailable, "no_audit_key", "this management point has no audit key to open recordings")
	}
	cast, err := recording.Open(m.o.AuditKey, id, sealed)
	if err != nil {
		return api.Wrap(err, http.StatusUnprocessableEntity, "recording_unreadable", "the recording does not open with the site's audit key")
	}
	m.log.Info().Str("session", id).Str("by", name).Msg("session recording read")
	w.Header().Set("Content-Type", "application/x-asciicast")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(cast)
	return nil
}

func (m *MP) handleCRL(w http.ResponseWriter, r *http.Request) error {
	der, err := trust.CurrentCRL(r.Context(), m.db, m.verifier.Anchors.Issuing)
	if errors.Is(err, trust.ErrNoCRL) {
		return api.Errorf(http.StatusNotFound, "no_crl", "the issuing CA has published no CRL yet")
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(der)
	return nil
}

// endSessionsOfSerial ends the sessions of a helper whose certificate (decimal serial) was
// revoked: their legs close on every MP and their devices are told, direct sessions
// included; a viewer's leg alone closes.
func (m *MP) endSessionsOfSerial(serial string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ids []string
	err := m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		var err error
		ids, err = m.endSessions(tx, wire.OutcomeFailed, "helper_revoked", true, `helper_serial = ?`, serial)
		if err != nil {
			return err
		}
		rows, err := tx.Query(`SELECT t.id, t.session_id FROM session_tickets t JOIN sessions s ON s.id = t.session_id
			WHERE t.helper_serial = ? AND t.role = 'viewer' AND s.state <> 'ended'`, serial)
		if err != nil {
			return err
		}
		var evs []siteEvent
		for rows.Next() {
			ev := siteEvent{Kind: kindSession, Outcome: wire.OutcomeFailed, Code: "helper_revoked"}
			if err := rows.Scan(&ev.Ticket, &ev.Session); err != nil {
				rows.Close()
				return err
			}
			evs = append(evs, ev)
		}
		rows.Close()
		for _, ev := range evs {
			if err := m.hub.publish(tx, ev); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	if err != nil {
		m.log.Error().Err(err).Str("serial", wire.FormatDecimalSerial(serial)).Msg("ending the sessions of a revoked certificate")
		return
	}
	if len(ids) > 0 {
		m.log.Info().Str("serial", wire.FormatDecimalSerial(serial)).Strs("sessions", ids).Msg("certificate revoked: its sessions ended")
	}
}
