package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"github.com/ibcm-project/ibcm/internal/access"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	stepdb "github.com/smallstep/certificates/db"

	"github.com/ibcm-project/ibcm/internal/guestcode"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Options configure a CA.
type Options struct {
	SiteCode  string
	Hierarchy *Hierarchy // Root, Issuing and IssuingKey are required; RootKey is not used
	// PublicURL is the base URL of the CA's public plain-HTTP listener, written into every
	// certificate as the CRL distribution point and the AIA (OCSP and CA issuers) URLs.
	PublicURL   string
	Validity    map[Profile]time.Duration // per profile; DefaultValidity where missing
	CRLValidity time.Duration             // how long a CRL stays current; 24h when zero
	// Bootstrap is handed to every enrolled device: how to find the site's MPs.
	Bootstrap *wire.Bootstrap
	// KeyPassword encrypts the keys the CA keeps in the site database (the content
	// signer's): the CA's password, as for the issuing key. When empty, a password derived
	// from the issuing key is used (whoever holds that key can sign anything anyway).
	KeyPassword []byte
	// SecurityCodes lets a sharer on an unenrolled device exchange a helper's security code
	// for a guest certificate (guest.go); off by default. CodeLimits are the exchange's
	// attempt rates (guestcode.DefaultLimits when nil).
	SecurityCodes bool
	CodeLimits    *guestcode.Limits
	Now           func() time.Time // defaults to time.Now
	Rand          io.Reader        // defaults to crypto/rand
	Log           zerolog.Logger
}

// CA is the site's certificate authority: smallstep's embedded authority signing with the
// issuing CA, over our site store.
type CA struct {
	db       *sitedb.DB
	store    *store
	auth     *authority.Authority
	h        *Hierarchy
	siteCode string
	issuerID string
	urls     issuerURLs
	validity map[Profile]time.Duration
	crlTTL   time.Duration
	boot     *wire.Bootstrap
	now      func() time.Time
	rand     io.Reader
	log      zerolog.Logger

	ocsp ocspState // the OCSP responder and its response cache (ocsp.go)

	tokens tokenCache // what bulk tokens are bound to (lookupToken)

	access *access.Store // who may use which admin route (http.go)

	keyPassword []byte       // Options.KeyPassword, or derived from the issuing key
	content     contentState // the key that signs manifests (content.go)

	guest guestState // security codes (guest.go)
}

type issuerURLs struct{ crl, ocsp, issuer string }

