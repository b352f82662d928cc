// Package fetch owns the download of one content blob from distribution points: resumable
// (Range with If-Range = the blob's hash), verified chunk by chunk as the bytes arrive (it
// stops at the first bad chunk and keeps only the verified prefix), bounded (a source never
// sends more than what is missing), rate limited, abandoning a source that stalls, and
// atomic (the blob appears under its name only once whole, hashed and fsynced). The agent
// and pull-DPs both use it, so it imports only the standard library, internal/wire and
// golang.org/x/time/rate.
//
// The partial download lives in dst+".part". One Get per dst at a time: callers that may
// fetch the same blob twice at once serialise it themselves.
package fetch

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// Blob is what to download: its hash (its address on a DP), its size, and the hash of each
// ChunkSize piece (the last one may be shorter).
type Blob struct {
	SHA256    string
	Size      int64
	ChunkSize int64
	Chunks    []string
}

// BlobOf is the blob of file f of manifest m.
func BlobOf(m *wire.Manifest, f wire.ManifestFile) Blob {
	return Blob{SHA256: f.SHA256, Size: f.Size, ChunkSize: m.ChunkSize, Chunks: f.Chunks}
}

// Source is a DP to download from. URL is its base URL (https://host:port); Name names it
// in errors (the URL when empty).
type Source struct{ Name, URL string }

func (s Source) name() string {
	if s.Name != "" {
		return s.Name
	}
	return s.URL
}

// Options of Get.
type Options struct {
	Client       *http.Client  // mutual TLS with the caller's certificate; http.DefaultClient when nil
	Limiter      *rate.Limiter // bytes per second; nil = none
	StallTimeout time.Duration // no byte for this long abandons the source; 30s when zero
	// Progress, when set, is called with the verified-or-pending bytes held and the blob's
	// size: once at the start and after every piece written (often: throttle it yourself).
	Progress func(have, total int64)
}

// Result of a Get: the source that completed the blob, the bytes received over the network
// from every source tried, and the bytes kept from an earlier .part.
type Result struct {
	Source   string
	Received int64
	Resumed  int64
}

// DefaultStallTimeout is the StallTimeout when Options leaves it zero.
const DefaultStallTimeout = 30 * time.Second

// Errors a source fails with (inside SourceError.Err; test with errors.Is).
var (
	ErrStatus       = errors.New("error status")
	ErrNotPartial   = errors.New("200 (the whole blob) in answer to a Range request: not appended")
	ErrContentRange = errors.New("wrong Content-Range")
	ErrLength       = errors.New("wrong Content-Length")
	ErrChunk        = errors.New("chunk hash mismatch")
	ErrShort        = errors.New("body ended early")
	ErrStall        = errors.New("stalled")
	ErrEncoding     = errors.New("content encoding not allowed")
	ErrHash         = errors.New("whole-blob hash mismatch")
)

// SourceError is why one source failed.
type SourceError struct {
	Source string
	Err    error
}

func (e SourceError) Error() string { return e.Source + ": " + e.Err.Error() }
func (e SourceError) Unwrap() error { return e.Err }

// Error is Get's error when every source failed: each source's failure, in the order tried.
type Error struct {
	SHA256 string
	Tried  []SourceError
}

func (e *Error) Error() string {
	if len(e.Tried) == 0 {
		return fmt.Sprintf("fetch %s: no source to download from", short(e.SHA256))
	}
	parts := make([]string, len(e.Tried))
	for i, t := range e.Tried {
		parts[i] = t.Error()
	}
	return fmt.Sprintf("fetch %s: every source failed: %s", short(e.SHA256), strings.Join(parts, "; "))
}

// Unwrap returns each source's error, so errors.Is(err, fetch.ErrChunk) tells whether any
// source sent a bad chunk.
func (e *Error) Unwrap() []error {
	out := make([]error, len(e.Tried))
	for i := range e.Tried {
		out[i] = e.Tried[i]
	}
	return out
}

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}

var hashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (b Blob) check() error {
	if !hashRE.MatchString(b.SHA256) {
		return fmt.Errorf("fetch: blob hash %q is not 64 lowercase hex digits", b.SHA256)
	}
	if b.Size < 0 || b.ChunkSize <= 0 {
		return fmt.Errorf("fetch: blob %s: size %d, chunk size %d", short(b.SHA256), b.Size, b.ChunkSize)
	}
	if want := (b.Size + b.ChunkSize - 1) / b.ChunkSize; int64(len(b.Chunks)) != want {
		return fmt.Errorf("fetch: blob %s: %d chunk hashes for %d bytes in chunks of %d (want %d)", short(b.SHA256), len(b.Chunks), b.Size, b.ChunkSize, want)
	}
	for i, c := range b.Chunks {
		if !hashRE.MatchString(c) {
			return fmt.Errorf("fetch: blob %s: chunk %d hash is not 64 lowercase hex digits", short(b.SHA256), i)
		}
	}
	return nil
}

// chunkLen is the length of chunk i.
func (b Blob) chunkLen(i int64) int64 {
	return min(b.ChunkSize, b.Size-i*b.ChunkSize)
}

// Get makes dst hold blob b. It resumes dst+".part" (re-hashing the whole chunks already
// there), asks each source in order with Range and If-Range = the hash, verifies every chunk
// as it arrives and stops at the first bad one (the verified prefix stays), never appends a
// 200 answer or a wrong Content-Range to a Range request, abandons a stalled source, and once
// whole checks the file hash, fsyncs and renames to dst (creating dst's directory).
//
// When dst already holds the blob (its hash checks), Get returns at once. The error is
// *Error when every source failed; the .part then keeps what was verified, for the next Get.
func Get(ctx context.Context, b Blob, sources []Source, dst string, o Options) (Result, error) {
	if err := b.check(); err != nil {
		return Result{}, err
	}
	if o.Client == nil {
		o.Client = http.DefaultClient
	}
	// A redirect is a failure of the source, never followed: a hostile DP would have the
	// caller present its certificate and send requests wherever it points.
	c := *o.Client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	o.Client = &c
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	if o.Limiter != nil && o.Limiter.Limit() != rate.Inf && o.Limiter.Burst() <= 0 {
		return Result{}, errors.New("fetch: the rate limiter has a burst of 0")
	}
	if ok, err := already(dst, b); err != nil {
		return Result{}, err
	} else if ok {
		return Result{Resumed: b.Size}, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return Result{}, fmt.Errorf("fetch: creating the directory of %s: %w", dst, err)
	}
	part := dst + ".part"
	if fi, err := os.Lstat(part); err == nil && !fi.Mode().IsRegular() {
		return Result{}, fmt.Errorf("fetch: %s is not a regular file", part)
	}
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return Result{}, fmt.Errorf("fetch: opening %s: %w", part, err)
	}
	d := &download{b: b, f: f, o: o, file: sha256.New(), chunk: sha256.New()}
	defer func() {
		if d.f != nil {
			d.f.Close()
		}
	}()
	if err := d.resume(); err != nil {
		return Result{}, err
	}
	res := Result{Resumed: d.have}
	d.progress()
	e := &Error{SHA256: b.SHA256}
	for _, src := range sources {
		if d.have == b.Size {
			break
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		err := d.from(ctx, src, &res.Received)
		if err == nil {
			res.Source = src.name()
			break
		}
		if ctx.Err() != nil {
			return res, fmt.Errorf("fetch %s from %s: %w", short(b.SHA256), src.name(), ctx.Err())
		}
		var local *localError
		if errors.As(err, &local) {
			return res, local.err
		}
		e.Tried = append(e.Tried, SourceError{Source: src.name(), Err: err})
	}
	if d.have < b.Size {
		return res, e
	}
	if got := hex.EncodeToString(d.file.Sum(nil)); got != b.SHA256 {
		// Every chunk matched and yet the whole does not: the manifest contradicts itself.
		// Nothing here can be trusted; start over next time.
		d.f.Close()
		d.f = nil
		os.Remove(part)
		return res, fmt.Errorf("fetch %s: %w: the bytes hash to %s although every chunk matched", short(b.SHA256), ErrHash, got)
	}
	if err := d.f.Sync(); err != nil {
		return res, fmt.Errorf("fetch: syncing %s: %w", part, err)
	}
	err = d.f.Close()
	d.f = nil
	if err != nil {
		return res, fmt.Errorf("fetch: closing %s: %w", part, err)
	}
	if err := os.Rename(part, dst); err != nil {
		return res, fmt.Errorf("fetch: renaming %s: %w", part, err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return res, err
	}
	return res, nil
}

// already reports whether dst holds the blob.
func already(dst string, b Blob) (bool, error) {
	f, err := os.Open(dst)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("fetch: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != b.Size {
		return false, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, fmt.Errorf("fetch: reading %s: %w", dst, err)
	}
	return hex.EncodeToString(h.Sum(nil)) == b.SHA256, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fetch: syncing directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fetch: syncing directory %s: %w", dir, err)
	}
	return nil
}

