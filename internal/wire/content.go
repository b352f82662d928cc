package wire

import (
	"encoding/json"
	"time"
)

// Content, distribution points and deployments (DESIGN.md §8). The routes:
//
// On a DP listener (mutual TLS; any certificate of this site: devices, site servers, users):
//
//	GET  /v1/content/{sha256}               the blob; Range, If-Range, ETag = "<sha256>", streamed
//	HEAD /v1/content/{sha256}
//	GET  /v1/manifests/{package}/{version}  the SignedManifest (JSON) of a package version distributed to this DP
//	GET  /v1/admin/uploads/{sha256}         a user with ManageContent (asked of the MP): UploadState
//	PUT  /v1/admin/uploads/{sha256}         ?offset=N&size=TOTAL, body = bytes [N, …): resumable upload;
//	                                        201 + UploadState{Complete} once the blob is whole, hashed and in the library
//
// On an MP listener, for DPs (a site-server certificate of role "dp" of this site):
//
//	POST /v1/dp/register     DPRegistration → DPRegistered
//	GET  /v1/dp/feed         NDJSON stream of DPEvent: first a snapshot, then changes, a ping every 15 s
//	GET  /v1/dp/assignments  → DPAssignments (what is distributed to the calling DP, and the site's DPs)
//	POST /v1/dp/state        DPStateReport → 204
//	POST /v1/dp/authorize    DPAuthorize → 204 when the user holds the permission now, else 403
//
// On an MP listener, admin API (user certificates; ManageContent unless said):
//
//	POST   /v1/admin/content                           SignedManifest → ContentVersion (registers a package version)
//	GET    /v1/admin/content                           → []ContentVersion
//	GET    /v1/admin/content/{package}/{version}       → ContentVersion (with files and per-DP state)
//	DELETE /v1/admin/content/{package}/{version}       409 deployment_uses_content while a deployment uses it
//	POST   /v1/admin/content/{package}/{version}/distribute  ContentDistribute → ContentVersion
//	GET    /v1/admin/dps                               → []DPInfo (with per-package state)
//	POST   /v1/admin/deployments                       DeploymentCreate → DeploymentInfo (group in the user's scope)
//	GET    /v1/admin/deployments                       → []DeploymentInfo
//	GET    /v1/admin/deployments/{id}                  → DeploymentInfo with Devices
//	DELETE /v1/admin/deployments/{id}
//
// On the CA listener (admin API, ManageContent):
//
//	POST /v1/admin/content/sign   Manifest (JSON, unsigned) → SignedManifest, signed with the site's content-signer key

// Mode of a DP: which listeners it opens (as for the MP).
const (
	DPModeIntranet = "intranet"
	DPModeInternet = "internet"
	DPModeBoth     = "both"
)

// Per-package state of a DP (`ibcm dp list`).
const (
	DPPending = "pending"
	DPSyncing = "syncing" // Percent says how far
	DPReady   = "ready"
	DPFailed  = "failed" // Error says why
)

// DPRegistration is POST /v1/dp/register: who the DP is and how devices reach it. ID must be
// the common name of the DP's certificate (the CA wrote it there): every DP presents the same
// role URI, so the name is what tells them apart, and no DP can register as another.
type DPRegistration struct {
	ID          string `json:"id"`
	Mode        string `json:"mode"` // intranet, internet, both
	IntranetURL string `json:"intranet_url,omitempty"`
	InternetURL string `json:"internet_url,omitempty"`
	Priority    int    `json:"priority"` // lower is preferred, as in SRV
	Origin      bool   `json:"origin"`   // takes uploads (`ibcm content add`); the default source of pull-DPs
	Version     string `json:"version,omitempty"`
}

// DPRegistered answers a registration.
type DPRegistered struct {
	Site string `json:"site"` // site code
}

// DP feed event types (GET /v1/dp/feed).
const (
	DPEventSnapshot    = "snapshot"    // Revoked and Blocked are the whole sets
	DPEventRevoked     = "revoked"     // Serial (decimal) joined the revoked set
	DPEventBlocked     = "blocked"     // Device was blocked
	DPEventUnblocked   = "unblocked"   // Device was unblocked
	DPEventAssignments = "assignments" // what is distributed changed: GET /v1/dp/assignments again
	DPEventPing        = "ping"
)

