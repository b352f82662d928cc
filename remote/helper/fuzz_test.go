package helper

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/remote/frame"
)

// byteConn is a connection whose peer sent b and reads nothing back.
type byteConn struct {
	net.Conn
	r *bytes.Reader
}

func (c *byteConn) Read(p []byte) (int, error)      { return c.r.Read(p) }
func (c *byteConn) Write(p []byte) (int, error)     { return len(p), nil }
func (c *byteConn) Close() error                    { return nil }
func (c *byteConn) SetDeadline(time.Time) error     { return nil }
func (c *byteConn) SetReadDeadline(time.Time) error { return nil }

// FuzzSession: whatever a device sends, Open and Next return events or errors, never panic,
// and the stream ends.
func FuzzSession(f *testing.F) {
	hello := frame.Append(nil, frame.Hello, []byte(`{"mode":"view","sharer":"bob"}`))
	f.Add(hello)
	f.Add(frame.Append(frame.Append(hello, frame.Chat, []byte("你好 مرحبا")), frame.Mode, []byte(`{"mode":"control","granted":true}`)))
	f.Add(frame.Append(hello, frame.Ping, nil))
	f.Add(frame.Append(nil, frame.End, []byte(`{"outcome":"denied"}`)))
	f.Add(frame.Append(hello, frame.Prompt, []byte(`{}`)))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Open(context.Background(), &byteConn{r: bytes.NewReader(b)}, frame.Greeting{Rows: 24, Cols: 80})
		if err != nil {
			return
		}
		for range len(b) + 1 {
			if _, err := s.Next(); err != nil {
				return
			}
		}
		t.Fatal("more events than bytes")
	})
}
