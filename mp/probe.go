package mp

import (
	"net/http"

	"github.com/ibcm-project/ibcm/internal/api"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// handleProbe answers the agent's location probe: which listener the request came in on.
// It touches no database, so it costs what /healthz costs; the gate has already refused a
// revoked certificate and a blocked device.
func (m *MP) handleProbe(w http.ResponseWriter, r *http.Request) error {
	p := peerOf(r)
	api.WriteJSON(w, http.StatusOK, wire.Probe{Location: p.location, Serial: wire.FormatSerial(p.leaf.SerialNumber)})
	return nil
}