// DPEvent is one line of the DP feed.
type DPEvent struct {
	Type    string   `json:"type"`
	Revoked []string `json:"revoked,omitempty"` // snapshot: decimal serials
	Blocked []string `json:"blocked,omitempty"` // snapshot: device ids
	Serial  string   `json:"serial,omitempty"`
	Device  string   `json:"device,omitempty"`
}

// MaxDPEventLine bounds one line of the DP feed (a snapshot of many revoked serials).
const MaxDPEventLine = 64 << 20

// DPAssignments is what is distributed to the calling DP, and where it may pull it from.
type DPAssignments struct {
	Packages []DPPackage `json:"packages"`
	DPs      []DPInfo    `json:"dps"` // every registered DP of the site (for pull sources by id)
}

// DPPackage is one package version distributed to a DP.
type DPPackage struct {
	Name           string          `json:"name"`
	Version        string          `json:"version"`
	ManifestSHA256 string          `json:"manifest_sha256"`
	Manifest       json.RawMessage `json:"manifest"` // the SignedManifest
}

// DPStateReport is POST /v1/dp/state: the DP's state of each package it was given.
type DPStateReport struct {
	Packages []DPPackageState `json:"packages"`
}

// DPPackageState is one package version on one DP.
type DPPackageState struct {
	Name    string    `json:"name"`
	Version string    `json:"version"`
	State   string    `json:"state"`   // DPPending, DPSyncing, DPReady, DPFailed
	Percent int       `json:"percent"` // 0–100
	Error   string    `json:"error,omitempty"`
	Updated time.Time `json:"updated"`
}

// DPAuthorize is POST /v1/dp/authorize: may this user (as the DP's handshake proved from
// the user's certificate) do this now?
type DPAuthorize struct {
	User       string `json:"user"`
	Serial     string `json:"serial"` // the user certificate's serial (decimal)
	Permission string `json:"permission"`
}

