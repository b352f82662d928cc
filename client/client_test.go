package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
)

// testCA is a real CA behind its real HTTPS API on 127.0.0.1.
type testCA struct{ *catest.Server }

func startCA(t *testing.T) testCA { return testCA{catest.Start(t)} }

func (tc testCA) token(t *testing.T) string { return tc.Token(t, ca.TokenSpec{}) }

func (tc testCA) enrollOptions(t *testing.T, dir string) EnrollOptions {
	return EnrollOptions{Dir: dir, CAURL: tc.URL, Token: tc.token(t), RootSHA256: tc.Pin, Name: "pc-01", FQDN: "pc-01.corp.example"}
}

func enroll(t *testing.T, tc testCA, dir string) *Identity {
	t.Helper()
	id, err := Enroll(context.Background(), tc.enrollOptions(t, dir))
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	return id
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// stateDir returns a new empty directory as private as a state directory must be
// (t.TempDir makes them 0755).
func stateDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// entries lists a directory, or nothing when it does not exist.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestEnroll(t *testing.T) {
	tc := startCA(t)
	for _, kt := range []KeyType{P256, P384, RSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			opts := tc.enrollOptions(t, dir)
			opts.KeyType = kt
			// Pins are accepted in openssl's form too.
			opts.RootSHA256 = strings.ToUpper(formatFingerprint(mustHex(t, tc.Pin)))
			id, err := Enroll(context.Background(), opts)
			if err != nil {
				t.Fatalf("Enroll: %v", err)
			}
			if len(id.DeviceID) != 36 {
				t.Errorf("DeviceID = %q, want a UUID", id.DeviceID)
			}
			if id.Name != "pc-01" || id.FQDN != "pc-01.corp.example" || id.KeyType != kt {
				t.Errorf("Name, FQDN, KeyType = %q, %q, %q", id.Name, id.FQDN, id.KeyType)
			}
			if got := mode(t, dir); got != 0o700 {
				t.Errorf("state directory mode = %04o, want 0700", got)
			}
			for _, f := range []string{KeyFile, CertFile, RootsFile, StateFile} {
				if got := mode(t, filepath.Join(dir, f)); got != 0o600 {
					t.Errorf("%s mode = %04o, want 0600", f, got)
				}
			}
			if got, want := entries(t, dir), []string{CertFile, KeyFile, RootsFile, StateFile}; strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("state directory holds %v, want %v", got, want)
			}
			if !bytes.HasPrefix(readFile(t, filepath.Join(dir, KeyFile)), []byte("-----BEGIN PRIVATE KEY-----")) {
				t.Error("key.pem is not a PKCS#8 PRIVATE KEY")
			}
			chain, err := parseCerts(readFile(t, filepath.Join(dir, CertFile)))
			if err != nil || len(chain) != 2 {
				t.Fatalf("cert.pem: %d certificates, %v; want leaf + issuing", len(chain), err)
			}
			if chain[0].Subject.CommonName != "pc-01" || strings.Join(chain[0].DNSNames, ",") != "pc-01.corp.example" {
				t.Errorf("leaf names %q %v", chain[0].Subject.CommonName, chain[0].DNSNames)
			}
			if !strings.Contains(string(readFile(t, filepath.Join(dir, StateFile))), id.DeviceID) {
				t.Error("state.json does not record the device id")
			}

			loaded, err := Load(dir)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if loaded.DeviceID != id.DeviceID || loaded.Serial.Cmp(id.Serial) != 0 || loaded.CAURL != tc.URL || !loaded.NotAfter.Equal(id.NotAfter) {
				t.Errorf("Load = %+v, want %+v", loaded, id)
			}
			if loaded.SerialHex() == "" || len(loaded.SerialHex())%2 != 0 || strings.ToUpper(loaded.SerialHex()) != loaded.SerialHex() {
				t.Errorf("SerialHex = %q, want upper-case hex of even length", loaded.SerialHex())
			}
		})
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEnrollRefusesWrongPin(t *testing.T) {
	tc := startCA(t)
	issuing := sha256.Sum256(tc.CA.Issuing().Raw)
	other := sha256.Sum256([]byte("not the root"))
	token := tc.token(t)
	for _, tt := range []struct {
		name    string
		pin     string
		pinErr  bool // a *PinError naming what was presented
		message string
	}{
		{"unknown", hex.EncodeToString(other[:]), true, formatFingerprint(other[:])},
		{"issuing CA, not self-signed", hex.EncodeToString(issuing[:]), false, "not a self-signed CA"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			_, err := Enroll(context.Background(), EnrollOptions{Dir: dir, CAURL: tc.URL, Token: token, RootSHA256: tt.pin, Name: "pc-01"})
			if !errors.Is(err, ErrPinMismatch) {
				t.Fatalf("Enroll = %v, want ErrPinMismatch", err)
			}
			var pe *PinError
			if got := errors.As(err, &pe); got != tt.pinErr {
				t.Fatalf("errors.As(*PinError) = %v, want %v (%v)", got, tt.pinErr, err)
			}
			if pe != nil && (len(pe.Presented) != 3 || !strings.Contains(err.Error(), Fingerprint(tc.CA.Root()))) {
				t.Errorf("the error should name the 3 presented certificates and their fingerprints: %v", err)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not mention %q", err, tt.message)
			}
			if strings.Contains(err.Error(), token) {
				t.Error("the error contains the token")
			}
			if got := entries(t, dir); len(got) != 0 {
				t.Errorf("a refused enrollment wrote %v", got)
			}
		})
	}
	// The token was never sent, so it still works.
	if _, err := Enroll(context.Background(), EnrollOptions{Dir: t.TempDir(), CAURL: tc.URL, Token: token, RootSHA256: tc.Pin, Name: "pc-01"}); err != nil {
		t.Fatalf("Enroll with the right pin after refusals: %v", err)
	}
}

