// Package console owns the web console (DESIGN.md §9 step 9): the console listener's
// handler (server-only TLS: browsers have no client certificate), one-time login links and
// the cookie sessions they open, CSRF and Origin checks, the Content-Security-Policy, the
// pages' shell and assets (console/web), the /api calls it passes to the management point
// through the same access checks as the command line, and the WebSockets that carry a
// browser's remote-control session (bridge*.go), which ends at the MP.
//
// It does not import mp (nor mp it): site/run.go hands each its Backend and ConsoleLinks.
package console

import (
	"context"
	"net"
	"net/http"
)

// Backend is what the console needs of the management point.
type Backend interface {
	// ConsoleAPI serves one allowlisted admin call for user (already authenticated by the
	// console's cookie), through the same guards as a call with a user certificate. The
	// request path is the MP's ("/v1/admin/devices"): the console strips "/api".
	ConsoleAPI(user string) http.Handler
	// DialSession reaches the device of session id for user over the MP's relay, the MP
	// being the helper's end of the end-to-end TLS (the ticket was issued to the console),
	// and returns the established inner TLS connection.
	DialSession(ctx context.Context, user, sessionID, ticketID string) (net.Conn, error)
}
