package device

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ibcm-project/ibcm/internal/atomicfile"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/recording"
)

// maxRecording bounds the plaintext of a recording; output beyond it is not recorded (a
// marker says so).
const maxRecording = 48 << 20

// recorder writes asciicast v2: a header line, then [time, "o", output] and
// [time, "m", text] (chat and mode changes as markers).
type recorder struct {
	mu    sync.Mutex
	start time.Time
	buf   bytes.Buffer
	full  bool
}

func newRecorder(start time.Time, cols, rows uint16) *recorder {
	r := &recorder{start: start}
	hdr, _ := json.Marshal(map[string]any{"version": 2, "width": cols, "height": rows, "timestamp": start.Unix(),
		"env": map[string]string{"TERM": "xterm-256color"}})
	r.buf.Write(hdr)
	r.buf.WriteByte('\n')
	return r
}

func (r *recorder) event(kind, data string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.full {
		return
	}
	line, _ := json.Marshal([]any{float64(time.Since(r.start).Microseconds()) / 1e6, kind, data})
	if r.buf.Len()+len(line) > maxRecording {
		r.full = true
		line, _ = json.Marshal([]any{float64(time.Since(r.start).Microseconds()) / 1e6, "m", "recording truncated: size limit reached"})
	}
	r.buf.Write(line)
	r.buf.WriteByte('\n')
}

func (r *recorder) output(p []byte)    { r.event("o", strings.ToValidUTF8(string(p), "\uFFFD")) }
func (r *recorder) marker(text string) { r.event("m", text) }

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.buf.Bytes()...)
}

// storeRecording seals a recording to the audit key, writes it to the state directory
// (0600) and uploads it; the file goes once the MP has it, else RetryUploads tries again.
func (h *Host) storeRecording(session, auditKey string, cast []byte) {
	sealed, err := recording.Seal(auditKey, session, cast)
	if err != nil {
		h.log.Error().Err(err).Str("session_id", session).Msg("sealing the recording")
		h.c.Audit("error", "remote session "+session+": the recording could not be sealed: "+err.Error())
		return
	}
	dir := filepath.Join(h.c.StateDir, RecordingsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		h.log.Error().Err(err).Msg("recordings directory")
		return
	}
	if err := atomicfile.Write(filepath.Join(dir, session+".sealed"), sealed, 0o600); err != nil {
		h.log.Error().Err(err).Msg("spooling the recording")
	}
	h.RetryUploads(h.ctx)
}

// RetryUploads uploads the sealed recordings waiting in the state directory.
func (h *Host) RetryUploads(ctx context.Context) {
	if h.c.Upload == nil {
		return
	}
	dir := filepath.Join(h.c.StateDir, RecordingsDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		session, ok := strings.CutSuffix(e.Name(), ".sealed")
		if !ok || len(session) != 32 {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		uctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err = h.c.Upload(uctx, session, b)
		cancel()
		if err != nil {
			h.log.Warn().Err(err).Str("session_id", session).Msg("uploading the recording; will retry")
			continue
		}
		_ = os.Remove(filepath.Join(dir, e.Name()))
		h.log.Info().Str("session_id", session).Int("bytes", len(b)).Msg("recording uploaded")
	}
}

// LogEntry is one line of the local session log.
type LogEntry struct {
	Session    string             `json:"session,omitempty"`
	Ticket     string             `json:"ticket,omitempty"`
	Helper     string             `json:"helper,omitempty"`
	HelperName string             `json:"helper_name,omitempty"`
	Sharer     string             `json:"sharer,omitempty"`
	SharerName string             `json:"sharer_name,omitempty"`
	Mode       string             `json:"mode,omitempty"`
	Modes      []wire.SessionMode `json:"modes,omitempty"`
	Transport  string             `json:"transport,omitempty"`
	Outcome    string             `json:"outcome"`
	Code       string             `json:"code,omitempty"`
	Message    string             `json:"message,omitempty"`
	Requested  time.Time          `json:"requested,omitzero"`
	Started    *time.Time         `json:"started,omitempty"`
	Ended      time.Time          `json:"ended"`
	BytesIn    int64              `json:"bytes_to_device"`
	BytesOut   int64              `json:"bytes_from_device"`
}

var logMu sync.Mutex

// writeLog appends an entry to the local session log (0600).
func (h *Host) writeLog(e LogEntry) {
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	logMu.Lock()
	defer logMu.Unlock()
	f, err := os.OpenFile(filepath.Join(h.c.StateDir, SessionLogFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		h.log.Error().Err(err).Msg("session log")
		return
	}
	defer f.Close()
	_, _ = f.Write(append(b, '\n'))
}

// ReadLog reads the local session log in dir (the newest last).
func ReadLog(dir string) ([]LogEntry, error) {
	f, err := os.Open(filepath.Join(dir, SessionLogFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []LogEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		var e LogEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return out, fmt.Errorf("%s line %d: %w", SessionLogFile, n, err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}
