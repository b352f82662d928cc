package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/deploy"
	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/device"
	"github.com/ibcm-project/ibcm/remote/e2e"
)

// The agent's side of deployments: client/deploy does the work; the agent gives it the
// policy's deployments, the DPs the current MP names for the detected location, the
// identity's trust (pinned roots, site code, CRL), a DP client and the spool.

// deployState is the agent's handle on its deployments.
type deployState struct {
	m *deploy.Manager

	mu     sync.Mutex
	client *http.Client
	serial string // of the identity client was made for
}

func (a *Agent) newDeploy() (*deployState, error) {
	var inst deploy.Installer = deploy.DirectInstaller{}
	if a.o.Shells == "systemd" || a.o.Shells == "" && device.UnderSystemd() {
		inst = deploy.SystemdInstaller{} // outside the agent unit's sandbox, as session shells
	}
	ds := &deployState{}
	m, err := deploy.New(deploy.Config{
		Dir: a.o.Dir, CacheSize: a.o.CacheSize, StallTimeout: a.o.StallTimeout,
		Client: a.dpClient, Locate: a.locateDPs, Trust: a.manifestTrust,
		Report: func(sev, text string, fields map[string]string) {
			_ = a.reportFields(sev, wire.DeploymentComponent, text, fields)
		},
		Installer: inst, Log: a.o.Log,
	})
	if err != nil {
		return nil, err
	}
	ds.m = m
	return ds, nil
}

// Deployments returns the local record of deployments.
func (a *Agent) Deployments() []deploy.Record { return a.deploy.m.Records() }

// reportFields spools a status message with fields.
func (a *Agent) reportFields(severity, component, text string, fields map[string]string) error {
	if _, err := a.spool.Add(wire.StatusMessage{Time: time.Now().UTC(), Severity: severity, Component: component, Text: text, Fields: fields}); err != nil {
		a.log.Warn().Err(err).Msg("spooling a status message")
		return err
	}
	signal(a.kick)
	return nil
}

// siteCode is the site of the identity: from its bootstrap settings, else from the
// current MP's certificate.
func (a *Agent) siteCode() string {
	a.mu.Lock()
	site := ""
	if a.id.Bootstrap != nil {
		site = a.id.Bootstrap.SiteCode
	}
	a.mu.Unlock()
	if site == "" {
		a.remote.mu.Lock()
		site = a.remote.site
		a.remote.mu.Unlock()
	}
	return site
}

// manifestTrust verifies manifests against the roots pinned at enrollment, the content
// role of this site, and the CRL the agent keeps for sessions.
func (a *Agent) manifestTrust() manifest.Trust {
	a.mu.Lock()
	roots := a.id.Roots
	a.mu.Unlock()
	return manifest.Trust{Roots: roots, SiteCode: a.siteCode(), Revoked: a.remote.crl.Revoked}
}

// dpClient talks to DPs over mutual TLS with the device's certificate (made again after a
// renewal). Names are looked up through the agent's resolvers; there is no overall
// timeout (dp/fetch abandons a stalled DP), but a DP must answer within 30 s.
func (a *Agent) dpClient() *http.Client {
	a.mu.Lock()
	id := a.id
	a.mu.Unlock()
	ds := a.deploy
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.client != nil && ds.serial == id.SerialHex() {
		return ds.client
	}
	if ds.client != nil {
		ds.client.CloseIdleConnections()
	}
	ds.client, ds.serial = newDPClient(id, a.o.ResolvConf, a.remote.crl.Revoked), id.SerialHex()
	return ds.client
}

func newDPClient(id *client.Identity, resolvConf string, revoked func(*x509.Certificate) bool) *http.Client {
	leafOnly := id.Certificate
	leafOnly.Certificate = leafOnly.Certificate[:1]
	dial := location.DialContext(resolvConf)
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{leafOnly}, RootCAs: id.Roots, MinVersion: tls.VersionTLS12,
			VerifyConnection: func(cs tls.ConnectionState) error {
				for _, c := range cs.PeerCertificates {
					if revoked != nil && revoked(c) {
						return fmt.Errorf("the DP's certificate %s is revoked (CRL)", wire.FormatSerial(c.SerialNumber))
					}
				}
				return nil
			}},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return dial(ctx, network, addr)
		},
		ForceAttemptHTTP2: false, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}, // bulk over HTTP/1.1
		MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: 30 * time.Second,
	}}
}

