// Package wire holds the JSON types spoken over HTTPS between the site's roles and the
// ibcm-client agent and admin CLI, and the limits both sides check (so the agent never
// queues what the MP would refuse). It imports only the standard library, so the agent can
// link it without pulling in server code.
package wire

import (
	"errors"
	"fmt"
	"time"
)

// MaxBody is the largest request body any API of the site accepts.
const MaxBody = 64 << 10

// Error is the body of every error response: {"error": {"code": ..., "message": ...}}.
type Error struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what went wrong: a stable machine code and a message for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// EnrollRequest asks the CA for a certificate with a one-time enrollment token.
type EnrollRequest struct {
	Token   string `json:"token"`
	Profile string `json:"profile,omitempty"` // defaults to "client"
	CSR     string `json:"csr"`               // PEM "CERTIFICATE REQUEST"
	// NameFromToken says the CSR's common name is only a default (the host name): when the
	// token is bound to a subject, that subject is the certificate's name.
	NameFromToken bool `json:"name_from_token,omitempty"`
}

// RenewRequest asks the CA for the successor of the certificate presented in the TLS
// handshake, for the CSR's key: a new key (rekey), or the current one to keep it. The CSR is
// required. The same certificate with the same key always gets the same successor; another
// key for an already renewed certificate is refused (409 renewal_superseded).
type RenewRequest struct {
	CSR string `json:"csr,omitempty"`
}

// CertificateResponse carries an issued certificate and its chain up to, not including, the root.
type CertificateResponse struct {
	Serial      string    `json:"serial"` // as openssl prints it (FormatSerial)
	NotAfter    time.Time `json:"not_after"`
	Certificate string    `json:"certificate"` // PEM: leaf followed by the issuing chain
	// Bootstrap is what a freshly enrolled agent needs to find its MP before it has a policy.
	Bootstrap *Bootstrap `json:"bootstrap,omitempty"`
}

// Bootstrap are the site's location settings handed out at enrollment; policy can change
// them later.
type Bootstrap struct {
	SiteCode            string   `json:"site_code"`
	InternetMPs         []string `json:"internet_mps"`          // host:port
	IntranetDNSSuffixes []string `json:"intranet_dns_suffixes"` // e.g. corp.example
	SRVNames            []string `json:"srv_names"`             // e.g. _ibcm-mp._tcp
}

// Bundle is the site's trust bundle: the root certificates clients and servers trust.
type Bundle struct {
	Roots string `json:"roots"` // PEM, one or more "CERTIFICATE" blocks
}

// TokenCreateRequest asks for a new enrollment token (admin API).
type TokenCreateRequest struct {
	Profile string `json:"profile"`
	Subject string `json:"subject,omitempty"`
	Uses    int    `json:"uses,omitempty"` // defaults to 1
	TTL     string `json:"ttl,omitempty"`  // Go duration, defaults to 24h (1h for a re-enroll token)
	// DeviceID makes a re-enroll token: single use, bound to this existing device, whose
	// certificate then names the same device id (and its registered name).
	DeviceID string `json:"device_id,omitempty"`
}

// Token describes an enrollment token without its secret.
type Token struct {
	ID        string    `json:"id"`
	Profile   string    `json:"profile"`
	Subject   string    `json:"subject,omitempty"`
	DeviceID  string    `json:"device_id,omitempty"` // a re-enroll token's device
	UsesLeft  int       `json:"uses_left"`
	Uses      int       `json:"uses"`
	ExpiresAt time.Time `json:"expires_at"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
	Revoked   bool      `json:"revoked"`
}

// TokenCreated is the answer to TokenCreateRequest: the only time the secret is shown.
type TokenCreated struct {
	Token
	Secret string `json:"token"`
}

// IssueRequest asks the CA to issue a certificate for a CSR made by the admin CLI (admin API).
type IssueRequest struct {
	Profile string   `json:"profile"`
	Subject string   `json:"subject"`
	DNS     []string `json:"dns,omitempty"`
	Role    string   `json:"role,omitempty"` // site-server only: ca, mp or dp
	CSR     string   `json:"csr"`
}

// Certificate describes an issued certificate (admin API).
type Certificate struct {
	Serial      string     `json:"serial"` // as openssl prints it, as every serial here
	Profile     string     `json:"profile"`
	Subject     string     `json:"subject"`
	DNS         []string   `json:"dns,omitempty"`
	URIs        []string   `json:"uris,omitempty"`
	NotBefore   time.Time  `json:"not_before"`
	NotAfter    time.Time  `json:"not_after"`
	Status      string     `json:"status"` // valid, revoked or expired
	IssuedBy    string     `json:"issued_by"`
	RenewedFrom string     `json:"renewed_from,omitempty"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	PEM         string     `json:"pem,omitempty"`
}

