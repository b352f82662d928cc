// Package library owns a DP's content store: blobs addressed by their SHA-256 under
// <dir>/<ab>/<cd>/<sha256>, written so that a crash never leaves half a blob under its
// name (a .part file beside it, hashed, fsynced, renamed, the directory fsynced), resumable
// uploads into that .part, validation that re-hashes every blob and quarantines a bad one,
// and garbage collection of blobs no package version references.
//
// Everything else in the directory (the quarantine, a DP's state files) lives outside the
// two-level hex fan-out, so the library never mistakes it for a blob.
package library

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Outcomes callers act on.
var (
	ErrNotFound     = errors.New("no such blob in the library")
	ErrBadHash      = errors.New("not a SHA-256 in lower-case hex")
	ErrHashMismatch = errors.New("the content does not match its SHA-256")
	ErrOffset       = errors.New("the upload does not continue where the held part ends")
	ErrTooLong      = errors.New("more bytes than the announced size")
	ErrBusy         = errors.New("another write of this blob is under way")
)

// PartSuffix ends the name of a blob being written (beside its final path).
const PartSuffix = ".part"

// QuarantineDir is the directory (below the library) where Validate moves bad blobs.
const QuarantineDir = "quarantine"

var hashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidSum reports whether s is a lower-case hex SHA-256.
func ValidSum(s string) bool { return hashRE.MatchString(s) }

// Library is a content store in one directory. Its methods are safe for concurrent use;
// writes of one blob are serialised (the second gets ErrBusy).
type Library struct {
	dir string
	now func() time.Time

	mu      sync.Mutex
	writing map[string]bool
}

// Option configures Open.
type Option func(*Library)

// WithClock sets the clock garbage collection measures ages with.
func WithClock(now func() time.Time) Option { return func(l *Library) { l.now = now } }

// Open opens (making it when missing, 0755) the library in dir.
func Open(dir string, opts ...Option) (*Library, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("opening the library: %w", err)
	}
	l := &Library{dir: abs, now: time.Now, writing: map[string]bool{}}
	for _, o := range opts {
		o(l)
	}
	return l, nil
}

// Dir returns the library's directory.
func (l *Library) Dir() string { return l.dir }

// Path returns where the blob sum lives (<dir>/ab/cd/<sum>), whether or not it is there.
// sum must be valid (ValidSum); an invalid one gives a path inside the directory that no
// blob ever has.
func (l *Library) Path(sum string) string {
	if !ValidSum(sum) {
		return filepath.Join(l.dir, "invalid", "invalid")
	}
	return filepath.Join(l.dir, sum[0:2], sum[2:4], sum)
}

// Has reports whether the complete blob sum is in the library.
func (l *Library) Has(sum string) bool {
	if !ValidSum(sum) {
		return false
	}
	fi, err := os.Lstat(l.Path(sum))
	return err == nil && fi.Mode().IsRegular()
}

// Open opens the complete blob sum for reading; ErrNotFound when it is not there.
func (l *Library) Open(sum string) (*os.File, error) {
	if !ValidSum(sum) {
		return nil, ErrBadHash
	}
	// Never through a symlink: the library holds regular files only.
	f, err := os.OpenFile(l.Path(sum), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ELOOP) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, ErrNotFound
	}
	return f, nil
}

// lock reserves sum for one writer.
func (l *Library) lock(sum string) (unlock func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.writing[sum] {
		return nil, ErrBusy
	}
	l.writing[sum] = true
	return func() {
		l.mu.Lock()
		delete(l.writing, sum)
		l.mu.Unlock()
	}, nil
}

