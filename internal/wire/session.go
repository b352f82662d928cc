package wire

import "time"

// Remote-control sessions (DESIGN.md §9). The routes, all on the MP listeners (mutual TLS):
//
//	POST /v1/admin/sessions                 helper (user cert): SessionStartRequest → SessionStart
//	GET  /v1/admin/sessions                 ?active=1&device=&helper=&since=<RFC 3339> → []Session
//	GET  /v1/admin/sessions/{id}            → Session
//	POST /v1/admin/sessions/{id}/end        the helper of the session, or ManageDevices on its device
//	POST /v1/admin/sessions/{id}/join       a second helper with ViewScreen on the device → SessionStart (role viewer,
//	                                        its ticket of the session's kind: a screen session's viewer sees the screen)
//	GET  /v1/admin/sessions/{id}/recording  ReadAudit: the decrypted asciicast v2
//	GET  /v1/admin/sessions/{id}/relay      ?ticket=<ticket id>[&direct=closed|timeout|failed]: the helper's leg (Upgrade: ibcm-relay);
//	                                        direct says why the device's session port had not answered when the relay started
//	GET  /v1/sessions/{id}/relay            ?ticket=<ticket id>: the device's leg (Upgrade: ibcm-relay)
//	POST /v1/sessions/{id}/report           the device: SessionReport
//	POST /v1/sessions/{id}/recording        the device: the recording sealed to the site's audit key
//	GET  /v1/relay/{id}                     ?ticket=[&side=device]: another MP of the site forwarding a helper's leg (or a device's)
//	GET  /v1/crl                            the issuing CA's CRL (DER), for the agent's checks
//	POST /v1/admin/sessions/codes           OfferRemoteAssistance: a security code (guest.go)
//	GET  /v1/guest/sessions/{id}/relay      ?ticket=: the guest's leg, with its guest certificate (guest.go)
//
// A relay leg is an HTTP/1.1 GET with "Connection: Upgrade" and "Upgrade: ibcm-relay"; the MP
// answers 101 once both legs of the ticket are there (or an error body when the session was
// refused, ended or not answered in time), then carries raw bytes both ways: the
// end-to-end TLS of remote/e2e.

// RelayProtocol is the Upgrade token of a relay leg.
const RelayProtocol = "ibcm-relay"

// Outcomes of a session (audit).
const (
	OutcomeCompleted      = "completed"
	OutcomeDenied         = "denied"
	OutcomeConsentTimeout = "consent-timeout"
	OutcomeOffline        = "offline"
	OutcomeFailed         = "failed"
	OutcomeInterrupted    = "interrupted"
	OutcomeRefused        = "refused" // by the agent: a ticket or peer check failed
)

// Why a direct connection lost to the relay (Session.DirectError, the relay leg's direct=).
const (
	DirectClosed  = "closed"  // connection refused: nothing listens on the session port
	DirectTimeout = "timeout" // the dial or the TLS handshake had no answer
	DirectFailed  = "failed"  // anything else (the device's certificate refused, …)
)

// Session states.
const (
	SessionRequested = "requested" // ticket sent to the device
	SessionWaiting   = "waiting"   // the device asks its user for consent
	SessionActive    = "active"    // the helper is connected
	SessionEnded     = "ended"
)

// Transports of a session.
const (
	TransportRelay  = "relay"
	TransportDirect = "direct"
)

// SessionStartRequest is `ibcm remote start`.
type SessionStartRequest struct {
	Device string `json:"device"` // id, unique id prefix, or device name
	Mode   string `json:"mode"`   // view, control, elevated, unattended
	Reason string `json:"reason,omitempty"`
	// Kind is "" for a terminal session or "screen" for a screen session (RFB); it
	// travels in the signed ticket, so the device and its sharer know before consent.
	Kind string `json:"kind,omitempty"`
}

// SessionStart answers a start or a join: the session, the leg's ticket id for the relay,
// the device's identity card, and a compliance warning (never a block).
type SessionStart struct {
	Session           Session    `json:"session"`
	TicketID          string     `json:"ticket_id"`
	Role              string     `json:"role"` // helper or viewer
	Modes             []string   `json:"modes"`
	Device            DeviceCard `json:"device"`
	ComplianceWarning string     `json:"compliance_warning,omitempty"`
	// Direct lists the device's session port on its intranet addresses (host:port) when the
	// helper and the device are both on the intranet and policy allows direct connections.
	Direct []string `json:"direct,omitempty"`
	// RelayAfter is how long the helper tries Direct before it starts the relay in parallel.
	RelayAfterMS int `json:"relay_after_ms,omitempty"`
}