func TestEnrollTokenUsed(t *testing.T) {
	tc := startCA(t)
	opts := tc.enrollOptions(t, filepath.Join(t.TempDir(), "a"))
	if _, err := Enroll(context.Background(), opts); err != nil {
		t.Fatalf("first Enroll: %v", err)
	}
	opts.Dir = filepath.Join(t.TempDir(), "b")
	_, err := Enroll(context.Background(), opts)
	var se *ServerError
	if !errors.As(err, &se) || se.Code != "token_used" || se.Status != 403 {
		t.Fatalf("second Enroll = %v, want ServerError token_used (403)", err)
	}
	if strings.Contains(err.Error(), opts.Token) {
		t.Error("the error contains the token")
	}
	if got := entries(t, opts.Dir); len(got) != 0 {
		t.Errorf("a refused enrollment wrote %v", got)
	}
}

func TestEnrollRefusesExistingIdentity(t *testing.T) {
	tc := startCA(t)
	dir := t.TempDir()
	first := enroll(t, tc, dir)
	before := readFile(t, filepath.Join(dir, KeyFile))
	_, err := Enroll(context.Background(), tc.enrollOptions(t, dir))
	if !errors.Is(err, ErrAlreadyEnrolled) {
		t.Fatalf("Enroll over an identity = %v, want ErrAlreadyEnrolled", err)
	}
	if !bytes.Equal(before, readFile(t, filepath.Join(dir, KeyFile))) {
		t.Error("a refused enrollment changed key.pem")
	}
	opts := tc.enrollOptions(t, dir)
	opts.Force = true
	second, err := Enroll(context.Background(), opts)
	if err != nil {
		t.Fatalf("Enroll with Force: %v", err)
	}
	if second.DeviceID == first.DeviceID {
		t.Error("a new enrollment kept the device id")
	}
}

