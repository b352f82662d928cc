// Package device is the device's side of remote control (DESIGN.md §9 steps 2–8): it checks
// the tickets the agent receives (remote/ticket, with the agent's CRL and a replay record
// kept in the state directory), asks the person at the device for consent over the share
// socket (a Unix socket any local user may open; who asks is read from SO_PEERCRED), opens
// the transports of an accepted session (the MP's relay, and the intranet session port
// while the session is pending), runs the end-to-end TLS (remote/e2e) and the frames
// inside it (remote/frame), and connects the helper to a terminal: the sharer's shared
// terminal, a new shell, or an elevated root shell in its own cgroup — or, for a ticket of
// kind screen, to a display: x11vnc started for the session (as the sharer on the display
// their `ibcm-client share --screen` offers, or on a fresh Xvfb when unattended) on a
// private Unix socket, its RFB carried in Data frames, the helper's through the
// remote/rfb filter of the mode in force (screen.go); a viewer's ticket of a screen
// session gets a connection of its own to that x11vnc, filtered in view mode always
// (viewer.go). A ticket of the web console
// (ticket.Console) takes the MP that signed it as the helper's end of the end-to-end TLS,
// and the sharer's prompt says so; Config.ForbidConsole, the device's own setting
// (`ibcm-client run --console-sessions=false`), refuses such tickets (console_forbidden).
// It enforces the device's remote-control policy again, reports every step to the MP, keeps a local
// session log and seals recordings to the site's audit key (remote/recording).
//
// Host is the agent's side, with its relay dialer, reporter and uploader injected so that
// it can be tested over real sockets without an MP; Share, Consent and Sessions are the
// local users' commands behind `ibcm-client share`, `consent` and `sessions`. It imports
// only the standard library, internal/wire, remote/…, creack/pty and zerolog: no server
// code.
package device
