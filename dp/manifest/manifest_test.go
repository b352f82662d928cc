package manifest_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/dp/manifest/manifesttest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

func sample() *wire.Manifest {
	return &wire.Manifest{Name: "tool", Version: "1.2.3", ChunkSize: manifest.MinChunkSize, Created: time.Now().UTC().Truncate(time.Second),
		Files: []wire.ManifestFile{
			{Path: "bin/tool", Size: manifest.MinChunkSize + 1, Mode: 0o755, SHA256: strings.Repeat("a", 64), Chunks: []string{strings.Repeat("b", 64), strings.Repeat("c", 64)}},
			{Path: "README", Size: 0, Mode: 0o644, SHA256: strings.Repeat("d", 64), Chunks: []string{}},
		},
		Install: &wire.InstallSpec{Command: "./bin/tool --install", Timeout: "5m", SuccessCodes: []int{0, 3010 % 256}},
	}
}

func TestSignVerify(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key := ca.Key
	now := time.Now()
	good := ca.Cert // a content signer of site TEST
	sm, err := manifest.Sign(sample(), key, []*x509.Certificate{good})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sm)
	parsed, err := manifest.ParseSigned(b)
	if err != nil {
		t.Fatal(err)
	}
	tr := ca.Trust()
	m, err := manifest.Verify(parsed, tr, manifest.Hash(parsed.Manifest))
	if err != nil {
		t.Fatalf("a good manifest: %v", err)
	}
	if m.Name != "tool" || len(m.Files) != 2 || m.Install.Command != "./bin/tool --install" {
		t.Fatalf("decoded %+v", m)
	}

	t.Run("pin", func(t *testing.T) {
		if _, err := manifest.Verify(parsed, tr, strings.Repeat("0", 64)); !errors.Is(err, manifest.ErrPinned) {
			t.Fatalf("another pin: %v", err)
		}
	})
	t.Run("tampered", func(t *testing.T) {
		bad := *parsed
		bad.Manifest = []byte(strings.Replace(string(parsed.Manifest), "--install", "--evil!!", 1))
		if _, err := manifest.Verify(&bad, tr, ""); !errors.Is(err, manifest.ErrSignature) {
			t.Fatalf("tampered bytes: %v", err)
		}
	})
	t.Run("other site", func(t *testing.T) {
		if _, err := manifest.Verify(parsed, manifest.Trust{Roots: ca.Pool, SiteCode: "OTHER"}, ""); !errors.Is(err, manifest.ErrSigner) {
			t.Fatalf("another site: %v", err)
		}
		if _, err := manifest.Verify(parsed, manifest.Trust{Roots: ca.Pool}, ""); !errors.Is(err, manifest.ErrSigner) {
			t.Fatalf("no site code: %v", err)
		}
	})
	t.Run("other CA", func(t *testing.T) {
		if _, err := manifest.Verify(parsed, manifest.Trust{Roots: manifesttest.New(t, "TEST").Pool, SiteCode: "TEST"}, ""); !errors.Is(err, manifest.ErrSigner) {
			t.Fatalf("foreign roots: %v", err)
		}
	})
	t.Run("revoked", func(t *testing.T) {
		tr := tr
		tr.Revoked = func(c *x509.Certificate) bool { return c.SerialNumber.Cmp(good.SerialNumber) == 0 }
		if _, err := manifest.Verify(parsed, tr, ""); !errors.Is(err, manifest.ErrSigner) {
			t.Fatalf("revoked signer: %v", err)
		}
	})
	// Any other certificate of the site: an MP (role mp, clientAuth), or a content URI
	// without codeSigning.
	for name, c := range map[string]*x509.Certificate{
		"mp role":                ca.Leaf(t, key, "urn:ibcm:site:TEST:role:mp", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(time.Hour)),
		"no codeSigning":         ca.Leaf(t, key, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageClientAuth, now.Add(-time.Hour), now.Add(time.Hour)),
		"device":                 ca.Leaf(t, key, "urn:ibcm:device:content", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(time.Hour)),
		"expired before created": ca.Leaf(t, key, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageCodeSigning, now.Add(-3*time.Hour), now.Add(-2*time.Hour)),
	} {
		t.Run(name, func(t *testing.T) {
			sm, err := manifest.Sign(sample(), key, []*x509.Certificate{c})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := manifest.Verify(sm, tr, ""); !errors.Is(err, manifest.ErrSigner) {
				t.Fatalf("signed by %s: %v", name, err)
			}
		})
	}
	t.Run("signer expired since", func(t *testing.T) {
		// Created while the signer was valid: still good after it expired.
		old := ca.Leaf(t, key, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageCodeSigning, now.Add(-10*time.Hour), now.Add(-time.Hour))
		m := sample()
		m.Created = now.Add(-5 * time.Hour).UTC()
		sm, _ := manifest.Sign(m, key, []*x509.Certificate{old})
		if _, err := manifest.Verify(sm, tr, ""); err != nil {
			t.Fatalf("a manifest made while its signer was valid: %v", err)
		}
	})
	t.Run("future", func(t *testing.T) {
		m := sample()
		m.Created = now.Add(30 * time.Minute)
		longer := ca.Leaf(t, key, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(24*time.Hour))
		sm, _ := manifest.Sign(m, key, []*x509.Certificate{longer})
		if _, err := manifest.Verify(sm, tr, ""); !errors.Is(err, manifest.ErrMalformed) {
			t.Fatalf("created in the future: %v", err)
		}
	})
	t.Run("rsa", func(t *testing.T) {
		rk, _ := rsa.GenerateKey(rand.Reader, 2048)
		c := ca.Leaf(t, rk, "urn:ibcm:site:TEST:role:content", x509.ExtKeyUsageCodeSigning, now.Add(-time.Hour), now.Add(time.Hour))
		sm, err := manifest.Sign(sample(), rk, []*x509.Certificate{c})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := manifest.Verify(sm, tr, ""); err != nil {
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
		if err := manifest.Check(m); !errors.Is(err, manifest.ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
	if err := manifest.Check(sample()); err != nil {
		t.Fatalf("the sample: %v", err)
	}
}

func TestDecodeStrict(t *testing.T) {
	b, err := manifest.Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := manifest.Decode(b); err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]string{
		"unknown field": strings.Replace(string(b), `"name"`, `"evil":1,"name"`, 1),
		"trailing data": string(b) + `{}`,
		"not json":      "nope",
	} {
		if _, err := manifest.Decode([]byte(in)); !errors.Is(err, manifest.ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := manifest.ParseSigned([]byte(`{"manifest":"e30=","signature":"AA==","chain":["AA=="],"x":1}`)); !errors.Is(err, manifest.ErrMalformed) {
		t.Errorf("unknown field in a signed manifest: %v", err)
	}
	if _, err := manifest.ParseSigned(make([]byte, manifest.MaxSigned+1)); !errors.Is(err, manifest.ErrMalformed) {
		t.Errorf("too large: %v", err)
	}
}

func TestTarget(t *testing.T) {
	dir := t.TempDir()
	got, err := manifest.Target(dir, "a/b/c.txt")
	if err != nil || got != filepath.Join(dir, "a", "b", "c.txt") {
		t.Fatalf("Target = %q, %v", got, err)
	}
	for _, p := range []string{"../x", "a/../../x", "/etc/passwd", "", "a//b", "./a", "a/", `a\..\..\x`} {
		if _, err := manifest.Target(dir, p); err == nil {
			t.Errorf("Target(%q) was accepted", p)
		}
	}
}

// FuzzSigned feeds arbitrary bytes to the parser of signed manifests and the decoder of
// manifests: never a panic, and whatever is accepted stays below its directory.
func FuzzSigned(f *testing.F) {
	b, _ := manifest.Encode(sample())
	sm, _ := json.Marshal(wire.SignedManifest{Manifest: b, Signature: []byte{1}, Chain: [][]byte{{2}}})
	f.Add(sm)
	f.Add(b)
	f.Add([]byte(`{"manifest":"","signature":"","chain":[]}`))
	dir := os.TempDir()
	f.Fuzz(func(t *testing.T, in []byte) {
		if s, err := manifest.ParseSigned(in); err == nil {
			_, _ = manifest.Verify(s, manifest.Trust{SiteCode: "TEST"}, "")
		}
		m, err := manifest.Decode(in)
		if err != nil {
			return
		}
		for _, fl := range m.Files {
			p, err := manifest.Target(dir, fl.Path)
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
		_, cerr := manifest.CleanPath(p)
		got, terr := manifest.Target(dir, p)
		if (cerr == nil) != (terr == nil) {
			t.Fatalf("CleanPath and Target disagree on %q: %v / %v", p, cerr, terr)
		}
		if terr == nil && !strings.HasPrefix(got, dir+"/") {
			t.Fatalf("%q → %q leaves %s", p, got, dir)
		}
	})
}
