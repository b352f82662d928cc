package client

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ibcm-project/ibcm/internal/atomicfile"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Names of the files in the state directory.
const (
	KeyFile   = "key.pem"
	CertFile  = "cert.pem"
	RootsFile = "roots.pem"
	StateFile = "state.json"

	// stagedSuffix marks a file of a change that is not committed yet.
	stagedSuffix = ".new"
)

// commitOrder is the order in which staged files are written and renamed into place.
// state.json is staged last, so its staged copy exists only once every other file of the
// change is staged, and it is renamed last, so it marks the change as finished.
var commitOrder = []string{KeyFile, CertFile, RootsFile, StateFile}

// DeviceURIPrefix starts the URI SAN in which the CA names the device id.
const DeviceURIPrefix = "urn:ibcm:device:"

// state is the content of state.json.
type state struct {
	Version   int       `json:"version"`
	CAURL     string    `json:"ca_url"`
	DeviceID  string    `json:"device_id"`
	Serial    string    `json:"serial"`     // decimal, kept for old state files; shown only as serial_hex
	SerialHex string    `json:"serial_hex"` // as openssl prints it
	NotAfter  time.Time `json:"not_after"`
	KeyType   KeyType   `json:"key_type"`
	// RootSHA256 is the pin the device enrolled with, kept for the record.
	RootSHA256 string    `json:"root_sha256,omitempty"`
	UpdatedAt  time.Time `json:"updated_at"`
	// Bootstrap are the site's location settings the CA handed out at enrollment.
	Bootstrap *wire.Bootstrap `json:"bootstrap,omitempty"`
}

// Identity is the device's identity as stored in its state directory.
type Identity struct {
	Dir      string
	CAURL    string
	DeviceID string // from the certificate's urn:ibcm:device: URI
	Name     string // the certificate's common name
	FQDN     string // the certificate's DNS name, if any
	Serial   *big.Int
	// NotBefore and NotAfter bound the certificate's lifetime.
	NotBefore, NotAfter time.Time
	KeyType             KeyType
	// Bootstrap are the site's location settings from enrollment (nil for an identity
	// enrolled with a CA that sent none).
	Bootstrap *wire.Bootstrap

	// Certificate is the key with the leaf and issuing chain, ready for tls.Config.
	Certificate tls.Certificate
	Leaf        *x509.Certificate
	// Roots are the site's roots (roots.pem), for tls.Config.RootCAs.
	Roots     *x509.CertPool
	RootCerts []*x509.Certificate
}

// SerialHex returns the serial number as openssl prints it (wire.FormatSerial), the one
// form the agent shows, logs and sends.
func (id *Identity) SerialHex() string { return wire.FormatSerial(id.Serial) }

// RenewAt returns when two thirds of the certificate's lifetime have passed.
func (id *Identity) RenewAt() time.Time {
	life := id.NotAfter.Sub(id.NotBefore)
	return id.NotBefore.Add(life * 2 / 3)
}

// RenewDue reports whether the certificate should be renewed at now: after two thirds of
// its lifetime (DESIGN.md §5).
func (id *Identity) RenewDue(now time.Time) bool {
	return !now.Before(id.RenewAt())
}

// Expired reports whether the certificate is no longer valid at now.
func (id *Identity) Expired(now time.Time) bool { return now.After(id.NotAfter) }

// DeviceIDOf returns the device id a certificate names, or "".
func DeviceIDOf(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if s := u.String(); strings.HasPrefix(s, DeviceURIPrefix) {
			return strings.TrimPrefix(s, DeviceURIPrefix)
		}
	}
	return ""
}

