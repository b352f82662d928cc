package sitedb

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// recv returns the next value of ch, failing t if none arrives within d or ch
// is closed.
func recv(t *testing.T, ch <-chan string, d time.Duration) string {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatal("listen channel closed")
		}
		return v
	case <-time.After(d):
		t.Fatalf("nothing received within %v", d)
		return ""
	}
}

// listen subscribes to channel and waits for the readiness "".
func listen(t *testing.T, db *DB, channel string) <-chan string {
	t.Helper()
	ch, err := db.Listen(testContext(t), channel)
	if err != nil {
		t.Fatalf("Listen(%q): %v", channel, err)
	}
	if v := recv(t, ch, 10*time.Second); v != "" {
		t.Fatalf("first value %q, want the readiness \"\"", v)
	}
	return ch
}

func expect(t *testing.T, ch <-chan string, want ...string) {
	t.Helper()
	for _, w := range want {
		if got := recv(t, ch, 5*time.Second); got != w {
			t.Fatalf("received %q, want %q", got, w)
		}
	}
}

func TestListenReadyThenPayloads(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		ch := listen(t, db, "jobs")
		other := listen(t, db, "other")
		for _, p := range []string{"a", "b", "c"} {
			if err := db.Notify(testContext(t), "jobs", p); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.Notify(testContext(t), "other", "o"); err != nil {
			t.Fatal(err)
		}
		expect(t, ch, "a", "b", "c")
		expect(t, other, "o")
	})
}

func TestTxNotify(t *testing.T) {
	errAbort := errors.New("abort")
	forEachBackend(t, func(t *testing.T, db *DB) {
		mustExec(t, db, "CREATE TABLE t (x INTEGER)")
		ch := listen(t, db, "changes")
		ctx := testContext(t)

		err := db.Tx(ctx, func(tx *Tx) error {
			if _, err := tx.Exec("INSERT INTO t (x) VALUES (1)"); err != nil {
				return err
			}
			tx.Notify("changes", "rolled-back")
			return errAbort
		})
		if !errors.Is(err, errAbort) {
			t.Fatalf("Tx = %v, want %v", err, errAbort)
		}
		err = db.Tx(ctx, func(tx *Tx) error {
			tx.Notify("changes", "committed-1")
			tx.Notify("changes", "committed-2")
			tx.Notify("changes", "committed-1") // folded into the first
			select {
			case v := <-ch:
				return fmt.Errorf("received %q before commit", v)
			default:
			}
			_, err := tx.Exec("INSERT INTO t (x) VALUES (2)")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Notify(ctx, "changes", "marker"); err != nil {
			t.Fatal(err)
		}
		// Notifications arrive in commit order, so the rolled-back one,
		// had it been sent, would come first.
		expect(t, ch, "committed-1", "committed-2", "marker")
	})
}

func TestNotifyRejectsEmpty(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		ctx := testContext(t)
		if err := db.Notify(ctx, "c", ""); !errors.Is(err, ErrBadNotification) {
			t.Errorf("Notify with empty payload = %v, want ErrBadNotification", err)
		}
		if err := db.Notify(ctx, "", "p"); !errors.Is(err, ErrBadNotification) {
			t.Errorf("Notify on empty channel = %v, want ErrBadNotification", err)
		}
		if _, err := db.Listen(ctx, ""); !errors.Is(err, ErrBadNotification) {
			t.Errorf("Listen on empty channel = %v, want ErrBadNotification", err)
		}
		mustExec(t, db, "CREATE TABLE t (x INTEGER)")
		err := db.Tx(ctx, func(tx *Tx) error {
			tx.Notify("c", "")
			_, err := tx.Exec("INSERT INTO t (x) VALUES (1)")
			return err
		})
		if !errors.Is(err, ErrBadNotification) {
			t.Errorf("Tx with empty payload = %v, want ErrBadNotification", err)
		}
		var n int
		if err := db.QueryRow(ctx, "SELECT COUNT(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("Tx with a bad notification committed %d rows", n)
		}
	})
}

// TestNotifyBetweenDBs opens a second DB on the same database, as a second
// MP process would; on PostgreSQL the notification must arrive within 1 s.
func TestNotifyBetweenDBs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		db2 := reopen(t, db)
		ch2 := listen(t, db2, "devices")
		ch1 := listen(t, db, "devices")

		err := db.Tx(testContext(t), func(tx *Tx) error {
			tx.Notify("devices", "from-1")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := recv(t, ch2, time.Second); got != "from-1" {
			t.Errorf("db2 received %q, want from-1", got)
		}
		if err := db2.Notify(testContext(t), "devices", "from-2"); err != nil {
			t.Fatal(err)
		}
		expect(t, ch1, "from-1", "from-2")
		if got := recv(t, ch2, time.Second); got != "from-2" {
			t.Errorf("db2 received %q, want from-2", got)
		}
	})
}

