package helper

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/e2e"
)

// maxAnswer bounds a JSON answer of the MP (a session list included).
const maxAnswer = 16 << 20

// Client calls the session routes of the helper's management point with the user's
// certificate. Its TLS configuration also serves the end-to-end TLS: its first certificate
// is the helper's, and its RootCAs are the site's roots the device certificate must chain to.
type Client struct {
	base string
	tls  *tls.Config
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	http *http.Client // ordinary calls
	// Now is the clock of the end-to-end certificate checks (time.Now when nil).
	Now func() time.Time
	// DirectTimeout bounds one try of the device's session port: the TCP dial and the TLS
	// handshake (default 2 s).
	DirectTimeout time.Duration
	// DirectDialer dials the device's session port (a net.Dialer when nil).
	DirectDialer func(ctx context.Context, network, addr string) (net.Conn, error)
}

// NewClient calls the MP at base (https://host:port) with cfg (the user's certificate and
// the site's roots). dial, when not nil, dials the MP instead of the URL's host (the address
// the location probe proved); the MP's certificate is still checked for the URL's name.
func NewClient(base string, cfg *tls.Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("management point URL %q: want https://host[:port]", base)
	}
	if cfg == nil || len(cfg.Certificates) == 0 || cfg.RootCAs == nil {
		return nil, errors.New("the helper's TLS configuration needs the user's certificate and the site's roots")
	}
	if dial == nil {
		d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	c := &Client{base: strings.TrimSuffix(base, "/"), tls: cfg.Clone(), dial: dial}
	c.http = &http.Client{Timeout: 60 * time.Second, Transport: c.transport()}
	return c, nil
}

// transport is an HTTP/1.1 transport to the MP (a relay leg is an HTTP/1.1 Upgrade).
func (c *Client) transport() *http.Transport {
	var p http.Protocols
	p.SetHTTP1(true)
	cfg := c.tls.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	return &http.Transport{TLSClientConfig: cfg, DialContext: c.dial, Protocols: &p,
		TLSHandshakeTimeout: 15 * time.Second, MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}
}

// APIError is an error answer of the MP: its HTTP status and the code of its JSON body
// (denied, consent_timeout, device_offline, forbidden, …).
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("the management point answered HTTP %d", e.Status)
	}
	msg := e.Message
	if msg == "" {
		msg = "refused"
	}
	return fmt.Sprintf("%s (%s, HTTP %d)", msg, e.Code, e.Status)
}

// Code is the error code of err: an MP's answer (APIError), a refusal of the end-to-end
// peer ("e2e_peer"), an ending the device sent (EndedError: its outcome), or "".
func Code(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Code
	}
	var ee *EndedError
	if errors.As(err, &ee) {
		return ee.Outcome
	}
	if errors.Is(err, ErrPeer) {
		return "e2e_peer"
	}
	return ""
}

// apiError reads an error answer (bounded).
func apiError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &APIError{Status: resp.StatusCode}
	var body wire.Error
	if json.Unmarshal(data, &body) == nil {
		e.Code, e.Message = body.Error.Code, body.Error.Message
	}
	return e
}

// Do sends a JSON request (in may be nil) to path and decodes the JSON answer into out (nil:
// the answer is dropped).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("reading the answer of the management point: %w", err)
	}
	if len(data) > maxAnswer {
		return fmt.Errorf("the answer of the management point is over %d bytes", maxAnswer)
	}
	if out == nil || len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding the answer of the management point: %w", err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling the management point: %w", err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, apiError(resp)
	}
	return resp, nil
}

func sessionPath(id string) string { return "/v1/admin/sessions/" + url.PathEscape(id) }

// Start asks the MP for a session with a device (POST /v1/admin/sessions).
func (c *Client) Start(ctx context.Context, req wire.SessionStartRequest) (wire.SessionStart, error) {
	var s wire.SessionStart
	if err := c.Do(ctx, http.MethodPost, "/v1/admin/sessions", req, &s); err != nil {
		return s, err
	}
	return s, checkStart(s)
}

