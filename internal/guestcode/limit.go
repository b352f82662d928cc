package guestcode

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits are the exchange route's attempt rates. The defaults (DefaultLimits) allow a
// person a few typing mistakes and stop a guesser: over a code's 10 minutes one source
// address gets at most 10+10 tries, and the whole CA 600+20, against a space of 2^49.5
// codes.
type Limits struct {
	PerAddress  rate.Limit // attempts per second from one source address (an IPv6 /64 counts as one)
	AddrBurst   int
	PerCode     rate.Limit // attempts per second naming one existing code
	CodeBurst   int
	Global      rate.Limit // attempts per second at this CA
	GlobalBurst int
}

// DefaultLimits: one attempt a minute per address after a burst of 10, one every 2 minutes
// per code after 5, and one a second for the CA after 20.
var DefaultLimits = Limits{
	PerAddress: rate.Every(time.Minute), AddrBurst: 10,
	PerCode: rate.Every(2 * time.Minute), CodeBurst: 5,
	Global: rate.Every(time.Second), GlobalBurst: 20,
}

// Limiter applies Limits. The zero value is not usable; call NewLimiter. Its maps are
// bounded: past maxKeys entries it starts afresh, which only ever gives an attacker who
// fills it a fresh burst, still under the global limit.
type Limiter struct {
	l      Limits
	now    func() time.Time
	mu     sync.Mutex
	addrs  map[string]*rate.Limiter
	codes  map[string]*rate.Limiter
	global *rate.Limiter
	// noted and notes bound the audit of refused attempts (NoteRefusal).
	noted map[string]time.Time
	notes *rate.Limiter
}

const maxKeys = 100_000

// NewLimiter returns a Limiter; now may be nil (time.Now).
func NewLimiter(l Limits, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{l: l, now: now, addrs: map[string]*rate.Limiter{}, codes: map[string]*rate.Limiter{},
		global: rate.NewLimiter(l.Global, l.GlobalBurst), noted: map[string]time.Time{}, notes: rate.NewLimiter(rate.Every(time.Second), 60)}
}

// NoteRefusal says whether a rate-limited attempt from remoteAddr is to be audited (and
// logged): the first of its address in a minute, and at most one a second for the CA after
// a burst of 60. A guesser past the limits still reaches the route at line rate; without
// this each of its refusals would be a row in the site database.
func (l *Limiter) NoteRefusal(remoteAddr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now, key := l.now(), AddressKey(remoteAddr)
	if at, ok := l.noted[key]; ok && now.Sub(at) < time.Minute {
		return false
	}
	if !l.notes.AllowN(now, 1) {
		return false
	}
	if len(l.noted) >= maxKeys {
		clear(l.noted)
	}
	l.noted[key] = now
	return true
}

// AddressKey is the key of a source address: the address itself, or its /64 for IPv6
// (one host usually holds a whole /64).
func AddressKey(remoteAddr string) string {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return remoteAddr
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// AllowAddress spends one attempt of the source address and of the CA.
func (l *Limiter) AllowAddress(remoteAddr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.take(l.addrs, AddressKey(remoteAddr), l.l.PerAddress, l.l.AddrBurst, now) {
		return false
	}
	return l.global.AllowN(now, 1)
}

// AllowCode spends one attempt naming the code with id.
func (l *Limiter) AllowCode(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.take(l.codes, id, l.l.PerCode, l.l.CodeBurst, l.now())
}

func (l *Limiter) take(m map[string]*rate.Limiter, key string, r rate.Limit, burst int, now time.Time) bool {
	lim, ok := m[key]
	if !ok {
		if len(m) >= maxKeys {
			clear(m)
		}
		lim = rate.NewLimiter(r, burst)
		m[key] = lim
	}
	return lim.AllowN(now, 1)
}