// UploadState answers the upload routes of a DP.
type UploadState struct {
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`     // the whole blob
	Received int64  `json:"received"` // bytes held so far: resume from here
	Complete bool   `json:"complete"` // hashed and in the library
}

// DPInfo is a DP as the admin API shows it.
type DPInfo struct {
	ID          string           `json:"id"`
	Mode        string           `json:"mode"`
	IntranetURL string           `json:"intranet_url,omitempty"`
	InternetURL string           `json:"internet_url,omitempty"`
	Priority    int              `json:"priority"`
	Origin      bool             `json:"origin"`
	LastSeen    time.Time        `json:"last_seen"`
	Online      bool             `json:"online"`
	Packages    []DPPackageState `json:"packages,omitempty"`
}

// ContentVersion is a package version as the admin API shows it.
type ContentVersion struct {
	Name           string           `json:"name"`
	Version        string           `json:"version"`
	ManifestSHA256 string           `json:"manifest_sha256"`
	Size           int64            `json:"size"` // of every file
	Files          []ManifestFile   `json:"files,omitempty"`
	Install        *InstallSpec     `json:"install,omitempty"`
	Created        time.Time        `json:"created"`
	AddedBy        string           `json:"added_by"`
	Deployments    int              `json:"deployments"`
	DPs            []DPPackageState `json:"dps,omitempty"` // Name = DP id here
}

// ContentDistribute is POST …/distribute: to these DPs (ids), every registered DP when empty.
type ContentDistribute struct {
	DPs []string `json:"dps"`
}

// DeploymentCreate is POST /v1/admin/deployments.
type DeploymentCreate struct {
	Package string `json:"package"`
	Version string `json:"version"`
	Group   string `json:"group"`
	Install bool   `json:"install"` // run the manifest's install command; false = download only
}

// Device states of a deployment (status messages of component DeploymentComponent).
const (
	DeployPending     = "pending"
	DeployDownloading = "downloading" // Percent
	DeployDownloaded  = "downloaded"
	DeployInstalling  = "installing"
	DeployInstalled   = "installed"
	DeployFailed      = "failed" // ExitCode when the install command ran, Error says why
)

// DeploymentComponent is the component of the agent's status messages about deployments;
// their Fields carry the keys below, and the MP keeps each device's latest state from them.
const (
	DeploymentComponent = "deployment"
	FieldDeployment     = "deployment_id"
	FieldDeployState    = "state"
	FieldPercent        = "percent"
	FieldExitCode       = "exit_code"
	FieldDP             = "dp"
	FieldError          = "error"
)

// DeploymentInfo is a deployment as the admin API shows it.
type DeploymentInfo struct {
	ID             string             `json:"id"`
	Package        string             `json:"package"`
	Version        string             `json:"version"`
	ManifestSHA256 string             `json:"manifest_sha256"`
	Group          string             `json:"group"`
	Install        bool               `json:"install"`
	Created        time.Time          `json:"created"`
	CreatedBy      string             `json:"created_by"`
	Counts         map[string]int     `json:"counts"`            // state → devices (members of the group with no report: pending)
	Devices        []DeploymentDevice `json:"devices,omitempty"` // GET …/{id} only
}

// DeploymentDevice is one device's latest state of a deployment.
type DeploymentDevice struct {
	DeviceID string    `json:"device_id"`
	Name     string    `json:"name"`
	State    string    `json:"state"`
	Percent  int       `json:"percent,omitempty"`
	ExitCode *int      `json:"exit_code,omitempty"`
	DP       string    `json:"dp,omitempty"`
	Error    string    `json:"error,omitempty"`
	Updated  time.Time `json:"updated,omitzero"`
}

// Deployment is one deployment in a device's policy (Policy.Deployments, set by the MP
// from the deployments of the device's groups, never by admins). ManifestSHA256 pins the
// signed manifest: a DP cannot serve another (older) signed version instead.
type Deployment struct {
	ID             string `json:"id"`
	Package        string `json:"package"`
	Version        string `json:"version"`
	ManifestSHA256 string `json:"manifest_sha256"`
	Install        bool   `json:"install"`
}

// Manifest is a package version (DESIGN.md §8): what a device downloads, checks and runs.
// The CA signs its JSON encoding (dp/manifest), and a deployment pins the SHA-256 of those
// signed bytes.
type Manifest struct {
	Name      string         `json:"name"`    // [a-z0-9][a-z0-9._-]{0,63}
	Version   string         `json:"version"` // [A-Za-z0-9][A-Za-z0-9._+~-]{0,63}
	ChunkSize int64          `json:"chunk_size"`
	Files     []ManifestFile `json:"files"`
	Install   *InstallSpec   `json:"install,omitempty"`
	Created   time.Time      `json:"created"`
}

// ManifestFile is one file of a package: where it goes (relative, below the package's
// directory), its size, mode, hash (its blob's address) and the hash of each ChunkSize
// piece, so a download is checked as it arrives.
type ManifestFile struct {
	Path   string   `json:"path"`
	Size   int64    `json:"size"`
	Mode   uint32   `json:"mode"` // permission bits only (0o755 at most)
	SHA256 string   `json:"sha256"`
	Chunks []string `json:"chunks"` // hex SHA-256 of each chunk, in order
}

// InstallSpec is how the agent installs a package: Command runs as root by /bin/sh -c in
// the package's directory, within Timeout; an exit code in SuccessCodes is success.
type InstallSpec struct {
	Command      string `json:"command"`
	Timeout      string `json:"timeout"`       // Go duration
	SuccessCodes []int  `json:"success_codes"` // 0–255; [0] when empty
}

// SignedManifest is a manifest as the CA signed it: Manifest is the exact bytes signed
// (base64 in JSON), Signature the signature over their SHA-256 by the leaf of Chain (DER,
// leaf first: a content-signer certificate of this site).
type SignedManifest struct {
	Manifest  []byte   `json:"manifest"`
	Signature []byte   `json:"signature"`
	Chain     [][]byte `json:"chain"`
}