func TestEnrollChecksOptions(t *testing.T) {
	tc := startCA(t)
	for _, tt := range []struct {
		name string
		edit func(*EnrollOptions)
		want string
	}{
		{"http URL", func(o *EnrollOptions) { o.CAURL = strings.Replace(o.CAURL, "https", "http", 1) }, "https"},
		{"no token", func(o *EnrollOptions) { o.Token = "" }, "token is required"},
		{"short pin", func(o *EnrollOptions) { o.RootSHA256 = "abcd" }, "64 hex digits"},
		{"bad key type", func(o *EnrollOptions) { o.KeyType = "dsa" }, "key type"},
		{"no dir", func(o *EnrollOptions) { o.Dir = "" }, "state directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := tc.enrollOptions(t, t.TempDir())
			tt.edit(&opts)
			if _, err := Enroll(context.Background(), opts); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Enroll = %v, want an error about %q", err, tt.want)
			}
		})
	}
}

func TestRenew(t *testing.T) {
	tc := startCA(t)
	for _, tt := range []struct {
		name    string
		keepKey bool
	}{{"rekey", false}, {"keep key", true}} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			old := enroll(t, tc, dir)
			oldKey := readFile(t, filepath.Join(dir, KeyFile))
			id, err := Renew(context.Background(), RenewOptions{Dir: dir, KeepKey: tt.keepKey})
			if err != nil {
				t.Fatalf("Renew: %v", err)
			}
			if id.Serial.Cmp(old.Serial) == 0 {
				t.Error("the renewed certificate has the old serial")
			}
			if id.DeviceID != old.DeviceID || id.Name != old.Name || id.FQDN != old.FQDN {
				t.Errorf("renewed identity %q %q %q, want %q %q %q", id.DeviceID, id.Name, id.FQDN, old.DeviceID, old.Name, old.FQDN)
			}
			newKey := readFile(t, filepath.Join(dir, KeyFile))
			if sameKey := bytes.Equal(oldKey, newKey); sameKey != tt.keepKey {
				t.Errorf("key kept = %v, want %v", sameKey, tt.keepKey)
			}
			if samePublicKey(id.Leaf, old.Certificate.PrivateKey.(crypto.Signer)) != tt.keepKey {
				t.Errorf("the new certificate's key is old = %v, want %v", !tt.keepKey, tt.keepKey)
			}
			loaded, err := Load(dir)
			if err != nil {
				t.Fatalf("Load after Renew: %v", err)
			}
			if loaded.Serial.Cmp(id.Serial) != 0 || loaded.DeviceID != old.DeviceID {
				t.Errorf("Load after Renew: serial %s device %s", loaded.SerialHex(), loaded.DeviceID)
			}
			for _, f := range []string{KeyFile, CertFile, StateFile} {
				if got := mode(t, filepath.Join(dir, f)); got != 0o600 {
					t.Errorf("%s mode = %04o, want 0600", f, got)
				}
			}
			if got := entries(t, dir); len(got) != 4 {
				t.Errorf("state directory holds %v after Renew", got)
			}
			// The renewed identity renews again.
			if _, err := Renew(context.Background(), RenewOptions{Dir: dir, KeepKey: tt.keepKey}); err != nil {
				t.Errorf("second Renew: %v", err)
			}
		})
	}
}

func TestRenewRevoked(t *testing.T) {
	tc := startCA(t)
	dir := t.TempDir()
	id := enroll(t, tc, dir)
	if err := tc.CA.Revoke(context.Background(), id.Serial.String(), "keyCompromise"); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	tc.Revoked.Add(id.Serial.String())
	before := readFile(t, filepath.Join(dir, CertFile))
	_, err := Renew(context.Background(), RenewOptions{Dir: dir})
	var se *ServerError
	if !errors.As(err, &se) || se.Code != "certificate_revoked" {
		t.Fatalf("Renew of a revoked certificate = %v, want ServerError certificate_revoked", err)
	}
	if !bytes.Equal(before, readFile(t, filepath.Join(dir, CertFile))) {
		t.Error("a refused renewal changed cert.pem")
	}
	if got := entries(t, dir); len(got) != 4 {
		t.Errorf("a refused renewal left %v", got)
	}
}

