package mp

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/guestcode"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// Security codes for unenrolled devices (DESIGN.md §9 step 9). A helper makes a code here
// (POST /v1/admin/sessions/codes): the MP records a pending session for it, with the
// helper's ticket, and stores the code's hash (internal/guestcode). The sharer exchanges
// the code at the CA for a guest certificate of that session, whose only route at any MP
// is the device's leg of its own session's relay (GET /v1/guest/sessions/{id}/relay):
// the handshake takes a guest certificate only when the site enables codes, and the gate
// sends it nowhere else.

// guestRelayPath is the path of the guest's relay leg for session id.
func guestRelayPath(id string) string { return "/v1/guest/sessions/" + id + "/relay" }

// DeviceNameGuest is the device name of a session with an unenrolled device, until its
// sharer connects ("not enrolled: guest <user>" then).
const DeviceNameGuest = "not enrolled"

// verifyGuest is the handshake's check of a certificate that carries the guest EKU instead
// of clientAuth: it must chain to the site, be valid now and unrevoked, name a guest
// session, and the site must allow security codes.
func (m *MP) verifyGuest(chain []*x509.Certificate) error {
	if !m.o.SecurityCodes || len(chain) == 0 || !wire.IsGuestCertificate(chain[0]) {
		return trust.ErrWrongUsage
	}
	leaf, err := m.verifier.Verify(chain, x509.ExtKeyUsageAny)
	if err != nil {
		return err
	}
	if id := trust.Identify(leaf); id.Kind != wire.KindGuest || !ticket.ValidID(id.ID) {
		return fmt.Errorf("%w: a guest certificate must name its session", trust.ErrWrongUsage)
	}
	return nil
}

// isGuest says whether a peer holds a guest certificate (by its EKU or its URI: either
// alone is enough to keep it to its relay leg).
func isGuest(leaf *x509.Certificate) bool {
	return wire.IsGuestCertificate(leaf) || trust.Identify(leaf).Kind == wire.KindGuest
}

// gateGuest refuses every request of a guest certificate but the relay leg of its own
// session.
func gateGuest(r *http.Request, p *peer) error {
	if r.Method == http.MethodGet && p.id.Kind == wire.KindGuest && r.URL.Path == guestRelayPath(p.id.ID) {
		return nil
	}
	return api.Errorf(http.StatusForbidden, "guest_certificate",
		"a guest certificate is accepted only by the relay of its own session (%s)", guestRelayPath(p.id.ID))
}

func (m *MP) guestRoutes(mux *http.ServeMux, h func(api.HandlerFunc) http.Handler) {
	offer := m.guard(h, func(_ *http.Request, name string, g access.Grants) error {
		return anyScope(name, g, access.OfferRemoteAssistance)
	}, m.handleCodeCreate)
	mux.Handle("POST /v1/admin/sessions/codes", offer)
	mux.Handle("GET /v1/guest/sessions/{id}/relay", h(m.handleGuestRelay))
}

// handleCodeCreate is `ibcm remote code create`: a code, its pending session and the
// helper's leg.
func (m *MP) handleCodeCreate(w http.ResponseWriter, r *http.Request, name string) error {
	if !m.o.SecurityCodes {
		return api.Errorf(http.StatusNotFound, "security_codes_disabled", "security codes are not enabled on this site (site.yaml: ca.security_codes: true)")
	}
	var req wire.SecurityCodeRequest
	if err := api.DecodeOptional(w, r, &req); err != nil {
		return err
	}
	if req.Mode == "" {
		req.Mode = "view"
	}
	if req.Mode != "view" && req.Mode != "control" {
		return api.BadRequest("mode: view or control (got %q); an unenrolled device has no elevated or unattended sessions", req.Mode)
	}
	if err := checkText("reason", req.Reason, 512); err != nil {
		return err
	}
	ctx := r.Context()
	g := access.FromContext(ctx)
	if req.Mode == "control" {
		if err := anyScope(name, g, access.FullControl); err != nil {
			return err
		}
	}
	if m.o.SiteKey == nil || len(m.o.SiteChain) == 0 {
		return api.Errorf(http.StatusServiceUnavailable, "sessions_unavailable", "this management point has no site-server key to sign session tickets")
	}
	p := peerOf(r)
	now := m.now()
	modes := []string{"view"}
	if req.Mode == "control" {
		modes = append(modes, "control")
	}
	id := ticket.NewID()
	s := sessionRow{Session: wire.Session{ID: id, Device: wire.GuestURIPrefix + id, DeviceName: DeviceNameGuest, Helper: name, Reason: req.Reason,
		State: wire.SessionRequested, Mode: req.Mode, Modes: []wire.SessionMode{{Mode: req.Mode, At: now.UTC()}}, MP: m.o.ID, RequestedAt: now.UTC()},
		HelperSerial: p.leaf.SerialNumber.String(), DeviceMP: m.o.ID}
	card := ticket.Card{User: name}
	if u, err := m.access.User(ctx, name); err == nil {
		card.DisplayName, card.Title, card.Organization = u.DisplayName, u.Title, u.Org
		s.HelperName = u.DisplayName
	} else if !errors.Is(err, access.ErrUnknownUser) {
		return err
	}
	expires := now.Add(guestcode.TTL)
	t := ticket.Ticket{ID: ticket.NewID(), Session: s.ID, Device: wire.GuestURIPrefix + s.ID, Helper: name, HelperKey: trust.PublicKeyHash(p.leaf),
		Card: card, Role: ticket.RoleHelper, Mode: req.Mode, Modes: modes, Reason: req.Reason, MP: m.o.ID,
		IssuedAt: now.UTC(), ExpiresAt: now.UTC().Add(ticket.MaxLifetime)}
	signed, err := ticket.Sign(t, m.o.SiteKey, m.o.SiteChain)
	if err != nil {
		return fmt.Errorf("signing the session ticket: %w", err)
	}
	code, err := guestcode.New(rand.Reader)
	if err != nil {
		return err
	}
	var stored guestcode.Code
	err = m.db.Tx(ctx, func(tx *sitedb.Tx) error {
		if err := insertSession(tx, s); err != nil {
			return err
		}
		if err := insertTicket(tx, ticketRow{ID: t.ID, Session: s.ID, Role: ticket.RoleHelper, Helper: name, HelperKey: t.HelperKey,
			HelperSerial: s.HelperSerial, ExpiresAt: t.ExpiresAt}, now); err != nil {
			return err
		}
		stored, err = guestcode.Insert(tx, code, guestcode.Code{Session: s.ID, Helper: name, Mode: req.Mode, TicketID: t.ID, Ticket: signed,
			CreatedAt: now, ExpiresAt: expires})
		return err
	})
	if err != nil {
		return err
	}
	m.log.Info().Str("session", s.ID).Str("code_id", stored.ID).Str("helper", name).Str("mode", req.Mode).Msg("security code created")
	api.WriteJSON(w, http.StatusCreated, wire.SecurityCode{Code: code, ID: stored.ID, Session: s.ID, Mode: req.Mode, ExpiresAt: expires.UTC(),
		Start: wire.SessionStart{Session: s.Session, TicketID: t.ID, Role: ticket.RoleHelper, Modes: modes,
			Device: wire.DeviceCard{Name: DeviceNameGuest}}})
	return nil
}

