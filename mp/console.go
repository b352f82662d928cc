package mp

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/csv"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ibcm-project/ibcm/internal/access"
	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/ticket"
)

// The MP's side of the web console (console/): the admin calls a browser makes through the
// console listener (ConsoleAPI), the routes behind `ibcm console login|logout`, and the
// routes only the console's pages use.

// ConsoleLinks makes and revokes web-console logins; *console.Console implements it
// (site/mp.go passes it as Options.ConsoleLinks).
type ConsoleLinks interface {
	// CreateLink makes a one-time login URL for user, asked with cert, valid until expires;
	// revoking cert ends what it made, and its expiry the session it opened.
	CreateLink(ctx context.Context, user string, cert *x509.Certificate) (url string, expires time.Time, err error)
	// RevokeUser ends the user's console sessions and returns how many.
	RevokeUser(ctx context.Context, user string) (int, error)
}

// LocationConsole is the location of a call that came through the web console.
const LocationConsole = "console"

// consoleAllowlist is every MP route a browser reaches through the console (ConsoleAPI);
// any other answers 404. Each handler of it copes with a peer without a certificate.
var consoleAllowlist = map[string]bool{
	"GET /v1/admin/devices":                  true,
	"GET /v1/admin/devices/{id}":             true,
	"GET /v1/admin/devices/{id}/messages":    true,
	"GET /v1/admin/devices/{id}/remote":      true,
	"GET /v1/admin/devices/{id}/deployments": true,
	"GET /v1/admin/groups":                   true,
	"GET /v1/admin/sessions":                 true,
	"GET /v1/admin/sessions/{id}":            true,
	"POST /v1/admin/sessions":                true,
	"POST /v1/admin/sessions/{id}/end":       true,
}

// ungated is the MP's routes without a listener's gate, made once for ConsoleAPI.
func (m *MP) ungated() *http.ServeMux {
	m.consoleOnce.Do(func() { m.consoleMux = m.routes(LocationConsole) })
	return m.consoleMux
}

// ConsoleAPI serves one admin call of user, whom the web console authenticated by its
// cookie session: only the routes of consoleAllowlist (else 404 not_found), as a user peer
// without a certificate at location "console", through the same guards (grants read
// afresh, scopes, policy) as a call with the user's certificate, and within the MP's
// requests in flight.
func (m *MP) ConsoleAPI(user string) http.Handler {
	return api.Handle(m.log, func(w http.ResponseWriter, r *http.Request) error {
		if err := consoleText(r); err != nil {
			return err
		}
		mux := m.ungated()
		if _, pattern := mux.Handler(r); !consoleAllowlist[pattern] {
			return api.Errorf(http.StatusNotFound, "not_found", "no route %s %s for the web console", r.Method, r.URL.Path)
		}
		select {
		case m.inflight <- struct{}{}:
			defer func() { <-m.inflight }()
		default:
			return api.Errorf(http.StatusServiceUnavailable, "overloaded", "the management point is busy; retry after the Retry-After seconds")
		}
		p := &peer{id: trust.Identity{Kind: trust.KindUser, ID: user}, location: LocationConsole}
		mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, p)))
		return nil
	})
}

// consoleText refuses (400) a console call whose path or query has a control character or
// bytes that are not UTF-8: no id of the site has them, and PostgreSQL refuses them in a
// statement (an internal error at every route that looks the id up).
func consoleText(r *http.Request) error {
	bad := func(s string) bool { return !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) }
	if bad(r.URL.Path) {
		return api.BadRequest("the path has control characters or is not UTF-8")
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return api.BadRequest("the query is not URL-encoded key=value pairs: %v", err)
	}
	for k, vs := range q {
		if bad(k) || slices.ContainsFunc(vs, bad) {
			return api.BadRequest("the query has control characters or is not UTF-8")
		}
	}
	return nil
}

