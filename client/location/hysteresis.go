package location

import "sync"

// DefaultHysteresis is how many times in a row a new location must be seen before the
// agent switches to it.
const DefaultHysteresis = 2

// Hysteresis keeps the agent's current decision steady on a flapping network: a switch to
// another location needs that location to be seen need times in a row, or happens at once
// when the current MP failed. It is safe for concurrent use.
type Hysteresis struct {
	need int

	mu        sync.Mutex
	current   Decision
	has       bool   // current is set
	candidate string // the other location seen lately
	seen      int    // how many times in a row candidate was seen
}

// NewHysteresis returns a Hysteresis that switches after need sightings in a row
// (DefaultHysteresis when need < 1).
func NewHysteresis(need int) *Hysteresis {
	if need < 1 {
		need = DefaultHysteresis
	}
	return &Hysteresis{need: need}
}

// Observe takes a new detection result and returns the decision the agent should act on,
// and whether it differs from the previous one (location or MP). The first result is taken
// as is. A result for the current location keeps the current MP unless that MP failed or
// there was none (so the RFC 2782 random order does not move the agent between equal MPs),
// and resets any pending switch. A result for the other location is taken once it has been
// seen need times in a row, or at once when currentFailed.
func (h *Hysteresis) Observe(d Decision, currentFailed bool) (switched bool, current Decision) {
	h.mu.Lock()
	defer h.mu.Unlock()
	take := func() (bool, Decision) {
		changed := !h.has || h.current.Location != d.Location || h.current.MP != d.MP
		h.current, h.has, h.candidate, h.seen = d, true, "", 0
		return changed, d
	}
	switch {
	case !h.has:
		return take()
	case d.Location == h.current.Location:
		h.candidate, h.seen = "", 0
		if (currentFailed || h.current.MP == "") && d.MP != "" {
			return take()
		}
		return false, h.current
	case currentFailed:
		return take()
	}
	if h.candidate == d.Location {
		h.seen++
	} else {
		h.candidate, h.seen = d.Location, 1
	}
	if h.seen >= h.need {
		return take()
	}
	return false, h.current
}

// Current returns the decision in force and whether there is one yet.
func (h *Hysteresis) Current() (Decision, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.current, h.has
}