// handleGuestRelay is GET /v1/guest/sessions/{id}/relay: the guest's leg of its session,
// with the guest certificate its code was exchanged for (the gate let only that through).
func (m *MP) handleGuestRelay(w http.ResponseWriter, r *http.Request) error {
	p := peerOf(r)
	if p.id.Kind != wire.KindGuest || p.id.ID != r.PathValue("id") { // the gate checked it; a route never trusts that alone
		return gateGuest(r, p)
	}
	ticketID, err := checkRelayRequest(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	code, err := guestcode.OfSession(ctx, m.db, p.id.ID)
	if err != nil || code.Serial != p.leaf.SerialNumber.String() || code.TicketID != ticketID {
		return api.Errorf(http.StatusForbidden, "not_your_session", "this guest certificate was not issued for session %s", p.id.ID)
	}
	_, s, err := m.relayLeg(ctx, p.id.ID, ticketID)
	if err != nil {
		return err
	}
	sharer := p.leaf.Subject.CommonName
	if _, err := m.db.Exec(ctx, `UPDATE sessions SET sharer = ?, device_name = ? WHERE id = ? AND sharer = ''`,
		sharer, DeviceNameGuest+": guest "+sharer, s.ID); err != nil {
		return fmt.Errorf("recording the sharer of session %s: %w", s.ID, err)
	}
	m.log.Info().Str("session", s.ID).Str("sharer", sharer).Str("serial", wire.FormatSerial(p.leaf.SerialNumber)).Msg("guest relay leg")
	if s.DeviceMP != "" && s.DeviceMP != m.o.ID {
		return m.forwardLeg(w, r, s, ticketID, sideDevice)
	}
	return m.waitLeg(w, r, s, ticketID, sideDevice)
}

// recordGuestRelay keeps the audit of a guest session, whose device end cannot report
// (its certificate opens no route but the relay): the MP records what its relay sees.
// started: both legs are spliced (the session is active over the relay; its end-to-end TLS
// is the guest's remote/e2e, as for any device); otherwise the splice closed (completed).
// Sessions of enrolled devices are left to their devices' reports.
func (m *MP) recordGuestRelay(ctx context.Context, session string, started bool) {
	now := m.now().Unix()
	q := `UPDATE sessions SET state = ?, started_at = ?, transport = ?, e2e = 1 WHERE id = ? AND device_id LIKE ? AND state IN (?, ?)`
	args := []any{wire.SessionActive, now, wire.TransportRelay, session, wire.GuestURIPrefix + "%", wire.SessionRequested, wire.SessionWaiting}
	if !started {
		q = `UPDATE sessions SET state = ?, outcome = ?, ended_at = ? WHERE id = ? AND device_id LIKE ? AND state <> ?`
		args = []any{wire.SessionEnded, wire.OutcomeCompleted, now, session, wire.GuestURIPrefix + "%", wire.SessionEnded}
	}
	if _, err := m.db.Exec(ctx, q, args...); err != nil {
		m.log.Warn().Err(err).Str("session", session).Msg("recording a guest session's relay")
	}
}
