package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/ibcm-project/ibcm/internal/wire"
	rdevice "github.com/ibcm-project/ibcm/remote/device"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/remote/helper"
	"github.com/ibcm-project/ibcm/remote/rfb"
	"github.com/ibcm-project/ibcm/site"
)

// The screen suite: unattended screen sessions (the agent's own 1280x800 Xvfb and x11vnc)
// read by an RFB 3.8 client in this process through the helper's local VNC port, over the
// relay and direct. The agent runs x11vnc through a wrapper script that first starts an
// xterm on the session's display: one printing a burst of lines 20 times a second (frame
// rate and bytes), or one running cat (a key typed into it, until the update that shows
// it).
var screenSuite = Suite{
	Name:  "screen",
	Title: "remote control: screen sessions (1280x800 Xvfb, x11vnc) through the relay vs direct: frames and bytes per second, key-to-display latency",
	Run:   runScreen,
}

var (
	screenWindow  = flag.Duration("screen-window", 10*time.Second, "screen suite: how long frames are counted on each path")
	screenSamples = flag.Int("screen-samples", 200, "screen suite: key-to-display samples on each path (at least 20)")
)

const (
	screenSettle  = 2 * time.Second // the scrolling display before the counted window
	screenQuiet   = 30 * time.Millisecond
	screenTimeout = 5 * time.Second // one key's update
	// scrolling: 40 numbered lines of `ls -l` 20 times a second, in a 160x50 xterm (the
	// numbers make every burst differ from the last)
	// colours: the whole root window changes colour 10 times a second (the display ends the
	// loop: xsetroot fails once it is gone)
	screenColourLoad = `while xsetroot -solid '#c04020' && sleep 0.05 && xsetroot -solid '#2040c0' && sleep 0.05; do :; done`
	screenScrollLoad = `i=0; while :; do i=$((i+1)); ls -l /usr/bin | head -40 | sed "s/^/$i /"; sleep 0.05; done`
)

// screenWrapper writes a script that starts bg in the background on x11vnc's display (its
// -display argument; XAUTHORITY is in the environment the agent gives x11vnc), then
// execs x11vnc. The display's end ends bg.
func screenWrapper(dir, name, bg string) (string, error) {
	x11vnc, err := exec.LookPath("x11vnc")
	if err != nil {
		return "", err
	}
	script := fmt.Sprintf(`#!/bin/sh
prev=
for a in "$@"; do [ "$prev" = -display ] && d=$a; prev=$a; done
export DISPLAY="$d"
%s >/dev/null 2>&1 &
exec %s "$@"
`, bg, x11vnc)
	p := filepath.Join(dir, name)
	return p, os.WriteFile(p, []byte(script), 0o755)
}

// xtermRunning is a background command: a 160x50 xterm running the shell command cmd.
func xtermRunning(cmd string) string {
	return "xterm -geometry 160x50+0+0 -e sh -c '" + cmd + "'"
}

