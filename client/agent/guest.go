package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/device"
)

// GuestShareOptions are `ibcm-client share --code` on a device that is not enrolled.
type GuestShareOptions struct {
	Guest *client.Guest // the exchanged code (client.ExchangeCode)
	// MPURL is the MP whose relay the session runs over (https://host:port); the first
	// internet MP of the site's bootstrap when empty.
	MPURL string
	Share device.ShareOptions // Socket is set here
	Log   zerolog.Logger
}

// ShareGuest runs the device's end of a security-code session in this process, with no
// agent and nothing written outside a private temporary directory: a remote host (as the
// agent's) with the guest certificate instead of a device certificate, the ticket the
// code came with, the relay of that session as its only transport, and a fixed policy
// (view or control as the helper asked, the sharer asked first, no recording: there is no
// site policy for a device the site does not know). Reports go nowhere: the guest
// certificate opens no MP route but the relay, whose ends the MP sees.
func ShareGuest(ctx context.Context, o GuestShareOptions) error {
	g := o.Guest.Grant
	mp := o.MPURL
	if mp == "" {
		if g.Bootstrap == nil || len(g.Bootstrap.InternetMPs) == 0 {
			return errors.New("share: the site names no internet MP; pass --mp URL")
		}
		mp = "https://" + g.Bootstrap.InternetMPs[0]
	}
	base, err := url.Parse(mp)
	if err != nil || base.Scheme != "https" || base.Host == "" {
		return fmt.Errorf("share: MP URL %q: must be an https URL", mp)
	}
	site := ""
	if g.Bootstrap != nil {
		site = g.Bootstrap.SiteCode
	}
	dir, err := os.MkdirTemp("", "ibcm-guest-")
	if err != nil {
		return fmt.Errorf("share: %w", err)
	}
	defer os.RemoveAll(dir)
	tlsCfg := &tls.Config{RootCAs: o.Guest.Roots, Certificates: []tls.Certificate{o.Guest.Certificate}, ServerName: base.Hostname(),
		MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	transport := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: false}
	defer transport.CloseIdleConnections()
	policy := wire.RemoteControlSettings{Enabled: true, AccessLevel: "view", PromptUser: true, ShowConnectionBar: true, AllowChat: true,
		ConsentTimeout: "5m"}
	if g.Mode == "control" {
		policy.AccessLevel = "full"
	}
	h, err := device.New(device.Config{
		DeviceID: wire.GuestURIPrefix + g.Session,
		SiteCode: site,
		Cert:     func() tls.Certificate { return o.Guest.Certificate },
		Roots:    func() *x509.CertPool { return o.Guest.Roots },
		Policy:   func() device.Policy { return device.Policy{RC: policy} },
		Relay: func(ctx context.Context, sid, ticketID string) (io.ReadWriteCloser, error) {
			return guestRelay(ctx, transport, base, sid, ticketID)
		},
		Report:   func(context.Context, string, wire.SessionReport) error { return nil },
		Upload:   func(context.Context, string, []byte) error { return nil },
		Notice:   func(string) {},
		StateDir: dir,
		Log:      o.Log,
	})
	if err != nil {
		return fmt.Errorf("share: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go h.Run(ctx)
	sock := filepath.Join(dir, "share.sock")
	ln, err := device.ListenShare(sock)
	if err != nil {
		return fmt.Errorf("share: %w", err)
	}
	go func() { _ = h.ServeShare(ctx, ln) }()
	if err := h.Request(ctx, g.Ticket); err != nil {
		return fmt.Errorf("share: the session's ticket: %w", err)
	}
	so := o.Share
	so.Socket = sock
	return device.Share(ctx, so)
}

// guestRelay dials the guest's leg of its session at the MP (HTTP/1.1 Upgrade:
// ibcm-relay) with the guest certificate.
func guestRelay(ctx context.Context, transport *http.Transport, base *url.URL, sid, ticketID string) (io.ReadWriteCloser, error) {
	u := strings.TrimSuffix(base.String(), "/") + "/v1/guest/sessions/" + url.PathEscape(sid) + "/relay?ticket=" + url.QueryEscape(ticketID)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", wire.RelayProtocol)
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) {
			return nil, fmt.Errorf("the MP's relay: %w", err)
		}
		return nil, err
	}
	return relayAnswer(resp)
}