// consoleRoutes adds the web console's routes to the MP's admin API.
//
//	POST /v1/admin/console/links           any user: {} → wire.ConsoleLink (201)
//	POST /v1/admin/console/revoke          wire.ConsoleRevokeRequest: the user themself, or ManageAccess
//	GET  /v1/admin/devices/{id}/remote     ReadDevices on the device: wire.DeviceRemote
//	GET  /v1/admin/devices/{id}/deployments ReadDevices on the device: []wire.DeviceDeployment
func (m *MP) consoleRoutes(mux *http.ServeMux, h func(api.HandlerFunc) http.Handler) {
	anyUser := func(fn adminHandler) http.Handler {
		return m.guard(h, func(*http.Request, string, access.Grants) error { return nil }, fn)
	}
	mux.Handle("POST /v1/admin/console/links", anyUser(m.handleConsoleLink))
	mux.Handle("POST /v1/admin/console/revoke", anyUser(m.handleConsoleRevoke))
	mux.Handle("GET /v1/admin/devices/{id}/remote", m.onDevice(h, access.ReadDevices, m.handleDeviceRemote))
	mux.Handle("GET /v1/admin/devices/{id}/deployments", m.onDevice(h, access.ReadDevices, m.handleDeviceDeployments))
}

func (m *MP) consoleLinks() (ConsoleLinks, error) {
	if m.o.ConsoleLinks == nil {
		return nil, api.Errorf(http.StatusNotFound, "console_disabled", "this site has no web console (mp.console_listen is empty)")
	}
	return m.o.ConsoleLinks, nil
}

func (m *MP) handleConsoleLink(w http.ResponseWriter, r *http.Request, name string) error {
	var req struct{}
	if err := api.DecodeOptional(w, r, &req); err != nil {
		return err
	}
	links, err := m.consoleLinks()
	if err != nil {
		return err
	}
	p := peerOf(r)
	if p.leaf == nil { // not on the console's allowlist; a login is made with a certificate only
		return api.Errorf(http.StatusForbidden, "certificate_required", "a console login is made with a user certificate")
	}
	u, exp, err := links.CreateLink(r.Context(), name, p.leaf)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusCreated, wire.ConsoleLink{URL: u, ExpiresAt: exp})
	return nil
}

func (m *MP) handleConsoleRevoke(w http.ResponseWriter, r *http.Request, name string) error {
	var req wire.ConsoleRevokeRequest
	if err := api.DecodeOptional(w, r, &req); err != nil {
		return err
	}
	if req.User == "" {
		req.User = name
	}
	if err := access.ValidUserName(req.User); err != nil {
		return api.BadRequest("user: %v", err)
	}
	if req.User != name && !access.FromContext(r.Context()).Allows(access.ManageAccess) {
		return forbidden(name, access.ManageAccess)
	}
	links, err := m.consoleLinks()
	if err != nil {
		return err
	}
	n, err := links.RevokeUser(r.Context(), req.User)
	if err != nil {
		return err
	}
	m.log.Info().Str("user", req.User).Str("by", name).Int("sessions", n).Msg("console sessions revoked")
	api.WriteJSON(w, http.StatusOK, wire.ConsoleRevokeResult{Revoked: n})
	return nil
}

// sessionKinds are the kinds of remote-control session (DeviceRemote.Kinds).
var sessionKinds = []string{"terminal", "screen"}

