package client

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// PendingKeyFile holds the key of a renewal that was asked for and not answered yet. It is
// written (0600, fsynced) before the request, and bound to the serial of the certificate
// being renewed, so every retry asks for the same key and the CA answers with the same
// successor: a lost answer costs nothing. It is removed once the successor is stored, or
// when the CA refuses the request outright (see refusedOutright).
const PendingKeyFile = "renew-key.pem"

// pendingSerialHeader is the PEM header of PendingKeyFile naming the renewed serial.
const pendingSerialHeader = "Renews-Serial"

// RenewOptions say how to renew the identity in Dir.
type RenewOptions struct {
	Dir string
	// KeepKey renews for the current key. The default (false) makes a new key of the same
	// type, as DESIGN.md §5 asks: a rekey on every renewal. A renewal already asked for
	// and not answered is finished with the key it asked for, whatever KeepKey says.
	KeepKey bool

	Timeout time.Duration    // per request; DefaultTimeout when zero
	Now     func() time.Time // time.Now when nil
	Rand    io.Reader        // crypto/rand when nil
	// DialContext, when set, makes the connection to the CA (the agent resolves names
	// through its own resolvers).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Renew asks the CA for the successor of the device's certificate over mutual TLS with the
// current key and certificate, trusting the stored roots. It sends a CSR for the pending
// key (see PendingKeyFile): stored before the first request, a new key of the same type
// by default or the current key with KeepKey, and reused by every retry, because the CA
// gives a certificate one successor: the same key gets it again, another key is refused
// (renewal_superseded). The new chain must verify up to the stored roots, certify that key
// and keep the device id; then key.pem, cert.pem and state.json are replaced as one change
// (see commit for the crash window). A refusal of the CA, such as certificate_revoked,
// certificate_expired or renewal_superseded, is a *ServerError; the stored identity is
// then left as it was. One writer at a time: while `ibcm-client run` runs, renew through
// it (agent.Renew).
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

	key, err := pendingKey(opts.Dir, id, opts.KeepKey, rnd)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	csr, err := makeCSR(rnd, key, id.Name, id.FQDN)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	req := wire.RenewRequest{CSR: string(csr)}

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
		if refusedOutright(err) {
			// No usable certificate exists for this key: the next attempt starts afresh.
			_ = os.Remove(filepath.Join(opts.Dir, PendingKeyFile))
		}
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
	if !samePublicKey(id.Leaf, key) {
		if files[KeyFile], err = encodeKey(key); err != nil {
			return nil, fmt.Errorf("renew: %w", err)
		}
	}
	st.Serial, st.SerialHex = chain[0].SerialNumber.String(), wire.FormatSerial(chain[0].SerialNumber)
	st.NotAfter, st.KeyType, st.UpdatedAt = chain[0].NotAfter.UTC(), keyTypeOf(chain[0].PublicKey), now().UTC()
	st.DeviceID = id.DeviceID
	if files[StateFile], err = encodeState(st); err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	if err := commit(opts.Dir, files); err != nil {
		return nil, fmt.Errorf("renew: storing the new certificate in %s: %w", opts.Dir, err)
	}
	// A leftover pending key names the old serial and is never used again.
	_ = os.Remove(filepath.Join(opts.Dir, PendingKeyFile))
	renewed := newIdentity(opts.Dir, id.CAURL, key, chain, id.RootCerts)
	renewed.Bootstrap = id.Bootstrap
	return renewed, nil
}

// refusedOutright reports whether err is the CA's own final refusal (a 4xx with its JSON
// error code, not a timeout or rate limit, nor a proxy's page), after which asking again
// with the same key cannot succeed.
func refusedOutright(err error) bool {
	var se *ServerError
	return errors.As(err, &se) && se.Code != "" && se.Status >= 400 && se.Status < 500 &&
		se.Status != http.StatusRequestTimeout && se.Status != http.StatusTooManyRequests
}

// pendingKey returns the key of the renewal of id's certificate: the one in PendingKeyFile
// when that names id's serial, otherwise a new key of id's type (the current key with
// keepKey), stored there before it is returned.
func pendingKey(dir string, id *Identity, keepKey bool, rnd io.Reader) (crypto.Signer, error) {
	path := filepath.Join(dir, PendingKeyFile)
	if data, err := os.ReadFile(path); err == nil {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("reading the pending renewal key: %w", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("%w: %s has mode %04o; run chmod 600 %s", ErrKeyPermissions, path, perm, path)
		}
		if b, _ := pem.Decode(data); b != nil && b.Headers[pendingSerialHeader] == id.Serial.String() {
			if k, err := decodeKey(pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes})); err == nil {
				return k, nil
			}
		}
		// Written for another certificate, or unreadable: never sent for this one.
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the pending renewal key: %w", err)
	}
	key := id.Certificate.PrivateKey.(crypto.Signer)
	if !keepKey {
		var err error
		if key, err = id.KeyType.generate(rnd); err != nil {
			return nil, fmt.Errorf("making a %s key: %w", id.KeyType, err)
		}
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{pendingSerialHeader: id.Serial.String()}, Bytes: der})
	if err := writeFileAtomic(dir, PendingKeyFile, data); err != nil {
		return nil, fmt.Errorf("storing the pending renewal key: %w", err)
	}
	return key, nil
}
