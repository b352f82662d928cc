package device

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ibcm-project/ibcm/remote/frame"
)

// Kinds of share-socket client, named by the Terminal of their Hello.
const (
	KindShare  = "shared" // `ibcm-client share`: the sharer's own shell, mirrored
	KindWatch  = "watch"  // `ibcm-client consent --watch`: present, answers prompts, not sharing
	KindAnswer = "answer" // `ibcm-client consent --accept|--deny`: one answer, then gone
)

// maxClients bounds the share socket's connections (a local user could open many), and
// maxClientsPerUser one user's: one local user cannot take every place and keep the
// device's user from sharing or answering.
const (
	maxClients        = 64
	maxClientsPerUser = 8
)

// BellMessage is the Message of a Status frame that asks the share client to ring the
// terminal bell (policy play_sound); it is not shown.
const BellMessage = "\a"

// shareClient is one connection on the share socket.
type shareClient struct {
	c    net.Conn
	uid  int
	pid  int
	kind string
	// display and xauthority: the X display the client offers for screen sessions.
	display, xauthority string
	wmu                 sync.Mutex
	gone                chan struct{}
}

func (c *shareClient) send(t frame.Type, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return frame.Write(c.c, t, payload)
}

func (c *shareClient) sendJSON(t frame.Type, v any) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return frame.WriteJSON(c.c, t, v)
}

// prompt is a consent question waiting for its answer.
type prompt struct {
	id      string
	session string
	uid     int
	answer  chan bool
	cp      frame.ConsentPrompt
}

// sink receives what the sharer's clients send during a session.
type sink func(from *shareClient, f frame.Frame)

// hub is the share socket: who is present, the prompts waiting, and the sessions the
// present users' frames go to.
type hub struct {
	h       *Host
	mu      sync.Mutex
	clients []*shareClient
	prompts map[string]*prompt
	sinks   map[int][]*sink // by uid: the sessions this user shares (each gets every frame)
	shared  map[int]bool    // by uid: a session holds this user's shared terminal
	arrived chan struct{}
}

func newHub(h *Host) *hub {
	return &hub{h: h, prompts: map[string]*prompt{}, sinks: map[int][]*sink{}, shared: map[int]bool{}, arrived: make(chan struct{})}
}

// Serve listens on the share socket at path until ctx is done (ListenShare, then
// ServeShare).
func (h *Host) Serve(ctx context.Context, path string) error {
	ln, err := ListenShare(path)
	if err != nil {
		return err
	}
	return h.ServeShare(ctx, ln)
}

// ListenShare opens the share socket at path: the directory is made 0755 and the socket
// 0666, so any local user may connect; who they are comes from SO_PEERCRED.
func ListenShare(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("share socket: %w", err)
		}
		if err := os.Chmod(dir, 0o755); err != nil { // past the umask
			return nil, fmt.Errorf("share socket: %w", err)
		}
		fi, err = os.Stat(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("share socket: %w", err)
	}
	// Clients trust the socket only in a directory nobody but its owner may write (and
	// root's); the agent does not change a directory it did not make.
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("share socket: the directory %s must be the agent's and writable by it only", dir)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("share socket %s: another agent answers there", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("share socket: %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return nil, fmt.Errorf("share socket: %w", err)
	}
	return ln, nil
}

// ServeShare answers share and consent clients on ln until ctx is done; it removes the
// socket at the end.
func (h *Host) ServeShare(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	if ua, ok := ln.Addr().(*net.UnixAddr); ok {
		defer os.Remove(ua.Name)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go h.hub.handle(c)
	}
}

func peerCred(c net.Conn) (uid, pid int, err error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1, 0, fmt.Errorf("not a Unix socket (%T)", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, 0, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, 0, err
	}
	if cerr != nil {
		return -1, 0, cerr
	}
	return int(cred.Uid), int(cred.Pid), nil
}

