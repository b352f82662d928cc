package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/device"
	"github.com/ibcm-project/ibcm/remote/e2e"
)

// The agent's side of remote control: remote/device does the work; the agent gives it
// the identity, the policy, the CRL and the connection to the current MP.

// crlEvery is how often the CRL is fetched when it does not say sooner; crlMinGap bounds
// the fetches before sessions.
const (
	crlEvery  = time.Hour
	crlMinGap = 30 * time.Second
)

type remoteState struct {
	host *device.Host
	crl  *e2e.CRL

	mu        sync.Mutex
	mp        *session // the MP session that passed hello, for the relay, reports, uploads and the CRL
	lastCRL   time.Time
	crlFetchM sync.Mutex
	// site is the site code the current MP's certificate names, for an identity enrolled
	// without bootstrap settings (which carry it).
	site string
}

// issuerOf is the CA certificate that issued the identity's leaf: the next certificate
// of its chain, else the root that signed it.
func issuerOf(id *client.Identity) *x509.Certificate {
	if len(id.Certificate.Certificate) > 1 {
		if c, err := x509.ParseCertificate(id.Certificate.Certificate[1]); err == nil {
			return c
		}
	}
	for _, r := range id.RootCerts {
		if id.Leaf != nil && id.Leaf.CheckSignatureFrom(r) == nil {
			return r
		}
	}
	return nil
}

func (a *Agent) newRemote() (*remoteState, error) {
	a.mu.Lock()
	id := a.id
	a.mu.Unlock()
	rs := &remoteState{crl: e2e.NewCRL(issuerOf(id), filepath.Join(a.o.Dir, device.CRLFile))}
	var shells device.ShellStarter = device.DirectShells{}
	var screenSystemd *device.SystemdShells
	screenDir := ""
	if a.o.Shells == "systemd" || a.o.Shells == "" && device.UnderSystemd() {
		shells = device.SystemdShells{}
		// x11vnc as a transient service too; its socket in the runtime directory (the share
		// socket's), which the agent's private /tmp would hide.
		screenSystemd = &device.SystemdShells{}
		if a.o.ShareSocket != "" {
			screenDir = filepath.Dir(a.o.ShareSocket)
		}
	}
	h, err := device.New(device.Config{
		ForbidConsole: a.o.NoConsoleSessions,
		Identity: func() (string, string) {
			a.mu.Lock()
			dev, site := a.id.DeviceID, ""
			if a.id.Bootstrap != nil {
				site = a.id.Bootstrap.SiteCode
			}
			a.mu.Unlock()
			if site == "" {
				a.remote.mu.Lock()
				site = a.remote.site
				a.remote.mu.Unlock()
			}
			return dev, site
		},
		Cert:  func() tls.Certificate { a.mu.Lock(); defer a.mu.Unlock(); return a.id.Certificate },
		Roots: func() *x509.CertPool { a.mu.Lock(); defer a.mu.Unlock(); return a.id.Roots },
		Policy: func() device.Policy {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.policy == nil {
				return device.Policy{}
			}
			return device.Policy{RC: a.policy.Policy.RemoteControl, AuditKey: a.policy.Policy.AuditKey}
		},
		Revoked:    rs.crl.Revoked,
		RefreshCRL: func(ctx context.Context) { a.refreshCRL(ctx, false) },
		Relay:      a.relay,
		Report: func(ctx context.Context, sid string, r wire.SessionReport) error {
			s := a.currentMP()
			if s == nil {
				return errMPDown
			}
			_, err := s.do(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(sid)+"/report", r, nil, nil)
			return err
		},
		Upload: a.uploadRecording,
		Audit:  func(sev, text string) { _ = a.Report(sev, "remote", text) },
		Intranet: func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			return a.current.Location == wire.Intranet
		},
		DirectAddrs:   a.sessionPortAddrs,
		Shells:        shells,
		ScreenDir:     screenDir,
		ScreenSystemd: screenSystemd,
		StateDir:      a.o.Dir,
		Log:           a.o.Log,
	})
	if err != nil {
		return nil, err
	}
	rs.host = h
	return rs, nil
}

func (a *Agent) currentMP() *session {
	a.remote.mu.Lock()
	defer a.remote.mu.Unlock()
	return a.remote.mp
}

func (a *Agent) setMP(s *session, up bool) {
	a.remote.mu.Lock()
	if up {
		a.remote.mp = s
	} else if a.remote.mp == s {
		a.remote.mp = nil
	}
	a.remote.mu.Unlock()
	if up {
		go a.refreshCRL(context.Background(), true)
		a.deploy.m.Wake() // deployments waiting for an MP to name the DPs
	}
}

// runRemote serves the share socket and keeps the CRL fresh until ctx is done.
func (a *Agent) runRemote(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.remote.host.Run(ctx) }()
	if a.o.ShareSocket != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.remote.host.Serve(ctx, a.o.ShareSocket); err != nil {
				a.log.Error().Err(err).Str("socket", a.o.ShareSocket).Msg("share socket: local users cannot share or consent")
			}
		}()
	}
	for {
		next := crlEvery
		if nu := a.remote.crl.NextUpdate(); !nu.IsZero() {
			next = min(next, max(time.Until(nu), time.Minute))
		}
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-time.After(jitter(next, 0.1)):
			a.refreshCRL(ctx, true)
		}
	}
}

