package ca

import (
	"bytes"
	"container/list"
	"context"
	"crypto"
	"crypto/sha1" //nolint:gosec // RFC 6960 CertID hashes default to SHA-1
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"sync"
	"time"

	cfocsp "github.com/cloudflare/cfssl/ocsp"
	"golang.org/x/crypto/ocsp"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/trust"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// ocspResponseLife is how long a signed OCSP response is current (its NextUpdate).
const ocspResponseLife = time.Hour

// ocspCacheMax bounds the cached OCSP responses (about 1 KiB each): only serials this CA
// issued are cached, but a site may have issued many more than are asked about.
const ocspCacheMax = 8192

// ocspState is the CA's OCSP responder: the signing certificate in use, the issuance of its
// successor when one is under way, and the cache of signed responses.
type ocspState struct {
	mu        sync.Mutex
	responder *ocspResponder
	issuing   *responderIssuance // nil when no issuance is under way
	cache     ocspCache
}

// ocspResponder signs OCSP responses with a short-lived certificate of the ocsp profile whose
// key exists only in this process.
type ocspResponder struct {
	signer   cfocsp.Signer
	cert     *x509.Certificate
	renewAt  time.Time
	keyHash1 []byte // SHA-1 of the issuing CA's public key, as CertIDs carry it
	keyHash2 []byte // SHA-256 of the same
}

// responderIssuance is one issuance of an OCSP signing certificate that concurrent callers
// wait for instead of issuing their own.
type responderIssuance struct {
	done chan struct{} // closed when r and err are set
	r    *ocspResponder
	err  error
}

// rotateResponder issues a new OCSP signing certificate when there is none or the current
// one has passed two thirds of its life.
func (c *CA) rotateResponder(ctx context.Context) error {
	_, err := c.currentResponder(ctx)
	return err
}

// currentResponder returns the OCSP responder to sign with, issuing its certificate first
// when there is none or the current one is due for renewal. However many callers find it
// due at once, one of them issues and the others wait for that certificate, or go on
// with the current one while it is still valid (as the issuing caller does if the
// issuance fails: the next caller tries again).
func (c *CA) currentResponder(ctx context.Context) (*ocspResponder, error) {
	s := &c.ocsp
	now := c.now()
	s.mu.Lock()
	r, inFlight := s.responder, s.issuing
	if r != nil && now.Before(r.renewAt) {
		s.mu.Unlock()
		return r, nil
	}
	if inFlight != nil {
		s.mu.Unlock()
		if r != nil && now.Before(r.cert.NotAfter) {
			return r, nil
		}
		select {
		case <-inFlight.done:
			return inFlight.r, inFlight.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	is := &responderIssuance{done: make(chan struct{})}
	s.issuing = is
	s.mu.Unlock()

	// The others wait for this issuance: it must not end with the request that started it.
	is.r, is.err = c.issueResponder(context.WithoutCancel(ctx))
	s.mu.Lock()
	if is.err == nil {
		s.responder = is.r
	}
	s.issuing = nil
	s.mu.Unlock()
	close(is.done)
	if is.err != nil {
		if r != nil && now.Before(r.cert.NotAfter) {
			c.log.Error().Err(is.err).Time("not_after", r.cert.NotAfter).Msg("renewing the OCSP signing certificate; signing with the current one meanwhile")
			return r, nil
		}
		return nil, is.err
	}
	s.cache.forgetAll() // responses signed by the old certificate are not served again
	return is.r, nil
}

// issueResponder makes a key in memory and has the CA issue it an ocsp certificate.
func (c *CA) issueResponder(ctx context.Context) (*ocspResponder, error) {
	key, err := ocspKey(c.rand)
	if err != nil {
		return nil, fmt.Errorf("making OCSP key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(c.rand, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("making OCSP request: %w", err)
	}
	chain, err := c.Issue(ctx, IssueSpec{Profile: OCSP, Subject: "ocsp-" + c.issuerID}, csrDER, "ca")
	if err != nil {
		return nil, fmt.Errorf("issuing OCSP signing certificate: %w", err)
	}
	cert := chain[0]
	signer, err := cfocsp.NewSigner(c.h.Issuing, cert, key, ocspResponseLife)
	if err != nil {
		return nil, err
	}
	spki, err := subjectPublicKeyBits(c.h.Issuing)
	if err != nil {
		return nil, err
	}
	h1 := sha1.Sum(spki) //nolint:gosec
	h2 := sha256.Sum256(spki)
	life := cert.NotAfter.Sub(cert.NotBefore)
	c.log.Info().Str("serial", wire.FormatSerial(cert.SerialNumber)).Time("not_after", cert.NotAfter).Msg("OCSP signing certificate issued")
	return &ocspResponder{signer: signer, cert: cert, renewAt: cert.NotBefore.Add(life * 2 / 3), keyHash1: h1[:], keyHash2: h2[:]}, nil
}

// ErrOCSPUnauthorized means the request asks about a certificate this CA did not issue.
var ErrOCSPUnauthorized = errors.New("not a certificate of this CA")

// OCSP answers a parsed OCSP request: good or revoked (with reason and time) for a
// certificate of the issuing CA, ErrOCSPUnauthorized for anything else. A signed answer is
// served again until a revocation of its serial is announced, the responder certificate
// is renewed or half of the answer's life has passed.
func (c *CA) OCSP(ctx context.Context, req *ocsp.Request) ([]byte, error) {
	r, err := c.currentResponder(ctx)
	if err != nil {
		return nil, err
	}
	var want []byte
	switch req.HashAlgorithm {
	case crypto.SHA1:
		want = r.keyHash1
	case crypto.SHA256:
		want = r.keyHash2
	default:
		return nil, fmt.Errorf("%w: hash algorithm %v", ErrOCSPUnauthorized, req.HashAlgorithm)
	}
	if !bytes.Equal(req.IssuerKeyHash, want) {
		return nil, fmt.Errorf("%w: other issuer", ErrOCSPUnauthorized)
	}
	serial := req.SerialNumber.String()
	key := ocspCacheKey{serial: serial, hash: req.HashAlgorithm}
	now := c.now().UTC()
	if der, ok := c.ocsp.cache.get(key, r, now); ok {
		return der, nil
	}
	gen := c.ocsp.cache.generation() // before reading what the answer says
	cert, err := c.store.certificate(ctx, serial)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: serial %s", ErrOCSPUnauthorized, wire.FormatDecimalSerial(serial))
	}
	if err != nil {
		return nil, err
	}
	rev, err := c.store.revocation(ctx, serial)
	if err != nil {
		return nil, err
	}
	this := now.Truncate(time.Minute)
	next := this.Add(ocspResponseLife)
	sr := cfocsp.SignRequest{Certificate: cert, Status: "good", ThisUpdate: &this, NextUpdate: &next, IssuerHash: req.HashAlgorithm}
	if rev != nil {
		sr.Status, sr.Reason, sr.RevokedAt = "revoked", rev.ReasonCode, rev.RevokedAt
	}
	der, err := r.signer.Sign(sr)
	if err != nil {
		return nil, err
	}
	c.ocsp.cache.put(key, gen, &cachedResponse{der: der, r: r, refreshAt: this.Add(ocspResponseLife / 2)})
	return der, nil
}

// watchRevocations keeps the OCSP cache honest until ctx is done. It subscribes to the
// site's revocation announcements (trust.RevokedChannel) and only while subscribed lets
// responses be cached: an announced serial's responses are forgotten, and all of them
// whenever announcements may have been missed. While the subscription's connection is
// lost (a revocation made on another CA server would not be heard of) nothing is cached
// and everything cached is dropped, and again when it is back. It retries a failed
// subscription every retry; meanwhile every response is signed afresh.
func (c *CA) watchRevocations(ctx context.Context, retry time.Duration) {
	cache := &c.ocsp.cache
	defer cache.setLive(false)
	for ctx.Err() == nil {
		events, err := c.db.ListenWithDown(ctx, trust.RevokedChannel)
		if err != nil {
			c.log.Warn().Err(err).Msg("subscribing to revocations; OCSP responses are not cached meanwhile")
			select {
			case <-ctx.Done():
			case <-time.After(retry):
			}
			continue
		}
		for sn := range events {
			switch sn {
			case "":
				cache.setLive(true) // subscribed, or back after missing some: start afresh
			case sitedb.Down:
				cache.setLive(false) // until it is back
				c.log.Warn().Msg("lost the connection that hears of revocations; OCSP responses are not cached until it is back")
			default:
				cache.forget(sn)
			}
			if cache.applied != nil {
				cache.applied(sn)
			}
		}
	}
}

// ocspCacheKey names one cached answer: a serial, asked about with one CertID hash (the
// issuer is the CA's only one, checked before the cache is asked).
type ocspCacheKey struct {
	serial string
	hash   crypto.Hash
}

// ocspHashes are the CertID hashes the responder answers for.
var ocspHashes = []crypto.Hash{crypto.SHA1, crypto.SHA256}

type cachedResponse struct {
	key       ocspCacheKey
	der       []byte
	r         *ocspResponder // that signed it
	refreshAt time.Time
}

// ocspCache holds signed OCSP responses, least recently used first out beyond its bound.
// Its generation moves on with every forget, and put keeps a response only if the
// generation has not moved since the caller began reading what the response says: an
// answer read before a revocation was announced is never kept after it.
type ocspCache struct {
	mu      sync.Mutex
	live    bool   // the revocation watcher is subscribed: nothing is kept otherwise
	gen     uint64 // see above
	max     int    // ocspCacheMax when zero
	entries map[ocspCacheKey]*list.Element
	lru     list.List // of *cachedResponse, most recently used in front

	applied func(payload string) // tests: called after the watcher applied an announcement
}

// get returns the cached response for key if r signed it and it is not due for refresh.
func (oc *ocspCache) get(key ocspCacheKey, r *ocspResponder, now time.Time) ([]byte, bool) {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	e := oc.entries[key]
	if e == nil {
		return nil, false
	}
	cr := e.Value.(*cachedResponse)
	if cr.r != r || !now.Before(cr.refreshAt) {
		oc.remove(e)
		return nil, false
	}
	oc.lru.MoveToFront(e)
	return cr.der, true
}

func (oc *ocspCache) generation() uint64 {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	return oc.gen
}

// put keeps cr under key unless the cache has forgotten anything since generation gen.
func (oc *ocspCache) put(key ocspCacheKey, gen uint64, cr *cachedResponse) {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	if !oc.live || gen != oc.gen {
		return
	}
	cr.key = key
	if e := oc.entries[key]; e != nil {
		e.Value = cr
		oc.lru.MoveToFront(e)
		return
	}
	if oc.entries == nil {
		oc.entries = make(map[ocspCacheKey]*list.Element)
	}
	oc.entries[key] = oc.lru.PushFront(cr)
	limit := oc.max
	if limit <= 0 {
		limit = ocspCacheMax
	}
	for oc.lru.Len() > limit {
		oc.remove(oc.lru.Back())
	}
}

func (oc *ocspCache) remove(e *list.Element) {
	delete(oc.entries, e.Value.(*cachedResponse).key)
	oc.lru.Remove(e)
}

// forget drops the responses about one decimal serial.
func (oc *ocspCache) forget(serial string) {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	oc.gen++
	for _, h := range ocspHashes {
		if e := oc.entries[ocspCacheKey{serial: serial, hash: h}]; e != nil {
			oc.remove(e)
		}
	}
}

// forgetAll drops every response.
func (oc *ocspCache) forgetAll() {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	oc.clear()
}

// setLive drops every response and says whether new ones may be kept.
func (oc *ocspCache) setLive(live bool) {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	oc.clear()
	oc.live = live
}

func (oc *ocspCache) clear() {
	oc.gen++
	oc.entries = nil
	oc.lru.Init()
}

// len returns how many responses are cached.
func (oc *ocspCache) len() int {
	oc.mu.Lock()
	defer oc.mu.Unlock()
	return oc.lru.Len()
}

// subjectPublicKeyBits returns the BIT STRING contents of a certificate's public key, which
// is what an OCSP CertID hashes.
func subjectPublicKeyBits(c *x509.Certificate) ([]byte, error) {
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(c.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil, fmt.Errorf("parsing issuing CA public key: %w", err)
	}
	return spki.PublicKey.Bytes, nil
}