func (hb *hub) handle(c net.Conn) {
	defer c.Close()
	uid, pid, err := peerCred(c)
	if err != nil {
		hb.h.log.Warn().Err(err).Msg("share socket: no peer credentials")
		return
	}
	cl := &shareClient{c: c, uid: uid, pid: pid, gone: make(chan struct{})}
	defer close(cl.gone)
	r := frame.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := r.Next()
	var g frame.Greeting
	if err == nil && f.Type != frame.Hello {
		err = fmt.Errorf("%w: first frame %s, want hello", frame.ErrFrame, f.Type)
	}
	if err == nil {
		err = frame.DecodeJSON(f, &g)
	}
	if err == nil && g.Terminal != KindShare && g.Terminal != KindWatch && g.Terminal != KindAnswer {
		err = fmt.Errorf("%w: unknown client kind %q", frame.ErrFrame, g.Terminal)
	}
	if err == nil && (g.Display != "" || g.XAuthority != "") {
		if err = CheckDisplay(g.Display, g.XAuthority); err != nil {
			err = fmt.Errorf("%w: %v", frame.ErrFrame, err)
		}
	}
	if err != nil {
		hb.h.log.Warn().Err(err).Int("uid", uid).Int("pid", pid).Msg("share socket: bad hello")
		_ = cl.sendJSON(frame.End, frame.Ending{Outcome: "bad_request", Message: err.Error()})
		return
	}
	cl.kind, cl.display, cl.xauthority = g.Terminal, g.Display, g.XAuthority
	if cl.kind == KindAnswer {
		f, err := r.Next()
		var a frame.ConsentAnswer
		if err == nil && f.Type != frame.Answer {
			err = fmt.Errorf("%w: %s, want answer", frame.ErrFrame, f.Type)
		}
		if err == nil {
			err = frame.DecodeJSON(f, &a)
		}
		if err != nil {
			_ = cl.sendJSON(frame.End, frame.Ending{Outcome: "bad_request", Message: err.Error()})
			return
		}
		code, err := hb.answer(cl, a)
		if err != nil {
			_ = cl.sendJSON(frame.End, frame.Ending{Outcome: code, Message: err.Error()})
			return
		}
		_ = cl.sendJSON(frame.End, frame.Ending{Outcome: code})
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	hb.mu.Lock()
	mine := 0
	for _, c := range hb.clients {
		if c.uid == uid {
			mine++
		}
	}
	if len(hb.clients) >= maxClients || mine >= maxClientsPerUser {
		hb.mu.Unlock()
		hb.h.log.Warn().Int("uid", uid).Int("pid", pid).Msg("share socket: too many clients")
		_ = cl.sendJSON(frame.End, frame.Ending{Outcome: "busy", Message: "too many share and consent clients"})
		return
	}
	hb.clients = append(hb.clients, cl)
	close(hb.arrived)
	hb.arrived = make(chan struct{})
	var pending []*prompt
	for _, p := range hb.prompts {
		if p.uid == uid {
			pending = append(pending, p)
		}
	}
	hb.mu.Unlock()
	hb.h.log.Info().Int("uid", uid).Int("pid", pid).Str("kind", cl.kind).Msg("share socket: client connected")
	_ = cl.sendJSON(frame.Status, frame.Presence{Message: "connected to the ibcm agent"})
	for _, p := range pending {
		hb.sendPrompt(cl, p)
	}
	defer hb.remove(cl)
	for {
		f, err := r.Next()
		if err != nil {
			return
		}
		switch f.Type {
		case frame.Answer:
			var a frame.ConsentAnswer
			if frame.DecodeJSON(f, &a) != nil {
				return
			}
			if code, err := hb.answer(cl, a); err != nil {
				_ = cl.sendJSON(frame.Status, frame.Presence{Message: code + ": " + err.Error()})
			}
		case frame.Data, frame.Resize, frame.Chat, frame.Mode, frame.End:
			if cl.kind == KindWatch && (f.Type == frame.Data || f.Type == frame.Resize) {
				continue // a watcher has no terminal
			}
			for _, s := range hb.sinksOf(uid) {
				(*s)(cl, frame.Frame{Type: f.Type, Payload: append([]byte(nil), f.Payload...)})
			}
		case frame.Ping:
			_ = cl.send(frame.Pong, nil)
		}
	}
}

func (hb *hub) remove(cl *shareClient) {
	hb.mu.Lock()
	for i, c := range hb.clients {
		if c == cl {
			hb.clients = append(hb.clients[:i], hb.clients[i+1:]...)
			break
		}
	}
	hb.mu.Unlock()
	hb.h.log.Info().Int("uid", cl.uid).Int("pid", cl.pid).Str("kind", cl.kind).Msg("share socket: client gone")
	for _, s := range hb.sinksOf(cl.uid) {
		(*s)(cl, frame.Frame{}) // type 0: this client is gone
	}
}

// present is who a session arriving now is shared with: the uid of the first share
// client, else of the first watcher, else -1.
func (hb *hub) present() int {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	for _, c := range hb.clients {
		if c.kind == KindShare {
			return c.uid
		}
	}
	for _, c := range hb.clients {
		if c.kind == KindWatch {
			return c.uid
		}
	}
	return -1
}

// waitPresent waits until someone is present or ctx is done.
func (hb *hub) waitPresent(ctx context.Context) int {
	for {
		hb.mu.Lock()
		ch := hb.arrived
		hb.mu.Unlock()
		if uid := hb.present(); uid >= 0 {
			return uid
		}
		select {
		case <-ctx.Done():
			return -1
		case <-ch:
		}
	}
}

// shareOf returns the first share client of uid (its terminal is the shared one).
func (hb *hub) shareOf(uid int) *shareClient {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	for _, c := range hb.clients {
		if c.kind == KindShare && c.uid == uid {
			return c
		}
	}
	return nil
}

// displayOf returns the client of uid that offers an X display for screen sessions, or nil.
func (hb *hub) displayOf(uid int) *shareClient {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	for _, c := range hb.clients {
		if c.uid == uid && c.display != "" {
			return c
		}
	}
	return nil
}

// of returns every share and watch client of uid.
func (hb *hub) of(uid int) []*shareClient {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	var out []*shareClient
	for _, c := range hb.clients {
		if c.uid == uid {
			out = append(out, c)
		}
	}
	return out
}

// broadcast sends a frame to every client of uid.
func (hb *hub) broadcast(uid int, t frame.Type, v any) {
	for _, c := range hb.of(uid) {
		if b, ok := v.([]byte); ok {
			_ = c.send(t, b)
		} else {
			_ = c.sendJSON(t, v)
		}
	}
}

// attach adds a session's sink for uid's frames: every session the user shares gets
// them (so that ending or dropping to view reaches each); detach removes it.
func (hb *hub) attach(uid int, s sink) (detach func()) {
	p := &s
	hb.mu.Lock()
	hb.sinks[uid] = append(hb.sinks[uid], p)
	hb.mu.Unlock()
	return func() {
		hb.mu.Lock()
		defer hb.mu.Unlock()
		ss := hb.sinks[uid]
		for i, x := range ss {
			if x == p {
				ss = append(ss[:i:i], ss[i+1:]...)
				break
			}
		}
		if len(ss) == 0 {
			delete(hb.sinks, uid)
		} else {
			hb.sinks[uid] = ss
		}
	}
}

// claimShared takes uid's shared terminal for one session; false when another holds it.
// One session at a time: the share client tells the helper's keys from the elevated
// shell's output by the mode of the last status line, which a second session would change.
func (hb *hub) claimShared(uid int) bool {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	if hb.shared[uid] {
		return false
	}
	hb.shared[uid] = true
	return true
}

func (hb *hub) releaseShared(uid int) {
	hb.mu.Lock()
	delete(hb.shared, uid)
	hb.mu.Unlock()
}

// sinksOf returns the sinks of uid's sessions.
func (hb *hub) sinksOf(uid int) []*sink {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	return append([]*sink(nil), hb.sinks[uid]...)
}

func (hb *hub) sendPrompt(c *shareClient, p *prompt) {
	_ = c.sendJSON(frame.Prompt, p.cp)
}

// ask asks uid's clients to consent and waits for the answer until ctx is done (the
// consent timeout). It returns the outcome: accepted, denied or consent-timeout.
func (hb *hub) ask(ctx context.Context, uid int, cp frame.ConsentPrompt) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	cp.ID = hex.EncodeToString(b)
	p := &prompt{id: cp.ID, session: cp.Session, uid: uid, answer: make(chan bool, 1), cp: cp}
	hb.mu.Lock()
	hb.prompts[p.id] = p
	hb.mu.Unlock()
	defer func() {
		hb.mu.Lock()
		delete(hb.prompts, p.id)
		hb.mu.Unlock()
	}()
	hb.broadcast(uid, frame.Prompt, cp)
	select {
	case ok := <-p.answer:
		if ok {
			return "accepted"
		}
		return "denied"
	case <-ctx.Done():
		return "consent-timeout"
	}
}