// RevokeRequest revokes a certificate (admin API). Reason is an RFC 5280 name such as
// keyCompromise or superseded.
type RevokeRequest struct {
	Reason string `json:"reason"`
	// Successors also revokes every certificate renewed from this one, transitively
	// (keyCompromise always does; blocking a device asks for it).
	Successors bool `json:"successors,omitempty"`
}

// Revoked answers a revocation (admin API): the certificate as it now stands, and what
// else the revocation did.
type Revoked struct {
	Certificate
	// ReasonChangedFrom is set when the certificate was already revoked for this reason
	// and a keyCompromise revocation changed it to keyCompromise.
	ReasonChangedFrom string `json:"reason_changed_from,omitempty"`
	// AlsoRevoked lists (hex, as openssl prints them) the other certificates revoked with
	// it, or whose reason was changed to keyCompromise: its successors and, for
	// keyCompromise, every certificate of the same key.
	AlsoRevoked []string `json:"also_revoked,omitempty"`
}

// Health is the body of GET /healthz on every listener.
type Health struct {
	Status string `json:"status"` // "ok"
	Role   string `json:"role"`
}

// Locations a request can come from, by the MP listener it arrived on.
const (
	Intranet = "intranet"
	Internet = "internet"
)

// Whoami is the answer of GET /v1/whoami: who the MP thinks the caller is.
type Whoami struct {
	DeviceID string `json:"device_id,omitempty"`
	Subject  string `json:"subject"`
	Serial   string `json:"serial"`
	Profile  string `json:"profile"`
	Location string `json:"location"` // intranet or internet
	Blocked  bool   `json:"blocked"`
}

// ProbePath is where a location probe asks an MP which listener it reached.
const ProbePath = "/v1/probe"

// Probe is the answer of GET /v1/probe: the location of the MP listener the request came
// in on, and the serial of the client certificate the MP saw on that connection. The
// agent's location probe believes it only over a TLS connection on which it verified
// the MP's certificate, so it tells an intranet listener of this site from the internet
// one, which presents an MP certificate of this site too (DESIGN.md §7).
type Probe struct {
	Location string `json:"location"` // intranet or internet
	Serial   string `json:"serial"`   // as openssl prints it (FormatSerial)
}

// Hello registers or updates the facts a device knows about itself (POST /v1/hello).
type Hello struct {
	Name         string   `json:"name,omitempty"`
	FQDN         string   `json:"fqdn,omitempty"`
	OS           string   `json:"os,omitempty"`
	AgentVersion string   `json:"agent_version,omitempty"`
	HardwareID   string   `json:"hardware_id,omitempty"`
	Addresses    []string `json:"addresses,omitempty"`
}

// HelloResponse says what the MP recorded.
type HelloResponse struct {
	DeviceID string   `json:"device_id"`
	Warnings []string `json:"warnings,omitempty"` // e.g. probable clone
}

// Checkin is the periodic heartbeat of a device (POST /v1/checkin).
type Checkin struct {
	Location     string   `json:"location"` // what the agent decided: intranet or internet
	Addresses    []string `json:"addresses,omitempty"`
	AgentVersion string   `json:"agent_version,omitempty"`
	Compliance   string   `json:"compliance,omitempty"` // compliant, noncompliant, unknown
}

// CheckinResponse tells the device when to come back and which policy is current.
type CheckinResponse struct {
	NextCheckinSeconds int    `json:"next_checkin_seconds"`
	PolicyETag         string `json:"policy_etag"`
}

// StatusMessage is one message of a device's spool; ID makes delivery idempotent.
type StatusMessage struct {
	ID        string            `json:"id"` // unique per device, e.g. a UUID
	Time      time.Time         `json:"time"`
	Severity  string            `json:"severity"` // info, warning, error
	Component string            `json:"component"`
	Text      string            `json:"text"`
	Fields    map[string]string `json:"fields,omitempty"`
}

// DeviceMessage is a status message as the MP stored it (admin API): the message and when
// the MP received it.
type DeviceMessage struct {
	StatusMessage
	ReceivedAt time.Time `json:"received_at"`
}

// DeviceMessages answers GET /v1/admin/devices/{id}/messages: the device's status messages
// at or after since, oldest first (newest last). At most limit are sent, the newest ones;
// Truncated says older ones were left out (ask again with a later since, or a larger limit
// up to MaxMessagesPage).
type DeviceMessages struct {
	DeviceID  string          `json:"device_id"`
	Messages  []DeviceMessage `json:"messages"`
	Truncated bool            `json:"truncated"`
}

// MaxMessagesPage is the most status messages one admin answer carries (and the default).
const MaxMessagesPage = 1000

// Limits of status messages.
const (
	MaxStatusBatch  = 100
	MaxStatusText   = 4096
	MaxStatusFields = 32
)