// localError is a failure of this machine (disk), not of a source: Get stops at once.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }

// download is the state of one Get: the .part file, the bytes held, the running hash of the
// whole blob, and of the current chunk.
type download struct {
	b     Blob
	f     *os.File
	o     Options
	have  int64     // bytes in the .part: every whole chunk below have verified
	file  hash.Hash // over [0, have)
	chunk hash.Hash // over [chunkStart(have), have)
	// mark is the state of file at the last verified chunk boundary, restored when a chunk
	// fails.
	mark []byte
}

func (d *download) chunkStart(off int64) int64 { return off / d.b.ChunkSize * d.b.ChunkSize }

func (d *download) setMark() {
	m, err := d.file.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(err) // sha256 always marshals
	}
	d.mark = m
}

// resume re-hashes the .part: every whole chunk must match, and the bytes of a trailing
// partial chunk are kept but only hashed, to be verified when the chunk completes. The
// .part is cut at the first bad chunk.
func (d *download) resume() error {
	fi, err := d.f.Stat()
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	size := min(fi.Size(), d.b.Size)
	d.setMark()
	buf := make([]byte, 256<<10)
	var off int64
	for i := int64(0); off < size; i++ {
		n := min(d.b.chunkLen(i), size-off)
		d.chunk.Reset()
		if _, err := io.CopyBuffer(io.MultiWriter(d.chunk, d.file), io.NewSectionReader(d.f, off, n), buf); err != nil {
			return fmt.Errorf("fetch: reading %s: %w", d.f.Name(), err)
		}
		if n < d.b.chunkLen(i) {
			off += n // a partial chunk: its hash goes on when the rest arrives
			break
		}
		if hex.EncodeToString(d.chunk.Sum(nil)) != d.b.Chunks[i] {
			if err := d.file.(encoding.BinaryUnmarshaler).UnmarshalBinary(d.mark); err != nil {
				panic(err)
			}
			d.chunk.Reset()
			break
		}
		off += n
		d.chunk.Reset()
		d.setMark()
	}
	d.have = off
	if fi.Size() != off {
		if err := d.f.Truncate(off); err != nil {
			return fmt.Errorf("fetch: truncating %s: %w", d.f.Name(), err)
		}
	}
	return nil
}

// rollback cuts the .part back to the last verified chunk boundary.
func (d *download) rollback() error {
	start := d.chunkStart(d.have)
	if err := d.f.Truncate(start); err != nil {
		return &localError{fmt.Errorf("fetch: truncating %s: %w", d.f.Name(), err)}
	}
	if err := d.file.(encoding.BinaryUnmarshaler).UnmarshalBinary(d.mark); err != nil {
		panic(err)
	}
	d.chunk.Reset()
	d.have = start
	return nil
}

func (d *download) progress() {
	if d.o.Progress != nil {
		d.o.Progress(d.have, d.b.Size)
	}
}

// MinStallBytes is what a source must bring per StallTimeout spent waiting on it (or the
// rest of its answer, when less): a source that drips a byte just inside the stall timeout
// is abandoned as stalled too (about 2 KiB/s with the default 30 s).
const MinStallBytes = 64 << 10

// MaxResumes is how many times in a row Get asks a source again after its connection broke
// off mid-body, each time for the rest only, provided the broken answer brought bytes.
const MaxResumes = 3

