package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/progress"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// The upload of `ibcm content add`: each blob the origin DP lacks goes to its upload
// routes (wire/content.go) with the admin's certificate, resuming where the DP says it
// stopped when a connection breaks, with a progress bar on a terminal.

// uploader sends blobs to a DP's upload routes with the admin's certificate, resuming
// from what the DP holds after a broken connection.
type uploader struct {
	dp      wire.DPInfo
	bases   []string      // the DP's URLs to try, intranet first; the first that answers stays
	state   *adminClient  // JSON calls (timeout per call)
	bulk    *http.Client  // PUTs (no overall timeout: the stall timer ends a dead one)
	retries int           // resumes after a broken upload
	stall   time.Duration // no byte taken for this long ends the attempt
	backoff func(attempt int) time.Duration
	log     io.Writer
	bar     func(label string, total int64) *progress.Bar // nil: no progress bar
}

// newUploader reaches dp with the identity and roots of the MP client (a DP is a server
// of the same site).
func newUploader(mp *adminClient, dp wire.DPInfo) (*uploader, error) {
	tr, ok := mp.http.Transport.(*http.Transport)
	if !ok || tr.TLSClientConfig == nil {
		return nil, errors.New("internal error: the admin client has no TLS transport")
	}
	// A new transport: the MP's may dial one proven address, which is not the DP's.
	dpTransport := &http.Transport{
		TLSClientConfig:       tr.TLSClientConfig.Clone(),
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute, // the DP hashes and syncs the last piece before it answers
		IdleConnTimeout:       time.Minute,
	}
	u := &uploader{
		dp:      dp,
		state:   &adminClient{who: "DP " + dp.ID, http: &http.Client{Timeout: 30 * time.Second, Transport: dpTransport}},
		bulk:    &http.Client{Transport: dpTransport},
		retries: 5,
		stall:   time.Minute,
		backoff: func(attempt int) time.Duration {
			return min(time.Duration(1<<attempt)*500*time.Millisecond, 8*time.Second)
		},
		log: io.Discard,
	}
	for _, b := range []string{dp.IntranetURL, dp.InternetURL} {
		if b != "" {
			u.bases = append(u.bases, strings.TrimSuffix(b, "/"))
		}
	}
	if len(u.bases) == 0 {
		return nil, fmt.Errorf("DP %s has no URL registered", dp.ID)
	}
	u.state.base = u.bases[0]
	return u, nil
}

// getState asks the DP how much of the blob it holds. Until one URL of the DP answered,
// a URL that cannot be reached gives way to the next.
func (u *uploader) getState(ctx context.Context, sha string) (wire.UploadState, error) {
	var st wire.UploadState
	for {
		err := u.state.do(ctx, http.MethodGet, "/v1/admin/uploads/"+sha, nil, &st)
		if err != nil && strings.Contains(err.Error(), ", HTTP 404)") {
			// Nothing of it there (a DP may say so with not_found): start at 0. A DP without
			// the upload routes refuses the PUT as clearly.
			st, err = wire.UploadState{SHA256: sha}, nil
		}
		if err == nil || len(u.bases) <= 1 || isHTTPAnswer(err) || ctx.Err() != nil {
			if err == nil {
				u.bases = u.bases[:1] // this one answered: keep it
			}
			return st, err
		}
		fmt.Fprintf(u.log, "DP %s: %s did not answer (%v); trying %s\n", u.dp.ID, u.bases[0], err, u.bases[1])
		u.bases = u.bases[1:]
		u.state.base = u.bases[0]
	}
}

// isHTTPAnswer tells an error answer of a server from a failure to reach it.
func isHTTPAnswer(err error) bool {
	var se *statusError
	return errors.As(err, &se) || strings.Contains(err.Error(), ", HTTP ") || strings.Contains(err.Error(), " answered HTTP ")
}

// statusError is an error answer to a PUT.
type statusError struct {
	status int
	code   string
	msg    string
}

func (e *statusError) Error() string {
	if e.code != "" {
		return fmt.Sprintf("%s (%s, HTTP %d)", e.msg, e.code, e.status)
	}
	return fmt.Sprintf("the DP answered HTTP %d", e.status)
}

// retryable: a broken connection, a server in trouble, or an offset the DP no longer
// agrees with (ask it again); not a refusal.
func retryable(err error) bool {
	var se *statusError
	if errors.As(err, &se) {
		return se.status == http.StatusConflict || se.status == http.StatusRequestedRangeNotSatisfiable ||
			se.status == http.StatusTooManyRequests || se.status >= 500
	}
	return true
}