// Load reads the identity in dir. It only reads: when a change was fully staged but not
// yet renamed into place (a writer is committing, or crashed while committing; see
// commit) it reads the staged files where they exist, which is the identity the change
// leaves behind. It refuses a key file that group or others can access, and checks that
// the key matches the certificate, and a state directory that fails CheckDir. It returns
// an error wrapping ErrNotEnrolled when dir holds no identity.
func Load(dir string) (*Identity, error) {
	path, err := committedPaths(dir)
	if err != nil {
		return nil, err
	}
	st, err := readState(path(StateFile))
	if err != nil {
		return nil, err
	}
	if err := checkDir(dir, true); err != nil { // root may read an agent user's directory
		return nil, err
	}
	keyPath := path(KeyFile)
	fi, err := os.Stat(keyPath)
	if err != nil {
		return nil, fmt.Errorf("reading the device key: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run chmod 600 %s", ErrKeyPermissions, keyPath, perm, keyPath)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("reading the device key: %w", err)
	}
	key, err := decodeKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("reading the device key %s: %w", keyPath, err)
	}
	certPEM, err := os.ReadFile(path(CertFile))
	if err != nil {
		return nil, fmt.Errorf("reading the device certificate: %w", err)
	}
	chain, err := parseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("reading the device certificate %s: %w", path(CertFile), err)
	}
	rootsPEM, err := os.ReadFile(path(RootsFile))
	if err != nil {
		return nil, fmt.Errorf("reading the trust bundle: %w", err)
	}
	roots, err := parseCerts(rootsPEM)
	if err != nil {
		return nil, fmt.Errorf("reading the trust bundle %s: %w", path(RootsFile), err)
	}
	if !samePublicKey(chain[0], key) {
		return nil, fmt.Errorf("%s does not match %s: the certificate was issued for another key", path(CertFile), keyPath)
	}
	id := newIdentity(dir, st.CAURL, key, chain, roots)
	id.Bootstrap = st.Bootstrap
	return id, nil
}

// committedPaths returns where each file of the identity is to be read: the staged copy
// while a fully staged change is not yet renamed into place, otherwise the file itself.
func committedPaths(dir string) (func(name string) string, error) {
	_, err := os.Stat(filepath.Join(dir, StateFile+stagedSuffix))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("checking for an unfinished change in %s: %w", dir, err)
	}
	staged := err == nil
	return func(name string) string {
		p := filepath.Join(dir, name)
		if staged {
			if _, err := os.Stat(p + stagedSuffix); err == nil {
				return p + stagedSuffix
			}
		}
		return p
	}, nil
}

func newIdentity(dir, caURL string, key any, chain, roots []*x509.Certificate) *Identity {
	leaf := chain[0]
	id := &Identity{
		Dir: dir, CAURL: caURL, DeviceID: DeviceIDOf(leaf), Name: leaf.Subject.CommonName,
		Serial: leaf.SerialNumber, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter,
		KeyType: keyTypeOf(leaf.PublicKey), Leaf: leaf,
		Roots: x509.NewCertPool(), RootCerts: roots,
	}
	if len(leaf.DNSNames) > 0 {
		id.FQDN = leaf.DNSNames[0]
	}
	for _, c := range chain {
		id.Certificate.Certificate = append(id.Certificate.Certificate, c.Raw)
	}
	id.Certificate.PrivateKey = key
	id.Certificate.Leaf = leaf
	for _, r := range roots {
		id.Roots.AddCert(r)
	}
	return id
}

// readState reads state.json (or its staged copy) at path.
func readState(path string) (state, error) {
	var st state
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, fmt.Errorf("%w: there is no %s; run `ibcm-client enroll` first", ErrNotEnrolled, path)
	}
	if err != nil {
		return st, fmt.Errorf("reading the device state: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("reading the device state %s: %w", path, err)
	}
	if st.CAURL == "" {
		return st, fmt.Errorf("reading the device state %s: ca_url is missing", path)
	}
	return st, nil
}

func encodeState(st state) ([]byte, error) {
	st.Version = 1
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// hasIdentity reports whether dir holds any file of an identity.
func hasIdentity(dir string) (bool, error) {
	for _, name := range commitOrder {
		_, err := os.Lstat(filepath.Join(dir, name))
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	return false, nil
}

// ensureDir creates the state directory with mode 0700, or tightens an existing one to it;
// it refuses one that another user owns.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the state directory: %w", err)
	}
	if err := checkOwner(dir); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("setting the state directory to mode 0700: %w", err)
	}
	return CheckDir(dir)
}

// CheckDir checks that dir is a directory of the effective user that nobody else can
// enter (no group or other bits): the device key lives there, and so does the running
// agent's control socket, which is safe only because nobody else can reach it. Its
// refusals wrap ErrDirPermissions and name the fix; a missing dir is an fs.ErrNotExist.
func CheckDir(dir string) error { return checkDir(dir, false) }