// New opens the CA over the site database: it applies the CA's migrations, records the
// site's CA certificates and starts smallstep's embedded authority with our store.
func New(ctx context.Context, db *sitedb.DB, o Options) (*CA, error) {
	if o.Hierarchy == nil || o.Hierarchy.Issuing == nil || o.Hierarchy.IssuingKey == nil || o.Hierarchy.Root == nil {
		return nil, errors.New("ca: the root certificate and the issuing certificate and key are required")
	}
	u, err := url.Parse(o.PublicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("ca: public URL %q: must be an absolute http URL", o.PublicURL)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.CRLValidity == 0 {
		o.CRLValidity = 24 * time.Hour
	}
	validity := map[Profile]time.Duration{}
	for p, d := range DefaultValidity {
		validity[p] = d
	}
	for p, d := range o.Validity {
		if d > 0 {
			validity[p] = d
		}
	}
	if err := Migrate(ctx, db); err != nil {
		return nil, err
	}
	if err := guestcode.Migrate(ctx, db); err != nil {
		return nil, err
	}
	id := IssuerID(o.Hierarchy.Issuing)
	base := strings.TrimSuffix(o.PublicURL, "/")
	c := &CA{
		db: db, h: o.Hierarchy, siteCode: o.SiteCode, issuerID: id,
		urls:     issuerURLs{crl: base + "/crl/" + id + ".crl", ocsp: base + "/ocsp", issuer: base + "/ca/" + id + ".crt"},
		validity: validity, crlTTL: o.CRLValidity, now: o.Now, rand: o.Rand, log: o.Log, boot: o.Bootstrap,
	}
	if c.keyPassword = o.KeyPassword; len(c.keyPassword) == 0 {
		if c.keyPassword, err = derivedPassword(o.Hierarchy.IssuingKey); err != nil {
			return nil, err
		}
	}
	c.store = &store{db: db, issuerID: id, now: o.Now}
	limits := guestcode.DefaultLimits
	if o.CodeLimits != nil {
		limits = *o.CodeLimits
	}
	c.guest = guestState{enabled: o.SecurityCodes, limits: guestcode.NewLimiter(limits, o.Now)}
	if err := c.store.registerCA(ctx, "root", o.Hierarchy.Root); err != nil {
		return nil, err
	}
	if err := c.store.registerCA(ctx, "issuing", o.Hierarchy.Issuing); err != nil {
		return nil, err
	}
	if c.access, err = access.Open(ctx, db); err != nil {
		return nil, err
	}
	if err := c.BootstrapAccess(ctx); err != nil {
		return nil, err
	}
	c.auth, err = authority.NewEmbedded(
		authority.WithConfig(&config.Config{
			CRL: &config.CRLConfig{
				Enabled:          true,
				GenerateOnRevoke: true,
				CacheDuration:    &provisioner.Duration{Duration: o.CRLValidity},
				IDPurl:           c.urls.crl,
			},
		}),
		authority.WithX509Signer(o.Hierarchy.Issuing, o.Hierarchy.IssuingKey),
		authority.WithX509RootCerts(o.Hierarchy.Root),
		authority.WithDatabase(c.store),
		authority.WithQuietInit(),
	)
	if err != nil {
		return nil, fmt.Errorf("starting the embedded authority: %w", err)
	}
	return c, nil
}

// BootstrapAccess makes the holders of the site's valid admin certificates Full
// Administrators while the site has no user (access.Store.Bootstrap): site init calls it
// after issuing the first admin's certificate, and New on every start, which matters once,
// for a site made before users existed.
func (c *CA) BootstrapAccess(ctx context.Context) error {
	rows, err := c.db.Query(ctx, `SELECT DISTINCT subject FROM certificates c WHERE profile = ? AND not_after > ?
		AND NOT EXISTS (SELECT 1 FROM revoked_certificates r WHERE r.serial = c.serial) ORDER BY subject`, string(Admin), c.now().Unix())
	if err != nil {
		return fmt.Errorf("bootstrapping access: %w", err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return fmt.Errorf("bootstrapping access: %w", err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("bootstrapping access: %w", err)
	}
	if did, err := c.access.Bootstrap(ctx, names, "bootstrap"); err != nil {
		return err
	} else if did {
		c.log.Info().Strs("users", names).Str("role", access.FullAdministrator).Msg("first users made from the admin certificates")
	}
	return nil
}

// Access returns the store of users, roles and assignments.
func (c *CA) Access() *access.Store { return c.access }

// Root returns the site's root certificate.
func (c *CA) Root() *x509.Certificate { return c.h.Root }

// Issuing returns the issuing CA certificate.
func (c *CA) Issuing() *x509.Certificate { return c.h.Issuing }

// IssuerID returns the issuing CA's id as used in the public URLs.
func (c *CA) IssuerID() string { return c.issuerID }

// issuer is the smallstep provisioner of one signing: its ID says who authorized the
// certificate ("token:<id>", "admin:<name>", "ca"), which the store records and, for a
// token, consumes in the same transaction. Only the ID methods are called by smallstep
// for the options we pass.
type issuer struct {
	provisioner.Interface
	id string
}

func (i issuer) GetID() string             { return i.id }
func (i issuer) GetIDForToken() string     { return i.id }
func (i issuer) GetName() string           { return i.id }
func (i issuer) GetType() provisioner.Type { return provisioner.TypeJWK }

// sign issues a certificate for csr with the contents of t.
func (c *CA) sign(ctx context.Context, csr *x509.CertificateRequest, t Template, by string) ([]*x509.Certificate, error) {
	now := c.now().UTC().Truncate(time.Second)
	notBefore, notAfter := now.Add(-time.Minute), now.Add(c.validity[t.Profile])
	if notAfter.After(c.h.Issuing.NotAfter) {
		notAfter = c.h.Issuing.NotAfter
	}
	modify := provisioner.CertificateModifierFunc(func(cert *x509.Certificate, _ provisioner.SignOptions) error {
		t.apply(cert, c.siteCode, notBefore, notAfter, c.urls)
		return nil
	})
	chain, err := c.auth.SignWithContext(ctx, csr, provisioner.SignOptions{}, issuer{id: by}, modify)
	if err != nil {
		return nil, unwrapStep(err)
	}
	return chain, nil
}

// unwrapStep returns our own sentinel from inside a smallstep error when there is one,
// so callers can tell a spent token from a failure.
func unwrapStep(err error) error {
	var r refusal
	if errors.As(err, &r) {
		return r.err
	}
	for _, s := range []error{ErrTokenUsed, ErrTokenExpired, ErrTokenRevoked, ErrTokenInvalid} {
		if errors.Is(err, s) {
			return fmt.Errorf("%w", s)
		}
	}
	return err
}

// Enroll issues a certificate for a CSR presented with an enrollment token. The token must
// be for the requested profile (client when empty) and, when bound to a subject, the CSR
// must name it. The token is consumed in the transaction that records the certificate.
func (c *CA) Enroll(ctx context.Context, secret, profile string, csrData []byte) ([]*x509.Certificate, error) {
	return c.EnrollWith(ctx, Enrollment{Secret: secret, Profile: profile, CSR: csrData})
}

// Enrollment is what a device presents to enroll.
type Enrollment struct {
	Secret  string // the token
	Profile string // client when empty
	CSR     []byte // PEM
	// NameFromToken: the CSR's common name is only a default (the host name); a token bound
	// to a subject names the certificate instead. Without it, a CSR naming another subject
	// than the token's is refused.
	NameFromToken bool
}

// EnrollWith is Enroll with every option. A re-enroll token (TokenSpec.DeviceID) makes a
// certificate for its device's id, and only while the device is not blocked; any other
// token makes a new device id. The device id is never taken from the request.
func (c *CA) EnrollWith(ctx context.Context, e Enrollment) ([]*x509.Certificate, error) {
	profile := e.Profile
	if profile == "" {
		profile = string(Client)
	}
	p, err := ParseProfile(profile)
	if err != nil {
		return nil, err
	}
	tok, err := c.lookupToken(ctx, e.Secret)
	if err != nil {
		return nil, err
	}
	if tok.Profile != p {
		return nil, fmt.Errorf("%w: token %s is for the %s profile, the request asks for %s", ErrWrongProfile, tok.ID, tok.Profile, p)
	}
	if p == Admin {
		// A user's login: only for a user of the site who is enabled, by a token bound to
		// their name (an unbound admin token of an older site could name anyone).
		u, err := c.access.User(ctx, tok.Subject)
		if tok.Subject == "" || err != nil || u.DisabledAt != nil {
			return nil, fmt.Errorf("%w: token %s is not a login token of an enabled user; `ibcm user token NAME` makes one", ErrTokenInvalid, tok.ID)
		}
	}
	// The signer verifies the request's signature before anything else: once is enough.
	csr, err := parseCSR(e.CSR, p)
	if err != nil {
		return nil, err
	}
	named := csr
	if e.NameFromToken && tok.Subject != "" {
		cp := *csr
		cp.Subject.CommonName = tok.Subject
		named = &cp
	}
	t, err := TemplateFromCSR(named, p, tok.Subject, c.rand)
	if err != nil {
		return nil, err
	}
	if tok.DeviceID != "" {
		if err := c.store.checkDevice(func(q string, args ...any) *sql.Row { return c.db.QueryRow(ctx, q, args...) }, tok.DeviceID, false); err != nil {
			return nil, unwrapStep(err)
		}
		t.URIs = []*url.URL{deviceURIFor(tok.DeviceID)}
		c.store.reenrolling.begin(tok.DeviceID) // recorded only after a check under the device's lock
		defer c.store.reenrolling.end(tok.DeviceID)
	}
	chain, err := c.sign(ctx, csr, t, "token:"+tok.ID)
	switch {
	case err == nil:
	case isRefusal(err):
		c.tokens.forget(tok.ID) // spent, revoked or expired: refuse the next ones before signing
	default:
		if sigErr := csr.CheckSignature(); sigErr != nil {
			return nil, fmt.Errorf("%w: signature does not verify: %v", ErrBadCSR, sigErr)
		}
	}
	return chain, err
}

// Issue issues a certificate an admin asked for; the CSR proves possession of the key.
func (c *CA) Issue(ctx context.Context, spec IssueSpec, csrData []byte, by string) ([]*x509.Certificate, error) {
	if spec.Profile == ContentSigner {
		return nil, errContentSignerProfile
	}
	if spec.Profile == Guest {
		return nil, errGuestProfile
	}
	csr, err := CheckCSR(csrData, spec.Profile)
	if err != nil {
		return nil, err
	}
	t, err := TemplateFromSpec(spec, c.siteCode, csr, c.rand)
	if err != nil {
		return nil, err
	}
	return c.sign(ctx, csr, t, by)
}

// Reasons maps the RFC 5280 reason names `ibcm ca revoke` accepts to their codes.
// certificateHold is left out: a revocation in ibcm is final.
var Reasons = map[string]int{
	"unspecified":          0,
	"keyCompromise":        1,
	"cACompromise":         2,
	"affiliationChanged":   3,
	"superseded":           4,
	"cessationOfOperation": 5,
	"privilegeWithdrawn":   9,
	"aACompromise":         10,
}

// ReasonName returns the RFC 5280 name of a reason code.
func ReasonName(code int) string {
	for n, c := range Reasons {
		if c == code {
			return n
		}
	}
	return fmt.Sprintf("reason-%d", code)
}

// Revoke revokes a certificate with an RFC 5280 reason (see RevokeWith).
func (c *CA) Revoke(ctx context.Context, serial string, reason string) error {
	_, err := c.RevokeWith(ctx, serial, reason, false)
	return err
}

// Revocation says what RevokeWith did.
type Revocation struct {
	Serial string // decimal
	Reason string // as RFC 5280 names it
	// ChangedFrom is the earlier reason of a certificate that was already revoked, which a
	// keyCompromise revocation changed to keyCompromise.
	ChangedFrom string
	// Also lists the other certificates (decimal serials) revoked with it, or whose
	// reason was changed to keyCompromise: its successors and, for keyCompromise, every
	// certificate of the same key and theirs.
	Also []string
}

// RevokeWith revokes a certificate with an RFC 5280 reason and, with successors, every
// certificate renewed from it, transitively (blocking a device revokes so). keyCompromise
// always revokes the successors, and every certificate of the same key too; of a
// certificate already revoked for another reason it changes the reason to keyCompromise
// and revokes the rest (see store.revoke). Every revocation is announced to every server
// of the site and a new CRL is published before RevokeWith returns; a revocation that
// finds nothing to do fails with ErrAlreadyRevoked.
func (c *CA) RevokeWith(ctx context.Context, serial, reason string, successors bool) (Revocation, error) {
	code, ok := Reasons[reason]
	if !ok {
		for n := range Reasons {
			if strings.EqualFold(n, reason) {
				code, reason, ok = Reasons[n], n, true
			}
		}
	}
	if !ok {
		return Revocation{}, fmt.Errorf("%w %q: use one of unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn, aACompromise", ErrBadReason, reason)
	}
	cert, err := c.store.certificate(ctx, serial)
	if err != nil {
		return Revocation{}, err
	}
	// The store records the revocation directly rather than through smallstep's
	// authority.Revoke, whose only other work (a no-op for its soft CAS) is the CRL
	// below, so that it can say what it did and revoke the successors with a flag.
	out, err := c.store.revoke(ctx, &stepdb.RevokedCertificateInfo{
		Serial: serial, ReasonCode: code, Reason: reason, MTLS: true,
		RevokedAt: c.now().UTC().Truncate(time.Second), ExpiresAt: cert.NotAfter,
	}, successors)
	// Once this returns, no OCSP answer cached before about a certificate it revoked is
	// served again (the other CA servers of the site learn of it from its announcement).
	c.ocsp.cache.forget(serial)
	for _, sn := range out.Also {
		c.ocsp.cache.forget(sn)
	}
	if err != nil {
		if (successors || code == reasonKeyCompromise) && !errors.Is(err, ErrAlreadyRevoked) {
			c.ocsp.cache.forgetAll() // a failed commit may have committed: it cannot say what
		}
		if errors.Is(err, ErrAlreadyRevoked) || errors.Is(err, ErrNotFound) {
			return Revocation{}, err
		}
		return Revocation{}, fmt.Errorf("revoking %s: %w", wire.FormatDecimalSerial(serial), err)
	}
	if err := c.RefreshCRL(); err != nil {
		return Revocation{}, fmt.Errorf("revoked %s, but publishing the new CRL failed: %w", wire.FormatDecimalSerial(serial), err)
	}
	return Revocation{Serial: serial, Reason: reason, ChangedFrom: out.ChangedFrom, Also: out.Also}, nil
}

// ocspKey makes the OCSP responder's key; it lives only in memory.
func ocspKey(rnd io.Reader) (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rnd)
}