// locateDPs asks the current MP for the DPs of the location the agent detected
// (GET /v1/locate), preferred first.
func (a *Agent) locateDPs(ctx context.Context) ([]string, error) {
	s := a.currentMP()
	if s == nil {
		return nil, deploy.ErrUnavailable
	}
	var loc wire.Locate
	if _, err := s.do(ctx, http.MethodGet, "/v1/locate", nil, nil, &loc); err != nil {
		if errors.Is(err, errMPDown) {
			return nil, fmt.Errorf("%w: %v", deploy.ErrUnavailable, err)
		}
		return nil, fmt.Errorf("locate: %w", err)
	}
	if loc.Location != "" && loc.Location != s.location {
		return nil, fmt.Errorf("locate: the MP %s answers for the %s, the agent detected the %s", s.base, loc.Location, s.location)
	}
	return loc.DPs, nil
}

// HandDownload is `ibcm-client download`: a package of the policy's deployments fetched
// by hand, verified and placed in a directory, never installed.
type HandDownload struct {
	Dir          string // the state directory
	ResolvConf   string
	Name         string
	Version      string // "": the one version the policy deploys
	Output       string // "": ./<name>-<version>; must not exist or be empty
	StallTimeout time.Duration
	Progress     deploy.Progress
}

// HandDownloaded says what HandDownload placed where.
type HandDownloaded struct {
	Package, Version, Output, DP, Location string
	Files                                  int
	Size                                   int64
}

// ErrNoDeployment is a package the device's policy does not deploy (an input error).
var ErrNoDeployment = errors.New("not deployed to this device")

