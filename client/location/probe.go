package location

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
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
// and checks the server is an MP of this site for host. With listener set (wire.Intranet)
// it also asks the MP, over that same verified connection, which listener it reached, and
// accepts only that one: the internet MP is an MP of this site too, and a hostile resolver
// can point the intranet SRV record at it. It records the step.
func (d *detector) probe(ctx context.Context, ev *recorder, host string, port uint16, addr netip.Addr, listener string) error {
	start := time.Now()
	step := Step{Kind: KindProbe, Target: net.JoinHostPort(host, strconv.Itoa(int(port)))}
	if a, err := netip.ParseAddr(host); err != nil || a.Unmap() != addr {
		step.Target += " at " + addr.String()
	}
	err := d.handshake(ctx, host, port, addr, listener, &step)
	if err != nil {
		step.Error = err.Error()
	}
	step.Took = time.Since(start)
	ev.add(step)
	return err
}

func (d *detector) handshake(parent context.Context, host string, port uint16, addr netip.Addr, listener string, step *Step) error {
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
	timedOut := func(err error, what string) error {
		switch {
		case expired(parent):
			return fmt.Errorf("abandoned: %w", cause(parent))
		case expired(ctx):
			return fmt.Errorf("no %s within %s", what, d.cfg.ProbeTimeout)
		}
		return err
	}
	dialer := &tls.Dialer{Config: tc}
	conn, err := dialer.DialContext(ctx, "tcp", netip.AddrPortFrom(addr, port).String())
	if err != nil {
		return timedOut(unwrapDialErr(err), "TLS handshake")
	}
	defer conn.Close()
	cs := conn.(*tls.Conn).ConnectionState()
	leaf := cs.PeerCertificates[0]
	cert := fmt.Sprintf("certificate %q serial %s, %s", leaf.Subject.CommonName, wire.FormatSerial(leaf.SerialNumber), tls.VersionName(cs.Version))
	if listener == "" {
		step.Result = fmt.Sprintf("MP of site %s: %s", d.cfg.SiteCode, cert)
		return nil
	}
	// The answer must come within the probe's time, and stops when the detection does.
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	p, err := askListener(conn, host)
	if err != nil {
		return timedOut(fmt.Errorf("MP of site %s (%s), but %w", d.cfg.SiteCode, cert, err), "answer to GET "+wire.ProbePath)
	}
	if own := clientSerial(d.cfg.ClientCert); own != "" && p.Serial != own {
		return fmt.Errorf("MP of site %s (%s), but it saw client certificate serial %s, not this device's", d.cfg.SiteCode, cert, p.Serial)
	}
	if p.Location != listener {
		return fmt.Errorf("MP of site %s (%s), but GET %s says this is its %s listener, not an %s one", d.cfg.SiteCode, cert, wire.ProbePath, p.Location, listener)
	}
	step.Result = fmt.Sprintf("%s listener of an MP of site %s (GET %s: location %s, client certificate serial %s): %s",
		p.Location, d.cfg.SiteCode, wire.ProbePath, p.Location, p.Serial, cert)
	return nil
}

// clientSerial is the serial of the device's certificate as wire.FormatSerial writes it,
// "" when there is none.
func clientSerial(c *tls.Certificate) string {
	if c == nil || len(c.Certificate) == 0 {
		return ""
	}
	leaf := c.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return ""
		}
	}
	return wire.FormatSerial(leaf.SerialNumber)
}

// maxProbeAnswer bounds what a probe reads of the MP's answer, status line and headers
// included; the MP's is about 200 bytes.
const maxProbeAnswer = 4096

// askListener sends GET /v1/probe over conn, whose server certificate is verified, and
// parses the answer: 200, a JSON content type, and one JSON object (nothing after it, at
// most maxProbeAnswer bytes with the headers) naming a location. Unknown fields are
// allowed, so that the MP can add some without sending every older agent to the
// internet: the answer is authenticated by the connection, the limits are against a
// broken server.
func askListener(conn net.Conn, host string) (wire.Probe, error) {
	req, err := http.NewRequest(http.MethodGet, "https://"+host+wire.ProbePath, nil)
	if err != nil {
		return wire.Probe{}, err
	}
	req.Close = true
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "ibcm-client location probe")
	if err := req.Write(conn); err != nil {
		return wire.Probe{}, fmt.Errorf("sending GET %s: %w", wire.ProbePath, err)
	}
	lr := &io.LimitedReader{R: conn, N: maxProbeAnswer + 1}
	tooMuch := func(err error) error {
		if lr.N <= 0 {
			return fmt.Errorf("its answer to GET %s is over %d bytes", wire.ProbePath, maxProbeAnswer)
		}
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(lr), req)
	if err != nil {
		return wire.Probe{}, tooMuch(fmt.Errorf("no answer to GET %s: %w", wire.ProbePath, err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return wire.Probe{}, tooMuch(fmt.Errorf("reading its answer to GET %s: %w", wire.ProbePath, err))
	}
	if lr.N <= 0 {
		return wire.Probe{}, tooMuch(nil)
	}
	if resp.StatusCode != http.StatusOK {
		var e wire.Error
		if json.Unmarshal(body, &e) == nil && e.Error.Code != "" {
			return wire.Probe{}, fmt.Errorf("it refused GET %s: %s %s: %s", wire.ProbePath, resp.Status, e.Error.Code, e.Error.Message)
		}
		return wire.Probe{}, fmt.Errorf("it answered GET %s with %s", wire.ProbePath, resp.Status)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
		return wire.Probe{}, fmt.Errorf("its answer to GET %s is %q, not JSON", wire.ProbePath, resp.Header.Get("Content-Type"))
	}
	p, err := parseProbe(body)
	if err != nil {
		return wire.Probe{}, fmt.Errorf("its answer to GET %s: %w", wire.ProbePath, err)
	}
	return p, nil
}

// parseProbe reads the body of a GET /v1/probe answer: one JSON object, nothing after it,
// location intranet or internet, serial in hex (wire.ParseSerial).
func parseProbe(b []byte) (wire.Probe, error) {
	var p wire.Probe
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&p); err != nil {
		return wire.Probe{}, fmt.Errorf("not a JSON object: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return wire.Probe{}, errors.New("data after the JSON object")
	}
	if p.Location != wire.Intranet && p.Location != wire.Internet {
		return wire.Probe{}, fmt.Errorf("location %q is neither %s nor %s", truncate(p.Location), wire.Intranet, wire.Internet)
	}
	n, err := wire.ParseSerial(p.Serial)
	if err != nil {
		return wire.Probe{}, fmt.Errorf("serial %q: %w", truncate(p.Serial), err)
	}
	p.Serial = wire.FormatSerial(n) // one spelling, to compare with the device's own
	return p, nil
}

// truncate keeps what a server sent short enough for one line of evidence.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
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