// DeviceCard is who the device is, as the helper sees it.
type DeviceCard struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	FQDN       string   `json:"fqdn,omitempty"`
	OS         string   `json:"os,omitempty"`
	Location   string   `json:"location,omitempty"`
	Addresses  []string `json:"addresses,omitempty"`
	Compliance string   `json:"compliance,omitempty"` // compliant, noncompliant or unknown
}

// SessionMode is one mode of a session with the time it began.
type SessionMode struct {
	Mode string    `json:"mode"`
	At   time.Time `json:"at"`
}

// Session is a session as the audit keeps it (`ibcm remote show`).
type Session struct {
	ID         string `json:"id"`
	Device     string `json:"device"`
	DeviceName string `json:"device_name"`
	Helper     string `json:"helper"`
	HelperName string `json:"helper_name,omitempty"`
	Sharer     string `json:"sharer,omitempty"` // local user
	SharerName string `json:"sharer_name,omitempty"`
	Reason     string `json:"reason,omitempty"`
	// Kind is what the session shows: "" a terminal, "screen" the display (RFB). A
	// viewer's leg on join is of the session's kind.
	Kind      string        `json:"kind,omitempty"`
	State     string        `json:"state"`
	Outcome   string        `json:"outcome,omitempty"`
	Error     string        `json:"error,omitempty"` // the refusal's code, when there was one
	Mode      string        `json:"mode"`            // the mode in force (or last)
	Modes     []SessionMode `json:"modes"`
	Location  string        `json:"location,omitempty"` // the device's
	Transport string        `json:"transport,omitempty"`
	// DirectError says why the direct connection lost when the helper had the device's
	// session port and the session went over the relay: DirectClosed, DirectTimeout or
	// DirectFailed ("" otherwise).
	DirectError string `json:"direct_error,omitempty"`
	E2E         bool   `json:"e2e"`
	// Console: started from the web console; the session ended at the MP, which held the
	// end-to-end TLS for the helper (so E2E is false).
	Console     bool       `json:"console"`
	MP          string     `json:"mp"` // the MP that brokered it
	Viewers     []string   `json:"viewers,omitempty"`
	RequestedAt time.Time  `json:"requested_at"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	EndedAt     *time.Time `json:"ended_at,omitempty"`
	BytesIn     int64      `json:"bytes_to_device"`
	BytesOut    int64      `json:"bytes_from_device"`
	Recorded    bool       `json:"recorded"`
}

// Events a device reports about a session (POST /v1/sessions/{id}/report).
const (
	ReportConsentAsked   = "consent-asked"
	ReportAccepted       = "accepted"
	ReportDenied         = "denied"
	ReportConsentTimeout = "consent-timeout"
	ReportStarted        = "started" // a leg's end-to-end TLS is up
	ReportMode           = "mode"    // the mode in force changed
	ReportEnded          = "ended"
	ReportRefused        = "refused" // the agent refused a ticket or a peer
)

// SessionReport is what the device tells the MP about a session it serves.
type SessionReport struct {
	Ticket     string    `json:"ticket"` // ticket id
	Event      string    `json:"event"`
	At         time.Time `json:"at"`
	Mode       string    `json:"mode,omitempty"`
	Sharer     string    `json:"sharer,omitempty"`
	SharerName string    `json:"sharer_name,omitempty"`
	Transport  string    `json:"transport,omitempty"`
	Outcome    string    `json:"outcome,omitempty"`
	Code       string    `json:"code,omitempty"` // the refusal's error code
	Message    string    `json:"message,omitempty"`
	BytesIn    int64     `json:"bytes_in,omitempty"`  // to the device
	BytesOut   int64     `json:"bytes_out,omitempty"` // from the device
}

// Data keys of a session-requested or session-ended Event.
const (
	EventDataTicket  = "ticket"  // the signed ticket (remote/ticket)
	EventDataSession = "session" // the session id
	EventDataReason  = "reason"
	EventDataOutcome = "outcome" // of a session-ended event: the outcome the site recorded
)

// EventSessionEnded tells the device a session ended at the site (the helper ended it, the
// helper was disabled): the agent ends every leg, direct ones included.
const EventSessionEnded = "session-ended"
