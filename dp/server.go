package dp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/listener"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// errBlocked refuses a blocked device's handshake.
var errBlocked = errors.New("device blocked")

// tlsConfig is a DP listener's TLS: a client certificate of this site is required in the
// handshake and must chain to the roots (with the site's issuing CAs), carry clientAuth, be
// valid now, not revoked, and not a blocked device's. HTTP/1.1 only.
func (d *DP) tlsConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{d.cert},
		ClientAuth:   tls.RequireAnyClientCert,
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			leaf, err := d.verifier.Load().Verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
			if err != nil {
				return err
			}
			if id := trust.Identify(leaf); id.Kind == trust.KindDevice && d.isBlocked(id.ID) {
				return fmt.Errorf("%w: %s", errBlocked, id.ID)
			}
			return nil
		},
	}
}

func (d *DP) isBlocked(device string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.blocked[device]
}

// MaxFeedAge bounds how long the DP serves on what it last heard from its MP's feed (kept
// on disk across restarts): a revocation or a block it could not hear of since must not let
// a device in for ever. Past it the DP answers 503 until the feed is back.
var MaxFeedAge = 72 * time.Hour

func (d *DP) isReady() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.ready && d.now().Sub(d.heard) <= MaxFeedAge
}

// connTracker knows the serial and device of every live connection once its first
// request arrived, so that a revocation or a block closes them at once.
type connTracker struct {
	mu       sync.Mutex
	bySerial map[string]map[net.Conn]bool
	byDevice map[string]map[net.Conn]bool
	known    map[net.Conn][2]string // serial, device
}

func (t *connTracker) init() {
	t.bySerial, t.byDevice, t.known = map[string]map[net.Conn]bool{}, map[string]map[net.Conn]bool{}, map[net.Conn][2]string{}
}

// state is the http.Server's ConnState hook. A connection becomes active (its handshake
// done) before its first request reaches the gate, so a revocation that lands after the
// gate read the revoked set finds the connection here.
func (t *connTracker) state(c net.Conn, s http.ConnState) {
	switch s {
	case http.StateActive:
		t.mu.Lock()
		defer t.mu.Unlock()
		if _, ok := t.known[c]; ok {
			return
		}
		tc, ok := c.(*tls.Conn)
		if !ok {
			return
		}
		cs := tc.ConnectionState()
		if len(cs.PeerCertificates) == 0 {
			return
		}
		leaf := cs.PeerCertificates[0]
		serial, device := leaf.SerialNumber.String(), ""
		if id := trust.Identify(leaf); id.Kind == trust.KindDevice {
			device = id.ID
		}
		t.known[c] = [2]string{serial, device}
		add(t.bySerial, serial, c)
		if device != "" {
			add(t.byDevice, device, c)
		}
	case http.StateClosed, http.StateHijacked:
		t.mu.Lock()
		defer t.mu.Unlock()
		k, ok := t.known[c]
		if !ok {
			return
		}
		delete(t.known, c)
		remove(t.bySerial, k[0], c)
		if k[1] != "" {
			remove(t.byDevice, k[1], c)
		}
	}
}

func add(m map[string]map[net.Conn]bool, key string, c net.Conn) {
	if m[key] == nil {
		m[key] = map[net.Conn]bool{}
	}
	m[key][c] = true
}

func remove(m map[string]map[net.Conn]bool, key string, c net.Conn) {
	delete(m[key], c)
	if len(m[key]) == 0 {
		delete(m, key)
	}
}

// closeSerial ends every connection that presented the (decimal) serial.
func (t *connTracker) closeSerial(serial string) { t.closeAll(t.bySerial, serial) }

// closeDevice ends every connection of the device.
func (t *connTracker) closeDevice(device string) { t.closeAll(t.byDevice, device) }