func TestRenewNotEnrolled(t *testing.T) {
	if _, err := Renew(context.Background(), RenewOptions{Dir: t.TempDir()}); !errors.Is(err, ErrNotEnrolled) {
		t.Errorf("Renew in an empty directory = %v, want ErrNotEnrolled", err)
	}
}

func TestRenewDue(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	id := &Identity{NotBefore: start, NotAfter: start.Add(30 * 24 * time.Hour)}
	for _, tt := range []struct {
		name string
		at   time.Time
		due  bool
	}{
		{"at issue", start, false},
		{"half way", start.Add(15 * 24 * time.Hour), false},
		{"just before two thirds", start.Add(20*24*time.Hour - time.Second), false},
		{"at two thirds", start.Add(20 * 24 * time.Hour), true},
		{"after expiry", start.Add(31 * 24 * time.Hour), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := id.RenewDue(tt.at); got != tt.due {
				t.Errorf("RenewDue(%s) = %v, want %v", tt.at, got, tt.due)
			}
		})
	}
}

func TestLoadRefusesOpenKey(t *testing.T) {
	tc := startCA(t)
	dir := t.TempDir()
	enroll(t, tc, dir)
	if err := os.Chmod(filepath.Join(dir, KeyFile), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); !errors.Is(err, ErrKeyPermissions) {
		t.Errorf("Load with key.pem 0640 = %v, want ErrKeyPermissions", err)
	}
}

// TestOpenStateDirRefused: reading or renewing an identity whose directory group or
// others can enter is refused with the fix; enroll tightens the directory to 0700.
func TestOpenStateDirRefused(t *testing.T) {
	tc := startCA(t)
	dir := t.TempDir()
	enroll(t, tc, dir)
	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	want := dir + " has mode 0750; run chmod 700 " + dir
	if _, err := Load(dir); !errors.Is(err, ErrDirPermissions) || !strings.Contains(err.Error(), want) {
		t.Errorf("Load of a 0750 directory = %v, want ErrDirPermissions saying %q", err, want)
	}
	if _, err := Renew(context.Background(), RenewOptions{Dir: dir}); !errors.Is(err, ErrDirPermissions) {
		t.Errorf("Renew in a 0750 directory = %v, want ErrDirPermissions", err)
	}
	opts := tc.enrollOptions(t, dir)
	opts.Force = true
	if _, err := Enroll(context.Background(), opts); err != nil {
		t.Fatalf("Enroll --force into the 0750 directory: %v", err)
	}
	if got := mode(t, dir); got != 0o700 {
		t.Errorf("Enroll left the directory %04o, want 0700", got)
	}
}

func TestLoadNotEnrolled(t *testing.T) {
	if _, err := Load(t.TempDir()); !errors.Is(err, ErrNotEnrolled) {
		t.Errorf("Load of an empty directory = %v, want ErrNotEnrolled", err)
	}
}

