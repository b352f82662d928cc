package ca

import (
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Profile names a kind of certificate the CA issues. The profile, not the request, decides
// what a certificate may say.
type Profile string

// The profiles of DESIGN.md §5.
const (
	Client     Profile = "client"
	SiteServer Profile = "site-server"
	Admin      Profile = "admin"
	OCSP       Profile = "ocsp"
	// ContentSigner signs the manifests of content (DESIGN.md §8): EKU codeSigning only,
	// CN "content-signer", URI urn:ibcm:site:<code>:role:content. Only the CA makes it, for
	// a key it makes and keeps itself (content.go); no admin route or token issues one.
	ContentSigner Profile = "content-signer"
	// Guest is the sharer of an unenrolled device (guest.go): one hour, CN the sharer's
	// local user name, URI urn:ibcm:guest:<session>, and the guest-only EKU
	// wire.OIDGuestEKU instead of clientAuth. Only a security code's exchange issues one.
	Guest Profile = "guest"
)

// Profiles lists every profile in a stable order.
var Profiles = []Profile{Client, SiteServer, Admin, OCSP, ContentSigner, Guest}

// DefaultValidity is each profile's certificate lifetime unless configured otherwise.
var DefaultValidity = map[Profile]time.Duration{
	Client:     30 * 24 * time.Hour,
	SiteServer: 365 * 24 * time.Hour,
	Admin:      90 * 24 * time.Hour,
	OCSP:       24 * time.Hour,
	// A manifest outlives its signer's certificate (it is checked at its creation time).
	ContentSigner: 365 * 24 * time.Hour,
	Guest:         time.Hour,
}

// ParseProfile checks a profile name.
func ParseProfile(s string) (Profile, error) {
	for _, p := range Profiles {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %q (client, site-server, admin, ocsp, content-signer or guest)", ErrBadProfile, s)
}

// Roles a site-server certificate can name.
var serverRoles = map[string]bool{"ca": true, "mp": true, "dp": true}

// extKeyUsages is what each profile's certificates carry, and so the most a request for
// that profile may ask for.
func (p Profile) extKeyUsages() []x509.ExtKeyUsage {
	switch p {
	case SiteServer:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	case OCSP:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}
	case ContentSigner:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}
	case Guest:
		return nil // only wire.OIDGuestEKU (apply)
	}
	return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
}

// ProfileOf tells which profile issued a certificate, from what the profile put in it.
func ProfileOf(c *x509.Certificate) Profile {
	if wire.IsGuestCertificate(c) {
		return Guest
	}
	for _, e := range c.ExtKeyUsage {
		if e == x509.ExtKeyUsageCodeSigning {
			return ContentSigner
		}
	}
	switch trust.Identify(c).Kind {
	case trust.KindDevice:
		return Client
	case trust.KindServer:
		return SiteServer
	case trust.KindUser:
		return Admin
	}
	for _, e := range c.ExtKeyUsage {
		if e == x509.ExtKeyUsageOCSPSigning {
			return OCSP
		}
	}
	return ""
}

// Template is what a certificate will say. The CA builds it from the profile and the
// checked request; nothing is copied from a CSR unchecked.
type Template struct {
	Profile    Profile
	CommonName string
	DNS        []string
	IPs        []net.IP
	URIs       []*url.URL
}

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)
	labelRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
)

// CheckName checks a common name: 1 to 64 letters, digits, '.', '_', '@' or '-'.
func CheckName(s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %q: 1-64 letters, digits, '.', '_', '@', '-', starting with a letter or digit", ErrBadSubject, s)
	}
	return nil
}

// CheckDNSName checks a host name (no wildcards, no trailing dot).
func CheckDNSName(s string) error {
	if len(s) == 0 || len(s) > 253 {
		return fmt.Errorf("%w: DNS name %q: must be 1-253 characters", ErrForbiddenSAN, s)
	}
	for _, l := range strings.Split(s, ".") {
		if !labelRE.MatchString(l) {
			return fmt.Errorf("%w: DNS name %q: label %q is not a valid host name label", ErrForbiddenSAN, s, l)
		}
	}
	return nil
}