// Check tells whether the MP accepts a status message, naming the bad field.
func (m StatusMessage) Check() error {
	switch {
	case m.ID == "" || len(m.ID) > 64:
		return errors.New("id: 1 to 64 characters")
	case m.Severity != "info" && m.Severity != "warning" && m.Severity != "error":
		return fmt.Errorf("severity %q: info, warning or error", m.Severity)
	case len(m.Text) > MaxStatusText:
		return fmt.Errorf("text: at most %d bytes", MaxStatusText)
	case len(m.Component) > 64:
		return errors.New("component: at most 64 bytes")
	case len(m.Fields) > MaxStatusFields:
		return fmt.Errorf("fields: at most %d", MaxStatusFields)
	case m.Time.IsZero():
		return errors.New("time is required")
	}
	return nil
}

// StatusBatch is POST /v1/status.
type StatusBatch struct {
	Messages []StatusMessage `json:"messages"`
}

// StatusAck lists the ids the MP has stored; the device may drop exactly these.
type StatusAck struct {
	Acked []string `json:"acked"`
}

// Policy is the versioned document a device follows (GET /v1/policy).
type Policy struct {
	Name          string                `json:"name" yaml:"name"`
	Version       int                   `json:"version" yaml:"version"`
	Client        ClientSettings        `json:"client" yaml:"client"`
	Location      LocationSettings      `json:"location" yaml:"location"`
	RemoteControl RemoteControlSettings `json:"remote_control" yaml:"remote_control"`
	// AuditKey is the site's audit public key (remote/recording), which the MP adds when it
	// serves the policy: the agent seals session recordings to it. Not set by admins.
	AuditKey string `json:"audit_key,omitempty" yaml:"-"`
	// Deployments are the deployments of the device's groups, which the MP adds when it
	// serves the policy (content.go). Not set by admins.
	Deployments []Deployment `json:"deployments,omitempty" yaml:"-"`
}

// ClientSettings are the agent's timers.
type ClientSettings struct {
	CheckinInterval  string  `json:"checkin_interval" yaml:"checkin_interval"`   // Go duration
	RenewalThreshold float64 `json:"renewal_threshold" yaml:"renewal_threshold"` // fraction of lifetime
}

// LocationSettings drive location detection (DESIGN.md §7).
type LocationSettings struct {
	IntranetDNSSuffixes []string `json:"intranet_dns_suffixes" yaml:"intranet_dns_suffixes"`
	SRVNames            []string `json:"srv_names" yaml:"srv_names"`
	InternetMPNames     []string `json:"internet_mp_names" yaml:"internet_mp_names"`
	RedetectInterval    string   `json:"redetect_interval" yaml:"redetect_interval"`
	AlwaysInternet      bool     `json:"always_internet" yaml:"always_internet"`
}

// RemoteControlSettings are the remote-control settings of a device's policy (DESIGN.md
// §9, REFERENCE.md). Each one is enforced: what decides whether a session may start by the
// MP's broker and again by the agent, which trusts no helper on the MP's word alone;
// permitted_viewers by the broker (it knows the roles); what happens at the device by the agent.
type RemoteControlSettings struct {
	Enabled     bool   `json:"enabled" yaml:"enabled"`
	AccessLevel string `json:"access_level" yaml:"access_level"` // none, view, full
	// PermittedViewers limits who may start or join a session on the device: user names,
	// or "role:<name>" for the holders of a role. Empty: anyone whose permissions allow it.
	PermittedViewers  []string `json:"permitted_viewers" yaml:"permitted_viewers"`
	PromptUser        bool     `json:"prompt_user" yaml:"prompt_user"`                 // ask the sharer before each session and each escalation
	AllowUnattended   bool     `json:"allow_unattended" yaml:"allow_unattended"`       // sessions nobody at the device answers
	ConsentTimeout    string   `json:"consent_timeout" yaml:"consent_timeout"`         // no answer within it = deny; Go duration, default 30s
	AllowDirect       bool     `json:"allow_direct" yaml:"allow_direct"`               // the intranet session port, besides the relay
	DirectPort        int      `json:"direct_port" yaml:"direct_port"`                 // default 2701, as in Configuration Manager
	MaxDuration       string   `json:"max_duration" yaml:"max_duration"`               // a session ends after it; "0" or "" = no limit
	IdleTimeout       string   `json:"idle_timeout" yaml:"idle_timeout"`               // a session without input or output ends after it; "" = none
	ShowConnectionBar bool     `json:"show_connection_bar" yaml:"show_connection_bar"` // the share status line says who is connected
	PlaySound         string   `json:"play_sound" yaml:"play_sound"`                   // a bell on the sharer's terminal: none, start_end, repeatedly
	AllowChat         bool     `json:"allow_chat" yaml:"allow_chat"`
	RecordTerminal    bool     `json:"record_terminal" yaml:"record_terminal"` // asciicast sealed to the site's audit key
	// PromptClipboard: in a screen session's control mode, text the helper's viewer puts on
	// the clipboard reaches the device only once the sharer accepts it (unattended: never);
	// off, it passes in control mode. The device's clipboard never goes to the helper.
	PromptClipboard bool `json:"prompt_clipboard" yaml:"prompt_clipboard"`
}