// TestInterruptedRenewal rebuilds the directory a crash leaves at each point of a
// rekeying renewal and checks that the identity is whole afterwards.
func TestInterruptedRenewal(t *testing.T) {
	tc := startCA(t)
	src := t.TempDir()
	oldID := enroll(t, tc, src)
	old := map[string][]byte{}
	for _, f := range commitOrder {
		old[f] = readFile(t, filepath.Join(src, f))
	}
	renewed, err := Renew(context.Background(), RenewOptions{Dir: src})
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	cur := map[string][]byte{}
	for _, f := range commitOrder {
		cur[f] = readFile(t, filepath.Join(src, f))
	}
	// Until the change is committed, the pending key of the renewal is there too.
	b, _ := pem.Decode(cur[KeyFile])
	b.Headers = map[string]string{pendingSerialHeader: oldID.Serial.String()}
	pending := pem.EncodeToMemory(b)

	for _, tt := range []struct {
		name    string
		live    map[string][]byte // files in place
		staged  map[string][]byte // <name>.new files
		renewed bool              // the identity afterwards is the renewed one
	}{
		{"staging key only", old, map[string][]byte{KeyFile: cur[KeyFile]}, false},
		{"staging key and cert", old, map[string][]byte{KeyFile: cur[KeyFile], CertFile: cur[CertFile]}, false},
		{"staged, nothing renamed", old, map[string][]byte{KeyFile: cur[KeyFile], CertFile: cur[CertFile], StateFile: cur[StateFile]}, true},
		{"key renamed, cert not", map[string][]byte{KeyFile: cur[KeyFile], CertFile: old[CertFile], RootsFile: old[RootsFile], StateFile: old[StateFile]},
			map[string][]byte{CertFile: cur[CertFile], StateFile: cur[StateFile]}, true},
		{"all but state renamed", cur, map[string][]byte{StateFile: cur[StateFile]}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := stateDir(t)
			for f, b := range tt.live {
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			for f, b := range tt.staged {
				if err := os.WriteFile(filepath.Join(dir, f+stagedSuffix), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, PendingKeyFile), pending, 0o600); err != nil {
				t.Fatal(err)
			}
			// A reader sees a whole identity without changing anything.
			id, err := Load(dir)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := id.Serial.Cmp(renewed.Serial) == 0; got != tt.renewed {
				t.Errorf("Load sees the renewed certificate = %v, want %v", got, tt.renewed)
			}
			if len(entries(t, dir)) != len(tt.live)+len(tt.staged)+1 {
				t.Error("Load changed the directory")
			}
			// A writer finishes or undoes the change.
			if err := recoverStaged(dir); err != nil {
				t.Fatalf("recoverStaged: %v", err)
			}
			if got := entries(t, dir); len(got) != 5 {
				t.Errorf("after recovery the directory holds %v, want the identity and the pending key", got)
			}
			after, err := Load(dir)
			if err != nil {
				t.Fatalf("Load after recovery: %v", err)
			}
			if after.Serial.Cmp(id.Serial) != 0 {
				t.Errorf("recovery chose serial %s, Load before it saw %s", after.SerialHex(), id.SerialHex())
			}
			// Rolled back: the retry asks with the pending key and gets the same successor.
			// Rolled forward: the renewed identity renews on (each of these directories is
			// a copy of it, so only the first copy may; the others are clones).
			again, err := Renew(context.Background(), RenewOptions{Dir: dir})
			var se *ServerError
			switch {
			case !tt.renewed && err != nil:
				t.Errorf("Renew after rolling back: %v", err)
			case !tt.renewed && again.Serial.Cmp(renewed.Serial) != 0:
				t.Errorf("Renew after rolling back got %s, the CA's answer before the crash was %s", again.SerialHex(), renewed.SerialHex())
			case tt.renewed && err != nil && !(errors.As(err, &se) && se.Code == "renewal_superseded"):
				t.Errorf("Renew after rolling forward: %v", err)
			}
			if _, err := os.Stat(filepath.Join(dir, PendingKeyFile)); err == nil {
				t.Error("the pending key is left after the renewal finished")
			}
		})
	}
}

func TestParseFingerprint(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	lower := hex.EncodeToString(sum[:])
	for _, tt := range []struct {
		name, in string
		ok       bool
	}{
		{"lower", lower, true},
		{"upper", strings.ToUpper(lower), true},
		{"colons", formatFingerprint(sum[:]), true},
		{"openssl output", "sha256 Fingerprint=" + formatFingerprint(sum[:]), true},
		{"spaces around", "  " + lower + "\n", true},
		{"short", lower[:62], false},
		{"long", lower + "00", false},
		{"not hex", strings.Repeat("zz", 32), false},
		{"empty", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFingerprint(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseFingerprint(%q) error = %v, want ok = %v", tt.in, err, tt.ok)
			}
			if tt.ok && !bytes.Equal(got, sum[:]) {
				t.Errorf("ParseFingerprint(%q) = %x", tt.in, got)
			}
		})
	}
}