// from downloads what is missing from one source. A source that answers a range shorter
// than asked is asked again for the rest, as long as each answer brings bytes (and at least
// a chunk once in MaxResumes+1 answers).
func (d *download) from(ctx context.Context, src Source, received *int64) error {
	retried := false
	resumes := 0
	for d.have < d.b.Size {
		start := d.have
		mixed := d.chunkStart(start) < start // the current chunk began before this request
		err := d.request(ctx, src, received)
		switch {
		case err == nil && d.have == start:
			return fmt.Errorf("%w: an answer with no byte", ErrShort)
		case err == nil && d.have < d.b.Size && d.have-start < d.b.ChunkSize:
			// A range shorter than asked and than a chunk: counted as a resume, so a
			// source answering a byte at a time is abandoned rather than asked once per byte.
			if resumes++; resumes > MaxResumes {
				return fmt.Errorf("%w: %d answers in a row shorter than a chunk", ErrShort, resumes)
			}
		case err == nil:
			resumes = 0
		case errors.Is(err, ErrChunk) && mixed && !retried && d.have == d.chunkStart(start):
			// A bad chunk that began with bytes from before (another source, an earlier
			// run) may not be this source's fault: ask it once more from the chunk's start.
			retried = true
		case broken(err) && d.have > start && resumes < MaxResumes && ctx.Err() == nil:
			resumes++ // the connection broke after bringing bytes: resume from it
		default:
			return err
		}
	}
	return nil
}

// broken tells a connection that broke off (worth resuming) from a source that misbehaved.
func broken(err error) bool {
	var local *localError
	for _, e := range []error{ErrChunk, ErrStatus, ErrNotPartial, ErrContentRange, ErrLength, ErrEncoding, ErrStall} {
		if errors.Is(err, e) {
			return false
		}
	}
	return !errors.As(err, &local)
}

// request sends one GET for [have, Size) and writes what comes back.
func (d *download) request(ctx context.Context, src Source, received *int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The stall watchdog: armed before every wait for the network, disarmed while the rate
	// limiter holds us back, so that only silence of the source counts.
	var stalled atomic.Bool
	watchdog := time.AfterFunc(d.o.StallTimeout, func() { stalled.Store(true); cancel() })
	defer watchdog.Stop()
	failure := func(err error) error {
		if watchdog.Stop(); stalled.Load() {
			return fmt.Errorf("%w: no byte for %s", ErrStall, d.o.StallTimeout)
		}
		return err
	}

	url := strings.TrimRight(src.URL, "/") + "/v1/content/" + d.b.SHA256
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Accept-Encoding", "identity")
	ranged := d.have > 0
	if ranged {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(d.have, 10)+"-")
		req.Header.Set("If-Range", `"`+d.b.SHA256+`"`)
	}
	resp, err := d.o.Client.Do(req)
	if err != nil {
		return failure(err)
	}
	defer resp.Body.Close()
	if stalled.Load() {
		// The transport may hand over an answer that raced with the cancellation.
		return failure(nil)
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		return fmt.Errorf("%w: %q", ErrEncoding, ce)
	}
	var want int64 // bytes this answer carries
	switch {
	case resp.StatusCode == http.StatusPartialContent && ranged:
		start, end, total, err := ParseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return fmt.Errorf("%w: %v", ErrContentRange, err)
		}
		if start != d.have || total != d.b.Size {
			return fmt.Errorf("%w: %q for bytes %d- of %d", ErrContentRange, resp.Header.Get("Content-Range"), d.have, d.b.Size)
		}
		want = end - start + 1
	case resp.StatusCode == http.StatusPartialContent:
		return fmt.Errorf("%w: 206 to a request without Range", ErrContentRange)
	case resp.StatusCode == http.StatusOK && ranged:
		return ErrNotPartial
	case resp.StatusCode == http.StatusOK:
		want = d.b.Size
	default:
		return fmt.Errorf("%w: %s%s", ErrStatus, resp.Status, errorMessage(resp.Body))
	}
	if resp.ContentLength >= 0 && resp.ContentLength != want {
		return fmt.Errorf("%w: %d for %d bytes", ErrLength, resp.ContentLength, want)
	}

	buf := make([]byte, 32<<10)
	if l := d.o.Limiter; l != nil && l.Limit() != rate.Inf && l.Burst() < len(buf) {
		buf = buf[:l.Burst()]
	}
	end := d.have + want     // never read past this: a source cannot send more than asked
	var waited time.Duration // on the source in this window (not on the limiter)
	windowFrom := d.have     // where the window began
	for d.have < end {
		// Read no further than the end of the current chunk, so a bad chunk stops the
		// reading right at its last byte.
		ci := d.have / d.b.ChunkSize
		n := min(int64(len(buf)), ci*d.b.ChunkSize+d.b.chunkLen(ci)-d.have, end-d.have)
		watchdog.Reset(d.o.StallTimeout)
		readFrom := time.Now()
		got, rerr := resp.Body.Read(buf[:n])
		watchdog.Stop()
		if stalled.Load() {
			return failure(nil)
		}
		if waited += time.Since(readFrom); waited >= d.o.StallTimeout {
			if brought := d.have + int64(got) - windowFrom; brought < min(MinStallBytes, end-windowFrom) {
				return fmt.Errorf("%w: %d bytes in %s (a source must send %d per stall timeout)", ErrStall, brought, waited.Round(time.Millisecond), int64(MinStallBytes))
			}
			waited, windowFrom = 0, d.have+int64(got)
		}
		if got > 0 {
			*received += int64(got)
			if err := d.write(buf[:got]); err != nil {
				return err
			}
			d.progress()
			if err := d.limit(ctx, got); err != nil {
				return failure(err)
			}
		}
		if (rerr == io.EOF || rerr == io.ErrUnexpectedEOF) && d.have < end {
			return fmt.Errorf("%w: %d of %d bytes", ErrShort, d.have-(end-want), want)
		}
		if rerr != nil && rerr != io.EOF {
			return failure(rerr)
		}
	}
	return nil
}

