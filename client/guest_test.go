package client

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/ca/catest"
	"github.com/ibcm-project/ibcm/internal/guestcode"
	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/wire"
)

func codeFor(t *testing.T, s *catest.Server, session string) string {
	t.Helper()
	code, err := guestcode.New(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	err = s.DB.Tx(context.Background(), func(tx *sitedb.Tx) error {
		_, err := guestcode.Insert(tx, code, guestcode.Code{Session: session, Helper: "helen", Mode: "view", TicketID: strings.Repeat("a", 32),
			Ticket: "signed", CreatedAt: now, ExpiresAt: now.Add(guestcode.TTL)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func TestExchangeCode(t *testing.T) {
	s := catest.StartWith(t, nil, func(o *ca.Options) { o.SecurityCodes = true })
	const session = "0123456789abcdef0123456789abcdef"
	code := codeFor(t, s, session)
	opts := GuestOptions{CAURL: s.URL, RootSHA256: s.Pin, Code: code, User: "Ana María"}

	// A wrong pin costs no code.
	bad := opts
	bad.RootSHA256 = strings.Repeat("ab", 32)
	if _, err := ExchangeCode(context.Background(), bad); err == nil {
		t.Fatal("exchanged with a wrong pin")
	}
	g, err := ExchangeCode(context.Background(), opts)
	if err != nil {
		t.Fatalf("ExchangeCode: %v", err)
	}
	leaf := g.Certificate.Leaf
	if !wire.IsGuestCertificate(leaf) || wire.Identify(leaf).ID != session || leaf.Subject.CommonName != "Ana_Mar_a" || g.Grant.Helper != "helen" {
		t.Errorf("guest %+v, CN %q", g.Grant, leaf.Subject.CommonName)
	}
	// Spent: the CA's refusal comes back with its code, and the error never holds the code.
	_, err = ExchangeCode(context.Background(), opts)
	var se *ServerError
	if !errors.As(err, &se) || se.Code != "code_used" || se.Status != 409 {
		t.Fatalf("the code again: %v", err)
	}
	if strings.Contains(err.Error(), code) || strings.Contains(err.Error(), strings.ReplaceAll(code, "-", "")) {
		t.Errorf("the error holds the code: %v", err)
	}
}

func TestGuestName(t *testing.T) {
	for in, want := range map[string]string{"alice": "alice", "Ana María": "Ana_Mar_a", "-x": "x", "": "guest", "..": "guest",
		strings.Repeat("a", 80): strings.Repeat("a", 64), `DOMAIN\user`: "DOMAIN_user"} {
		if got := GuestName(in); got != want {
			t.Errorf("GuestName(%q) = %q, want %q", in, got, want)
		}
	}
}