// Locate is GET /v1/locate: the MPs and DPs for the caller's location.
type Locate struct {
	Location string   `json:"location"`
	MPs      []string `json:"mps"`
	DPs      []string `json:"dps"`
}

// Event types pushed on the notification channel (GET /v1/notify, a WebSocket).
const (
	EventPolicyChanged    = "policy-changed"
	EventRenewCert        = "renew-cert"
	EventRedetectLocation = "re-detect-location"
	EventSessionRequested = "session-requested"
)

// Event is one message of the notification channel.
type Event struct {
	Type string            `json:"type"`
	Time time.Time         `json:"time"`
	Data map[string]string `json:"data,omitempty"`
}

// Device is a device as the admin API shows it.
type Device struct {
	ID            string     `json:"id"`
	Name          string     `json:"name"`
	FQDN          string     `json:"fqdn,omitempty"`
	OS            string     `json:"os,omitempty"`
	AgentVersion  string     `json:"agent_version,omitempty"`
	Serial        string     `json:"serial"`
	PublicKeyHash string     `json:"public_key_hash"`
	HardwareID    string     `json:"hardware_id,omitempty"`
	FirstSeen     time.Time  `json:"first_seen"`
	LastSeen      time.Time  `json:"last_seen"`
	LastLocation  string     `json:"last_location,omitempty"`
	Addresses     []string   `json:"addresses,omitempty"`
	Groups        []string   `json:"groups,omitempty"`
	Compliance    string     `json:"compliance,omitempty"`
	Blocked       bool       `json:"blocked"`
	BlockedAt     *time.Time `json:"blocked_at,omitempty"`
	Warnings      []string   `json:"warnings,omitempty"`
	Connected     int        `json:"connected"` // live notification channels

	// LastLocation is the MP listener the device last came in on, which is what counts;
	// ClaimedLocation is where its agent said it was at its last check-in.
	ClaimedLocation string `json:"claimed_location,omitempty"`
}

// Group is a device group (admin API).
type Group struct {
	Name     string   `json:"name"`
	Policy   string   `json:"policy,omitempty"`
	Priority int      `json:"priority"`
	Devices  []string `json:"devices,omitempty"`
}

// BlockResult says what blocking a device did (admin API).
type BlockResult struct {
	Device  Device   `json:"device"`
	Serials []string `json:"serials"` // certificates of the device to revoke at the CA
}

// UserCreateRequest adds a user with one role (admin API, ManageAccess); the answer
// carries a one-time login token for `ibcm login` on the user's own machine.
type UserCreateRequest struct {
	Name        string   `json:"name"`
	DisplayName string   `json:"display_name,omitempty"`
	Title       string   `json:"title,omitempty"`
	Org         string   `json:"org,omitempty"`
	Role        string   `json:"role"`
	Scopes      []string `json:"scopes,omitempty"` // device groups; none = every device and the site
	TTL         string   `json:"ttl,omitempty"`    // the login token's lifetime, Go duration, default 24h
}

// User is a helper or administrator of the site (admin API).
type User struct {
	Name        string       `json:"name"`
	DisplayName string       `json:"display_name,omitempty"`
	Title       string       `json:"title,omitempty"`
	Org         string       `json:"org,omitempty"`
	Disabled    bool         `json:"disabled"`
	DisabledAt  *time.Time   `json:"disabled_at,omitempty"`
	CreatedAt   time.Time    `json:"created_at"`
	CreatedBy   string       `json:"created_by"`
	Roles       []Assignment `json:"roles"`
	Permissions []string     `json:"permissions"` // what the roles over the whole site give
}

// Assignment is a role a user holds over a scope ("" = every device and the site).
type Assignment struct {
	Role  string `json:"role"`
	Scope string `json:"scope,omitempty"`
}

// UserToken answers a user's creation or a new login token: the secret is shown once.
type UserToken struct {
	User      User      `json:"user"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// UserDisabled answers disabling a user: the certificates it revoked.
type UserDisabled struct {
	User    User     `json:"user"`
	Revoked []string `json:"revoked"` // serials, hex
}

// Role is a named set of permissions (admin API).
type Role struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Permissions []string `json:"permissions"`
	BuiltIn     bool     `json:"built_in"`
}

// AssignRequest gives or takes a role over scopes (none: every device and the site, or on
// unassign every scope).
type AssignRequest struct {
	Role   string   `json:"role"`
	Scopes []string `json:"scopes,omitempty"`
}
