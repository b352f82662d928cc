package guestcode

import (
	"context"
	"crypto/rand"
	"errors"
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
