package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// rect is a FramebufferUpdate rectangle header.
func rect(w, h uint16, enc int32) []byte {
	b := make([]byte, 8, 12)
	binary.BigEndian.PutUint16(b[4:], w)
	binary.BigEndian.PutUint16(b[6:], h)
	return binary.BigEndian.AppendUint32(b, uint32(enc))
}

// serveViewer runs a vncClient's reader on the server bytes in (then EOF), taking whatever
// it writes, and returns the updates it reported and the error it stopped with.
func serveViewer(t *testing.T, in []byte) ([]update, error) {
	t.Helper()
	c := &streamConn{r: bytes.NewReader(in)}
	v := &vncClient{conn: c, r: bufio.NewReader(c), n: &countReader{r: c}, w: 1280, h: 800, bpp: 4, updates: make(chan update, 16)}
	go v.read()
	var got []update
	for u := range v.updates {
		got = append(got, u)
	}
	return got, v.failed()
}

// streamConn is a connection that reads a fixed stream and takes every write (the viewer's
// update requests), so the reader meets the stream's end, not a closed pipe.
type streamConn struct {
	net.Conn
	r io.Reader
}

func (c *streamConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *streamConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *streamConn) Close() error                     { return nil }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

func TestVNCClientParsesUpdates(t *testing.T) {
	var in []byte
	in = append(in, 0, 0, 0, 2)                       // FramebufferUpdate, 2 rectangles
	in = append(in, rect(2, 3, 0)...)                 // Raw 2x3 at 4 bytes a pixel
	in = append(in, make([]byte, 24)...)              //
	in = append(in, rect(64, 64, 16)...)              // ZRLE
	in = append(in, 0, 0, 0, 5, 1, 2, 3, 4, 5)        // its length and data
	in = append(in, 2)                                // Bell
	in = append(in, 3, 0, 0, 0, 0, 0, 0, 2, 'h', 'i') // ServerCutText
	in = append(in, 1, 0, 0, 0, 0, 1)                 // SetColourMapEntries, 1 colour
	in = append(in, 1, 2, 3, 4, 5, 6)                 //
	in = append(in, 0, 0, 0, 1)                       // FramebufferUpdate, 1 rectangle
	in = append(in, rect(1, 1, 1)...)                 // CopyRect
	in = append(in, 0, 0, 0, 0)                       //
	got, err := serveViewer(t, in)
	if len(got) != 2 || got[0].rects != 2 || got[1].rects != 1 {
		t.Fatalf("updates %+v, want 2 with 2 and 1 rectangles", got)
	}
	if err != io.EOF {
		t.Errorf("stopped with %v, want EOF at the end of the stream", err)
	}
}

func TestVNCClientRejectsBadInput(t *testing.T) {
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"unknown message":     {[]byte{9}, "server message type 9"},
		"unasked encoding":    {append([]byte{0, 0, 0, 1}, rect(1, 1, 7)...), "encoding 7"},
		"huge cut text":       {[]byte{3, 0, 0, 0, 0x7f, 0, 0, 0}, "ServerCutText of"},
		"truncated rectangle": {append([]byte{0, 0, 0, 1}, rect(8, 8, 0)...), "EOF"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := serveViewer(t, tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

// FuzzVNCClient: any server stream ends the reader with an error, never a panic or a hang.
func FuzzVNCClient(f *testing.F) {
	f.Add(append([]byte{0, 0, 0, 1}, rect(1, 1, 16)...))
	f.Add([]byte{3, 0, 0, 0, 0, 0, 0, 1, 'x', 2, 1, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		if _, err := serveViewer(t, in); err == nil {
			t.Fatal("the reader stopped without an error")
		}
	})
}