// answer takes a local user's answer. The ID names the prompt, or its session, or is
// empty for the only prompt waiting. Only the uid asked may answer.
func (hb *hub) answer(cl *shareClient, a frame.ConsentAnswer) (string, error) {
	hb.mu.Lock()
	var match []*prompt
	for _, q := range hb.prompts {
		if a.ID == "" || q.id == a.ID || q.session == a.ID || len(a.ID) >= 8 && strings.HasPrefix(q.session, a.ID) {
			match = append(match, q)
		}
	}
	hb.mu.Unlock()
	if len(match) > 1 { // several: the asker's own questions
		var own []*prompt
		for _, q := range match {
			if q.uid == cl.uid {
				own = append(own, q)
			}
		}
		match = own
	}
	n := len(match)
	var p *prompt
	if n == 1 {
		p = match[0]
	}
	switch {
	case n == 0:
		return CodeNoPrompt, errors.New("no consent question waits for that answer")
	case n > 1:
		return CodeNoPrompt, errors.New("several consent questions wait: name one by its id")
	}
	if p.uid != cl.uid {
		err := fmt.Errorf("uid %d (pid %d) answered the consent question of session %s asked of uid %d: refused", cl.uid, cl.pid, p.session, p.uid)
		hb.h.log.Warn().Str("code", CodeWrongUser).Int("uid", cl.uid).Int("pid", cl.pid).Str("session_id", p.session).Int("asked_uid", p.uid).Msg("consent answer from another user refused")
		hb.h.c.Audit("warning", fmt.Sprintf("remote session %s: a consent answer from uid %d refused (%s): the question was for uid %d", p.session, cl.uid, CodeWrongUser, p.uid))
		return CodeWrongUser, err
	}
	select {
	case p.answer <- a.Accept:
	default:
	}
	if a.Accept {
		return "accepted", nil
	}
	return "denied", nil
}
