package sitedb

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/lib/pq"
)

// listenBuffer is how many values a Listen channel queues for a slow reader
// before it drops them and owes the reader a "" (reload).
const listenBuffer = 256

// Reconnect back-off of PostgreSQL listeners.
const (
	listenMinReconnect = 250 * time.Millisecond
	listenMaxReconnect = 10 * time.Second
)

func validateNotification(channel, payload string) error {
	if channel == "" || payload == "" {
		return fmt.Errorf("notifying %q: %w", channel, ErrBadNotification)
	}
	return nil
}

// Notify sends a notification now, outside any transaction.
func (db *DB) Notify(ctx context.Context, channel, payload string) error {
	if err := validateNotification(channel, payload); err != nil {
		return err
	}
	if db.driver == Postgres {
		if _, err := db.sql.ExecContext(ctx, "SELECT pg_notify($1, $2)", channel, payload); err != nil {
			return fmt.Errorf("notifying %q: %w", channel, err)
		}
		return nil
	}
	db.hub.publish(channel, payload)
	return nil
}

// Listen subscribes to channel until ctx is done, when the returned channel is
// closed. The channel first receives "" once the subscription is live, and ""
// again whenever events may have been missed (after a reconnect, or when the
// reader fell more than 256 events behind): the reader should then reload
// what it watches. Every other value is a payload, never empty.
func (db *DB) Listen(ctx context.Context, channel string) (<-chan string, error) {
	return db.listen(ctx, channel, false)
}

// Down is the value a channel of ListenWithDown receives when the subscription
// has lost its connection to the database: from then until the next "" it
// misses notifications. No payload is Down: PostgreSQL's cannot hold a NUL.
const Down = "\x00down"

// ListenWithDown is Listen for a reader that must know while notifications
// cannot reach it (a cache that is correct only while it hears of every
// change): its channel also receives Down when the connection is lost, then ""
// once it is back. Payloads received just before the loss may follow Down. On
// SQLite notifications travel within the process and are never lost.
func (db *DB) ListenWithDown(ctx context.Context, channel string) (<-chan string, error) {
	return db.listen(ctx, channel, true)
}

func (db *DB) listen(ctx context.Context, channel string, reportDown bool) (<-chan string, error) {
	if channel == "" {
		return nil, fmt.Errorf("listening: %w", ErrBadNotification)
	}
	if db.driver == Postgres {
		return db.listenPostgres(ctx, channel, reportDown)
	}
	return db.hub.subscribe(ctx, channel), nil
}

func (db *DB) listenPostgres(ctx context.Context, channel string, reportDown bool) (<-chan string, error) {
	s := newSubscription()
	connectFailed := make(chan error, 1)
	l := pq.NewListener(db.dsn, listenMinReconnect, listenMaxReconnect, func(ev pq.ListenerEventType, err error) {
		switch ev {
		case pq.ListenerEventConnectionAttemptFailed:
			select {
			case connectFailed <- err:
			default:
			}
		case pq.ListenerEventDisconnected:
			if reportDown {
				s.deliverDown()
			}
		}
	})
	listened := make(chan error, 1)
	go func() { listened <- l.Listen(channel) }()

	var err error
	select {
	case err = <-listened:
	case err = <-connectFailed:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		closeListener(l)
		return nil, fmt.Errorf("listening on %q: %w", channel, err)
	}

	s.deliver("") // live
	go s.run(ctx, nil)
	go func() {
		defer closeListener(l)
		for {
			select {
			case <-ctx.Done():
				return
			case n, ok := <-l.Notify:
				switch {
				case !ok:
					return
				case n == nil: // reconnected: anything may have been missed
					s.deliver("")
				case n.Channel == channel && n.Extra != "":
					s.deliver(n.Extra)
				}
			}
		}
	}()
	return s.out, nil
}

// closeListener closes l and drains its channel so that its goroutine ends.
func closeListener(l *pq.Listener) {
	_ = l.Close()
	go func() {
		for range l.Notify {
		}
	}()
}

// subscription is one Listen channel. deliver never blocks: it queues up to
// listenBuffer values, and when the queue is full it drops the value and owes
// the reader a "" (reload), sent once the queue has drained. run is the only
// goroutine that sends on out and closes it.
type subscription struct {
	out  chan string
	wake chan struct{} // capacity 1: the queue or owed changed

	mu     sync.Mutex
	queue  []string
	owed   bool // a value was dropped since the last "" left the queue
	closed bool
}

func newSubscription() *subscription {
	return &subscription{
		out:  make(chan string),
		wake: make(chan struct{}, 1),
	}
}

func (s *subscription) deliver(payload string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if len(s.queue) < listenBuffer {
		s.queue = append(s.queue, payload)
	} else {
		s.owed = true
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// deliverDown queues Down whatever the queue holds, and forgets an owed "": the
// "" that follows the reconnect reloads.
func (s *subscription) deliverDown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.queue = append(s.queue, Down)
	s.owed = false
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// next returns the value to send next, if any, and whether it comes from the
// queue (or is an owed "").
func (s *subscription) next() (v string, fromQueue, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case len(s.queue) > 0:
		return s.queue[0], true, true
	case s.owed:
		return "", false, true
	}
	return "", false, false
}

// sent removes the value next returned.
func (s *subscription) sent(fromQueue bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !fromQueue {
		s.owed = false
		return
	}
	s.queue[0] = ""
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil // let the backing array go
	}
}

// run feeds out until ctx is done, then calls detach (if not nil) and closes
// out.
func (s *subscription) run(ctx context.Context, detach func()) {
	defer func() {
		if detach != nil {
			detach()
		}
		s.mu.Lock()
		s.closed = true
		s.queue = nil
		s.mu.Unlock()
		close(s.out)
	}()
	for {
		v, fromQueue, ok := s.next()
		if !ok {
			select {
			case <-s.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case s.out <- v:
			s.sent(fromQueue)
		case <-ctx.Done():
			return
		}
	}
}

// hub carries notifications between the DBs a process opened on one SQLite
// file. hubs holds one per cleaned absolute path, counted by open DBs.
type hub struct {
	path    string
	refs    int          // guarded by hubsMu
	serving int          // LockServing holders; guarded by hubsMu
	lock    *servingLock // held while serving > 0

	mu   sync.Mutex
	subs map[string]map[*subscription]struct{}
}

var (
	hubsMu sync.Mutex
	hubs   = map[string]*hub{}
)

func acquireHub(path string) *hub {
	hubsMu.Lock()
	defer hubsMu.Unlock()
	h := hubs[path]
	if h == nil {
		h = &hub{path: path, subs: map[string]map[*subscription]struct{}{}}
		hubs[path] = h
	}
	h.refs++
	return h
}

func releaseHub(h *hub) {
	hubsMu.Lock()
	defer hubsMu.Unlock()
	h.refs--
	if h.refs == 0 && hubs[h.path] == h {
		delete(hubs, h.path)
	}
}

func (h *hub) subscribe(ctx context.Context, channel string) <-chan string {
	s := newSubscription()
	h.mu.Lock()
	if h.subs[channel] == nil {
		h.subs[channel] = map[*subscription]struct{}{}
	}
	h.subs[channel][s] = struct{}{}
	s.deliver("") // live; under h.mu so it comes before any payload
	h.mu.Unlock()
	go s.run(ctx, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.subs[channel], s)
		if len(h.subs[channel]) == 0 {
			delete(h.subs, channel)
		}
	})
	return s.out
}

func (h *hub) publish(channel, payload string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[channel] {
		s.deliver(payload)
	}
}