func TestListenClosesWithContext(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		ctx, cancel := context.WithCancel(testContext(t))
		ch, err := db.Listen(ctx, "c")
		if err != nil {
			t.Fatal(err)
		}
		expect(t, ch, "")
		cancel()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			case <-timeout:
				t.Fatal("channel still open 10 s after cancel")
			}
		}
	})
}

func TestListenCancelledContext(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *DB) {
		ctx, cancel := context.WithCancel(testContext(t))
		cancel()
		ch, err := db.Listen(ctx, "c")
		if err != nil {
			return // postgres: gave up connecting
		}
		for range ch { // sqlite: subscribed, then closed at once
		}
	})
}

// TestSlowReader fills a subscription past its buffer: the overflow is
// dropped and replaced by one "" (reload) once the reader has caught up. Both
// backends deliver through the same subscription type; the SQLite hub
// delivers synchronously, which makes the overflow certain.
func TestSlowReader(t *testing.T) {
	db := openFresh(t, SQLite)
	ch := listen(t, db, "c")
	const sent = listenBuffer + 50
	for i := range sent {
		if err := db.Notify(testContext(t), "c", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	// The readiness "" may still hold its slot when the burst starts.
	got := 0
	for {
		v := recv(t, ch, time.Second)
		if v == "" {
			break
		}
		if want := fmt.Sprint(got); v != want {
			t.Fatalf("received %q, want %q", v, want)
		}
		got++
	}
	if got < listenBuffer-1 || got > listenBuffer {
		t.Errorf("received %d payloads before the reload, want %d", got, listenBuffer)
	}
	if err := db.Notify(testContext(t), "c", "after"); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "after")
}

// TestListenReconnect kills the listening PostgreSQL backend: the listener
// reconnects and says "" (reload), then delivers again.
func TestListenReconnect(t *testing.T) {
	db := openFresh(t, Postgres)
	ch := listen(t, db, "c")
	ctx := testContext(t)
	var killed int
	err := db.QueryRow(ctx, `SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%'`).Scan(&killed)
	if err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("terminated %d listening backends, want 1", killed)
	}
	if got := recv(t, ch, 15*time.Second); got != "" {
		t.Fatalf("received %q after the connection was killed, want \"\"", got)
	}
	if err := db.Notify(ctx, "c", "again"); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "again")
}

// TestListenWithDown kills the listening PostgreSQL backend: a ListenWithDown channel
// says Down, then "" once the listener is back, then delivers again; a Listen channel on
// the same channel never sees Down.
func TestListenWithDown(t *testing.T) {
	db := openFresh(t, Postgres)
	plain := listen(t, db, "c")
	ch, err := db.ListenWithDown(testContext(t), "c")
	if err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "")
	ctx := testContext(t)
	var killed int
	err = db.QueryRow(ctx, `SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%'`).Scan(&killed)
	if err != nil {
		t.Fatal(err)
	}
	if killed != 2 {
		t.Fatalf("terminated %d listening backends, want 2", killed)
	}
	expect(t, ch, Down, "")
	expect(t, plain, "")
	if err := db.Notify(ctx, "c", "again"); err != nil {
		t.Fatal(err)
	}
	expect(t, ch, "again")
	expect(t, plain, "again")
}

// Down is queued even when the queue is full, and takes the place of an owed "": the
// reader hears of the loss, and goes live again only with the reconnect's "".
func TestDownWhenQueueFull(t *testing.T) {
	s := newSubscription()
	for i := range listenBuffer + 1 {
		s.deliver(fmt.Sprint(i))
	}
	s.deliverDown()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.run(ctx, nil)
	for i := range listenBuffer {
		expect(t, s.out, fmt.Sprint(i))
	}
	expect(t, s.out, Down)
	// The run goroutine drops a value from its queue only after the reader took it, so the
	// queue cannot be inspected here: the next value tells instead. Down was not left
	// queued, and no "" is owed, when what comes next is the next value delivered.
	s.deliver("after")
	expect(t, s.out, "after")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owed {
		t.Error("after Down the subscription still owes a \"\"")
	}
}
