package dp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/dp/library"
	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/listener"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// copyBufs are the buffers blobs are streamed through (sendroom.go): pieceSize each, taken
// only while a piece is read and written, so a slow client waiting for room holds none.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, pieceSize); return &b }}

// byteRange is [Start, Start+Length) of a blob.
type byteRange struct{ Start, Length int64 }

// Range outcomes of parseRange.
const (
	rangeNone          = iota // no Range, or one the server ignores: the whole blob
	rangeOK                   // one satisfiable range: 206
	rangeUnsatisfiable        // one range outside the blob: 416
)

// parseRange reads a Range header against a blob of size bytes. One range is served
// (bytes=a-b, bytes=a-, bytes=-n). A header that is not a valid bytes range and a request
// for several ranges are ignored (the whole blob, 200), as RFC 9110 §14.2 allows: the
// clients of a DP (dp/fetch) ask one range at a time, and a multipart answer would cost
// the server for nothing. A valid range that starts at or past the end is 416.
func parseRange(h string, size int64) (byteRange, int) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return byteRange{}, rangeNone
	}
	spec = strings.TrimSpace(spec)
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return byteRange{}, rangeNone
	}
	num := func(s string) (int64, bool) {
		if s == "" || len(s) > 19 {
			return 0, false
		}
		for _, c := range s {
			if c < '0' || c > '9' {
				return 0, false
			}
		}
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil
	}
	if first == "" { // suffix: the last n bytes
		n, ok := num(last)
		if !ok {
			return byteRange{}, rangeNone
		}
		if n == 0 {
			return byteRange{}, rangeUnsatisfiable
		}
		if n > size {
			n = size
		}
		if size == 0 {
			return byteRange{}, rangeUnsatisfiable
		}
		return byteRange{size - n, n}, rangeOK
	}
	start, ok := num(first)
	if !ok {
		return byteRange{}, rangeNone
	}
	end := size - 1
	if last != "" {
		e, ok := num(last)
		if !ok || e < start {
			return byteRange{}, rangeNone
		}
		if e < end {
			end = e
		}
	}
	if start >= size {
		return byteRange{}, rangeUnsatisfiable
	}
	return byteRange{start, end - start + 1}, rangeOK
}

// ifRangeMatches: an If-Range of the strong ETag ("<sha256>") or the bare hash lets the
// Range apply; anything else (another tag, a weak tag, a date) asks for the whole blob.
func ifRangeMatches(h, sum string) bool {
	h = strings.TrimSpace(h)
	return h == `"`+sum+`"` || h == sum
}

