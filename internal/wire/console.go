package wire

import "time"

// ConsoleLink is the answer to POST /v1/admin/console/links: a one-time URL that logs its
// opener into the web console as the user who asked, valid until ExpiresAt.
type ConsoleLink struct {
	URL       string    `json:"url"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ConsoleRevokeRequest ends a user's web-console sessions (POST /v1/admin/console/revoke).
type ConsoleRevokeRequest struct {
	User string `json:"user"`
}

// ConsoleRevokeResult says how many were ended.
type ConsoleRevokeResult struct {
	Revoked int `json:"revoked"`
}

// DeviceRemote is what the asking user may start on a device (GET
// /v1/admin/devices/{id}/remote): the modes their permissions and the device's policy
// allow (empty when remote control is off for it), the kinds of session, whether the
// device is online, and the compliance warning shown before connecting.
type DeviceRemote struct {
	Online            bool     `json:"online"`
	Modes             []string `json:"modes"`
	Kinds             []string `json:"kinds"`
	ComplianceWarning string   `json:"compliance_warning,omitempty"`
}

// DeviceDeployment is one deployment's state on one device (GET
// /v1/admin/devices/{id}/deployments).
type DeviceDeployment struct {
	ID        string    `json:"id"`
	Package   string    `json:"package"`
	Version   string    `json:"version"`
	State     string    `json:"state"`
	Error     string    `json:"error,omitempty"`
	DP        string    `json:"dp,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}
