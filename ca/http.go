package ca

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"github.com/ibcm-project/ibcm/internal/access"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/guestcode"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Handler returns the CA's HTTPS API. The listener requests (but does not require) a
// client certificate; routes that need one verify it with v, so a refused renewal gets a
// clear JSON error instead of a failed handshake.
//
//	GET  /healthz
//	POST /v1/enroll                          token + CSR -> chain
//	POST /v1/renew                           mutual TLS with the current certificate
//	POST /v1/guest/exchange                  security code + CSR -> guest certificate (guest.go)
//	GET  /v1/bundle                          the site's roots
//	POST /v1/admin/tokens                    admin certificate required from here on
//	GET  /v1/admin/tokens
//	POST /v1/admin/tokens/{id}/revoke
//	POST /v1/admin/certificates              issue
//	GET  /v1/admin/certificates              ?status=valid|revoked|expired&profile=P
//	GET  /v1/admin/certificates/{serial}
//	POST /v1/admin/certificates/{serial}/revoke
//	GET  /v1/admin/crl
//	POST /v1/admin/content/sign              ManageContent: wire.Manifest -> wire.SignedManifest (content.go)
func (c *CA) Handler(v *trust.Verifier) http.Handler {
	mux := http.NewServeMux()
	h := func(fn api.HandlerFunc) http.Handler {
		return api.Handle(c.log, api.ShedWhen(sitedb.IsUnavailable, fn))
	}
	// Every admin route names its permission here; the caller's grants are read afresh on
	// each request, so a disabled user or a removed assignment takes effect at once.
	admin := func(perm access.Permission, fn func(w http.ResponseWriter, r *http.Request, name string) error) http.Handler {
		return h(func(w http.ResponseWriter, r *http.Request) error {
			leaf, err := c.peer(r, v)
			if err != nil {
				return err
			}
			if ProfileOf(leaf) != Admin {
				return api.Errorf(http.StatusForbidden, "not_admin", "the admin API needs an admin certificate; %q is a %s certificate", leaf.Subject.CommonName, ProfileOf(leaf))
			}
			name := leaf.Subject.CommonName
			g, err := c.access.Grants(r.Context(), name)
			if err != nil && !errors.Is(err, access.ErrUnknownUser) {
				return err
			}
			if !g.Allows(perm) {
				return forbidden(name, perm)
			}
			return fn(w, r.WithContext(access.NewContext(r.Context(), g)), name)
		})
	}
	c.userRoutes(mux, admin)
	mux.Handle("GET /healthz", healthz("ca"))
	mux.Handle("POST /v1/enroll", h(c.handleEnroll))
	mux.Handle("POST /v1/guest/exchange", h(c.handleGuestExchange))
	mux.Handle("POST /v1/renew", h(func(w http.ResponseWriter, r *http.Request) error { return c.handleRenew(w, r, v) }))
	mux.Handle("GET /v1/bundle", h(c.handleBundle))
	mux.Handle("POST /v1/admin/tokens", admin(access.ManagePKI, c.handleTokenCreate))
	mux.Handle("GET /v1/admin/tokens", admin(access.ManagePKI, c.handleTokenList))
	mux.Handle("POST /v1/admin/tokens/{id}/revoke", admin(access.ManagePKI, c.handleTokenRevoke))
	mux.Handle("POST /v1/admin/certificates", admin(access.ManagePKI, c.handleIssue))
	mux.Handle("GET /v1/admin/certificates", admin(access.ManagePKI, c.handleList))
	mux.Handle("GET /v1/admin/certificates/{serial}", admin(access.ManagePKI, c.handleShow))
	mux.Handle("POST /v1/admin/certificates/{serial}/revoke", admin(access.ManagePKI, c.handleRevoke))
	mux.Handle("POST /v1/admin/content/sign", admin(access.ManageContent, c.handleContentSign))
	mux.Handle("GET /v1/admin/crl", admin(access.ManagePKI, func(w http.ResponseWriter, r *http.Request, _ string) error {
		der, err := c.CRL(r.Context())
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		_, _ = w.Write(der)
		return nil
	}))
	mux.Handle("/", h(func(w http.ResponseWriter, r *http.Request) error {
		return api.Errorf(http.StatusNotFound, "not_found", "no route %s %s", r.Method, r.URL.Path)
	}))
	return mux
}

func healthz(role string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		api.WriteJSON(w, http.StatusOK, wire.Health{Status: "ok", Role: role})
	})
}