// write appends p (never crossing a chunk boundary) and verifies the chunk when p ends it.
func (d *download) write(p []byte) error {
	if _, err := d.f.WriteAt(p, d.have); err != nil {
		return &localError{fmt.Errorf("fetch: writing %s: %w", d.f.Name(), err)}
	}
	d.chunk.Write(p)
	d.file.Write(p)
	d.have += int64(len(p))
	ci := (d.have - 1) / d.b.ChunkSize
	if d.have != ci*d.b.ChunkSize+d.b.chunkLen(ci) {
		return nil
	}
	if hex.EncodeToString(d.chunk.Sum(nil)) != d.b.Chunks[ci] {
		d.have-- // back inside the bad chunk, so rollback cuts at its start
		if err := d.rollback(); err != nil {
			return err
		}
		return fmt.Errorf("%w: chunk %d (bytes %d–%d)", ErrChunk, ci, ci*d.b.ChunkSize, ci*d.b.ChunkSize+d.b.chunkLen(ci)-1)
	}
	d.chunk.Reset()
	d.setMark()
	return nil
}

// limit waits for the limiter to allow n bytes, in pieces no larger than its burst.
func (d *download) limit(ctx context.Context, n int) error {
	l := d.o.Limiter
	if l == nil || l.Limit() == rate.Inf {
		return nil
	}
	for n > 0 {
		k := min(n, l.Burst())
		if err := l.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// errorMessage reads the JSON error body of an error status, if there is one (bounded).
func errorMessage(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 4096))
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &e) != nil || (e.Error.Code == "" && e.Error.Message == "") {
		return ""
	}
	msg := e.Error.Code
	if e.Error.Message != "" {
		msg += ": " + e.Error.Message
	}
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, " ("+msg+")")
}

// ParseContentRange parses a Content-Range header of a 206 strictly: "bytes S-E/T" with
// decimal numbers (no sign, no leading zero, no space but the one after "bytes"),
// S ≤ E < T. An unknown total ("*") is refused: the caller needs it.
func ParseContentRange(s string) (start, end, total int64, err error) {
	bad := func(why string) (int64, int64, int64, error) {
		return 0, 0, 0, fmt.Errorf("content-range %q: %s", trim(s), why)
	}
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return bad(`not "bytes S-E/T"`)
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return bad("no total")
	}
	a, z, ok := strings.Cut(rng, "-")
	if !ok {
		return bad("no range")
	}
	if start, ok = decimal(a); !ok {
		return bad("bad first byte")
	}
	if end, ok = decimal(z); !ok {
		return bad("bad last byte")
	}
	if total, ok = decimal(tot); !ok {
		return bad("bad total")
	}
	if start > end || end >= total {
		return bad("not first ≤ last < total")
	}
	return start, end, total, nil
}

func trim(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// decimal parses a non-negative decimal without sign or leading zero that fits an int64.
func decimal(s string) (int64, bool) {
	if s == "" || len(s) > 19 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