func (t *connTracker) closeAll(m map[string]map[net.Conn]bool, key string) {
	t.mu.Lock()
	var cs []net.Conn
	for c := range m[key] {
		cs = append(cs, c)
	}
	t.mu.Unlock()
	for _, c := range cs {
		// The socket, not the TLS layer: a close_notify would wait for a write that is
		// blocked on a slow reader.
		if tc, ok := c.(*tls.Conn); ok {
			_ = tc.NetConn().Close()
		} else {
			_ = c.Close()
		}
	}
}

type peerKey struct{}

// peer is who sent a request, as the handshake proved it.
type peer struct {
	leaf *x509.Certificate
	id   trust.Identity
}

func peerOf(r *http.Request) *peer { return r.Context().Value(peerKey{}).(*peer) }

// handler is the API of one DP listener.
//
//	GET  /healthz
//	GET  /v1/content/{sha256}, HEAD                content.go
//	GET  /v1/manifests/{package}/{version}
//	GET  /v1/admin/uploads/{sha256}, PUT           origin only, ManageContent
func (d *DP) handler(role string) http.Handler {
	mux := http.NewServeMux()
	h := func(fn api.HandlerFunc) http.Handler { return api.Handle(d.log, fn) }
	mux.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		api.WriteJSON(w, http.StatusOK, wire.Health{Status: "ok", Role: role})
	}))
	mux.Handle("GET /v1/content/{sha256}", h(d.handleContent)) // HEAD too
	mux.Handle("GET /v1/manifests/{package}/{version}", h(d.handleManifest))
	mux.Handle("GET /v1/admin/uploads/{sha256}", h(d.handleUploadState))
	mux.Handle("PUT /v1/admin/uploads/{sha256}", h(d.handleUpload))
	mux.Handle("/", h(func(w http.ResponseWriter, r *http.Request) error {
		return api.Errorf(http.StatusNotFound, "not_found", "no route %s %s", r.Method, r.URL.Path)
	}))
	return d.gate(mux)
}

// gate runs before every route: it refuses clients until the DP holds a snapshot of the
// MP's feed (it could not tell who is revoked), re-checks the handshake's certificate
// (a connection outlives a revocation, an expiry or a block; a refusal also ends the
// connection), and sheds load with 503 + Retry-After when too many requests are in flight.
func (d *DP) gate(next http.Handler) http.Handler {
	return api.Handle(d.log, func(w http.ResponseWriter, r *http.Request) error {
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return nil
		}
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			return api.Errorf(http.StatusUnauthorized, "client_certificate_required", "a client certificate is required")
		}
		if !d.isReady() {
			return api.Errorf(http.StatusServiceUnavailable, "starting", "the distribution point has not heard from its management point (for %s at most); retry later", MaxFeedAge)
		}
		leaf := r.TLS.PeerCertificates[0]
		p := &peer{leaf: leaf, id: trust.Identify(leaf)}
		if d.revoked.Contains(leaf.SerialNumber) {
			w.Header().Set("Connection", "close")
			return api.Errorf(http.StatusForbidden, "certificate_revoked", "certificate %s is revoked", wire.FormatSerial(leaf.SerialNumber))
		}
		if d.now().After(leaf.NotAfter) {
			w.Header().Set("Connection", "close")
			return api.Errorf(http.StatusForbidden, "certificate_expired", "certificate %s expired at %s", wire.FormatSerial(leaf.SerialNumber), leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		if p.id.Kind == trust.KindDevice && d.isBlocked(p.id.ID) {
			w.Header().Set("Connection", "close")
			return api.Errorf(http.StatusForbidden, "device_blocked", "device %s is blocked", p.id.ID)
		}
		release, ok := d.shed.Acquire()
		if !ok {
			return listener.Overloaded("the distribution point")
		}
		defer release()
		// The server has no whole-request timeouts (a blob may take hours): each request
		// gets the site's, and the bulk routes move them along as bytes flow.
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(listener.SlowClient.Read))
		_ = rc.SetWriteDeadline(time.Now().Add(listener.SlowClient.Write))
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, p)))
		return nil
	})
}