// peer verifies the client certificate of the request.
func (c *CA) peer(r *http.Request, v *trust.Verifier) (*x509.Certificate, error) {
	if r.TLS == nil {
		return nil, httpError(trust.ErrNoCertificate)
	}
	leaf, err := v.Verify(r.TLS.PeerCertificates, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, httpError(err)
	}
	return leaf, nil
}

func (c *CA) handleEnroll(w http.ResponseWriter, r *http.Request) error {
	var req wire.EnrollRequest
	if err := api.Decode(w, r, &req); err != nil {
		return err
	}
	if req.Token == "" || req.CSR == "" {
		return api.BadRequest("token and csr are required")
	}
	chain, err := c.EnrollWith(r.Context(), Enrollment{Secret: req.Token, Profile: req.Profile, CSR: []byte(req.CSR), NameFromToken: req.NameFromToken})
	if err != nil {
		return httpError(err)
	}
	c.log.Info().Str("serial", wire.FormatSerial(chain[0].SerialNumber)).Str("subject", chain[0].Subject.CommonName).
		Str("device_id", deviceIDOf(chain[0])).Str("profile", string(ProfileOf(chain[0]))).Str("remote_addr", r.RemoteAddr).Msg("enrolled")
	return writeChain(w, chain, c.boot)
}

func (c *CA) handleRenew(w http.ResponseWriter, r *http.Request, v *trust.Verifier) error {
	leaf, err := c.peer(r, v)
	if err != nil {
		return err
	}
	var req wire.RenewRequest
	if err := api.Decode(w, r, &req); err != nil {
		return err
	}
	chain, err := c.Renew(r.Context(), leaf, []byte(req.CSR))
	if errors.Is(err, ErrRenewalSuperseded) {
		c.log.Warn().Str("serial", wire.FormatSerial(leaf.SerialNumber)).Str("device_id", deviceIDOf(leaf)).Str("subject", leaf.Subject.CommonName).
			Str("remote_addr", r.RemoteAddr).Msg("renewal refused: the certificate was already renewed for another key (probable clone)")
	}
	if err != nil {
		return httpError(err)
	}
	c.log.Info().Str("serial", wire.FormatSerial(chain[0].SerialNumber)).Str("renewed_from", wire.FormatSerial(leaf.SerialNumber)).
		Str("subject", leaf.Subject.CommonName).Msg("renewed")
	return writeChain(w, chain, nil)
}

func (c *CA) handleBundle(w http.ResponseWriter, r *http.Request) error {
	anchors, err := trust.LoadAnchors(r.Context(), c.db)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, wire.Bundle{Roots: string(EncodeCerts(anchors.Roots...))})
	return nil
}

func writeChain(w http.ResponseWriter, chain []*x509.Certificate, boot *wire.Bootstrap) error {
	leaf := chain[0]
	api.WriteJSON(w, http.StatusOK, wire.CertificateResponse{
		Serial:   wire.FormatSerial(leaf.SerialNumber),
		NotAfter: leaf.NotAfter.UTC(), Certificate: string(EncodeCerts(chain...)), Bootstrap: boot,
	})
	return nil
}

func (c *CA) handleTokenCreate(w http.ResponseWriter, r *http.Request, by string) error {
	var req wire.TokenCreateRequest
	if err := api.Decode(w, r, &req); err != nil {
		return err
	}
	p, err := ParseProfile(req.Profile)
	if err != nil {
		return httpError(err)
	}
	var ttl time.Duration
	if req.TTL != "" {
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			return api.BadRequest("ttl %q: %v", req.TTL, err)
		}
	}
	if p == Admin {
		return errUserProfile
	}
	if p == ContentSigner {
		return httpError(errContentSignerProfile)
	}
	if p == Guest {
		return httpError(errGuestProfile)
	}
	if req.DeviceID != "" && !access.FromContext(r.Context()).Allows(access.ManageDevices) {
		return forbidden(by, access.ManageDevices) // a re-enroll token hands out an existing device's identity
	}
	secret, t, err := c.CreateToken(r.Context(), TokenSpec{Profile: p, Subject: req.Subject, Uses: req.Uses, TTL: ttl, DeviceID: req.DeviceID}, "admin:"+by)
	if err != nil {
		return httpError(err)
	}
	c.log.Info().Str("token_id", t.ID).Str("profile", string(p)).Str("device_id", t.DeviceID).Str("admin", by).Int("uses", t.Uses).Msg("enrollment token created")
	api.WriteJSON(w, http.StatusCreated, wire.TokenCreated{Token: tokenWire(t), Secret: secret})
	return nil
}

