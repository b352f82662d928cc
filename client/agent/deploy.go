package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/deploy"
	"github.com/ibcm-project/ibcm/client/location"
	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/device"
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