// Put writes the blob sum from r: into a fresh .part, hashed as it is written; when r
// ends, a matching hash makes it the blob (fsync, rename, fsync of the directory), a
// mismatch removes the part and returns ErrHashMismatch. A blob already there is kept and r
// is not read. It returns the bytes written.
func (l *Library) Put(sum string, r io.Reader) (int64, error) {
	if !ValidSum(sum) {
		return 0, ErrBadHash
	}
	unlock, err := l.lock(sum)
	if err != nil {
		return 0, err
	}
	defer unlock()
	if l.Has(sum) {
		return 0, nil
	}
	final := l.Path(sum)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return 0, fmt.Errorf("writing blob %s: %w", sum, err)
	}
	part := final + PartSuffix
	f, err := os.OpenFile(part, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return 0, fmt.Errorf("writing blob %s: %w", sum, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err != nil {
		f.Close()
		os.Remove(part)
		return n, fmt.Errorf("writing blob %s: %w", sum, err)
	}
	if hex.EncodeToString(h.Sum(nil)) != sum {
		f.Close()
		os.Remove(part)
		return n, fmt.Errorf("blob %s: %w", sum, ErrHashMismatch)
	}
	if err := commit(f, part, final); err != nil {
		os.Remove(part)
		return n, fmt.Errorf("writing blob %s: %w", sum, err)
	}
	return n, nil
}

// commit fsyncs and closes f (the part), renames it to final and fsyncs the directory.
func commit(f *os.File, part, final string) error {
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(part, final); err != nil {
		return err
	}
	return syncDir(filepath.Dir(final))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Received returns how many bytes of an upload of sum are held (the .part's length), or
// size of the blob and true when it is complete.
func (l *Library) Received(sum string) (n int64, complete bool, err error) {
	if !ValidSum(sum) {
		return 0, false, ErrBadHash
	}
	if fi, err := os.Lstat(l.Path(sum)); err == nil && fi.Mode().IsRegular() {
		return fi.Size(), true, nil
	}
	fi, err := os.Stat(l.Path(sum) + PartSuffix)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return fi.Size(), false, nil
}

// Append continues an upload of sum whose whole size is size: offset must be where the held
// part ends (0 starts afresh and drops an old part); at most size-offset bytes of r are
// taken (ErrTooLong when r holds more). What arrived is fsynced and kept even when r breaks
// off, so the next Append resumes there. Once the part holds size bytes it is hashed: a
// match makes it the blob (complete), a mismatch removes the part (ErrHashMismatch).
func (l *Library) Append(sum string, offset, size int64, r io.Reader) (received int64, complete bool, err error) {
	if !ValidSum(sum) {
		return 0, false, ErrBadHash
	}
	if offset < 0 || size < 0 || offset > size {
		return 0, false, fmt.Errorf("%w: offset %d, size %d", ErrOffset, offset, size)
	}
	unlock, err := l.lock(sum)
	if err != nil {
		return 0, false, err
	}
	defer unlock()
	final := l.Path(sum)
	if fi, err := os.Lstat(final); err == nil && fi.Mode().IsRegular() {
		return fi.Size(), true, nil
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return 0, false, fmt.Errorf("writing blob %s: %w", sum, err)
	}
	part := final + PartSuffix
	flags := os.O_CREATE | os.O_WRONLY | syscall.O_NOFOLLOW
	if offset == 0 {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(part, flags, 0o644)
	if err != nil {
		return 0, false, fmt.Errorf("writing blob %s: %w", sum, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, false, err
	}
	if fi.Size() != offset {
		f.Close()
		return fi.Size(), false, fmt.Errorf("%w: the part holds %d bytes, the upload starts at %d", ErrOffset, fi.Size(), offset)
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return offset, false, err
	}
	want := size - offset
	n, copyErr := io.Copy(f, io.LimitReader(r, want))
	if copyErr == nil && n == want {
		// Anything more in r is a client that lied about the size.
		var one [1]byte
		if m, _ := io.ReadFull(r, one[:]); m > 0 {
			copyErr = ErrTooLong
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return offset, false, fmt.Errorf("writing blob %s: %w", sum, err)
	}
	received = offset + n
	if copyErr != nil || received < size {
		f.Close()
		if errors.Is(copyErr, ErrTooLong) {
			os.Remove(part)
			return 0, false, copyErr
		}
		return received, false, copyErr
	}
	// Whole: hash it from the disk (the part may have been written across many requests).
	got, err := hashFile(part)
	if err != nil {
		f.Close()
		return received, false, err
	}
	if got != sum {
		f.Close()
		os.Remove(part)
		return 0, false, fmt.Errorf("blob %s: %w (got %s)", sum, ErrHashMismatch, got)
	}
	if err := commit(f, part, final); err != nil {
		return received, false, fmt.Errorf("writing blob %s: %w", sum, err)
	}
	return received, true, nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Remove deletes the blob sum (and any part of it); a missing blob is no error.
func (l *Library) Remove(sum string) error {
	if !ValidSum(sum) {
		return ErrBadHash
	}
	unlock, err := l.lock(sum)
	if err != nil {
		return err
	}
	defer unlock()
	for _, p := range []string{l.Path(sum), l.Path(sum) + PartSuffix} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing blob %s: %w", sum, err)
		}
	}
	return syncDir(filepath.Dir(l.Path(sum)))
}

// Blob is one complete blob of the library.
type Blob struct {
	SHA256  string
	Size    int64
	ModTime time.Time
}

var hex2 = regexp.MustCompile(`^[0-9a-f]{2}$`)

// Blobs lists the complete blobs, by hash. Parts and anything outside the fan-out are left out.
func (l *Library) Blobs() ([]Blob, error) {
	var out []Blob
	tops, err := os.ReadDir(l.dir)
	if err != nil {
		return nil, err
	}
	for _, a := range tops {
		if !a.IsDir() || !hex2.MatchString(a.Name()) {
			continue
		}
		subs, err := os.ReadDir(filepath.Join(l.dir, a.Name()))
		if err != nil {
			return nil, err
		}
		for _, b := range subs {
			if !b.IsDir() || !hex2.MatchString(b.Name()) {
				continue
			}
			files, err := os.ReadDir(filepath.Join(l.dir, a.Name(), b.Name()))
			if err != nil {
				return nil, err
			}
			for _, f := range files {
				name := f.Name()
				if !ValidSum(name) || name[0:2] != a.Name() || name[2:4] != b.Name() || !f.Type().IsRegular() {
					continue
				}
				fi, err := f.Info()
				if err != nil {
					continue // removed meanwhile
				}
				out = append(out, Blob{SHA256: name, Size: fi.Size(), ModTime: fi.ModTime()})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SHA256 < out[j].SHA256 })
	return out, nil
}

// Validate re-hashes every blob and moves each one whose content does not match its name
// into <dir>/quarantine/ (as <sum>.<unix time>), returning their hashes. It stops at ctx.
func (l *Library) Validate(ctx context.Context) (bad []string, err error) {
	blobs, err := l.Blobs()
	if err != nil {
		return nil, fmt.Errorf("validating the library: %w", err)
	}
	for _, b := range blobs {
		if err := ctx.Err(); err != nil {
			return bad, err
		}
		got, err := hashFileCtx(ctx, l.Path(b.SHA256))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			if ctx.Err() != nil {
				return bad, ctx.Err()
			}
			return bad, fmt.Errorf("validating blob %s: %w", b.SHA256, err)
		}
		if got == b.SHA256 {
			continue
		}
		if err := l.quarantine(b.SHA256); err != nil {
			return bad, err
		}
		bad = append(bad, b.SHA256)
	}
	return bad, nil
}

func (l *Library) quarantine(sum string) error {
	unlock, err := l.lock(sum)
	if err != nil {
		return err
	}
	defer unlock()
	q := filepath.Join(l.dir, QuarantineDir)
	if err := os.MkdirAll(q, 0o755); err != nil {
		return fmt.Errorf("quarantining blob %s: %w", sum, err)
	}
	dst := filepath.Join(q, fmt.Sprintf("%s.%d", sum, l.now().UnixNano()))
	if err := os.Rename(l.Path(sum), dst); err != nil {
		return fmt.Errorf("quarantining blob %s: %w", sum, err)
	}
	_ = syncDir(q)
	return syncDir(filepath.Dir(l.Path(sum)))
}

// ctxReader stops a long read when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func hashFileCtx(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// DefaultGrace is how old an unreferenced blob must be before Collect removes it: an
// upload that is not yet registered as a package version survives a day.
const DefaultGrace = 24 * time.Hour

// Collect removes every blob that keep does not claim (keep reports whether an assigned
// package version references it) and that is older than grace (DefaultGrace when zero),
// and every part untouched for that long. It returns the hashes removed.
func (l *Library) Collect(ctx context.Context, keep func(sum string) bool, grace time.Duration) ([]string, error) {
	if grace <= 0 {
		grace = DefaultGrace
	}
	cutoff := l.now().Add(-grace)
	blobs, err := l.Blobs()
	if err != nil {
		return nil, fmt.Errorf("collecting the library: %w", err)
	}
	var removed []string
	for _, b := range blobs {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		if keep(b.SHA256) || b.ModTime.After(cutoff) {
			continue
		}
		if err := l.Remove(b.SHA256); err != nil {
			if errors.Is(err, ErrBusy) {
				continue
			}
			return removed, err
		}
		removed = append(removed, b.SHA256)
	}
	// Abandoned parts.
	_ = filepath.WalkDir(l.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if p != l.dir && d.Name() == QuarantineDir {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		if filepath.Ext(name) != PartSuffix || !ValidSum(name[:len(name)-len(PartSuffix)]) {
			return nil
		}
		sum := name[:len(name)-len(PartSuffix)]
		if keep(sum) {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.ModTime().Before(cutoff) {
			if unlock, err := l.lock(sum); err == nil {
				os.Remove(p)
				unlock()
			}
		}
		return nil
	})
	return removed, nil
}