func (m *MP) handleDeviceRemote(w http.ResponseWriter, r *http.Request, name string) error {
	ctx := r.Context()
	d, err := m.Device(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	pol, err := m.devicePolicy(ctx, d.ID)
	if err != nil {
		return err
	}
	out := wire.DeviceRemote{Online: d.Connected > 0, Modes: []string{}, Kinds: []string{}}
	if d.Compliance == "noncompliant" {
		out.ComplianceWarning = fmt.Sprintf("device %s is not compliant with its policy", d.Name)
	}
	// The modes the user's permissions allow within the policy; none when the policy
	// refuses the user whatever the mode (disabled, no access, not a permitted viewer).
	if e, err := m.policyRefusal(ctx, pol, ticket.ModeView, name); err != nil {
		return err
	} else if e == nil && !d.Blocked {
		if modes := allowedModes(access.FromContext(ctx), d.Groups, pol); len(modes) > 0 {
			out.Modes, out.Kinds = modes, sessionKinds
		}
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (m *MP) handleDeviceDeployments(w http.ResponseWriter, r *http.Request, _ string) error {
	ctx := r.Context()
	id := r.PathValue("id")
	// An unknown device is 404, as on the other device routes (a site-wide grant lets any
	// id through onDevice).
	if _, err := m.Device(ctx, id); err != nil {
		return err
	}
	// The deployments of the device's groups, and those it reported on since it left one.
	rows, err := m.db.Query(ctx, `SELECT d.id, d.name, d.version, d.created, dd.state, dd.error, dd.dp, dd.updated
		FROM deployments d LEFT JOIN deployment_devices dd ON dd.deployment_id = d.id AND dd.device_id = ?
		WHERE dd.device_id IS NOT NULL OR d.group_name IN (SELECT group_name FROM group_members WHERE device_id = ?)
		ORDER BY d.created, d.id LIMIT 10000`, id, id)
	if err != nil {
		return fmt.Errorf("reading the device's deployments: %w", err)
	}
	defer rows.Close()
	out := []wire.DeviceDeployment{}
	for rows.Next() {
		var dd wire.DeviceDeployment
		var created int64
		var state, errText, dp sql.NullString
		var updated sql.NullInt64
		if err := rows.Scan(&dd.ID, &dd.Package, &dd.Version, &created, &state, &errText, &dp, &updated); err != nil {
			return fmt.Errorf("reading the device's deployments: %w", err)
		}
		dd.State, dd.UpdatedAt = wire.DeployPending, time.Unix(created, 0).UTC()
		if state.Valid {
			dd.State, dd.Error, dd.DP, dd.UpdatedAt = state.String, errText.String, dp.String, time.Unix(updated.Int64, 0).UTC()
		}
		out = append(out, dd)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading the device's deployments: %w", err)
	}
	api.WriteJSON(w, http.StatusOK, out)
	return nil
}

// sessionListFormat reads format= of GET /v1/admin/sessions: json (the default) or csv.
func sessionListFormat(q url.Values) (string, error) {
	switch f := q.Get("format"); f {
	case "", "json":
		return "json", nil
	case "csv":
		return "csv", nil
	default:
		return "", api.BadRequest("format: json or csv (got %q)", f)
	}
}

// sessionCSVHeader is the header row of the session list as CSV (the Remote Help report).
var sessionCSVHeader = []string{"id", "device", "device_name", "helper", "helper_name", "sharer", "sharer_name", "state", "outcome", "error",
	"kind", "mode", "modes", "transport", "e2e", "console", "location", "mp", "requested_at", "started_at", "ended_at", "bytes_to_device", "bytes_from_device"}

// csvCell keeps a spreadsheet from reading a cell as a formula (CSV injection): a cell
// starting with = + - @ (or a tab or carriage return), also after white space (an import
// that trims spaces) or in their full-width forms, gets a leading '. Device names and
// errors come from devices: an attacker's.
func csvCell(s string) string {
	if s == "" {
		return s
	}
	first, _ := utf8.DecodeRuneInString(strings.TrimLeftFunc(s, unicode.IsSpace))
	if strings.ContainsRune("\t\r\n", rune(s[0])) || strings.ContainsRune("=+-@\uff1d\uff0b\uff0d\uff20", first) {
		return "'" + s
	}
	return s
}

// sessionKind names a session's kind for people: terminal ("") or screen.
func sessionKind(kind string) string {
	if kind == "" {
		return "terminal"
	}
	return kind
}

func writeSessionList(w http.ResponseWriter, format string, ss []wire.Session) error {
	if format != "csv" {
		api.WriteJSON(w, http.StatusOK, ss)
		return nil
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="sessions.csv"`)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	cw := csv.NewWriter(w)
	_ = cw.Write(sessionCSVHeader)
	at := func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, s := range ss {
		modes := make([]string, len(s.Modes))
		for i, md := range s.Modes {
			modes[i] = md.Mode
		}
		row := []string{s.ID, s.Device, s.DeviceName, s.Helper, s.HelperName, s.Sharer, s.SharerName, s.State, s.Outcome, s.Error,
			sessionKind(s.Kind), s.Mode, strings.Join(modes, " "), s.Transport, strconv.FormatBool(s.E2E), strconv.FormatBool(s.Console), s.Location, s.MP,
			at(&s.RequestedAt), at(s.StartedAt), at(s.EndedAt), strconv.FormatInt(s.BytesIn, 10), strconv.FormatInt(s.BytesOut, 10)}
		for i := range row {
			row[i] = csvCell(row[i])
		}
		if err := cw.Write(row); err != nil {
			return nil // the client went away; the status is sent
		}
	}
	cw.Flush()
	return nil
}

// CertificateRevoked says whether the certificate of serial (decimal) is in the site's
// revoked set as this MP knows it (the web console's logins end with the certificate that
// made them). A serial that does not parse counts as revoked.
func (m *MP) CertificateRevoked(serial string) bool {
	n, ok := new(big.Int).SetString(serial, 10)
	return !ok || n.Sign() <= 0 || m.isRevoked(n)
}