// handleContent serves GET and HEAD /v1/content/{sha256}: the blob streamed from the file,
// ETag = the hash in quotes, one Range (with If-Range), Content-Length always.
func (d *DP) handleContent(w http.ResponseWriter, r *http.Request) error {
	sum := r.PathValue("sha256")
	if !library.ValidSum(sum) {
		return api.Errorf(http.StatusBadRequest, "bad_hash", "%q is not a SHA-256 in lower-case hex", trunc(sum))
	}
	f, err := d.lib.Open(sum)
	if errors.Is(err, library.ErrNotFound) {
		return api.Errorf(http.StatusNotFound, "not_found", "blob %s is not in this distribution point's library", sum)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	etag := `"` + sum + `"`
	hdr := w.Header()
	hdr.Set("ETag", etag)
	hdr.Set("Accept-Ranges", "bytes")
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Cache-Control", "private, max-age=31536000, immutable") // a hash names one content forever
	if inm := r.Header.Get("If-None-Match"); inm != "" && (strings.TrimSpace(inm) == etag || strings.TrimSpace(inm) == "*") {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	status, rg := http.StatusOK, byteRange{0, size}
	if rh := r.Header.Get("Range"); rh != "" {
		if ir := r.Header.Get("If-Range"); ir == "" || ifRangeMatches(ir, sum) {
			got, outcome := parseRange(rh, size)
			switch outcome {
			case rangeOK:
				status, rg = http.StatusPartialContent, got
				hdr.Set("Content-Range", "bytes "+strconv.FormatInt(rg.Start, 10)+"-"+strconv.FormatInt(rg.Start+rg.Length-1, 10)+"/"+strconv.FormatInt(size, 10))
			case rangeUnsatisfiable:
				hdr.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
				return api.Errorf(http.StatusRequestedRangeNotSatisfiable, "range_not_satisfiable", "the range %q is outside the blob's %d bytes", trunc(rh), size)
			}
		}
	}
	hdr.Set("Content-Length", strconv.FormatInt(rg.Length, 10))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	if err := sendBlob(w, http.NewResponseController(w), rawConnOf(r), f, rg.Start, rg.Length); err != nil {
		d.log.Debug().Err(err).Str("sha256", sum).Str("remote_addr", r.RemoteAddr).Msg("blob transfer ended early")
	}
	return nil
}

// deadlineWriter moves the connection's write deadline along before each write: a client
// that reads is never cut, one that stops reading is, after listener.SlowClient.Write.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (dw deadlineWriter) Write(p []byte) (int, error) {
	_ = dw.rc.SetWriteDeadline(time.Now().Add(listener.SlowClient.Write))
	return dw.w.Write(p)
}

// deadlineReader moves the connection's read deadline along before each read of a body.
type deadlineReader struct {
	r  io.Reader
	rc *http.ResponseController
}

func (dr deadlineReader) Read(p []byte) (int, error) {
	_ = dr.rc.SetReadDeadline(time.Now().Add(listener.SlowClient.Read))
	return dr.r.Read(p)
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// handleManifest serves the SignedManifest of a package version distributed to this DP.
func (d *DP) handleManifest(w http.ResponseWriter, r *http.Request) error {
	name, version := r.PathValue("package"), r.PathValue("version")
	if !manifest.ValidName(name) || !manifest.ValidVersion(version) {
		return api.BadRequest("%q / %q is not a package name and version", trunc(name), trunc(version))
	}
	d.mu.RLock()
	p := d.pkgs[pkgKey(name, version)]
	d.mu.RUnlock()
	if p == nil || p.manifest == nil {
		return api.Errorf(http.StatusNotFound, "not_distributed", "%s %s is not distributed to this distribution point", name, version)
	}
	w.Header().Set("ETag", `"`+p.pkg.ManifestSHA256+`"`)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(p.pkg.Manifest)
	return nil
}

func pkgKey(name, version string) string { return name + "\x00" + version }

// MaxUploadSize bounds one uploaded blob (1 TiB).
const MaxUploadSize = 1 << 40

// permManageContent is the permission an upload needs (internal/access.ManageContent).
const permManageContent = "ManageContent"

// authorizeUpload lets a user with ManageContent upload to an origin DP: the MP is asked
// on each request (a role taken away stops the next request).
func (d *DP) authorizeUpload(r *http.Request) (string, error) {
	if !d.s.Origin {
		return "", api.Errorf(http.StatusNotFound, "not_origin", "this distribution point takes no uploads: upload to the origin DP")
	}
	p := peerOf(r)
	if p.id.Kind != trust.KindUser {
		return "", api.Errorf(http.StatusForbidden, "not_a_user", "uploads are for user (admin) certificates")
	}
	sum := r.PathValue("sha256")
	if !library.ValidSum(sum) {
		return "", api.Errorf(http.StatusBadRequest, "bad_hash", "%q is not a SHA-256 in lower-case hex", trunc(sum))
	}
	body, _ := json.Marshal(wire.DPAuthorize{User: p.id.ID, Serial: p.leaf.SerialNumber.String(), Permission: permManageContent})
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	status, err := d.mpCall(ctx, http.MethodPost, "/v1/dp/authorize", bytes.NewReader(body), nil)
	switch {
	case err != nil && status == 0:
		return "", api.Wrap(err, http.StatusServiceUnavailable, "mp_unavailable", "the management point cannot be asked for your permissions right now; retry later")
	case status == http.StatusNoContent || status == http.StatusOK:
		return sum, nil
	case status == http.StatusForbidden:
		return "", api.Errorf(http.StatusForbidden, "forbidden", "%s does not hold the ManageContent permission", p.id.ID)
	default:
		return "", api.Wrap(err, http.StatusBadGateway, "mp_error", "the management point did not answer the permission check")
	}
}

func (d *DP) handleUploadState(w http.ResponseWriter, r *http.Request) error {
	sum, err := d.authorizeUpload(r)
	if err != nil {
		return err
	}
	n, complete, err := d.lib.Received(sum)
	if err != nil {
		return err
	}
	st := wire.UploadState{SHA256: sum, Received: n, Complete: complete}
	if complete {
		st.Size = n
	}
	api.WriteJSON(w, http.StatusOK, st)
	return nil
}

// handleUpload is PUT /v1/admin/uploads/{sha256}?offset=N&size=TOTAL: the body is bytes
// [N, TOTAL) or a first part of them. 201 once the blob is whole, hashed and in the
// library; 200 with Received when more is to come; 409 when N is not where the held part
// ends; 422 when the whole does not hash to the name (the part is dropped).
func (d *DP) handleUpload(w http.ResponseWriter, r *http.Request) error {
	sum, err := d.authorizeUpload(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	offset, err1 := strconv.ParseInt(q.Get("offset"), 10, 64)
	size, err2 := strconv.ParseInt(q.Get("size"), 10, 64)
	if err1 != nil || err2 != nil || offset < 0 || size < 0 || offset > size {
		return api.BadRequest("offset and size must be whole numbers with 0 <= offset <= size (got offset=%q size=%q)", trunc(q.Get("offset")), trunc(q.Get("size")))
	}
	if size > MaxUploadSize {
		return api.Errorf(http.StatusRequestEntityTooLarge, "too_large", "a blob is at most %d bytes", int64(MaxUploadSize))
	}
	if r.ContentLength > size-offset {
		return api.Errorf(http.StatusRequestEntityTooLarge, "too_large", "the body (%d bytes) is longer than size-offset (%d)", r.ContentLength, size-offset)
	}
	rc := http.NewResponseController(w)
	body := deadlineReader{r: http.MaxBytesReader(w, r.Body, size-offset+1), rc: rc}
	received, complete, err := d.lib.Append(sum, offset, size, body)
	st := wire.UploadState{SHA256: sum, Size: size, Received: received, Complete: complete}
	switch {
	case errors.Is(err, library.ErrOffset):
		return api.Errorf(http.StatusConflict, "upload_offset", "the upload continues at byte %d, not %d", received, offset)
	case errors.Is(err, library.ErrBusy):
		return api.Errorf(http.StatusConflict, "upload_busy", "another upload of %s is under way", sum)
	case errors.Is(err, library.ErrHashMismatch):
		d.log.Warn().Str("sha256", sum).Str("user", peerOf(r).id.ID).Msg("an upload did not match its hash: dropped")
		return api.Errorf(http.StatusUnprocessableEntity, "hash_mismatch", "the uploaded bytes do not hash to %s; upload again from offset 0", sum)
	case errors.Is(err, library.ErrTooLong):
		return api.Errorf(http.StatusRequestEntityTooLarge, "too_large", "the body is longer than size-offset")
	case err != nil:
		return api.Wrap(err, http.StatusBadRequest, "upload_broken", "the upload broke off; resume from Received (GET this URL)")
	case complete:
		d.log.Info().Str("sha256", sum).Int64("size", size).Str("user", peerOf(r).id.ID).Msg("blob uploaded")
		d.reportLocal()
		api.WriteJSON(w, http.StatusCreated, st)
	default:
		api.WriteJSON(w, http.StatusOK, st)
	}
	return nil
}
