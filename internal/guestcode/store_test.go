package guestcode

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/sitedb/sitedbtest"
)

// A code is stored by its hash only, spent once, and purged with its attempts after the
// retention.
func TestStoreSpendPurge(t *testing.T) {
	ctx := context.Background()
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	if err := Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	code, _ := New(rand.Reader)
	var c Code
	err := db.Tx(ctx, func(tx *sitedb.Tx) error {
		var err error
		c, err = Insert(tx, code, Code{Session: "s1", Helper: "h", Mode: "view", TicketID: "t1", Ticket: "x", CreatedAt: now, ExpiresAt: now.Add(TTL)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	n, _ := Normalize(code)
	var stored int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM security_codes WHERE hash = ? AND id = ?`, Hash(n), c.ID).Scan(&stored); err != nil || stored != 1 {
		t.Fatalf("stored: %d %v", stored, err)
	}
	spend := func(at time.Time) error {
		return db.Tx(ctx, func(tx *sitedb.Tx) error { return Spend(tx, Hash(n), "42", "alice", at) })
	}
	if err := spend(now.Add(TTL)); !errors.Is(err, ErrExpired) {
		t.Errorf("spent at expiry: %v", err)
	}
	if err := spend(now.Add(time.Minute)); err != nil {
		t.Fatalf("Spend: %v", err)
	}
	if err := spend(now.Add(2 * time.Minute)); !errors.Is(err, ErrUsed) {
		t.Errorf("spent twice: %v", err)
	}
	if err := db.Tx(ctx, func(tx *sitedb.Tx) error { return Spend(tx, Hash("ABCDEFGHJK"), "43", "x", now) }); !errors.Is(err, ErrInvalid) {
		t.Errorf("an unknown code: %v", err)
	}
	got, err := OfSession(ctx, db, "s1")
	if err != nil || got.Serial != "42" || got.Sharer != "alice" || got.UsedAt == nil || got.TicketID != "t1" {
		t.Errorf("OfSession = %+v, %v", got, err)
	}
	if err := Audit(ctx, db, now, "192.0.2.1:1", c.ID, OutcomeIssued); err != nil {
		t.Fatal(err)
	}
	if k, err := Purge(ctx, db, now.Add(TTL+time.Second)); err != nil || k != 1+1 {
		t.Errorf("Purge = %d, %v; want the code and its attempt", k, err)
	}
	if _, err := OfSession(ctx, db, "s1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("after purge: %v", err)
	}
}

// The id that logs, the audit and the certificate records carry says nothing of the code:
// were it a prefix of the code's unsalted SHA-256, whoever reads a log could search the
// 2^49.5 codes for it offline, which a few hundred GPUs do within a code's 10 minutes.
func TestIDIsNotDerivedFromTheCode(t *testing.T) {
	ctx := context.Background()
	db := sitedbtest.Open(t, sitedb.SQLite, sitedbtest.NewDSN(t, sitedb.SQLite))
	if err := Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	code, _ := New(rand.Reader)
	n, _ := Normalize(code)
	now := time.Unix(1_800_000_000, 0)
	var ids []string
	for i, s := range []string{"s1", "s2"} {
		err := db.Tx(ctx, func(tx *sitedb.Tx) error {
			if i > 0 {
				if _, err := tx.Exec(`DELETE FROM security_codes`); err != nil {
					return err
				}
			}
			c, err := Insert(tx, code, Code{Session: s, Helper: "h", Mode: "view", TicketID: "t", Ticket: "x", CreatedAt: now, ExpiresAt: now.Add(TTL)})
			ids = append(ids, c.ID)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	h := Hash(n)
	for _, id := range ids {
		if len(id) != 16 || strings.Contains(h, id) {
			t.Errorf("code id %q is a part of the code's hash %s", id, h)
		}
	}
	if ids[0] == ids[1] {
		t.Errorf("the same code got the same id twice (%s): the id is a function of the code", ids[0])
	}
}