func tokenWire(t Token) wire.Token {
	return wire.Token{ID: t.ID, Profile: string(t.Profile), Subject: t.Subject, DeviceID: t.DeviceID, Uses: t.Uses, UsesLeft: t.UsesLeft,
		ExpiresAt: t.ExpiresAt, CreatedAt: t.CreatedAt, CreatedBy: t.CreatedBy, Revoked: t.RevokedAt != nil}
}

func (c *CA) handleTokenList(w http.ResponseWriter, r *http.Request, _ string) error {
	ts, err := c.ListTokens(r.Context())
	if err != nil {
		return err
	}
	out := make([]wire.Token, 0, len(ts))
	for _, t := range ts {
		out = append(out, tokenWire(t))
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (c *CA) handleTokenRevoke(w http.ResponseWriter, r *http.Request, by string) error {
	id := r.PathValue("id")
	if err := c.RevokeToken(r.Context(), id); err != nil {
		return httpError(err)
	}
	c.log.Info().Str("token_id", id).Str("admin", by).Msg("enrollment token revoked") // a secret was refused above
	api.WriteJSON(w, http.StatusOK, map[string]string{"revoked": id})
	return nil
}

func (c *CA) handleIssue(w http.ResponseWriter, r *http.Request, by string) error {
	var req wire.IssueRequest
	if err := api.Decode(w, r, &req); err != nil {
		return err
	}
	p, err := ParseProfile(req.Profile)
	if err != nil {
		return httpError(err)
	}
	if p == Admin {
		return errUserProfile
	}
	if p == ContentSigner {
		return httpError(errContentSignerProfile)
	}
	if p == Guest {
		return httpError(errGuestProfile)
	}
	if (p == SiteServer || p == OCSP) && access.FromContext(r.Context()).Site != access.AllPermissions {
		// A site server's certificate is the site's authority itself (an MP serves policy
		// to every device, an OCSP signer vouches for revocations): only a user who holds
		// every permission mints one, not ManagePKI alone.
		return api.Errorf(http.StatusForbidden, "forbidden", "user %q: a %s certificate needs every permission (Full Administrator), not ManagePKI alone", by, p)
	}
	chain, err := c.Issue(r.Context(), IssueSpec{Profile: p, Subject: req.Subject, DNS: req.DNS, Role: req.Role}, []byte(req.CSR), "admin:"+by)
	if err != nil {
		return httpError(err)
	}
	c.log.Info().Str("serial", wire.FormatSerial(chain[0].SerialNumber)).Str("subject", chain[0].Subject.CommonName).
		Str("profile", string(p)).Str("admin", by).Msg("issued")
	return writeChain(w, chain, nil)
}

// RecordWire converts a Record for the admin API.
func RecordWire(rec Record, withPEM bool) wire.Certificate {
	c := rec.Cert
	out := wire.Certificate{Serial: wire.FormatSerial(c.SerialNumber), Profile: string(rec.Profile),
		Subject: c.Subject.CommonName, DNS: c.DNSNames, NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
		Status: rec.Status, IssuedBy: rec.IssuedBy, RevokedAt: rec.RevokedAt, Reason: rec.Reason}
	if rec.RenewedFrom != "" {
		out.RenewedFrom = wire.FormatDecimalSerial(rec.RenewedFrom)
	}
	if from, ok := strings.CutPrefix(rec.IssuedBy, "renew:"); ok { // stored with the decimal serial
		out.IssuedBy = "renew:" + wire.FormatDecimalSerial(from)
	}
	for _, ip := range c.IPAddresses {
		out.DNS = append(out.DNS, ip.String())
	}
	for _, u := range c.URIs {
		out.URIs = append(out.URIs, u.String())
	}
	if withPEM {
		out.PEM = string(EncodeCerts(c))
	}
	return out
}

func (c *CA) handleList(w http.ResponseWriter, r *http.Request, _ string) error {
	q := r.URL.Query()
	f := Filter{Status: q.Get("status")}
	if p := q.Get("profile"); p != "" {
		prof, err := ParseProfile(p)
		if err != nil {
			return httpError(err)
		}
		f.Profile = prof
	}
	recs, err := c.List(r.Context(), f)
	if err != nil {
		return httpError(err)
	}
	out := make([]wire.Certificate, 0, len(recs))
	for _, rec := range recs {
		out = append(out, RecordWire(rec, false))
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

// pathSerial reads the {serial} of an admin route, in any form wire.ParseSerial takes, as
// the decimal the store keys certificates by.
func pathSerial(r *http.Request) (string, error) {
	dec, err := wire.DecimalSerial(r.PathValue("serial"))
	if err != nil {
		return "", api.Wrap(err, http.StatusBadRequest, "bad_serial", err.Error())
	}
	return dec, nil
}

func (c *CA) handleShow(w http.ResponseWriter, r *http.Request, _ string) error {
	serial, err := pathSerial(r)
	if err != nil {
		return err
	}
	rec, err := c.Get(r.Context(), serial)
	if err != nil {
		return httpError(err)
	}
	api.WriteJSON(w, http.StatusOK, RecordWire(rec, true))
	return nil
}

func (c *CA) handleRevoke(w http.ResponseWriter, r *http.Request, by string) error {
	var req wire.RevokeRequest
	if err := api.Decode(w, r, &req); err != nil {
		return err
	}
	serial, err := pathSerial(r)
	if err != nil {
		return err
	}
	rev, err := c.RevokeWith(r.Context(), serial, req.Reason, req.Successors)
	if err != nil {
		return httpError(err)
	}
	out := wire.Revoked{ReasonChangedFrom: rev.ChangedFrom}
	for _, sn := range rev.Also {
		out.AlsoRevoked = append(out.AlsoRevoked, wire.FormatDecimalSerial(sn))
	}
	c.log.Info().Str("serial", wire.FormatDecimalSerial(serial)).Str("reason", rev.Reason).Str("reason_changed_from", rev.ChangedFrom).
		Strs("also_revoked", out.AlsoRevoked).Str("admin", by).Msg("certificate revoked")
	rec, err := c.Get(r.Context(), serial)
	if err != nil {
		return err
	}
	out.Certificate = RecordWire(rec, false)
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

// httpError maps the CA's outcomes to HTTP status and error code, in one place.
// errUserProfile refuses the PKI routes' tokens and certificates of the admin profile:
// a user's certificate comes only from `ibcm user add` and `ibcm login` (ManageAccess), so
// ManagePKI cannot mint an administrator.
var errUserProfile = api.Errorf(http.StatusForbidden, "user_profile",
	"admin certificates are made only for users: `ibcm user add` (ManageAccess), then `ibcm login` on the user's machine")

// forbidden is the answer to a user who lacks perm.
func forbidden(user string, perm access.Permission) error {
	return api.Errorf(http.StatusForbidden, "forbidden", "user %q does not have the %s permission", user, perm)
}

func httpError(err error) error {
	table := []struct {
		target error
		status int
		code   string
	}{
		{ErrBadCSR, http.StatusBadRequest, "bad_csr"},
		{ErrWeakKey, http.StatusBadRequest, "weak_key"},
		{ErrForbiddenSAN, http.StatusForbidden, "forbidden_san"},
		{ErrForbiddenUsage, http.StatusForbidden, "forbidden_usage"},
		{ErrBadSubject, http.StatusBadRequest, "bad_subject"},
		{ErrSubjectMismatch, http.StatusForbidden, "subject_mismatch"},
		{ErrBadProfile, http.StatusBadRequest, "bad_profile"},
		{ErrWrongProfile, http.StatusForbidden, "wrong_profile"},
		{ErrTokenInvalid, http.StatusUnauthorized, "token_invalid"},
		{ErrTokenUsed, http.StatusForbidden, "token_used"},
		{ErrTokenExpired, http.StatusForbidden, "token_expired"},
		{ErrTokenRevoked, http.StatusForbidden, "token_revoked"},
		{ErrNotFound, http.StatusNotFound, "not_found"},
		{ErrAlreadyRevoked, http.StatusConflict, "already_revoked"},
		{ErrBadReason, http.StatusBadRequest, "bad_reason"},
		{ErrRevoked, http.StatusForbidden, "certificate_revoked"},
		{ErrExpired, http.StatusForbidden, "certificate_expired"},
		{ErrRenewalSuperseded, http.StatusConflict, "renewal_superseded"},
		{ErrDeviceBlocked, http.StatusForbidden, "device_blocked"},
		{ErrDeviceLive, http.StatusConflict, "device_has_certificate"},
		{ErrUserDisabled, http.StatusForbidden, "user_disabled"},
		{guestcode.ErrRateLimited, http.StatusTooManyRequests, "rate_limited"},
		{guestcode.ErrExpired, http.StatusForbidden, "code_expired"},
		{guestcode.ErrUsed, http.StatusConflict, "code_used"},
		{guestcode.ErrInvalid, http.StatusUnauthorized, "code_invalid"},
		{errGuestDisabled, http.StatusNotFound, "security_codes_disabled"},
		{trust.ErrNoCertificate, http.StatusUnauthorized, "client_certificate_required"},
		{trust.ErrUntrusted, http.StatusForbidden, "untrusted_certificate"},
		{trust.ErrExpired, http.StatusForbidden, "certificate_expired"},
		{trust.ErrRevoked, http.StatusForbidden, "certificate_revoked"},
		{trust.ErrWrongUsage, http.StatusForbidden, "wrong_usage"},
	}
	for _, e := range table {
		if errors.Is(err, e.target) {
			return api.Wrap(err, e.status, e.code, err.Error())
		}
	}
	return err
}

// maxOCSPRequest bounds an OCSP request; real ones are about 100 bytes.
const maxOCSPRequest = 8 << 10

// PublicHandler returns the CA's plain-HTTP listener: the CRL, the OCSP responder and the
// CA certificates, for openssl, browsers and every other relying party.
//
//	GET  /healthz
//	GET  /crl/<issuer>.crl     DER, v2 CRL
//	GET  /ocsp/<base64 req>    RFC 6960 GET
//	POST /ocsp                 RFC 6960 POST (application/ocsp-request)
//	GET  /ca/<issuer>.crt      DER
func (c *CA) PublicHandler() http.Handler {
	notFound := func(w http.ResponseWriter, what string) {
		api.WriteError(w, api.Errorf(http.StatusNotFound, "not_found", "%s", what))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.EscapedPath()
		switch {
		case path == "/healthz" && r.Method == http.MethodGet:
			healthz("ca-public").ServeHTTP(w, r)
		case path == "/ocsp" || strings.HasPrefix(path, "/ocsp/"):
			c.serveOCSP(w, r, strings.TrimPrefix(strings.TrimPrefix(path, "/ocsp"), "/"))
		case strings.HasPrefix(path, "/crl/") && r.Method == http.MethodGet:
			if path != "/crl/"+c.issuerID+".crl" {
				notFound(w, "no CRL at "+path+"; this CA publishes /crl/"+c.issuerID+".crl")
				return
			}
			der, err := c.CRL(r.Context())
			if err != nil {
				c.log.Error().Err(err).Msg("serving CRL")
				api.WriteError(w, err)
				return
			}
			w.Header().Set("Content-Type", "application/pkix-crl")
			_, _ = w.Write(der)
		case strings.HasPrefix(path, "/ca/") && r.Method == http.MethodGet:
			for _, cert := range []*x509.Certificate{c.h.Issuing, c.h.Root} {
				if path == "/ca/"+IssuerID(cert)+".crt" {
					w.Header().Set("Content-Type", "application/pkix-cert")
					_, _ = w.Write(cert.Raw)
					return
				}
			}
			notFound(w, "no CA certificate at "+path)
		default:
			notFound(w, "no route "+r.Method+" "+path)
		}
	})
}

func (c *CA) serveOCSP(w http.ResponseWriter, r *http.Request, escaped string) {
	var der []byte
	switch r.Method {
	case http.MethodGet:
		s, err := url.PathUnescape(escaped)
		if err != nil || len(s) > maxOCSPRequest {
			writeOCSP(w, http.StatusBadRequest, ocsp.MalformedRequestErrorResponse)
			return
		}
		if der, err = base64.StdEncoding.DecodeString(s); err != nil {
			writeOCSP(w, http.StatusBadRequest, ocsp.MalformedRequestErrorResponse)
			return
		}
	case http.MethodPost:
		var err error
		der, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxOCSPRequest))
		if err != nil {
			writeOCSP(w, http.StatusBadRequest, ocsp.MalformedRequestErrorResponse)
			return
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		api.WriteError(w, api.Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "OCSP takes GET or POST"))
		return
	}
	req, err := ocsp.ParseRequest(der)
	if err != nil {
		writeOCSP(w, http.StatusBadRequest, ocsp.MalformedRequestErrorResponse)
		return
	}
	resp, err := c.OCSP(r.Context(), req)
	switch {
	case errors.Is(err, ErrOCSPUnauthorized):
		writeOCSP(w, http.StatusOK, ocsp.UnauthorizedErrorResponse)
	case err != nil:
		c.log.Error().Err(err).Str("serial", wire.FormatSerial(req.SerialNumber)).Msg("answering OCSP request")
		writeOCSP(w, http.StatusInternalServerError, ocsp.InternalErrorErrorResponse)
	default:
		w.Header().Set("Cache-Control", "max-age=60, public")
		writeOCSP(w, http.StatusOK, resp)
	}
}

func writeOCSP(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