// upload makes the DP hold f's blob: sent is the bytes sent over the network, skipped the
// bytes the DP held before (the whole blob, or the part of an earlier upload).
func (u *uploader) upload(ctx context.Context, f localFile) (sent, skipped int64, err error) {
	st, err := u.getState(ctx, f.SHA256)
	if err != nil {
		return 0, 0, err
	}
	if st.Complete {
		return 0, f.Size, nil
	}
	skipped = st.Received
	fh, err := os.Open(f.disk)
	if err != nil {
		return 0, skipped, err
	}
	defer fh.Close()
	var bar *progress.Bar
	if u.bar != nil {
		bar = u.bar(f.Path, f.Size)
		defer bar.Finish()
	}
	for attempt := 0; ; attempt++ {
		if st.Received < 0 || st.Received > f.Size {
			return sent, skipped, fmt.Errorf("the DP says it holds %d bytes of a %d-byte blob", st.Received, f.Size)
		}
		bar.Set(st.Received)
		n, done, err := u.put(ctx, fh, f, st.Received, bar)
		sent += n
		if err == nil && done {
			return sent, skipped, nil
		}
		if err != nil && (!retryable(err) || ctx.Err() != nil) {
			return sent, skipped, err
		}
		if attempt >= u.retries {
			if err == nil {
				err = errors.New("the DP did not report the blob complete")
			}
			return sent, skipped, fmt.Errorf("gave up after %d attempts: %w", attempt+1, err)
		}
		select {
		case <-ctx.Done():
			return sent, skipped, ctx.Err()
		case <-time.After(u.backoff(attempt)):
		}
		if st, err = u.getState(ctx, f.SHA256); err != nil {
			return sent, skipped, err
		}
		if st.Complete {
			return sent, skipped, nil
		}
		if bar == nil || attempt == 0 {
			fmt.Fprintf(u.log, "upload of %s broke; resuming at byte %d of %d\n", f.Path, st.Received, f.Size)
		}
	}
}

// put sends the bytes of f from offset to its end.
func (u *uploader) put(ctx context.Context, fh *os.File, f localFile, offset int64, bar *progress.Bar) (sent int64, complete bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errStalled := fmt.Errorf("no byte taken for %s", u.stall)
	stall := time.AfterFunc(u.stall, func() { cancel(errStalled) })
	defer stall.Stop()
	var taken int64
	body := &countingReader{r: io.NewSectionReader(fh, offset, f.Size-offset), onRead: func(n int, eof bool) {
		if taken += int64(n); eof || taken == f.Size-offset {
			stall.Stop() // all sent: the DP's answer has the transport's ResponseHeaderTimeout
		} else {
			stall.Reset(u.stall)
		}
		if bar != nil {
			bar.Add(int64(n))
		}
	}}
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}, "size": {strconv.FormatInt(f.Size, 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.state.base+"/v1/admin/uploads/"+f.SHA256+"?"+q.Encode(), body)
	if err != nil {
		return 0, false, err
	}
	req.ContentLength = f.Size - offset
	if req.ContentLength == 0 {
		req.Body = http.NoBody
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := u.bulk.Do(req)
	// The transport may still read the body after Do returns with an error: close it first,
	// so the count and the progress bar are final.
	sent = body.finish()
	if err != nil {
		if cause := context.Cause(ctx); cause == errStalled {
			err = cause
		}
		return sent, false, err
	}
	defer resp.Body.Close()
	stall.Stop()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return sent, false, err
	}
	if resp.StatusCode >= 300 {
		var e wire.Error
		_ = json.Unmarshal(data, &e)
		return sent, false, &statusError{status: resp.StatusCode, code: e.Error.Code, msg: e.Error.Message}
	}
	var st wire.UploadState
	if err := json.Unmarshal(data, &st); err != nil {
		return sent, false, fmt.Errorf("decoding the DP's answer: %w", err)
	}
	return sent, st.Complete, nil
}

// countingReader counts what is read through it until finish.
type countingReader struct {
	mu     sync.Mutex
	r      io.Reader
	n      int64
	done   bool
	onRead func(n int, eof bool)
}

var errRequestOver = errors.New("the request is over")

func (c *countingReader) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return 0, errRequestOver
	}
	n, err := c.r.Read(p)
	if n > 0 || err == io.EOF {
		c.n += int64(n)
		c.onRead(n, err == io.EOF)
	}
	return n, err
}

// finish ends the reading and returns the count.
func (c *countingReader) finish() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	return c.n
}
