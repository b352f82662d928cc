// Package deploy owns the deployments on a device (DESIGN.md §8): what the policy asks
// for, the signed manifest from a DP of the device's location, the size-bounded blob cache,
// the resumable download (dp/fetch), the package directory, the install command outside the
// agent's sandbox, the bounded retries, the local record of each deployment
// (deployments.json, which `ibcm-client deployments` prints) and the status messages that
// report every change. The agent (client/agent) gives it the identity's trust, the DPs the
// current MP names and its spool; `ibcm-client download` uses its pieces by hand.
//
// Package directories: <state>/packages/<name>/<version> is kept exactly as long as a
// deployment of the policy names that package and version. After each policy change (and
// at start, with the cached policy) the agent removes the others, between two deployments
// and without following a symlink: a new version that replaces the old one in the policy
// replaces its directory, and a deployment removed from the policy takes its directory
// with it. What an install command put elsewhere is not touched. (The blob cache is
// bounded by CacheSize on its own.)
package deploy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/ibcm-project/ibcm/internal/atomicfile"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// Files and directories of the state directory the deployments use.
const (
	StateFile   = "deployments.json" // the local record (0600)
	CacheDir    = "cache"            // blobs by hash: cache/ab/cd/<sha256>
	PackagesDir = "packages"         // packages/<name>/<version>/
)

// Record is the local state of one deployment.
type Record struct {
	ID             string    `json:"id"`
	Package        string    `json:"package"`
	Version        string    `json:"version"`
	ManifestSHA256 string    `json:"manifest_sha256"`
	Install        bool      `json:"install"`
	State          string    `json:"state"` // wire.Deploy*
	Percent        int       `json:"percent"`
	ExitCode       *int      `json:"exit_code,omitempty"`
	DP             string    `json:"dp,omitempty"`
	Error          string    `json:"error,omitempty"`
	Attempts       int       `json:"attempts,omitempty"`
	Final          bool      `json:"final"`     // nothing more to do: installed, downloaded only, or failed for good
	InPolicy       bool      `json:"in_policy"` // false once the policy no longer lists it
	Blobs          []string  `json:"blobs,omitempty"`
	Updated        time.Time `json:"updated"`
}

type stateFile struct {
	Version     int      `json:"version"`
	Deployments []Record `json:"deployments"`
}

// maxStateFile bounds deployments.json.
const maxStateFile = 16 << 20

// ReadState reads the local record of deployments in the state directory dir (none when
// the file does not exist).
func ReadState(dir string) ([]Record, error) {
	p := filepath.Join(dir, StateFile)
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxStateFile {
		return nil, fmt.Errorf("%s: %d bytes, at most %d", p, fi.Size(), maxStateFile)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var sf stateFile
	if err := json.Unmarshal(b, &sf); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if sf.Version != 1 {
		return nil, fmt.Errorf("%s: version %d, want 1", p, sf.Version)
	}
	return sf.Deployments, nil
}

func writeState(dir string, recs []Record) error {
	b, err := json.MarshalIndent(stateFile{Version: 1, Deployments: recs}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, StateFile), b, 0o600)
}

// fields are the status message fields of a record (wire.DeploymentComponent).
func (r *Record) fields() map[string]string {
	f := map[string]string{wire.FieldDeployment: r.ID, wire.FieldDeployState: r.State}
	if r.State == wire.DeployDownloading || r.Percent > 0 {
		f[wire.FieldPercent] = fmt.Sprint(r.Percent)
	}
	if r.ExitCode != nil {
		f[wire.FieldExitCode] = fmt.Sprint(*r.ExitCode)
	}
	if r.DP != "" {
		f[wire.FieldDP] = r.DP
	}
	if r.Error != "" {
		f[wire.FieldError] = truncate(r.Error, 1024)
	}
	return f
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