func TestServerErrorFromBody(t *testing.T) {
	for _, tt := range []struct {
		name, body, code, msg string
	}{
		{"json", `{"error":{"code":"token_expired","message":"token expired at noon"}}`, "token_expired", "token expired at noon"},
		{"not json", "<html>bad gateway</html>", "", "<html>bad gateway</html>"},
		{"empty", "", "", "Bad Gateway"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := serverError(502, []byte(tt.body))
			if e.Status != 502 || e.Code != tt.code || e.Message != tt.msg {
				t.Errorf("serverError = %+v", e)
			}
		})
	}
}

func TestKeyTypes(t *testing.T) {
	for _, kt := range []KeyType{P256, P384, RSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			k, err := kt.generate(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if got := keyTypeOf(k.Public()); got != kt {
				t.Errorf("keyTypeOf = %s", got)
			}
			b, err := encodeKey(k)
			if err != nil {
				t.Fatal(err)
			}
			back, err := decodeKey(b)
			if err != nil {
				t.Fatal(err)
			}
			if _, isRSA := back.(*rsa.PrivateKey); isRSA != strings.HasPrefix(string(kt), "rsa") {
				t.Errorf("decoded key %T", back)
			}
		})
	}
	if _, err := ParseKeyType("ed25519"); err == nil {
		t.Error("ParseKeyType(ed25519) succeeded")
	}
}

// Root may read the state directory of an agent that runs as a user of its own
// (`ibcm-client status` as root); that user may not read another user's, and the mode
// rule holds for root too.
func TestRootLoadsAgentUsersDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to give the directory away (make test runs as root)")
	}
	tc := startCA(t)
	dir := filepath.Join(t.TempDir(), "state")
	enroll(t, tc, dir)
	if err := os.Chown(dir, 65534, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err != nil {
		t.Errorf("root's Load of a directory owned by uid 65534: %v", err)
	}
	if err := CheckDir(dir); !errors.Is(err, ErrDirPermissions) {
		t.Errorf("CheckDir (the agent's own check) of another user's directory: %v, want ErrDirPermissions", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); !errors.Is(err, ErrDirPermissions) {
		t.Errorf("root's Load of an open directory: %v, want ErrDirPermissions", err)
	}
}

// A token bound to a subject enrolls without a name: the certificate and the identity take
// the token's subject. A name the token is not bound to is refused, saying how to fix it.
func TestEnrollNameFromBoundToken(t *testing.T) {
	tc := startCA(t)
	dir := stateDir(t)
	id, err := Enroll(context.Background(), EnrollOptions{Dir: dir, CAURL: tc.URL, RootSHA256: tc.Pin,
		Token: tc.Token(t, ca.TokenSpec{Subject: "kiosk-7"}), FQDN: "kiosk-7.corp.example"})
	if err != nil {
		t.Fatalf("Enroll without a name, bound token: %v", err)
	}
	if id.Name != "kiosk-7" || id.Certificate.Leaf.Subject.CommonName != "kiosk-7" {
		t.Errorf("enrolled as %q, want the token's subject kiosk-7", id.Name)
	}
	loaded, err := Load(dir)
	if err != nil || loaded.Name != "kiosk-7" {
		t.Errorf("stored identity: %v %v", loaded, err)
	}

	token := tc.Token(t, ca.TokenSpec{Subject: "kiosk-7"})
	_, err = Enroll(context.Background(), EnrollOptions{Dir: stateDir(t), CAURL: tc.URL, RootSHA256: tc.Pin, Token: token, Name: "kiosk-8"})
	var se *ServerError
	if !errors.As(err, &se) || se.Code != "subject_mismatch" ||
		!strings.Contains(err.Error(), `bound to another device name than "kiosk-8"; leave out the name`) ||
		!strings.Contains(err.Error(), `"kiosk-7"`) {
		t.Errorf("Enroll with another name = %v, want a subject_mismatch refusal naming both and the fix", err)
	}
	if strings.Contains(err.Error(), token) {
		t.Error("the error contains the token")
	}
}