// Download fetches a package by hand: the deployment from the cached policy (its pin),
// the location detected now, the DPs the MP of that location names, the manifest verified
// as the agent does, the blobs into <output>.partial (resumed when run again), then every
// file verified again into the output directory.
func Download(ctx context.Context, o HandDownload) (HandDownloaded, error) {
	var res HandDownloaded
	id, err := client.Load(o.Dir)
	if err != nil {
		return res, err
	}
	p, havePolicy := CachedPolicy(o.Dir)
	var found []wire.Deployment
	for _, d := range p.Deployments {
		if d.Package == o.Name && (o.Version == "" || d.Version == o.Version) {
			found = append(found, d)
		}
	}
	var d wire.Deployment
	switch {
	case len(found) == 0 && o.Version != "":
		return res, fmt.Errorf("%w: %s version %s (the policy in %s deploys no such package; `ibcm-client deployments` lists what it does)", ErrNoDeployment, o.Name, o.Version, o.Dir)
	case len(found) == 0:
		return res, fmt.Errorf("%w: %s (the policy in %s deploys no such package; `ibcm-client deployments` lists what it does)", ErrNoDeployment, o.Name, o.Dir)
	default:
		d = found[0]
		for _, x := range found[1:] {
			if x.Version != d.Version || x.ManifestSHA256 != d.ManifestSHA256 {
				var vs []string
				for _, y := range found {
					vs = append(vs, y.Version)
				}
				return res, fmt.Errorf("%w: %s is deployed in versions %s: say --version", ErrNoDeployment, o.Name, strings.Join(vs, ", "))
			}
		}
	}
	res.Package, res.Version = d.Package, d.Version
	out := o.Output
	if out == "" {
		out = d.Package + "-" + d.Version
	}
	if out, err = filepath.Abs(out); err != nil {
		return res, err
	}
	res.Output = out
	if ents, err := os.ReadDir(out); err == nil && len(ents) > 0 {
		return res, fmt.Errorf("%s is not empty: name a new or empty directory with --output", out)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return res, err
	}

	cfg := location.Config{ResolvConf: o.ResolvConf, Roots: id.Roots, ClientCert: &id.Certificate}
	site := ""
	if b := id.Bootstrap; b != nil {
		cfg.SiteCode, cfg.IntranetSuffixes, cfg.SRVNames, cfg.InternetMPs = b.SiteCode, b.IntranetDNSSuffixes, b.SRVNames, b.InternetMPs
		site = b.SiteCode
	}
	if havePolicy { // as the agent: the policy's location settings over the bootstrap's
		l := p.Location
		cfg.IntranetSuffixes, cfg.SRVNames, cfg.InternetMPs, cfg.AlwaysInternet = l.IntranetDNSSuffixes, l.SRVNames, l.InternetMPNames, l.AlwaysInternet
	}
	dec := location.Detect(ctx, cfg)
	if dec.MP == "" {
		return res, fmt.Errorf("no management point reachable (%s): `ibcm-client location` shows why", dec.Reason)
	}
	res.Location = dec.Location
	crl := e2e.NewCRL(issuerOf(id), filepath.Join(o.Dir, device.CRLFile))
	loc, mpSite, err := locate(ctx, mpClient(id, dec.Addr, crl.Revoked), strings.TrimSuffix(dec.MP, "/"))
	if err != nil {
		return res, err
	}
	if loc.Location != "" && loc.Location != dec.Location {
		return res, fmt.Errorf("locate: the MP %s answers for the %s, detection found the %s", dec.MP, loc.Location, dec.Location)
	}
	if site == "" {
		site = mpSite
	}
	dps, err := deploy.CheckDPs(loc.DPs)
	if err != nil {
		return res, err
	}
	c := newDPClient(id, o.ResolvConf, crl.Revoked)
	defer c.CloseIdleConnections()
	m, _, err := deploy.FetchManifest(ctx, c, dps, d, manifest.Trust{Roots: id.Roots, SiteCode: site, Revoked: crl.Revoked})
	if err != nil {
		return res, err
	}
	partial := out + ".partial"
	if err := ownDir(partial, 0o700); err != nil {
		return res, err
	}
	res.DP, err = deploy.Download(ctx, partial, m, dps, deploy.DownloadOptions{Client: c, StallTimeout: o.StallTimeout, Progress: o.Progress})
	if err != nil {
		return res, fmt.Errorf("%w (what arrived is kept in %s: run again to resume)", err, partial)
	}
	if err := ownDir(out, 0o755); err != nil {
		return res, err
	}
	if err := deploy.Place(out, m, func(sum string) string { return deploy.BlobPath(partial, sum) }); err != nil {
		return res, err
	}
	res.Files, res.Size = len(m.Files), deploy.PackageSize(m)
	return res, os.RemoveAll(partial)
}

// ownDir makes dir (perm; its parents as needed) unless it is there already, and then
// accepts it only as a real directory of the effective user that no one else may write to:
// run as root in a shared directory (--output /tmp/x), a directory or symlink another user
// planted there would have root write, truncate and read where that user points.
func ownDir(dir string, perm fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is a %s of mode %s that uid %d does not own alone (a symlink, another user's, or writable by others): refused; remove it or name another --output",
			dir, kindOf(fi), fi.Mode().Perm(), os.Geteuid())
	}
	return nil
}

func kindOf(fi fs.FileInfo) string {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return "symlink"
	case fi.IsDir():
		return "directory"
	}
	return "file"
}

// locate asks an MP for the DPs of the caller's location; it returns the site code the
// MP's certificate names too.
func locate(ctx context.Context, c *http.Client, base string) (wire.Locate, string, error) {
	defer c.CloseIdleConnections()
	var loc wire.Locate
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/locate", nil)
	if err != nil {
		return loc, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return loc, "", fmt.Errorf("locate: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return loc, "", fmt.Errorf("locate: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e wire.Error
		_ = json.Unmarshal(b, &e)
		return loc, "", fmt.Errorf("locate: %w", &client.ServerError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message, Server: client.ManagementPoint})
	}
	if err := json.Unmarshal(b, &loc); err != nil {
		return loc, "", fmt.Errorf("locate: %w", err)
	}
	site := ""
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		site = wire.Identify(resp.TLS.PeerCertificates[0]).Site
	}
	return loc, site, nil
}
