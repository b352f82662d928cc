// Package manifest owns the signed manifest of a package version (DESIGN.md §8): its
// encoding, the strict checks of everything in it, the CA's signature and its verification
// by whoever is about to trust the content (the agent, a pull-DP), and the one function that
// turns a manifest path into a file below a target directory. It imports only the standard
// library and internal/wire: the agent links it.
package manifest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// Limits of a manifest.
const (
	MaxSigned        = 8 << 20 // a SignedManifest in JSON
	MaxFiles         = 10000
	MaxPath          = 1024
	MaxCommand       = 8192
	DefaultChunkSize = 4 << 20
	MinChunkSize     = 64 << 10
	MaxChunkSize     = 64 << 20
	MaxInstallTime   = 24 * time.Hour
	MaxFileSize      = 1 << 40
)

// ContentRole is the role in the URI of a content-signer certificate:
// urn:ibcm:site:<code>:role:content.
const ContentRole = "content"

// Errors callers tell apart.
var (
	ErrMalformed = errors.New("manifest malformed")
	ErrSignature = errors.New("manifest signature not valid")
	ErrSigner    = errors.New("manifest not signed by this site's content signer")
	ErrPinned    = errors.New("manifest does not match the pinned SHA-256")
)

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$`)
	hashRE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidName and ValidVersion check a package name and version as they appear in routes.
func ValidName(s string) bool    { return nameRE.MatchString(s) }
func ValidVersion(s string) bool { return versionRE.MatchString(s) }

// ValidHash reports whether s is a lowercase hex SHA-256 (a blob address).
func ValidHash(s string) bool { return hashRE.MatchString(s) }

// Hash is the hex SHA-256 of b: of a blob, a chunk, or the signed manifest bytes (the pin).
func Hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Encode returns the bytes that are signed: the JSON of m after Check.
func Encode(m *wire.Manifest) ([]byte, error) {
	if err := Check(m); err != nil {
		return nil, err
	}
	return json.Marshal(m)
}

// Decode parses signed manifest bytes strictly (no unknown field, nothing after the
// object) and checks them.
func Decode(b []byte) (*wire.Manifest, error) {
	var m wire.Manifest
	if err := strictJSON(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := Check(&m); err != nil {
		return nil, err
	}
	return &m, nil
}

// ParseSigned parses a SignedManifest in JSON strictly, within MaxSigned.
func ParseSigned(b []byte) (*wire.SignedManifest, error) {
	if len(b) > MaxSigned {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformed, len(b), MaxSigned)
	}
	var sm wire.SignedManifest
	if err := strictJSON(b, &sm); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	switch {
	case len(sm.Manifest) == 0:
		return nil, fmt.Errorf("%w: no manifest", ErrMalformed)
	case len(sm.Signature) == 0 || len(sm.Signature) > 1024:
		return nil, fmt.Errorf("%w: no signature", ErrMalformed)
	case len(sm.Chain) == 0 || len(sm.Chain) > 4:
		return nil, fmt.Errorf("%w: 1 to 4 certificates in the chain", ErrMalformed)
	}
	return &sm, nil
}

// ReadSigned reads and parses a SignedManifest from r, refusing more than MaxSigned bytes.
func ReadSigned(r io.Reader) (*wire.SignedManifest, []byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSigned+1))
	if err != nil {
		return nil, nil, err
	}
	sm, err := ParseSigned(b)
	return sm, b, err
}

func strictJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("data after the JSON object")
	}
	var extra json.RawMessage
	if err := d.Decode(&extra); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

// Check tells whether a manifest is well formed, naming the bad field.
func Check(m *wire.Manifest) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
	}
	switch {
	case !nameRE.MatchString(m.Name):
		return bad("name %q: lowercase letters, digits, '.', '_', '-', up to 64", m.Name)
	case !versionRE.MatchString(m.Version):
		return bad("version %q: letters, digits, '.', '_', '+', '~', '-', up to 64", m.Version)
	case m.ChunkSize < MinChunkSize || m.ChunkSize > MaxChunkSize:
		return bad("chunk_size %d: %d to %d", m.ChunkSize, MinChunkSize, MaxChunkSize)
	case len(m.Files) == 0 || len(m.Files) > MaxFiles:
		return bad("files: 1 to %d", MaxFiles)
	case m.Created.IsZero():
		return bad("created is required")
	}
	seen := map[string]bool{}
	for i, f := range m.Files {
		clean, err := CleanPath(f.Path)
		if err != nil {
			return bad("files[%d]: %v", i, err)
		}
		// A file and a directory of the same name cannot both be written.
		for p := clean; p != "."; p = path.Dir(p) {
			if seen[p] {
				return bad("files[%d]: path %q collides with another file", i, f.Path)
			}
		}
		seen[clean] = true
		switch {
		case f.Size < 0 || f.Size > MaxFileSize:
			return bad("files[%d] %s: size %d", i, f.Path, f.Size)
		case f.Mode&^0o755 != 0:
			return bad("files[%d] %s: mode %o: permission bits up to 0755 only", i, f.Path, f.Mode)
		case !hashRE.MatchString(f.SHA256):
			return bad("files[%d] %s: sha256 is not 64 lowercase hex digits", i, f.Path)
		}
		want := (f.Size + m.ChunkSize - 1) / m.ChunkSize
		if int64(len(f.Chunks)) != want {
			return bad("files[%d] %s: %d chunk hashes for %d bytes in chunks of %d (want %d)", i, f.Path, len(f.Chunks), f.Size, m.ChunkSize, want)
		}
		for j, c := range f.Chunks {
			if !hashRE.MatchString(c) {
				return bad("files[%d] %s: chunks[%d] is not 64 lowercase hex digits", i, f.Path, j)
			}
		}
	}
	for p := range seen {
		for q := path.Dir(p); q != "."; q = path.Dir(q) {
			if seen[q] {
				return bad("path %q is below the file %q", p, q)
			}
		}
	}
	if in := m.Install; in != nil {
		if strings.TrimSpace(in.Command) == "" || len(in.Command) > MaxCommand || strings.ContainsRune(in.Command, 0) {
			return bad("install.command: 1 to %d bytes, no NUL", MaxCommand)
		}
		d, err := time.ParseDuration(in.Timeout)
		if err != nil || d <= 0 || d > MaxInstallTime {
			return bad("install.timeout %q: a Go duration above 0 and up to %s", in.Timeout, MaxInstallTime)
		}
		if len(in.SuccessCodes) > 256 {
			return bad("install.success_codes: at most 256")
		}
		for _, c := range in.SuccessCodes {
			if c < 0 || c > 255 {
				return bad("install.success_codes: %d is not an exit code 0–255", c)
			}
		}
	}
	return nil
}

// CleanPath checks a manifest path: relative, slash-separated, no "." or ".." element, no
// empty element, no NUL or backslash, at most MaxPath bytes. It returns it unchanged.
func CleanPath(p string) (string, error) {
	switch {
	case p == "" || len(p) > MaxPath:
		return "", fmt.Errorf("path: 1 to %d bytes", MaxPath)
	case strings.HasPrefix(p, "/"):
		return "", fmt.Errorf("path %q is absolute", p)
	case strings.ContainsAny(p, "\x00\\"):
		return "", fmt.Errorf("path %q holds a NUL or a backslash", p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == "" || el == "." || el == ".." {
			return "", fmt.Errorf("path %q: empty, '.' or '..' element (it must stay below the target directory)", p)
		}
	}
	if path.Clean(p) != p {
		return "", fmt.Errorf("path %q is not clean", p)
	}
	return p, nil
}

// Target returns where the manifest path p goes below dir, refusing any path that would
// leave dir. (Callers also open with O_NOFOLLOW and create directories themselves, so a
// symlink planted below dir cannot redirect a write.)
func Target(dir, p string) (string, error) {
	if _, err := CleanPath(p); err != nil {
		return "", err
	}
	t := filepath.Join(dir, filepath.FromSlash(p))
	rel, err := filepath.Rel(dir, t)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return "", fmt.Errorf("path %q leaves %s", p, dir)
	}
	return t, nil
}

// SuccessCodes returns the exit codes that count as success ([0] when none are given).
func SuccessCodes(in *wire.InstallSpec) []int {
	if in == nil || len(in.SuccessCodes) == 0 {
		return []int{0}
	}
	return in.SuccessCodes
}

// Sign encodes m and signs it with key, whose certificate is chain[0] (a content-signer
// certificate of the site; the CA calls this).
func Sign(m *wire.Manifest, key crypto.Signer, chain []*x509.Certificate) (*wire.SignedManifest, error) {
	payload, err := Encode(m)
	if err != nil {
		return nil, err
	}
	if len(chain) == 0 {
		return nil, errors.New("manifest: no signer certificate")
	}
	var sig []byte
	switch key.Public().(type) {
	case ed25519.PublicKey:
		sig, err = key.Sign(rand.Reader, payload, crypto.Hash(0))
	case *rsa.PublicKey:
		sum := sha256.Sum256(payload)
		sig, err = key.Sign(rand.Reader, sum[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	case *ecdsa.PublicKey:
		sum := sha256.Sum256(payload)
		sig, err = key.Sign(rand.Reader, sum[:], crypto.SHA256)
	default:
		return nil, fmt.Errorf("manifest: unsupported signer key %T", key.Public())
	}
	if err != nil {
		return nil, fmt.Errorf("manifest: signing: %w", err)
	}
	sm := &wire.SignedManifest{Manifest: payload, Signature: sig}
	for _, c := range chain {
		sm.Chain = append(sm.Chain, c.Raw)
	}
	return sm, nil
}

// Trust is what a verifier trusts: the site's roots (pinned by the agent at enrollment),
// the site code, and optionally a revocation check of the signer.
type Trust struct {
	Roots    *x509.CertPool
	SiteCode string
	// Revoked, when set, refuses a signer whose certificate it reports revoked.
	Revoked func(*x509.Certificate) bool
	// Now bounds how far in the future a manifest may say it was created (5 minutes).
	Now func() time.Time
}

// Verify checks a signed manifest and returns it decoded: the chain ends at one of t.Roots,
// the leaf carries EKU codeSigning and names this site's content role, was valid when the
// manifest was created (so a manifest outlives its signer's certificate, as code signing
// with a timestamp does), is not revoked, and signed exactly these bytes. When pin is not
// empty, the SHA-256 of the signed bytes must equal it.
func Verify(sm *wire.SignedManifest, t Trust, pin string) (*wire.Manifest, error) {
	if pin != "" && Hash(sm.Manifest) != pin {
		return nil, fmt.Errorf("%w: got %s, the policy pins %s", ErrPinned, Hash(sm.Manifest), pin)
	}
	certs := make([]*x509.Certificate, 0, len(sm.Chain))
	for i, der := range sm.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: chain[%d]: %v", ErrSigner, i, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no certificate", ErrSigner)
	}
	m, err := Decode(sm.Manifest)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if t.Now != nil {
		now = t.Now()
	}
	if m.Created.After(now.Add(5 * time.Minute)) {
		return nil, fmt.Errorf("%w: created %s, in the future", ErrMalformed, m.Created.UTC().Format(time.RFC3339))
	}
	leaf := certs[0]
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if t.Roots == nil {
		return nil, fmt.Errorf("%w: no roots to verify against", ErrSigner)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: t.Roots, Intermediates: inter, CurrentTime: m.Created,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSigner, err)
	}
	id := wire.Identify(leaf)
	if id.Kind != wire.KindServer || id.ID != ContentRole || id.Site != t.SiteCode || t.SiteCode == "" {
		return nil, fmt.Errorf("%w: the signer names %q of site %q, not the content role of site %q", ErrSigner, id.ID, id.Site, t.SiteCode)
	}
	if !hasEKU(leaf, x509.ExtKeyUsageCodeSigning) {
		return nil, fmt.Errorf("%w: the signer lacks EKU codeSigning", ErrSigner)
	}
	if t.Revoked != nil && t.Revoked(leaf) {
		return nil, fmt.Errorf("%w: the signer's certificate is revoked", ErrSigner)
	}
	if err := checkSignature(leaf, sm.Manifest, sm.Signature); err != nil {
		return nil, err
	}
	return m, nil
}

func hasEKU(c *x509.Certificate, u x509.ExtKeyUsage) bool {
	for _, e := range c.ExtKeyUsage {
		if e == u {
			return true
		}
	}
	return false
}

func checkSignature(leaf *x509.Certificate, payload, sig []byte) error {
	sum := sha256.Sum256(payload)
	var ok bool
	switch pub := leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(pub, sum[:], sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPSS(pub, crypto.SHA256, sum[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	case ed25519.PublicKey:
		ok = ed25519.Verify(pub, payload, sig)
	}
	if !ok {
		return ErrSignature
	}
	return nil
}
