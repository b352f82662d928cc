package location

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// MPURI is the URI SAN a management point of site code carries.
func MPURI(siteCode string) string { return "urn:ibcm:site:" + siteCode + ":role:mp" }

// verifyMP returns a tls.Config.VerifyConnection function that accepts only a site-server
// certificate of an MP of siteCode for host: it chains to roots (the rest of the presented
// chain as intermediates) for server authentication, names host (DNS or IP SAN) and
// carries the URI SAN MPURI(siteCode) exactly. It replaces the standard verification,
// which is turned off with InsecureSkipVerify: it is never skipped.
func verifyMP(roots *x509.CertPool, siteCode, host string, now func() time.Time) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the server presented no certificate")
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if roots == nil {
			roots = x509.NewCertPool() // never the system roots
		}
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots: roots, Intermediates: inter, DNSName: host, CurrentTime: now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			return fmt.Errorf("certificate %q issued by %q: %w", leaf.Subject.CommonName, leaf.Issuer.CommonName, err)
		}
		want := MPURI(siteCode)
		var uris []string
		for _, u := range leaf.URIs {
			if u.String() == want {
				return nil
			}
			uris = append(uris, u.String())
		}
		has := "no URI"
		if len(uris) > 0 {
			has = strings.Join(uris, ", ")
		}
		return fmt.Errorf("certificate %q is not an MP of site %s: it names %s, not %s", leaf.Subject.CommonName, siteCode, has, want)
	}
}

// probe makes a TLS handshake with host:port at addr, presenting the device's certificate,
// and checks the server is an MP of this site for host. It records the step.
func (d *detector) probe(ctx context.Context, ev *recorder, host string, port uint16, addr netip.Addr) error {
	start := time.Now()
	step := Step{Kind: KindProbe, Target: net.JoinHostPort(host, strconv.Itoa(int(port)))}
	if a, err := netip.ParseAddr(host); err != nil || a.Unmap() != addr {
		step.Target += " at " + addr.String()
	}
	err := d.handshake(ctx, host, port, addr, &step)
	if err != nil {
		step.Error = err.Error()
	}
	step.Took = time.Since(start)
	ev.add(step)
	return err
}

func (d *detector) handshake(parent context.Context, host string, port uint16, addr netip.Addr, step *Step) error {
	ctx, cancel := context.WithTimeout(parent, d.cfg.ProbeTimeout)
	defer cancel()
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced, not skipped: VerifyConnection checks chain, name and site
		VerifyConnection:   verifyMP(d.cfg.Roots, d.cfg.SiteCode, host, d.now),
		Time:               d.now,
	}
	if net.ParseIP(host) == nil {
		tc.ServerName = host // SNI
	}
	if d.cfg.ClientCert != nil {
		tc.Certificates = []tls.Certificate{*d.cfg.ClientCert}
	}
	dialer := &tls.Dialer{Config: tc}
	conn, err := dialer.DialContext(ctx, "tcp", netip.AddrPortFrom(addr, port).String())
	if err != nil {
		switch {
		case expired(parent):
			return fmt.Errorf("abandoned: %w", cause(parent))
		case expired(ctx):
			return fmt.Errorf("no TLS handshake within %s", d.cfg.ProbeTimeout)
		}
		return unwrapDialErr(err)
	}
	defer conn.Close()
	cs := conn.(*tls.Conn).ConnectionState()
	leaf := cs.PeerCertificates[0]
	step.Result = fmt.Sprintf("MP of site %s: certificate %q serial %x, %s", d.cfg.SiteCode, leaf.Subject.CommonName, leaf.SerialNumber, tls.VersionName(cs.Version))
	return nil
}

// unwrapDialErr drops the "dial tcp ...:" and "remote error" layers people need not read
// twice; the target is already in the step.
func unwrapDialErr(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" && oe.Err != nil {
		return oe.Err
	}
	var ve *tls.CertificateVerificationError
	if errors.As(err, &ve) {
		return ve.Err
	}
	return err
}