func runScreen(ctx context.Context, o Options, progress io.Writer) (Result, error) {
	res := Result{Suite: "screen"}
	if *screenSamples < 20 || *screenWindow <= 0 {
		return res, errors.New("-screen-samples must be at least 20 and -screen-window positive")
	}
	for _, tool := range []string{"Xvfb", "x11vnc", "xterm", "xsetroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			return res, fmt.Errorf("the screen suite needs %s (apt-get install xvfb x11vnc xterm x11-xserver-utils): %w", tool, err)
		}
	}
	tmp, err := os.MkdirTemp("", "ibcm-bench-screen-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp)
	// The wrappers below stand in for x11vnc, which an unattended screen runs as a uid of
	// its own (remote/device DynamicScreenUID): it must be able to reach them.
	if err := os.Chmod(tmp, 0o711); err != nil {
		return res, err
	}
	scroll, err := screenWrapper(tmp, "x11vnc-scroll", xtermRunning(screenScrollLoad))
	if err != nil {
		return res, err
	}
	colours, err := screenWrapper(tmp, "x11vnc-colours", screenColourLoad)
	if err != nil {
		return res, err
	}
	typing, err := screenWrapper(tmp, "x11vnc-cat", xtermRunning("exec cat"))
	if err != nil {
		return res, err
	}
	defer func(b string) { rdevice.X11VNCBinary = b }(rdevice.X11VNCBinary)

	fmt.Fprintln(progress, "screen: starting a site on sqlite (CA and MP in this process)")
	s, err := startSiteWith(ctx, site.InitOptions{Store: "sqlite"}, "mp-internet")
	if err != nil {
		return res, err
	}
	defer s.stop()
	directPort, err := freePort()
	if err != nil {
		return res, err
	}
	rc := wire.RemoteControlSettings{Enabled: true, AccessLevel: "full", PromptUser: false, AllowUnattended: true,
		ConsentTimeout: "30s", AllowDirect: true, DirectPort: directPort, AllowChat: true}
	fmt.Fprintln(progress, "screen: enrolling a device and running the agent on the intranet (in-process DNS)")
	env, err := startRemoteEnv(ctx, s, filepath.Join(tmp, "env"), rc)
	if err != nil {
		return res, err
	}
	defer env.stop()
	paths := []struct {
		name, transport string
		c               *helper.Client
	}{{"relay", wire.TransportRelay, env.internet}, {"direct", wire.TransportDirect, env.intranet}}

	// 1. Frames and bytes of the scrolling display, in ZRLE (what viewers ask for) and in
	// Raw (no compression: the bytes the transports carry when nothing shrinks them).
	for _, enc := range []struct {
		load, name, wrapper string
		code                int32
	}{{"scrolling xterm", "ZRLE", scroll, 16}, {"scrolling xterm", "Raw", scroll, 0}, {"root colour cycling", "Raw", colours, 0}} {
		rdevice.X11VNCBinary = enc.wrapper
		var fps, bps [2]float64
		var frames [2]int
		for p, path := range paths {
			fmt.Fprintf(progress, "screen: %s, %s: counting frames of %s for %s\n", path.name, enc.name, enc.load, *screenWindow)
			err := withScreen(ctx, path.c, env.device, path.transport, enc.code, func(v *vncClient) error {
				n, b, err := v.count(screenSettle, *screenWindow)
				frames[p] = n
				fps[p] = float64(n) / screenWindow.Seconds()
				bps[p] = float64(b) / screenWindow.Seconds()
				return err
			})
			if err != nil {
				return res, fmt.Errorf("frames, %s, %s: %w", enc.name, path.name, err)
			}
		}
		res.Rows = append(res.Rows,
			Row{Name: enc.load + ", " + enc.name + ", frames/s, relay", Value: fps[0], Unit: "frames/s", Count: frames[0]},
			Row{Name: enc.load + ", " + enc.name + ", frames/s, direct", Value: fps[1], Unit: "frames/s", Count: frames[1]},
			Row{Name: enc.load + ", " + enc.name + ", KiB/s, relay", Value: bps[0] / 1024, Unit: "KiB/s", Count: frames[0]},
			Row{Name: enc.load + ", " + enc.name + ", KiB/s, direct", Value: bps[1] / 1024, Unit: "KiB/s", Count: frames[1]})
	}

	// 2. A key into an xterm running cat until the update that shows it.
	rdevice.X11VNCBinary = typing
	var lat [2]measurement
	for p, path := range paths {
		fmt.Fprintf(progress, "screen: %s: %d keys into an xterm until the update that shows each\n", path.name, *screenSamples)
		err := withScreen(ctx, path.c, env.device, path.transport, 16, func(v *vncClient) error {
			d, err := v.keyLatency(*screenSamples)
			lat[p] = latencies(d)
			return err
		})
		if err != nil {
			return res, fmt.Errorf("key latency, %s: %w", path.name, err)
		}
	}
	res.Rows = append(res.Rows,
		p99Row("key -> display update, direct (reference)", lat[1], 0),
		p99Row("key -> display update, relay", lat[0], 0),
		Row{Name: "key -> display update, relay p99 - direct p99", Value: lat[0].percentile(0.99) - lat[1].percentile(0.99), Unit: "ms", Count: lat[0].count})
	res.Notes = append(res.Notes,
		"unattended screen sessions (control): the agent's own Xvfb 1280x800x24 and x11vnc; frames in ZRLE and in Raw, keys in ZRLE; one incremental update request in flight",
		"frames: FramebufferUpdate messages with at least one rectangle; bytes: everything the viewer read in the window")
	return res, nil
}

