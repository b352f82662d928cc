// Package rfb owns the parts of the RFB protocol (RFC 6143, version 3.8) that a screen
// session needs on each side: the client-message filter the agent runs on everything a
// helper's viewer sends to the device's VNC server (Filter: view mode passes only what
// cannot change the device, control mode passes the known messages), the VNC
// Authentication (security type 2: DES challenge-response, with VNC's bit-reversed key) by
// which the helper's local port admits one viewer with a one-time password, and the two
// handshakes around the session: the agent's as a client of the device's VNC server
// (Dial), and the helper's as a server to the viewer (Accept), which replays the device's
// ServerInit so the device's server handshake is never exposed to the local port.
//
// After the handshakes both sides carry RFB messages unchanged, except what the filter
// drops. It imports only the standard library; the agent links it.
package rfb