// Join asks to watch session id as a viewer.
func (c *Client) Join(ctx context.Context, id string) (wire.SessionStart, error) {
	var s wire.SessionStart
	if err := c.Do(ctx, http.MethodPost, sessionPath(id)+"/join", struct{}{}, &s); err != nil {
		return s, err
	}
	return s, checkStart(s)
}

// checkStart refuses an answer the legs cannot be made from.
func checkStart(s wire.SessionStart) error {
	if s.Session.ID == "" || s.Session.Device == "" || len(s.TicketID) != 32 {
		return errors.New("the management point's session answer lacks the session, device or ticket id")
	}
	for _, c := range s.TicketID {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return errors.New("the management point's ticket id is not 32 hex digits")
		}
	}
	return nil
}

// SessionFilter selects sessions for Sessions.
type SessionFilter struct {
	Active bool
	Device string
	Helper string
	Since  time.Time // zero: no bound
}

// Sessions lists sessions (GET /v1/admin/sessions).
func (c *Client) Sessions(ctx context.Context, f SessionFilter) ([]wire.Session, error) {
	var ss []wire.Session
	err := c.Do(ctx, http.MethodGet, sessionsPath(f, ""), nil, &ss)
	return ss, err
}

// SessionsCSV copies the MP's CSV of the sessions (the Remote Help report, the same file
// the web console exports) to w.
func (c *Client) SessionsCSV(ctx context.Context, f SessionFilter, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, sessionsPath(f, "csv"), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	return err
}

func sessionsPath(f SessionFilter, format string) string {
	q := url.Values{}
	if format != "" {
		q.Set("format", format)
	}
	if f.Active {
		q.Set("active", "1")
	}
	if f.Device != "" {
		q.Set("device", f.Device)
	}
	if f.Helper != "" {
		q.Set("helper", f.Helper)
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339))
	}
	path := "/v1/admin/sessions"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return path
}

// Session reads one session.
func (c *Client) Session(ctx context.Context, id string) (wire.Session, error) {
	var s wire.Session
	err := c.Do(ctx, http.MethodGet, sessionPath(id), nil, &s)
	return s, err
}

// CRL fetches the site's CRL through the MP (GET /v1/crl). HelperConfig checks its
// signature against the device certificate's issuer before it relies on it.
func (c *Client) CRL(ctx context.Context) (*x509.RevocationList, error) {
	resp, err := c.send(ctx, http.MethodGet, "/v1/crl", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(io.LimitReader(resp.Body, e2e.MaxCRL+1))
	if err != nil {
		return nil, fmt.Errorf("reading the CRL: %w", err)
	}
	if len(der) > e2e.MaxCRL {
		return nil, fmt.Errorf("the CRL is larger than %d bytes", e2e.MaxCRL)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("the site's CRL: %w", err)
	}
	now := time.Now()
	if c.Now != nil {
		now = c.Now()
	}
	if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
		// The CA has not published since: a revocation after it would be missed.
		return nil, fmt.Errorf("the site's CRL is stale (next update was due %s)", crl.NextUpdate.UTC().Format(time.RFC3339))
	}
	return crl, nil
}

// End ends session id at the site (its helper, or ManageDevices on its device).
func (c *Client) End(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodPost, sessionPath(id)+"/end", struct{}{}, nil)
}

// Recording copies the decrypted asciicast v2 of session id to w (ReadAudit).
func (c *Client) Recording(ctx context.Context, id string, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+sessionPath(id)+"/recording", nil)
	if err != nil {
		return 0, err
	}
	// A recording may be long: no overall timeout, the context bounds it.
	resp, err := (&http.Client{Transport: c.http.Transport}).Do(req)
	if err != nil {
		return 0, fmt.Errorf("calling the management point: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, apiError(resp)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("copying the recording: %w", err)
	}
	return n, nil
}
