package tlspark

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// streamConn is a net.Conn that reads r (EOF when nil) and appends what is written to w
// (dropped when nil).
type streamConn struct {
	r *bytes.Reader
	w *bytes.Buffer
}

func (c streamConn) Read(p []byte) (int, error) {
	if c.r == nil {
		return 0, io.EOF
	}
	return c.r.Read(p)
}

func (c streamConn) Write(p []byte) (int, error) {
	if c.w == nil {
		return len(p), nil
	}
	return c.w.Write(p)
}

func (streamConn) Close() error                     { return nil }
func (streamConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (streamConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (streamConn) SetDeadline(time.Time) error      { return nil }
func (streamConn) SetReadDeadline(time.Time) error  { return nil }
func (streamConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzRead feeds the record layer a stream from the network, starting with records a
// peer with the test secrets really sends (data, KeyUpdate, close_notify): it must end
// with an error or EOF, never panic, and never return more than the stream could hold.
func FuzzRead(f *testing.F) {
	s := suites[0]
	secret := bytes.Repeat([]byte{1}, 32)
	var seed bytes.Buffer
	w := &Conn{raw: streamConn{w: &seed}, suite: s}
	w.out.setSecret(s, bytes.Clone(secret))
	w.Write([]byte("hello"))
	f.Add(seed.Bytes())
	w.wmu.Lock()
	w.writeRecord(recordTypeHandshake, []byte{typeKeyUpdate, 0, 0, 1, 0})
	w.out.update(s)
	w.wmu.Unlock()
	w.Write(bytes.Repeat([]byte("z"), 3000))
	f.Add(seed.Bytes())
	w.CloseWrite()
	f.Add(seed.Bytes())
	f.Add([]byte{23, 3, 3, 0, 0})
	f.Fuzz(func(t *testing.T, stream []byte) {
		c := &Conn{raw: streamConn{r: bytes.NewReader(stream)}, suite: s}
		c.in.setSecret(s, bytes.Clone(secret))
		c.out.setSecret(s, bytes.Clone(secret))
		n, err := io.Copy(io.Discard, c)
		if err == nil && len(stream) == 0 {
			t.Fatal("an empty stream read as a clean close")
		}
		if n > int64(len(stream)) {
			t.Fatalf("read %d bytes of data from a %d-byte stream", n, len(stream))
		}
	})
}

// FuzzClientFlight feeds the handshake follower what a client could send during a
// handshake, in chunks: it must never panic, hold at most one record's worth of bytes, and
// report a flight only when one was really found.
func FuzzClientFlight(f *testing.F) {
	s := suites[0]
	secret := bytes.Repeat([]byte{3}, 32)
	var flight bytes.Buffer
	w := &Conn{raw: streamConn{w: &flight}, suite: s}
	w.out.setSecret(s, bytes.Clone(secret))
	w.wmu.Lock()
	w.writeRecord(recordTypeHandshake, []byte{11, 0, 0, 2, 0, 0})                         // Certificate (empty)
	w.writeRecord(recordTypeHandshake, append([]byte{20, 0, 0, 32}, make([]byte, 32)...)) // Finished
	w.wmu.Unlock()
	f.Add(append([]byte{22, 3, 1, 0, 1, 1, 20, 3, 3, 0, 1, 1}, flight.Bytes()...), uint8(7))
	f.Add(flight.Bytes(), uint8(1))
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		var fl clientFlight
		log := &secretLog{clientHandshake: bytes.Clone(secret)}
		step := int(chunk%64) + 1
		for len(stream) > 0 && !fl.done {
			k := min(step, len(stream))
			fl.feed(stream[:k], log)
			stream = stream[k:]
			if len(fl.pending) > recordHeaderLen+maxCiphertext+step {
				t.Fatalf("%d bytes pending", len(fl.pending))
			}
		}
		if fl.ok && fl.records == 0 {
			t.Fatal("a flight of no records")
		}
	})
}