// checkDir is CheckDir; with rootMayRead, root may use a directory another user owns (root
// running `ibcm-client status` or `renew` for an agent that runs as a user of its own).
func checkDir(dir string, rootMayRead bool) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("checking the state directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrDirPermissions, dir)
	}
	if !rootMayRead || os.Geteuid() != 0 {
		if err := checkOwner(dir); err != nil {
			return err
		}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; run chmod 700 %s", ErrDirPermissions, dir, perm, dir)
	}
	return nil
}

// checkOwner refuses a dir that the effective user does not own.
func checkOwner(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("checking the state directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("checking the state directory %s: no owner information", dir)
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("%w: %s is owned by uid %d, not by uid %d that runs ibcm-client; run ibcm-client as its owner",
			ErrDirPermissions, dir, st.Uid, euid)
	}
	return nil
}

// writeFileAtomic replaces dir/name with data (mode 0600): it writes a temporary file in
// dir, fsyncs it, renames it over name and fsyncs dir. A reader sees the old content or
// the new, never a mix; after a crash the file is old or new.
func writeFileAtomic(dir, name string, data []byte) error {
	return atomicfile.Write(filepath.Join(dir, name), data, 0o600)
}

func syncDir(dir string) error { return atomicfile.SyncDir(dir) }

// commit replaces several files of the state directory as one change. The crash window
// and what we chose:
//
//  1. Every new file is written (atomically, 0600) as "<name>.new", in commitOrder, so
//     state.json.new appears only after all the others are complete. A crash here leaves
//     the old identity untouched; the next Load removes the partial *.new files.
//  2. The staged files are renamed over the live ones in commitOrder, state.json last.
//     A crash between two renames can leave, for example, a new key.pem beside the old
//     cert.pem; but state.json.new still exists, and the next Load (or Enroll, or Renew)
//     finishes the renames first. Rolling forward is right: the CA has already recorded
//     the new certificate, and after a rekey the old key may already be gone.
//
// So the directory always returns to either the complete old or the complete new
// identity. Readers (Load) never change the directory and read through an unfinished
// change (see committedPaths); writers (Enroll, Renew) first finish or undo it with
// recoverStaged. One writer at a time is assumed: the agent daemon or a CLI command.
func commit(dir string, files map[string][]byte) error {
	if _, ok := files[StateFile]; !ok {
		return errors.New("internal error: a change of the state directory must include state.json")
	}
	var staged []string
	for _, name := range commitOrder {
		data, ok := files[name]
		if !ok {
			continue
		}
		if err := writeFileAtomic(dir, name+stagedSuffix, data); err != nil {
			for _, s := range staged {
				_ = os.Remove(filepath.Join(dir, s))
			}
			return err
		}
		staged = append(staged, name+stagedSuffix)
	}
	return finishStaged(dir)
}

// finishStaged renames every staged file into place, in commitOrder.
func finishStaged(dir string) error {
	for _, name := range commitOrder {
		err := os.Rename(filepath.Join(dir, name+stagedSuffix), filepath.Join(dir, name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("replacing %s: %w", name, err)
		}
	}
	return syncDir(dir)
}

// recoverStaged finishes a change that was fully staged (state.json.new exists) and
// removes the staged and temporary files of one that was not. Only writers call it. A
// missing dir is not an error.
func recoverStaged(dir string) error {
	_, err := os.Stat(filepath.Join(dir, StateFile+stagedSuffix))
	switch {
	case err == nil:
		return finishStaged(dir)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("checking for an interrupted change: %w", err)
	}
	for _, name := range commitOrder {
		err := os.Remove(filepath.Join(dir, name+stagedSuffix))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the staged %s of an interrupted change: %w", name, err)
		}
	}
	// Temporary files of an interrupted writeFileAtomic.
	tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*"))
	for _, t := range tmps {
		_ = os.Remove(t)
	}
	return nil
}

// ErrBusy means another process holds the state directory's writer lock.
var ErrBusy = errors.New("another ibcm-client process is writing the state directory")

// LockDir takes the writer lock of the state directory (an exclusive flock on the
// directory itself), without waiting: ErrBusy when another process holds it. The running
// agent holds it for its whole life and does every write itself (the CLI hands renew and
// enroll to it over the control socket); a CLI command that writes while no agent runs
// holds it for the command. A directory that does not exist yet needs no lock.
func LockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("locking the state directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s)", ErrBusy, dir)
		}
		return nil, fmt.Errorf("locking the state directory: %w", err)
	}
	return func() { f.Close() }, nil
}
