// Package mp owns the management point: its intranet and internet listeners behind mutual
// TLS (revocation and blocking checked in the handshake), device registration and clone
// detection, policy documents and device groups, check-in, status messages, the
// notification channel (a WebSocket per device, with events passed between MPs through the
// site database; once upgraded, its TLS 1.3 record layer is parked outside crypto/tls by
// internal/tlspark, so an idle device costs a few KiB), the admin API behind `ibcm device|group|policy`, and load shedding.
// It is also the broker and relay of remote-control sessions (DESIGN.md §9): who may start
// which session (sessions.go), the signed ticket of each leg, the device's reports, the
// audit and its retention, recordings sealed to the site's audit key, and the relay that
// splices the two legs of a ticket, forwarded between the site's MPs when the helper and
// the device are on different ones (relay.go). A session started from the web console
// (a peer without a certificate, through ConsoleAPI) ends at the MP: its ticket names the
// MP's own key (ticket.Console), DialSession joins the relay in-process and holds the
// end-to-end TLS for the browser, and the audit keeps console = 1, e2e = 0
// (console_session.go).
// For the distribution points (DESIGN.md §8) it is the DPs' only link to the site: they
// register, follow a feed of revocations, blocks and assignment changes, fetch what is
// distributed to them and report their state (dps.go); the admin API registers signed
// package versions, distributes them and deploys them to groups (content.go,
// deployments.go), deployments reach devices in their policy, and devices' reports come
// back as status messages of component "deployment".
// Security codes for unenrolled devices (guest.go): a helper's code records a pending
// session; the guest certificate the CA exchanges it for passes the handshake only when the
// site enables codes, and the gate keeps it to the relay of its own session.
// The web console (console.go; the console package serves it, site/mp.go wires the two):
// ConsoleAPI serves a browser's allowlisted admin calls as a user peer without a
// certificate (location "console") through the same guards; the console's logins are made
// and revoked through Options.ConsoleLinks (POST /v1/admin/console/links|revoke).
// DNS publishing of its SRV records is in mp/dnspub.
//
// An operator who wants to see for themselves that the relay forwards only ciphertext sets
// IBCM_RELAY_CAPTURE_DIR in the MP's environment: each spliced pair then appends every byte
// it forwards to <dir>/<session>-<ticket>-to-device.bin and …-from-device.bin (files 0600,
// each up to its first 16 MiB; the directory is the operator's). What is there is the
// end-to-end TLS of remote/e2e — handshakes and encrypted records, never a keystroke or a
// screen in clear. It is a check, not an audit: nothing rotates or deletes the files.
//
// The helper's relay leg may carry direct=closed|timeout|failed: why the device's session
// port had not answered when the helper started the relay. It is kept as the session's
// direct_error (`ibcm remote show`) while the session is pending (not once it started or
// ended), and cleared when the device reports the session started over the direct
// connection after all.
//
// Its tables (devices, device_certificates, device_groups, group_members, policies,
// status_messages, management_points, notify_connections, sessions, session_tickets,
// session_recordings, dps, content_versions, content_files, distributions, dp_packages,
// deployments, deployment_devices) live in the site database; their
// SQL is in store.go and the files beside it. mp never imports ca: what it needs of the PKI
// is internal/trust.
package mp
