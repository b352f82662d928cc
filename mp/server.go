package mp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// errBlocked refuses a blocked device's handshake.
var errBlocked = errors.New("device blocked")

// TLSConfig returns the TLS configuration of an MP listener: a client certificate is
// required in the handshake and must chain to the site's roots, carry clientAuth, be valid
// now, not be revoked and not belong to a blocked device. getCert supplies the MP's own
// certificate (with its stapled OCSP response).
func (m *MP) TLSConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		GetCertificate: getCert,
		ClientAuth:     tls.RequireAnyClientCert,
		MinVersion:     tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			leaf, err := m.verifier.Verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
			if errors.Is(err, trust.ErrWrongUsage) && m.verifyGuest(cs.PeerCertificates) == nil {
				return nil // a guest certificate: the gate keeps it to its session's relay leg (guest.go)
			}
			if err != nil {
				return err
			}
			if id := trust.Identify(leaf); id.Kind == trust.KindDevice && m.isBlocked(id.ID) {
				return fmt.Errorf("%w: %s", errBlocked, id.ID)
			}
			return nil
		},
	}
}

// Configure sets up an http.Server of this MP for one listener: location is intranet or
// internet and tags every request that arrives on it.
func (m *MP) Configure(srv *http.Server, location string) {
	srv.Handler = m.Handler(location)
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, &trackedConn{Conn: c})
	}
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateClosed || s == http.StateHijacked {
			m.hub.forgetConn(c)
		}
	}
}

type connKey struct{}

// trackedConn is a connection whose device is known after its first request, so that
// blocking the device can close it.
type trackedConn struct {
	net.Conn
	once sync.Once
}

type peerKey struct{}

// peer is who sent a request, as the handshake proved it.
type peer struct {
	leaf     *x509.Certificate
	id       trust.Identity
	location string
}

func peerOf(r *http.Request) *peer { return r.Context().Value(peerKey{}).(*peer) }

// Handler returns the MP API of one listener.
//
//	GET  /healthz
//	GET  /v1/whoami
//	GET  /v1/probe            the listener's location, for the agent's location probe
//	POST /v1/hello            devices
//	GET  /v1/policy           devices; ETag, 304 when unchanged
//	POST /v1/checkin          devices
//	POST /v1/status           devices
//	GET  /v1/bundle
//	GET  /v1/locate
//	GET  /v1/notify           devices; WebSocket
//	/v1/admin/...             admin certificates
//	/v1/sessions/..., /v1/relay/{id}, /v1/crl: remote-control sessions (sessions.go)
//	POST /v1/admin/sessions/codes, GET /v1/guest/sessions/{id}/relay: security codes (guest.go)
//	/v1/dp/..., /v1/admin/content..., /v1/admin/dps, /v1/admin/deployments...: content.go
//	/v1/admin/console/..., /v1/admin/devices/{id}/remote|deployments: the web console (console.go)
func (m *MP) Handler(location string) http.Handler {
	return m.gate(location, m.routes(location))
}

// routes is every route of the MP, behind no gate: Handler puts the gate of a listener in
// front of it, ConsoleAPI the console's.
func (m *MP) routes(location string) *http.ServeMux {
	mux := http.NewServeMux()
	h := func(fn api.HandlerFunc) http.Handler {
		return api.Handle(m.log, api.ShedWhen(sitedb.IsUnavailable, fn))
	}
	device := func(fn func(w http.ResponseWriter, r *http.Request, p *peer) error) http.Handler {
		return h(func(w http.ResponseWriter, r *http.Request) error {
			p := peerOf(r)
			if p.id.Kind != trust.KindDevice {
				return api.Errorf(http.StatusForbidden, "not_a_device", "this endpoint is for device (client profile) certificates")
			}
			if err := m.registerDevice(w, r, p); err != nil {
				return err
			}
			return fn(w, r, p)
		})
	}
	mux.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		api.WriteJSON(w, http.StatusOK, wire.Health{Status: "ok", Role: "mp-" + location})
	}))
	mux.Handle("GET /v1/whoami", h(m.handleWhoami))
	mux.Handle("GET "+wire.ProbePath, h(m.handleProbe))
	mux.Handle("POST /v1/hello", device(m.handleHello))
	mux.Handle("GET /v1/policy", device(m.handlePolicy))
	mux.Handle("POST /v1/checkin", device(m.handleCheckin))
	mux.Handle("POST /v1/status", device(m.handleStatus))
	mux.Handle("GET /v1/bundle", h(m.handleBundle))
	mux.Handle("GET /v1/locate", h(m.handleLocate))
	mux.Handle("GET /v1/notify", device(m.handleNotify))
	m.adminRoutes(mux, h)
	m.sessionRoutes(mux, h, device)
	m.guestRoutes(mux, h)
	m.contentRoutes(mux, h)
	m.consoleRoutes(mux, h)
	mux.Handle("/", h(func(w http.ResponseWriter, r *http.Request) error {
		return api.Errorf(http.StatusNotFound, "not_found", "no route %s %s", r.Method, r.URL.Path)
	}))
	return mux
}

