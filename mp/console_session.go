package mp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// Sessions of the web console (DESIGN.md §9 step 9): a browser has no certificate, so the
// MP is the helper's end of the end-to-end TLS. handleSessionStart signs the ticket for the
// MP's own key (ticket.Console); DialSession joins the relay's helper leg in-process and
// runs the helper's TLS 1.3 with the MP's site-server certificate; the console bridges the
// browser's WebSockets to the connection it returns. Such a session is audited with
// console = 1 and e2e = 0, whatever the device reports.

// consoleHandshakeTimeout bounds the end-to-end TLS handshake once the relay legs met.
const consoleHandshakeTimeout = 30 * time.Second

// DialSession reaches the device of session sessionID for user over the relay, this MP
// being the helper's end of the end-to-end TLS, and returns the established inner TLS
// connection (what remote/helper.Open or the screen bridge runs over). The ticket must be
// user's, of that session, issued for the console, unexpired, and the session not ended.
// It waits, as a relay leg does, until the device's leg is there (the sharer's consent
// comes first): bound it with ctx.
func (m *MP) DialSession(ctx context.Context, user, sessionID, ticketID string) (net.Conn, error) {
	if !ticket.ValidID(sessionID) || !ticket.ValidID(ticketID) {
		return nil, api.BadRequest("session and ticket: 32 hex digits each")
	}
	if len(m.o.SiteChain) == 0 || m.o.SiteKey == nil {
		return nil, api.Errorf(http.StatusServiceUnavailable, "sessions_unavailable", "this management point has no site-server key to be a console session's end")
	}
	t, s, err := m.relayLeg(ctx, sessionID, ticketID)
	if err != nil {
		return nil, err
	}
	switch {
	case t.Helper != user:
		// Audited as the command line's relay leg audits it (handleHelperRelay).
		return nil, m.refuseLeg(ctx, s, user, true, api.Errorf(http.StatusForbidden, "not_your_ticket", "ticket %s was not issued to %s", ticketID, user))
	case !t.Console || t.Role != ticket.RoleHelper:
		return nil, api.Errorf(http.StatusForbidden, "not_a_console_ticket", "ticket %s was not issued to the web console", ticketID)
	case t.HelperKey != trust.PublicKeyHash(m.o.SiteChain[0]):
		// Signed by another MP of the site (the console's start went there): its key is not ours.
		return nil, api.Errorf(http.StatusConflict, "other_mp", "ticket %s names another management point's key", ticketID)
	case m.now().After(t.ExpiresAt):
		return nil, api.Errorf(http.StatusGone, "ticket_expired", "ticket %s expired", ticketID)
	case s.State == wire.SessionEnded:
		return nil, endError(s.Outcome, s.Error)
	}
	raw, err := m.consoleLeg(ctx, s, ticketID)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	for _, c := range m.verifier.Anchors.Roots {
		roots.AddCert(c)
	}
	tc := tls.Client(raw, e2e.ConsoleConfig(m.siteCertificate(), roots, s.Device, m.now, nil))
	hctx, cancel := context.WithTimeout(ctx, consoleHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = raw.Close()
		return nil, api.Wrap(err, http.StatusBadGateway, "e2e_failed", fmt.Sprintf("the end-to-end TLS with device %s failed", s.Device))
	}
	// The device's certificate against the site's revoked set too (the MP's own CRL).
	for _, c := range tc.ConnectionState().PeerCertificates {
		if m.isRevoked(c.SerialNumber) {
			_ = tc.Close()
			return nil, api.Errorf(http.StatusBadGateway, "e2e_failed", "device %s presented a revoked certificate (%s)", s.Device, wire.FormatSerial(c.SerialNumber))
		}
	}
	m.log.Info().Str("session", s.ID).Str("device_id", s.Device).Str("helper", user).Msg("console session connected")
	return tc, nil
}

// consoleLeg is the helper's relay leg of a console ticket, joined in-process: one end of
// a pipe attached to the relay pair (awaitPair here, or forwardPair towards the device's
// MP, as waitLeg and forwardLeg do for a helper's connection), the other end returned.
func (m *MP) consoleLeg(ctx context.Context, s sessionRow, ticketID string) (net.Conn, error) {
	local, remote := net.Pipe()
	fail := func(err error) (net.Conn, error) {
		_ = local.Close()
		_ = remote.Close()
		return nil, err
	}
	if s.DeviceMP != "" && s.DeviceMP != m.o.ID {
		base, err := m.mpURL(ctx, s.DeviceMP)
		if err != nil {
			return fail(err)
		}
		pair, up, err := m.forwardPair(ctx, base, s, ticketID, sideHelper, m.relayTimeout(ctx, s.Device))
		if err != nil {
			return fail(err)
		}
		m.relays.attach(pair, sideDevice, up)
		m.relays.attach(pair, sideHelper, remote)
		return local, nil
	}
	pair, err := m.awaitPair(ctx, s, ticketID, sideHelper, m.relayTimeout(ctx, s.Device))
	if err != nil {
		return fail(err)
	}
	m.relays.attach(pair, sideHelper, remote)
	return local, nil
}