var (
	oidExtBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtSAN              = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtSKI              = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidOCSPNoCheck         = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}
	oidEKU                 = map[string]x509.ExtKeyUsage{
		"1.3.6.1.5.5.7.3.1": x509.ExtKeyUsageServerAuth,
		"1.3.6.1.5.5.7.3.2": x509.ExtKeyUsageClientAuth,
		"1.3.6.1.5.5.7.3.9": x509.ExtKeyUsageOCSPSigning,
	}
)

// CheckCSR parses a PEM or DER certificate request and refuses one that could widen the
// profile: a bad signature, a weak key, a request for CA:true, for key usages or extended
// key usages the profile does not give, or for extensions the CA does not know.
func CheckCSR(data []byte, p Profile) (*x509.CertificateRequest, error) {
	csr, err := parseCSR(data, p)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrBadCSR, err)
	}
	return csr, nil
}

// parseCSR is CheckCSR without verifying the request's signature, for the callers whose
// signer verifies it first (smallstep's signX509 does, before anything else).
func parseCSR(data []byte, p Profile) (*x509.CertificateRequest, error) {
	der := data
	if b := pemBlock(data, "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"); b != nil {
		der = b
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	allowed := map[x509.ExtKeyUsage]bool{}
	for _, e := range p.extKeyUsages() {
		allowed[e] = true
	}
	for _, ext := range csr.Extensions {
		switch {
		case ext.Id.Equal(oidExtSAN), ext.Id.Equal(oidExtSKI):
			// names are checked by the profile; a key identifier is recomputed
		case ext.Id.Equal(oidExtBasicConstraints):
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			if _, err := asn1.Unmarshal(ext.Value, &bc); err != nil {
				return nil, fmt.Errorf("%w: basic constraints: %v", ErrBadCSR, err)
			}
			if bc.IsCA {
				return nil, fmt.Errorf("%w: the request asks for CA:TRUE; the %s profile issues only end-entity certificates", ErrForbiddenUsage, p)
			}
		case ext.Id.Equal(oidExtExtKeyUsage):
			var oids []asn1.ObjectIdentifier
			if _, err := asn1.Unmarshal(ext.Value, &oids); err != nil {
				return nil, fmt.Errorf("%w: extended key usage: %v", ErrBadCSR, err)
			}
			for _, o := range oids {
				if eku, ok := oidEKU[o.String()]; !ok || !allowed[eku] {
					return nil, fmt.Errorf("%w: the request asks for extended key usage %s (%s); the %s profile gives only %s",
						ErrForbiddenUsage, o, ekuName(o.String()), p, ekuNames(p.extKeyUsages()))
				}
			}
		case ext.Id.Equal(oidExtKeyUsage):
			var bits asn1.BitString
			if _, err := asn1.Unmarshal(ext.Value, &bits); err != nil {
				return nil, fmt.Errorf("%w: key usage: %v", ErrBadCSR, err)
			}
			// digitalSignature(0), keyEncipherment(2), keyAgreement(4) are end-entity usages;
			// keyCertSign(5) and cRLSign(6) are the CA's alone.
			for _, bit := range []int{1, 3, 5, 6, 7, 8} {
				if bits.At(bit) == 1 {
					return nil, fmt.Errorf("%w: the request asks for key usage bit %d; only digitalSignature, keyEncipherment and keyAgreement are allowed", ErrForbiddenUsage, bit)
				}
			}
		default:
			if ext.Critical {
				return nil, fmt.Errorf("%w: the request has a critical extension %s the CA does not know", ErrForbiddenUsage, ext.Id)
			}
		}
	}
	return csr, nil
}

func ekuName(oid string) string {
	switch oid {
	case "1.3.6.1.5.5.7.3.1":
		return "serverAuth"
	case "1.3.6.1.5.5.7.3.2":
		return "clientAuth"
	case "1.3.6.1.5.5.7.3.9":
		return "OCSPSigning"
	case "1.3.6.1.5.5.7.3.3":
		return "codeSigning"
	case "1.3.6.1.5.5.7.3.4":
		return "emailProtection"
	}
	return "unknown"
}

func ekuNames(ekus []x509.ExtKeyUsage) string {
	var names []string
	for oid, e := range oidEKU {
		for _, want := range ekus {
			if e == want {
				names = append(names, ekuName(oid))
			}
		}
	}
	return strings.Join(names, "+")
}

// TemplateFromCSR builds the certificate contents for a token enrollment. For the client
// profile the CSR's common name is the device name and its one optional DNS name the
// device's FQDN (which must begin with that name); the CA assigns the device id. For the
// admin profile the CSR names the user and carries no alternative names. bound, when set,
// is the subject the token was made for.
func TemplateFromCSR(csr *x509.CertificateRequest, p Profile, bound string, rnd io.Reader) (Template, error) {
	cn := csr.Subject.CommonName
	if err := CheckName(cn); err != nil {
		return Template{}, err
	}
	if bound != "" && cn != bound {
		return Template{}, fmt.Errorf("%w: the request names %q, the token was made for %q", ErrSubjectMismatch, cn, bound)
	}
	if n := len(csr.IPAddresses) + len(csr.EmailAddresses) + len(csr.URIs); n > 0 {
		return Template{}, fmt.Errorf("%w: %s certificates carry no IP, e-mail or URI names (the CA assigns the identity URI)", ErrForbiddenSAN, p)
	}
	switch p {
	case Client:
		if len(csr.DNSNames) > 1 {
			return Template{}, fmt.Errorf("%w: a client certificate carries one DNS name (the device's FQDN); the request has %d: %s",
				ErrForbiddenSAN, len(csr.DNSNames), strings.Join(csr.DNSNames, ", "))
		}
		for _, d := range csr.DNSNames {
			if err := CheckDNSName(d); err != nil {
				return Template{}, err
			}
			if !strings.EqualFold(d, cn) && !strings.HasPrefix(strings.ToLower(d), strings.ToLower(cn)+".") {
				return Template{}, fmt.Errorf("%w: DNS name %q is not the FQDN of device %q", ErrForbiddenSAN, d, cn)
			}
		}
		return Template{Profile: Client, CommonName: cn, DNS: csr.DNSNames, URIs: []*url.URL{deviceURI(rnd)}}, nil
	case Admin:
		if len(csr.DNSNames) > 0 {
			return Template{}, fmt.Errorf("%w: admin certificates carry no DNS names", ErrForbiddenSAN)
		}
		return Template{Profile: Admin, CommonName: cn, URIs: []*url.URL{userURI(cn)}}, nil
	}
	return Template{}, fmt.Errorf("%w: enrollment tokens are for the client and admin profiles; %s certificates are issued with `ibcm ca issue`", ErrBadProfile, p)
}

// IssueSpec is what an admin asks `ibcm ca issue` for.
type IssueSpec struct {
	Profile Profile
	Subject string
	DNS     []string // for site-server also IP addresses
	Role    string   // site-server: ca, mp or dp
}

// TemplateFromSpec builds the certificate contents an admin asked for. The CSR only proves
// possession of the key; its names must not go beyond the spec.
func TemplateFromSpec(s IssueSpec, siteCode string, csr *x509.CertificateRequest, rnd io.Reader) (Template, error) {
	subject := s.Subject
	if subject == "" {
		subject = csr.Subject.CommonName
	}
	if err := CheckName(subject); err != nil {
		return Template{}, err
	}
	names := s.DNS
	if len(names) == 0 {
		names = csr.DNSNames
		for _, ip := range csr.IPAddresses {
			names = append(names, ip.String())
		}
	}
	if len(csr.EmailAddresses)+len(csr.URIs) > 0 {
		return Template{}, fmt.Errorf("%w: the request carries e-mail or URI names; the CA assigns the identity URI", ErrForbiddenSAN)
	}
	if s.Profile == ContentSigner {
		return Template{}, errContentSignerProfile
	}
	t := Template{Profile: s.Profile, CommonName: subject}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			if s.Profile != SiteServer {
				return Template{}, fmt.Errorf("%w: only site-server certificates carry IP addresses", ErrForbiddenSAN)
			}
			t.IPs = append(t.IPs, ip)
			continue
		}
		if err := CheckDNSName(n); err != nil {
			return Template{}, err
		}
		t.DNS = append(t.DNS, strings.ToLower(n))
	}
	if s.Role != "" && s.Profile != SiteServer {
		return Template{}, fmt.Errorf("%w: --role is for site-server certificates", ErrBadProfile)
	}
	switch s.Profile {
	case Client:
		if len(t.DNS) > 1 {
			return Template{}, fmt.Errorf("%w: a client certificate carries one DNS name (the device's FQDN)", ErrForbiddenSAN)
		}
		t.URIs = []*url.URL{deviceURI(rnd)}
	case SiteServer:
		if !serverRoles[s.Role] {
			return Template{}, fmt.Errorf("%w: site-server certificates need a role: ca, mp or dp (got %q)", ErrBadProfile, s.Role)
		}
		if len(t.DNS)+len(t.IPs) == 0 {
			return Template{}, fmt.Errorf("%w: a site-server certificate needs at least one DNS name (--dns)", ErrForbiddenSAN)
		}
		t.URIs = []*url.URL{{Scheme: "urn", Opaque: "ibcm:site:" + siteCode + ":role:" + s.Role}}
	case Admin:
		if len(t.DNS) > 0 {
			return Template{}, fmt.Errorf("%w: admin certificates carry no DNS names", ErrForbiddenSAN)
		}
		t.URIs = []*url.URL{userURI(subject)}
	case OCSP:
		if len(t.DNS) > 0 {
			return Template{}, fmt.Errorf("%w: OCSP signing certificates carry no DNS names", ErrForbiddenSAN)
		}
	}
	return t, nil
}

