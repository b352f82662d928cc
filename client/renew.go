package client

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// RenewOptions say how to renew the identity in Dir.
type RenewOptions struct {
	Dir string
	// KeepKey renews for the current key. The default (false) makes a new key of the same
	// type, as DESIGN.md §5 asks: a rekey on every renewal.
	KeepKey bool

	Timeout time.Duration    // per request; DefaultTimeout when zero
	Now     func() time.Time // time.Now when nil
	Rand    io.Reader        // crypto/rand when nil
	// DialContext, when set, makes the connection to the CA (the agent resolves names
	// through its own resolvers).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Renew asks the CA for a successor of the device's certificate over mutual TLS with the
// current key and certificate, trusting the stored roots. By default it sends a CSR for a
// new key of the same type. The new chain must verify up to the stored roots, certify the
// key sent and keep the device id; then key.pem (on a rekey), cert.pem and state.json are
// replaced as one change (see commit for the crash window). A refusal of the CA, such as
// certificate_revoked or certificate_expired, is a *ServerError; the stored identity is
// then left as it was.
func Renew(ctx context.Context, opts RenewOptions) (*Identity, error) {
	now, rnd := opts.Now, opts.Rand
	if now == nil {
		now = time.Now
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	if opts.Dir == "" {
		return nil, errors.New("renew: the state directory is required")
	}
	if err := recoverStaged(opts.Dir); err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	id, err := Load(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	st, err := readState(filepath.Join(opts.Dir, StateFile))
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	base, err := parseCAURL(id.CAURL)
	if err != nil {
		return nil, fmt.Errorf("renew: state.json: %w", err)
	}

	key := id.Certificate.PrivateKey.(crypto.Signer)
	var req wire.RenewRequest
	if !opts.KeepKey {
		if key, err = id.KeyType.generate(rnd); err != nil {
			return nil, fmt.Errorf("renew: making a %s key: %w", id.KeyType, err)
		}
		csr, err := makeCSR(rnd, key, id.Name, id.FQDN)
		if err != nil {
			return nil, fmt.Errorf("renew: %w", err)
		}
		req.CSR = string(csr)
	}

	hc := newHTTPClient(&tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      id.Roots,
		Certificates: []tls.Certificate{id.Certificate},
		Time:         now,
	}, opts.Timeout)
	if opts.DialContext != nil {
		hc.Transport.(*http.Transport).DialContext = opts.DialContext
	}
	defer hc.CloseIdleConnections()
	var resp wire.CertificateResponse
	if err := call(ctx, hc, http.MethodPost, base, "/v1/renew", req, &resp); err != nil {
		return nil, fmt.Errorf("renew %s: %w", id.SerialHex(), err)
	}
	chain, err := checkIssued(resp, key, id.RootCerts, now())
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	if got := DeviceIDOf(chain[0]); got != id.DeviceID {
		return nil, fmt.Errorf("renew: the CA issued a certificate for device %q, this device is %q", got, id.DeviceID)
	}

	files := map[string][]byte{CertFile: encodeCerts(chain...)}
	if !opts.KeepKey {
		if files[KeyFile], err = encodeKey(key); err != nil {
			return nil, fmt.Errorf("renew: %w", err)
		}
	}
	st.Serial, st.SerialHex = chain[0].SerialNumber.String(), serialHex(chain[0].SerialNumber)
	st.NotAfter, st.KeyType, st.UpdatedAt = chain[0].NotAfter.UTC(), keyTypeOf(chain[0].PublicKey), now().UTC()
	st.DeviceID = id.DeviceID
	if files[StateFile], err = encodeState(st); err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	if err := commit(opts.Dir, files); err != nil {
		return nil, fmt.Errorf("renew: storing the new certificate in %s: %w", opts.Dir, err)
	}
	return newIdentity(opts.Dir, id.CAURL, key, chain, id.RootCerts), nil
}
