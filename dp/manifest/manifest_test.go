package manifest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// testCA is a root and a content-signer leaf of site TEST.
type testCA struct {
	root    *x509.Certificate
	rootKey crypto.Signer
	pool    *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &testCA{root: root, rootKey: key, pool: pool}
}

// leaf issues a certificate naming uri with the given EKU, valid from nb to na.
func (ca *testCA) leaf(t *testing.T, key crypto.Signer, uri string, eku x509.ExtKeyUsage, nb, na time.Time) *x509.Certificate {
	t.Helper()
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "content-signer"},
		NotBefore: nb, NotAfter: na, URIs: []*url.URL{u}, ExtKeyUsage: []x509.ExtKeyUsage{eku}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, key.Public(), ca.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func sample() *wire.Manifest {
	return &wire.Manifest{Name: "tool", Version: "1.2.3", ChunkSize: MinChunkSize, Created: time.Now().UTC().Truncate(time.Second),
		Files: []wire.ManifestFile{
			{Path: "bin/tool", Size: MinChunkSize + 1, Mode: 0o755, SHA256: strings.Repeat("a", 64), Chunks: []string{strings.Repeat("b", 64), strings.Repeat("c", 64)}},
			{Path: "README", Size: 0, Mode: 0o644, SHA256: strings.Repeat("d", 64), Chunks: []string{}},
		},
		Install: &wire.InstallSpec{Command: "./bin/tool --install", Timeout: "5m", SuccessCodes: []int{0, 3010 % 256}},
	}
}

func TestSignVerify(t *testing.T) {
	ca := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	good := ca.leaf(t, key, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(time.Hour))
	sm, err := Sign(sample(), key, []*x509.Certificate{good})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sm)
	parsed, err := ParseSigned(b)
	if err != nil {
		t.Fatal(err)
	}
	tr := Trust{Roots: ca.pool, SiteCode: "TEST"}
	m, err := Verify(parsed, tr, Hash(parsed.Manifest))
	if err != nil {
		t.Fatalf("a good manifest: %v", err)
	}
	if m.Name != "tool" || len(m.Files) != 2 || m.Install.Command != "./bin/tool --install" {
		t.Fatalf("decoded %+v", m)
	}

	t.Run("pin", func(t *testing.T) {
		if _, err := Verify(parsed, tr, strings.Repeat("0", 64)); !errors.Is(err, ErrPinned) {
			t.Fatalf("another pin: %v", err)
		}
	})
	t.Run("tampered", func(t *testing.T) {
		bad := *parsed
		bad.Manifest = []byte(strings.Replace(string(parsed.Manifest), "--install", "--evil!!", 1))
		if _, err := Verify(&bad, tr, ""); !errors.Is(err, ErrSignature) {
			t.Fatalf("tampered bytes: %v", err)
		}
	})
	t.Run("other site", func(t *testing.T) {
		if _, err := Verify(parsed, Trust{Roots: ca.pool, SiteCode: "OTHER"}, ""); !errors.Is(err, ErrSigner) {
			t.Fatalf("another site: %v", err)
		}
		if _, err := Verify(parsed, Trust{Roots: ca.pool}, ""); !errors.Is(err, ErrSigner) {
			t.Fatalf("no site code: %v", err)
		}
	})
	t.Run("other CA", func(t *testing.T) {
		if _, err := Verify(parsed, Trust{Roots: newCA(t).pool, SiteCode: "TEST"}, ""); !errors.Is(err, ErrSigner) {
			t.Fatalf("foreign roots: %v", err)
		}
	})
	t.Run("revoked", func(t *testing.T) {
		tr := tr
		tr.Revoked = func(c *x509.Certificate) bool { return c.SerialNumber.Cmp(good.SerialNumber) == 0 }
		if _, err := Verify(parsed, tr, ""); !errors.Is(err, ErrSigner) {
			t.Fatalf("revoked signer: %v", err)
		}
	})
	// Any other certificate of the site: an MP (role mp, clientAuth), or a content URI
	// without codeSigning.
	for name, c := range map[string]*x509.Certificate{
		"mp role":                ca.leaf(t, key, "urn:ibcm:site:TEST:role:mp", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(time.Hour)),
		"no codeSigning":         ca.leaf(t, key, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageClientAuth, now.Add(-time.Hour), now.Add(time.Hour)),
		"device":                 ca.leaf(t, key, "urn:ibcm:device:content", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(time.Hour)),
		"expired before created": ca.leaf(t, key, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageCodeSigning, now.Add(-3*time.Hour), now.Add(-2*time.Hour)),
	} {
		t.Run(name, func(t *testing.T) {
			sm, err := Sign(sample(), key, []*x509.Certificate{c})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Verify(sm, tr, ""); !errors.Is(err, ErrSigner) {
				t.Fatalf("signed by %s: %v", name, err)
			}
		})
	}
	t.Run("signer expired since", func(t *testing.T) {
		// Created while the signer was valid: still good after it expired.
		old := ca.leaf(t, key, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageCodeSigning, now.Add(-10*time.Hour), now.Add(-time.Hour))
		m := sample()
		m.Created = now.Add(-5 * time.Hour).UTC()
		sm, _ := Sign(m, key, []*x509.Certificate{old})
		if _, err := Verify(sm, tr, ""); err != nil {
			t.Fatalf("a manifest made while its signer was valid: %v", err)
		}
	})
	t.Run("future", func(t *testing.T) {
		m := sample()
		m.Created = now.Add(30 * time.Minute)
		longer := ca.leaf(t, key, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(24*time.Hour))
		sm, _ := Sign(m, key, []*x509.Certificate{longer})
		if _, err := Verify(sm, tr, ""); !errors.Is(err, ErrMalformed) {
			t.Fatalf("created in the future: %v", err)
		}
	})
	t.Run("rsa", func(t *testing.T) {
		rk, _ := rsa.GenerateKey(rand.Reader, 2048)
		c := ca.leaf(t, rk, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(time.Hour))
		sm, err := Sign(sample(), rk, []*x509.Certificate{c})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(sm, tr, ""); err != nil {
			t.Fatalf("RSA signer: %v", err)
		}
	})
}

