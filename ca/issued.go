package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
)

// maxGroup bounds how many newly signed certificates one transaction records.
const maxGroup = 64

// issued records newly signed certificates with group commit: the enrollments that arrive
// while a transaction is being committed wait, and the next transaction records all of
// them and consumes their tokens at once. A bulk token shared by hundreds of devices is
// then one row updated once per transaction instead of once per device, and a durable
// server flushes its log once for the group. Each certificate is still recorded in the
// transaction that consumes its token, and a refused one stores nothing.
//
// There is no goroutine of its own: the first caller to find it idle commits, and hands
// the queue on to the first waiter when its own group is done.
type issued struct {
	mu    sync.Mutex
	queue []*pendingCert
	busy  bool // a caller is committing; it hands on to queue[0]
}

// pendingCert is one certificate waiting to be recorded.
type pendingCert struct {
	cert *x509.Certificate
	by   string // who authorized it; "token:<id>" consumes a use of the token
	err  error
	done chan struct{} // closed once err is final
	lead chan struct{} // told to commit the next group
}

// record stores cert as authorized by by and returns once its transaction committed or
// failed.
func (s *store) record(cert *x509.Certificate, by string) error {
	p := &pendingCert{cert: cert, by: by, done: make(chan struct{}), lead: make(chan struct{}, 1)}
	g := &s.issued
	g.mu.Lock()
	g.queue = append(g.queue, p)
	if g.busy {
		g.mu.Unlock()
		select {
		case <-p.done:
			return p.err
		case <-p.lead: // p is queue[0] now
		}
	} else {
		g.busy = true
		g.mu.Unlock()
	}
	g.mu.Lock()
	n := min(len(g.queue), maxGroup)
	group := g.queue[:n:n]
	g.queue = g.queue[n:]
	g.mu.Unlock()

	ctx, cancel := s.ctx()
	s.commitGroup(ctx, group)
	cancel()

	g.mu.Lock()
	if len(g.queue) > 0 {
		g.queue[0].lead <- struct{}{}
	} else {
		g.busy = false
		g.queue = nil
	}
	g.mu.Unlock()
	<-p.done
	return p.err
}

// commitGroup records a group in one transaction. When the transaction fails as a whole
// (not a refused token: a database error), each certificate is tried again alone, so one
// bad row does not fail the others; the retries share ctx's deadline.
func (s *store) commitGroup(ctx context.Context, group []*pendingCert) {
	now := s.now()
	refused := make([]error, len(group))
	err := s.db.Tx(ctx, func(tx *sitedb.Tx) error {
		clear(refused)
		byToken := map[string][]int{}
		var order []string
		for i, p := range group {
			if id, ok := strings.CutPrefix(p.by, "token:"); ok {
				if byToken[id] == nil {
					order = append(order, id)
				}
				byToken[id] = append(byToken[id], i)
			}
		}
		for _, id := range order {
			idx := byToken[id]
			granted, why, err := consumeUses(tx, id, len(idx), now)
			if err != nil {
				return err
			}
			for _, i := range idx[granted:] {
				refused[i] = why
			}
		}
		var rows []*pendingCert
		for i, p := range group {
			if refused[i] == nil {
				rows = append(rows, p)
			}
		}
		return insertCerts(tx, rows, s.issuerID, now)
	})
	if err != nil && len(group) > 1 && ctx.Err() == nil {
		for _, p := range group {
			s.commitGroup(ctx, []*pendingCert{p})
		}
		return
	}
	for i, p := range group {
		p.err = err
		if err == nil {
			p.err = refused[i]
		}
		close(p.done)
	}
}

// consumeUses spends n uses of a token. It returns how many were granted and, when fewer
// than n, why the rest were refused. All n at once is one update; when the token has
// fewer left, the uses are taken one at a time until it refuses, so the limit is exact.
func consumeUses(tx *sitedb.Tx, id string, n int, now time.Time) (int, error, error) {
	if n > 1 {
		res, err := tx.Exec(`UPDATE enrollment_tokens SET uses_left = uses_left - ?
			WHERE id = ? AND uses_left >= ? AND revoked_at IS NULL AND expires_at > ?`, n, id, n, now.Unix())
		if err != nil {
			return 0, nil, fmt.Errorf("consuming token: %w", err)
		}
		if k, err := res.RowsAffected(); err != nil || k == 1 {
			return n, nil, err
		}
	}
	for i := range n {
		if err := consumeToken(tx, id, now); err != nil {
			if isRefusal(err) {
				return i, err, nil
			}
			return 0, nil, err
		}
	}
	return n, nil, nil
}

// isRefusal tells a token that cannot enroll from a database failure.
func isRefusal(err error) bool {
	for _, s := range []error{ErrTokenUsed, ErrTokenExpired, ErrTokenRevoked, ErrTokenInvalid} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// insertCerts records certificates in one statement.
func insertCerts(tx *sitedb.Tx, rows []*pendingCert, issuerID string, now time.Time) error {
	if len(rows) == 0 {
		return nil
	}
	var q strings.Builder
	q.WriteString(`INSERT INTO certificates
		(serial, profile, subject, issuer_id, not_before, not_after, der, issued_by, renewed_from, created_at) VALUES `)
	args := make([]any, 0, 10*len(rows))
	for i, p := range rows {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)")
		c := p.cert
		args = append(args, c.SerialNumber.String(), string(ProfileOf(c)), c.Subject.CommonName, issuerID,
			c.NotBefore.Unix(), c.NotAfter.Unix(), c.Raw, p.by, now.Unix())
	}
	if _, err := tx.Exec(q.String(), args...); err != nil {
		return fmt.Errorf("recording %d certificate(s): %w", len(rows), err)
	}
	return nil
}
