package location

import (
	"encoding/json"
	"math"
	"time"
)

// Kinds of evidence step.
const (
	KindResolvConf = "resolv.conf" // reading the resolver configuration
	KindDNS        = "dns"         // one query, asked of every nameserver at once
	KindProbe      = "probe"       // one TLS handshake with a candidate MP
)

// Decision is where the device is, which MP it should talk to, and why.
type Decision struct {
	Location string        // wire.Intranet or wire.Internet
	MP       string        // https://host:port of the chosen MP ("" if none reachable on the internet either)
	Addr     string        // the address:port the MP's probe succeeded on: connect there, verify MP's name
	Reason   string        // one line for people
	Evidence []Step        // queries, answers, probes, with timings
	Took     time.Duration // the whole detection
}

// Step is one piece of evidence: what was asked or tried, what came back, how long it took.
type Step struct {
	Kind   string        // KindResolvConf, KindDNS or KindProbe
	Target string        // the file, "name TYPE", or "host:port at address"
	Result string        // what came back when it worked
	Error  string        // why it did not, "" when it worked
	Took   time.Duration //
}

// OK tells whether the step worked.
func (s Step) OK() bool { return s.Error == "" }

// stepJSON and decisionJSON are the JSON forms: snake_case, durations in milliseconds.
type stepJSON struct {
	Kind   string  `json:"kind"`
	Target string  `json:"target"`
	Result string  `json:"result,omitempty"`
	Error  string  `json:"error,omitempty"`
	TookMS float64 `json:"took_ms"`
}

type decisionJSON struct {
	Location string  `json:"location"`
	MP       string  `json:"mp"`
	Addr     string  `json:"addr,omitempty"`
	Reason   string  `json:"reason"`
	Evidence []Step  `json:"evidence"`
	TookMS   float64 `json:"took_ms"`
}

func toMS(d time.Duration) float64    { return math.Round(float64(d)/1e3) / 1e3 } // microsecond precision
func fromMS(ms float64) time.Duration { return time.Duration(math.Round(ms * 1e6)) }

// MarshalJSON writes {"kind","target","result","error","took_ms"}.
func (s Step) MarshalJSON() ([]byte, error) {
	return json.Marshal(stepJSON{Kind: s.Kind, Target: s.Target, Result: s.Result, Error: s.Error, TookMS: toMS(s.Took)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (s *Step) UnmarshalJSON(b []byte) error {
	var j stepJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = Step{Kind: j.Kind, Target: j.Target, Result: j.Result, Error: j.Error, Took: fromMS(j.TookMS)}
	return nil
}

// MarshalJSON writes {"location","mp","reason","evidence","took_ms"}.
func (d Decision) MarshalJSON() ([]byte, error) {
	ev := d.Evidence
	if ev == nil {
		ev = []Step{}
	}
	return json.Marshal(decisionJSON{Location: d.Location, MP: d.MP, Addr: d.Addr, Reason: d.Reason, Evidence: ev, TookMS: toMS(d.Took)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (d *Decision) UnmarshalJSON(b []byte) error {
	var j decisionJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*d = Decision{Location: j.Location, MP: j.MP, Addr: j.Addr, Reason: j.Reason, Evidence: j.Evidence, Took: fromMS(j.TookMS)}
	return nil
}