func TestCheck(t *testing.T) {
	for name, mutate := range map[string]func(*wire.Manifest){
		"bad name":         func(m *wire.Manifest) { m.Name = "Tool" },
		"bad version":      func(m *wire.Manifest) { m.Version = "../1" },
		"small chunks":     func(m *wire.Manifest) { m.ChunkSize = 1024 },
		"no files":         func(m *wire.Manifest) { m.Files = nil },
		"escaping path":    func(m *wire.Manifest) { m.Files[0].Path = "../etc/passwd" },
		"absolute path":    func(m *wire.Manifest) { m.Files[0].Path = "/etc/passwd" },
		"dot element":      func(m *wire.Manifest) { m.Files[0].Path = "bin/./tool" },
		"backslash":        func(m *wire.Manifest) { m.Files[0].Path = `..\x` },
		"duplicate path":   func(m *wire.Manifest) { m.Files[1].Path = "bin/tool" },
		"file under file":  func(m *wire.Manifest) { m.Files[1].Path = "bin/tool/x" },
		"file over dir":    func(m *wire.Manifest) { m.Files[1].Path = "bin" },
		"setuid":           func(m *wire.Manifest) { m.Files[0].Mode = 0o4755 },
		"chunk count":      func(m *wire.Manifest) { m.Files[0].Chunks = m.Files[0].Chunks[:1] },
		"upper hash":       func(m *wire.Manifest) { m.Files[0].SHA256 = strings.Repeat("A", 64) },
		"bad chunk hash":   func(m *wire.Manifest) { m.Files[0].Chunks[1] = "zz" },
		"negative size":    func(m *wire.Manifest) { m.Files[1].Size = -1 },
		"exit code 256":    func(m *wire.Manifest) { m.Install.SuccessCodes = []int{256} },
		"no timeout":       func(m *wire.Manifest) { m.Install.Timeout = "" },
		"empty command":    func(m *wire.Manifest) { m.Install.Command = " " },
		"no created":       func(m *wire.Manifest) { m.Created = time.Time{} },
		"timeout too long": func(m *wire.Manifest) { m.Install.Timeout = "48h" },
	} {
		m := sample()
		mutate(m)
		if err := Check(m); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
	if err := Check(sample()); err != nil {
		t.Fatalf("the sample: %v", err)
	}
}

func TestDecodeStrict(t *testing.T) {
	b, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(b); err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]string{
		"unknown field": strings.Replace(string(b), `"name"`, `"evil":1,"name"`, 1),
		"trailing data": string(b) + `{}`,
		"not json":      "nope",
	} {
		if _, err := Decode([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ParseSigned([]byte(`{"manifest":"e30=","signature":"AA==","chain":["AA=="],"x":1}`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("unknown field in a signed manifest: %v", err)
	}
	if _, err := ParseSigned(make([]byte, MaxSigned+1)); !errors.Is(err, ErrMalformed) {
		t.Errorf("too large: %v", err)
	}
}

func TestTarget(t *testing.T) {
	dir := t.TempDir()
	got, err := Target(dir, "a/b/c.txt")
	if err != nil || got != filepath.Join(dir, "a", "b", "c.txt") {
		t.Fatalf("Target = %q, %v", got, err)
	}
	for _, p := range []string{"../x", "a/../../x", "/etc/passwd", "", "a//b", "./a", "a/", `a\..\..\x`} {
		if _, err := Target(dir, p); err == nil {
			t.Errorf("Target(%q) was accepted", p)
		}
	}
}

// FuzzSigned feeds arbitrary bytes to the parser of signed manifests and the decoder of
// manifests: never a panic, and whatever is accepted stays below its directory.
func FuzzSigned(f *testing.F) {
	b, _ := Encode(sample())
	sm, _ := json.Marshal(wire.SignedManifest{Manifest: b, Signature: []byte{1}, Chain: [][]byte{{2}}})
	f.Add(sm)
	f.Add(b)
	f.Add([]byte(`{"manifest":"","signature":"","chain":[]}`))
	dir := os.TempDir()
	f.Fuzz(func(t *testing.T, in []byte) {
		if s, err := ParseSigned(in); err == nil {
			_, _ = Verify(s, Trust{SiteCode: "TEST"}, "")
		}
		m, err := Decode(in)
		if err != nil {
			return
		}
		for _, fl := range m.Files {
			p, err := Target(dir, fl.Path)
			if err != nil {
				t.Fatalf("Check accepted %q that Target refuses: %v", fl.Path, err)
			}
			if rel, _ := filepath.Rel(dir, p); strings.HasPrefix(rel, "..") {
				t.Fatalf("%q leaves the directory", fl.Path)
			}
		}
	})
}

// FuzzPath is the content-path handling: CleanPath and Target agree and never leave dir.
func FuzzPath(f *testing.F) {
	for _, s := range []string{"a", "a/b", "../a", "a/../b", "/a", "a//b", "a/./b", `a\b`, "..", ".", "a/b/"} {
		f.Add(s)
	}
	dir := "/srv/pkg"
	f.Fuzz(func(t *testing.T, p string) {
		_, cerr := CleanPath(p)
		got, terr := Target(dir, p)
		if (cerr == nil) != (terr == nil) {
			t.Fatalf("CleanPath and Target disagree on %q: %v / %v", p, cerr, terr)
		}
		if terr == nil && !strings.HasPrefix(got, dir+"/") {
			t.Fatalf("%q → %q leaves %s", p, got, dir)
		}
	})
}