// withScreen starts an unattended screen session on the transport want, connects a viewer
// to the helper's local VNC port with its one-time password, asks for the encoding enc
// (16 ZRLE or 0 Raw), runs f and ends the session.
func withScreen(ctx context.Context, c *helper.Client, device, want string, enc int32, f func(*vncClient) error) error {
	ctx, cancel := context.WithTimeout(ctx, remoteOpTimeout+2*time.Minute)
	defer cancel()
	st, err := c.Start(ctx, wire.SessionStartRequest{Device: device, Mode: "unattended", Kind: "screen", Reason: "benchmark"})
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	port, err := helper.ListenScreen("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer port.Close()
	sess, err := c.Connect(ctx, st, frame.Greeting{Session: st.Session.ID, Mode: st.Session.Mode})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer sess.Close()
	defer sess.End("benchmark done")
	if got := sess.Connection.Transport; got != want {
		return fmt.Errorf("session %s went %s, want %s", st.Session.ID, got, want)
	}
	served := make(chan error, 1)
	go func() { served <- port.Serve(ctx, sess, nil) }()
	conn, err := net.DialTimeout("tcp", port.Addr().String(), 10*time.Second)
	if err != nil {
		return err
	}
	defer func() { conn.Close(); <-served }()
	_ = conn.SetDeadline(time.Now().Add(remoteOpTimeout))
	br := &countReader{r: conn}
	rw := struct {
		io.Reader
		io.Writer
	}{bufio.NewReaderSize(br, 1<<16), conn}
	init, err := rfb.Dial(rw, port.Password)
	if err != nil {
		return fmt.Errorf("the viewer's handshake: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	w, h := init.Size()
	v := &vncClient{conn: conn, r: rw.Reader.(*bufio.Reader), n: br, w: w, h: h, bpp: int(init[4]) / 8, updates: make(chan update, 1024)}
	if v.bpp == 0 {
		return errors.New("the ServerInit has 0 bits per pixel")
	}
	// SetEncodings: enc, then Raw (which a server may always use).
	msg := []byte{2, 0, 0, 2}
	msg = binary.BigEndian.AppendUint32(msg, uint32(enc))
	msg = binary.BigEndian.AppendUint32(msg, 0)
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	go v.read()
	if err := v.request(false); err != nil {
		return err
	}
	return f(v)
}

type countReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// update is one FramebufferUpdate the viewer read: when, and how many rectangles.
type update struct {
	at    time.Time
	rects int
}

// vncClient is the benchmark's viewer: it keeps one incremental FramebufferUpdateRequest in
// flight and reports each update on updates.
type vncClient struct {
	conn    net.Conn
	r       *bufio.Reader
	n       *countReader
	w, h    uint16
	bpp     int
	updates chan update
	err     atomic.Pointer[error]
}

func (v *vncClient) request(incremental bool) error {
	m := []byte{3, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if incremental {
		m[1] = 1
	}
	binary.BigEndian.PutUint16(m[6:], v.w)
	binary.BigEndian.PutUint16(m[8:], v.h)
	_, err := v.conn.Write(m)
	return err
}

// read parses the server's messages until the connection fails.
func (v *vncClient) read() {
	defer close(v.updates)
	err := func() error {
		for {
			t, err := v.r.ReadByte()
			if err != nil {
				return err
			}
			switch t {
			case 0: // FramebufferUpdate
				var hd [3]byte
				if _, err := io.ReadFull(v.r, hd[:]); err != nil {
					return err
				}
				n := int(binary.BigEndian.Uint16(hd[1:]))
				for range n {
					var rh [12]byte
					if _, err := io.ReadFull(v.r, rh[:]); err != nil {
						return err
					}
					w, h := int64(binary.BigEndian.Uint16(rh[4:])), int64(binary.BigEndian.Uint16(rh[6:]))
					var skip int64
					switch enc := int32(binary.BigEndian.Uint32(rh[8:])); enc {
					case 0:
						skip = w * h * int64(v.bpp)
					case 1:
						skip = 4
					case 16:
						var l [4]byte
						if _, err := io.ReadFull(v.r, l[:]); err != nil {
							return err
						}
						skip = int64(binary.BigEndian.Uint32(l[:]))
					default:
						return fmt.Errorf("a rectangle in encoding %d, which the viewer did not ask for", enc)
					}
					if _, err := io.CopyN(io.Discard, v.r, skip); err != nil {
						return err
					}
				}
				if err := v.request(true); err != nil {
					return err
				}
				select {
				case v.updates <- update{at: time.Now(), rects: n}:
				default: // nobody is reading: the count phase reads them all
				}
			case 1: // SetColourMapEntries
				var hd [5]byte
				if _, err := io.ReadFull(v.r, hd[:]); err != nil {
					return err
				}
				if _, err := io.CopyN(io.Discard, v.r, 6*int64(binary.BigEndian.Uint16(hd[3:]))); err != nil {
					return err
				}
			case 2: // Bell
			case 3: // ServerCutText
				var hd [7]byte
				if _, err := io.ReadFull(v.r, hd[:]); err != nil {
					return err
				}
				l := int64(binary.BigEndian.Uint32(hd[3:]))
				if l > 1<<20 {
					return fmt.Errorf("ServerCutText of %d bytes", l)
				}
				if _, err := io.CopyN(io.Discard, v.r, l); err != nil {
					return err
				}
			default:
				return fmt.Errorf("server message type %d", t)
			}
		}
	}()
	v.err.Store(&err)
}

func (v *vncClient) failed() error {
	if p := v.err.Load(); p != nil {
		return *p
	}
	return errors.New("the viewer's connection closed")
}

// count lets the display settle, then counts updates with rectangles and bytes read over
// window.
func (v *vncClient) count(settle, window time.Duration) (int, int64, error) {
	t := time.NewTimer(settle)
	defer t.Stop()
	var n int
	var b0 int64
	counting := false
	for {
		select {
		case u, ok := <-v.updates:
			if !ok {
				return 0, 0, v.failed()
			}
			if counting && u.rects > 0 {
				n++
			}
		case <-t.C:
			if counting {
				return n, v.n.n.Load() - b0, nil
			}
			counting = true
			b0 = v.n.n.Load()
			t.Reset(window)
		}
	}
}

// key sends a KeyEvent press and release.
func (v *vncClient) key(sym uint32) error {
	m := make([]byte, 0, 16)
	for _, down := range []byte{1, 0} {
		m = append(m, 4, down, 0, 0)
		m = binary.BigEndian.AppendUint32(m, sym)
	}
	_, err := v.conn.Write(m)
	return err
}

// keyLatency waits for the xterm (keys until updates follow them), then times samples keys
// (a letter, then BackSpace, so the line does not grow), each once the display is quiet.
func (v *vncClient) keyLatency(samples int) ([]time.Duration, error) {
	quiet := func() error { // no update for screenQuiet
		for {
			select {
			case _, ok := <-v.updates:
				if !ok {
					return v.failed()
				}
			case <-time.After(screenQuiet):
				return nil
			}
		}
	}
	one := func(i int) (time.Duration, error) {
		if err := quiet(); err != nil {
			return 0, err
		}
		sym := uint32('a' + i/2%26)
		if i%2 == 1 {
			sym = 0xff08 // BackSpace
		}
		t0 := time.Now()
		if err := v.key(sym); err != nil {
			return 0, err
		}
		timeout := time.After(screenTimeout)
		for {
			select {
			case u, ok := <-v.updates:
				if !ok {
					return 0, v.failed()
				}
				if u.rects > 0 {
					return u.at.Sub(t0), nil
				}
			case <-timeout:
				return 0, errTimeout
			}
		}
	}
	// The xterm maps some time after x11vnc starts: keys until two in a row show.
	deadline := time.Now().Add(30 * time.Second)
	for ok, i := 0, 0; ok < 2; i++ {
		if time.Now().After(deadline) {
			return nil, errors.New("no xterm on the display after 30s: keys change nothing")
		}
		if _, err := one(i); err == nil {
			ok++
		} else if errors.Is(err, errTimeout) {
			ok = 0
		} else {
			return nil, err
		}
	}
	var d []time.Duration
	for i := range remoteWarmup + samples {
		l, err := one(i)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		if i >= remoteWarmup {
			d = append(d, l)
		}
	}
	return d, nil
}

var errTimeout = errors.New("no display update within 5s of the key")