// gate runs before every route: it records who the peer is, refuses a revoked or expired
// certificate (the handshake checked both, but a connection outlives it) and a blocked device,
// remembers the connection for blocking, and sheds load with 503 + Retry-After when too
// many requests are in flight (the long-lived notification channels are bounded apart; a
// location probe is never shed, or a busy intranet MP would send its devices to the
// internet).
func (m *MP) gate(location string, next http.Handler) http.Handler {
	return api.Handle(m.log, func(w http.ResponseWriter, r *http.Request) error {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && isGuest(r.TLS.PeerCertificates[0]) {
			// A guest certificate reaches the relay of its own session and nothing else,
			// not even /healthz (guest.go).
			leaf := r.TLS.PeerCertificates[0]
			if err := gateGuest(r, &peer{leaf: leaf, id: trust.Identify(leaf)}); err != nil {
				return err
			}
		}
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return nil
		}
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			return api.Errorf(http.StatusUnauthorized, "client_certificate_required", "a client certificate is required")
		}
		// A kept-alive connection carries the handshake's certificate for as long as it
		// lives: every request checks it again, and a refusal also ends the connection.
		leaf := r.TLS.PeerCertificates[0]
		p := &peer{leaf: leaf, id: trust.Identify(leaf), location: location}
		if tc, ok := r.Context().Value(connKey{}).(*trackedConn); ok && p.id.Kind == trust.KindDevice {
			// Tracked before the revoked set is read: a revocation that comes after the read
			// finds the connection (hub.closeSerial).
			tc.once.Do(func() { m.hub.trackConn(p.id.ID, leaf.SerialNumber, tc.Conn) })
		}
		if m.isRevoked(leaf.SerialNumber) { // revoked after the handshake
			w.Header().Set("Connection", "close")
			return api.Errorf(http.StatusForbidden, "certificate_revoked", "certificate %s is revoked", wire.FormatSerial(leaf.SerialNumber))
		}
		if m.now().After(leaf.NotAfter) { // expired after the handshake
			w.Header().Set("Connection", "close")
			return api.Errorf(http.StatusForbidden, "certificate_expired", "certificate %s expired at %s", wire.FormatSerial(leaf.SerialNumber), leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		if p.id.Kind == trust.KindDevice && m.isBlocked(p.id.ID) {
			return api.Errorf(http.StatusForbidden, "device_blocked", "device %s is blocked", p.id.ID)
		}

		// A relay leg waits for its other leg, then leaves net/http: it is bounded by the
		// sessions, not by the request slots.
		relayLeg := strings.HasSuffix(r.URL.Path, "/relay") || strings.HasPrefix(r.URL.Path, "/v1/relay/")
		// The DP feeds are long-lived too, bounded by Options.MaxDPFeeds.
		if r.URL.Path != "/v1/notify" && r.URL.Path != "/v1/dp/feed" && r.URL.Path != wire.ProbePath && !relayLeg { // a probe costs no more than /healthz
			select {
			case m.inflight <- struct{}{}:
				defer func() { <-m.inflight }()
			default:
				return api.Errorf(http.StatusServiceUnavailable, "overloaded", "the management point is busy; retry after the Retry-After seconds")
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, p)))
		return nil
	})
}