// apply writes the template and the profile's fixed parts onto a certificate about to be
// signed, replacing whatever the request put there.
func (t Template) apply(c *x509.Certificate, siteCode string, notBefore, notAfter time.Time, urls issuerURLs) {
	c.Subject.CommonName = t.CommonName
	c.Subject.Organization = []string{"ibcm site " + siteCode}
	c.Subject.OrganizationalUnit = nil
	c.Subject.Country, c.Subject.Province, c.Subject.Locality = nil, nil, nil
	c.Subject.StreetAddress, c.Subject.PostalCode, c.Subject.SerialNumber = nil, nil, ""
	c.Subject.Names, c.Subject.ExtraNames = nil, nil
	c.DNSNames, c.IPAddresses, c.URIs, c.EmailAddresses = t.DNS, t.IPs, t.URIs, nil
	c.NotBefore, c.NotAfter = notBefore, notAfter
	c.BasicConstraintsValid, c.IsCA, c.MaxPathLen, c.MaxPathLenZero = true, false, 0, false
	c.KeyUsage = x509.KeyUsageDigitalSignature
	if _, ok := c.PublicKey.(*rsa.PublicKey); ok && t.Profile != OCSP && t.Profile != ContentSigner {
		c.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	c.ExtKeyUsage, c.UnknownExtKeyUsage = t.Profile.extKeyUsages(), nil
	if t.Profile == Guest {
		c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{wire.OIDGuestEKU}
	}
	c.ExtraExtensions, c.PolicyIdentifiers, c.Policies = nil, nil, nil
	if t.Profile == OCSP {
		// id-pkix-ocsp-nocheck: clients need not check the responder's own status.
		c.ExtraExtensions = []pkix.Extension{{Id: oidOCSPNoCheck, Value: asn1.NullBytes}}
	}
	c.CRLDistributionPoints = []string{urls.crl}
	c.OCSPServer = []string{urls.ocsp}
	c.IssuingCertificateURL = []string{urls.issuer}
}

func deviceURI(rnd io.Reader) *url.URL {
	b := make([]byte, 16)
	if _, err := io.ReadFull(rnd, b); err != nil {
		panic("ca: reading randomness: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40 // UUID version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	id := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	return &url.URL{Scheme: "urn", Opaque: "ibcm:device:" + id}
}

// deviceURIFor is the identity URI of an existing device (a re-enroll token's).
func deviceURIFor(id string) *url.URL {
	return &url.URL{Scheme: "urn", Opaque: "ibcm:device:" + id}
}

func userURI(name string) *url.URL {
	return &url.URL{Scheme: "urn", Opaque: "ibcm:user:" + name}
}
