// Package remote is the room of remote control (DESIGN.md §9): what the helper's side, the
// device's side and the management point's broker share, and the two ends themselves.
//
//   - remote/ticket — the session ticket an MP signs and the agent checks.
//   - remote/frame  — the framed messages inside a session (data, resize, chat, modes, end).
//   - remote/e2e    — the end-to-end TLS 1.3 between helper and device, bound to the ticket.
//   - remote/rfb    — screen sessions' RFB: the agent's client-message filter (view mode),
//     VNC Authentication and the handshakes on each side.
//   - remote/device — the device's side: consent over the share socket, terminals, transports.
//   - remote/helper — the helper's side behind `ibcm remote …`.
//
// The broker and the relay are routes of the management point (mp/sessions*.go,
// mp/relay.go): they need its database, its notification channels and its access checks.
// Everything here except remote/helper is linked into the agent, so it imports only the
// standard library, internal/wire and the agent's small set of modules.
package remote
