package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/guestcode"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Security codes for unenrolled devices (DESIGN.md §9 step 9). A helper's code (made at
// the MP, internal/guestcode) is exchanged here, once, for a guest certificate of the
// code's session: profile Guest, one hour, CN the sharer's local user name, URI
// urn:ibcm:guest:<session>, and the guest-only EKU instead of clientAuth, so that no MP,
// DP or CA route takes it (each of them verifies clientAuth) and only the relay of its own
// session asks for it.

var (
	errGuestProfile  = fmt.Errorf("%w: guest certificates are issued only for a security code (POST /v1/guest/exchange)", ErrBadProfile)
	errGuestDisabled = errors.New("security codes are not enabled on this site (site.yaml: ca.security_codes: true)")
)

// guestState is the exchange's configuration: whether the site allows it, and its limits.
type guestState struct {
	enabled bool
	limits  *guestcode.Limiter
}

// GuestExchange is what the sharer presents.
type GuestExchange struct {
	Code       string // as typed
	CSR        []byte // PEM or DER; its common name is the sharer's local user name
	RemoteAddr string // host:port, for the rate limits and the audit
}

// ExchangeCode spends a security code for a guest certificate of its session. Attempts
// are limited per source address, for the CA and per code; every attempt is audited
// (guestcode.Audit) with the code's id, never the code. A wrong code is
// guestcode.ErrInvalid, an expired one ErrExpired, a spent one ErrUsed, too many attempts
// ErrRateLimited. The code is spent in the transaction that records the certificate.
func (c *CA) ExchangeCode(ctx context.Context, e GuestExchange) ([]*x509.Certificate, guestcode.Code, error) {
	chain, code, err := c.exchangeCode(ctx, e)
	if errors.Is(err, errGuestDisabled) {
		return nil, code, err
	}
	outcome := guestcode.OutcomeOf(err)
	if err != nil && !isGuestOutcome(err) {
		outcome = "refused" // a bad request, a database error: the code was not spent
	}
	if outcome == guestcode.OutcomeRateLimited && !c.guest.limits.NoteRefusal(e.RemoteAddr) {
		return chain, code, err // refused before anything was tried: audited once a minute per address
	}
	if aerr := guestcode.Audit(ctx, c.db, c.now(), e.RemoteAddr, code.ID, outcome); aerr != nil {
		c.log.Error().Err(aerr).Msg("auditing a security code attempt")
	}
	ev := c.log.Info()
	if err != nil {
		ev = c.log.Warn().Err(err)
	}
	ev.Str("code_id", code.ID).Str("session_id", code.Session).Str("remote_addr", e.RemoteAddr).Str("outcome", outcome).Msg("security code exchange")
	return chain, code, err
}

func isGuestOutcome(err error) bool {
	for _, s := range []error{guestcode.ErrInvalid, guestcode.ErrExpired, guestcode.ErrUsed, guestcode.ErrRateLimited} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func (c *CA) exchangeCode(ctx context.Context, e GuestExchange) ([]*x509.Certificate, guestcode.Code, error) {
	if !c.guest.enabled {
		return nil, guestcode.Code{}, errGuestDisabled
	}
	if !c.guest.limits.AllowAddress(e.RemoteAddr) {
		return nil, guestcode.Code{}, fmt.Errorf("%w: from this address; wait a minute", guestcode.ErrRateLimited)
	}
	n, err := guestcode.Normalize(e.Code)
	if err != nil {
		return nil, guestcode.Code{}, err
	}
	hash := guestcode.Hash(n)
	code, err := guestcode.Lookup(ctx, c.db, hash, c.now())
	if code.ID != "" && !c.guest.limits.AllowCode(code.ID) {
		return nil, code, fmt.Errorf("%w: for this code; ask the helper for a new one", guestcode.ErrRateLimited)
	}
	if err != nil {
		return nil, code, err
	}
	csr, err := CheckCSR(e.CSR, Guest)
	if err != nil {
		return nil, code, err
	}
	t, err := templateGuest(csr, code.Session)
	if err != nil {
		return nil, code, err
	}
	chain, err := c.sign(ctx, csr, t, "guest:"+hash+":"+code.ID)
	return chain, code, err
}

// templateGuest is a guest certificate's contents: the CSR names the sharer (its local
// user name) and nothing else; the session comes from the code.
func templateGuest(csr *x509.CertificateRequest, session string) (Template, error) {
	if err := CheckName(csr.Subject.CommonName); err != nil {
		return Template{}, err
	}
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses) + len(csr.URIs); n > 0 {
		return Template{}, fmt.Errorf("%w: a guest certificate carries no DNS, IP, e-mail or URI names (the CA assigns the session URI)", ErrForbiddenSAN)
	}
	return Template{Profile: Guest, CommonName: csr.Subject.CommonName,
		URIs: []*url.URL{{Scheme: "urn", Opaque: "ibcm:guest:" + session}}}, nil
}

// storeGuest records a guest certificate and spends its code in one transaction; by is
// "<hash>:<code id>".
func (s *store) storeGuest(by string, c *x509.Certificate) error {
	hash, id, _ := strings.Cut(by, ":")
	ctx, cancel := s.ctx()
	defer cancel()
	now := s.now()
	return s.db.Tx(ctx, func(tx *sitedb.Tx) error {
		if err := guestcode.Spend(tx, hash, c.SerialNumber.String(), c.Subject.CommonName, now); err != nil {
			if isGuestOutcome(err) {
				return refusal{err}
			}
			return err
		}
		return insertCert(tx, c, s.issuerID, "code:"+id, "", now)
	})
}

func (c *CA) handleGuestExchange(w http.ResponseWriter, r *http.Request) error {
	var req wire.GuestExchangeRequest
	if err := api.Decode(w, r, &req); err != nil {
		return err
	}
	if req.Code == "" || req.CSR == "" {
		return api.BadRequest("code and csr are required")
	}
	chain, code, err := c.ExchangeCode(r.Context(), GuestExchange{Code: req.Code, CSR: []byte(req.CSR), RemoteAddr: r.RemoteAddr})
	if errors.Is(err, guestcode.ErrRateLimited) {
		w.Header().Set("Retry-After", strconv.Itoa(60))
	}
	if err != nil {
		return httpError(err)
	}
	leaf := chain[0]
	api.WriteJSON(w, http.StatusOK, wire.GuestCertificate{
		CertificateResponse: wire.CertificateResponse{Serial: wire.FormatSerial(leaf.SerialNumber), NotAfter: leaf.NotAfter.UTC(),
			Certificate: string(EncodeCerts(chain...)), Bootstrap: c.boot},
		Session: code.Session, Helper: code.Helper, Mode: code.Mode, TicketID: code.TicketID, Ticket: code.Ticket,
	})
	return nil
}