// refreshCRL fetches GET /v1/crl through the current MP and keeps it when it verifies
// against the issuing CA of the agent's own chain. Before a session (force false) it
// skips a fetch made less than crlMinGap ago.
func (a *Agent) refreshCRL(ctx context.Context, force bool) {
	rs := a.remote
	rs.crlFetchM.Lock()
	defer rs.crlFetchM.Unlock()
	if !force && time.Since(rs.lastCRL) < crlMinGap {
		return
	}
	s := a.currentMP()
	if s == nil {
		return
	}
	a.mu.Lock()
	id := a.id
	a.mu.Unlock()
	rs.crl.SetIssuer(issuerOf(id))
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/v1/crl", nil)
	if err != nil {
		return
	}
	resp, err := s.http.Do(req)
	if err != nil {
		a.log.Warn().Err(err).Msg("fetching the CRL")
		return
	}
	defer resp.Body.Close()
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 { // verified by the MP connection
		if pid := wire.Identify(resp.TLS.PeerCertificates[0]); pid.Kind == wire.KindServer && pid.Site != "" {
			rs.mu.Lock()
			rs.site = pid.Site
			rs.mu.Unlock()
		}
	}
	der, err := io.ReadAll(io.LimitReader(resp.Body, e2e.MaxCRL+1))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET /v1/crl: %s", resp.Status)
	}
	if err == nil {
		err = rs.crl.Update(der)
	}
	if err != nil {
		a.log.Warn().Err(err).Msg("CRL not updated; the one held stays in use")
		return
	}
	rs.lastCRL = time.Now()
}

// relay dials the device's relay leg of a session over the agent's mutual-TLS connection
// to its MP (HTTP/1.1 Upgrade: ibcm-relay); the 101 answer's body is the spliced stream.
func (a *Agent) relay(ctx context.Context, sid, ticketID string) (io.ReadWriteCloser, error) {
	s := a.currentMP()
	if s == nil {
		return nil, errMPDown
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/v1/sessions/"+url.PathEscape(sid)+"/relay?ticket="+url.QueryEscape(ticketID), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", wire.RelayProtocol)
	hc := &http.Client{Transport: s.http.Transport} // no overall timeout: the MP holds the leg until the helper's is there
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMPDown, err)
	}
	return relayAnswer(resp)
}

// relayAnswer is the MP's answer to a relay leg: the spliced stream (101), or the error its
// JSON body names.
func relayAnswer(resp *http.Response) (io.ReadWriteCloser, error) {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if rw, ok := resp.Body.(io.ReadWriteCloser); ok {
			return rw, nil
		}
		resp.Body.Close()
		return nil, errors.New("relay: the upgraded connection is not writable")
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	var e wire.Error
	_ = json.Unmarshal(data, &e)
	return nil, &client.ServerError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message, Server: client.ManagementPoint}
}

// uploadRecording sends a sealed recording to the MP.
func (a *Agent) uploadRecording(ctx context.Context, sid string, sealed []byte) error {
	s := a.currentMP()
	if s == nil {
		return errMPDown
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/v1/sessions/"+url.PathEscape(sid)+"/recording", bytes.NewReader(sealed))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	hc := &http.Client{Transport: s.http.Transport, Timeout: 2 * time.Minute}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", errMPDown, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode >= 300 {
		var e wire.Error
		_ = json.Unmarshal(data, &e)
		return &client.ServerError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message, Server: client.ManagementPoint}
	}
	return nil
}

// onSessionEvent acts on session-requested and session-ended.
func (a *Agent) onSessionEvent(ev wire.Event) {
	switch ev.Type {
	case wire.EventSessionRequested:
		t := ev.Data[wire.EventDataTicket]
		go func() { _ = a.remote.host.Request(context.Background(), t) }()
	case wire.EventSessionEnded:
		a.remote.host.End(ev.Data[wire.EventDataSession], ev.Data[wire.EventDataOutcome], ev.Data[wire.EventDataReason])
	}
}

// sessionPortAddrs are where the session port listens: Options.DirectAddrs when given,
// else the one address this device reaches its intranet MP from (the route's source
// address, asked of the kernel with an unconnected-in-effect UDP socket: nothing is sent),
// so the port is never opened on a VPN, public or other interface. None off the intranet.
func (a *Agent) sessionPortAddrs() []net.IP {
	if len(a.o.DirectAddrs) > 0 {
		return a.o.DirectAddrs
	}
	a.mu.Lock()
	d := a.current
	a.mu.Unlock()
	if d.Location != wire.Intranet || d.Addr == "" {
		return nil
	}
	c, err := net.Dial("udp", d.Addr)
	if err != nil {
		return nil
	}
	defer c.Close()
	if ua, ok := c.LocalAddr().(*net.UDPAddr); ok && !ua.IP.IsUnspecified() {
		return []net.IP{ua.IP}
	}
	return nil
}
