package dp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ibcm-project/ibcm/internal/listener"
)

// A blob goes out in pieces of copyBufs' size (32 KiB: two full TLS records, a read and two
// writes). A piece is read from the file only once the socket's send buffer has room for
// it (socketRoom, Linux), so the write that follows does not block and the buffer goes
// back to the pool at once: a client that reads slowly waits for room holding no buffer of
// the DP's (neither the piece nor crypto/tls's record buffer, which is only held during a
// write), while a fast client nearly always finds room, waits briefly when it does not,
// and gets full-size records from its first byte (4 KiB pieces for clients that had
// blocked were tried: 1.8-2.3x nginx's CPU at 8 streams). What a waiting download
// still holds is net/http's connection (bufio reader and writer), the TLS state and the
// handshake's certificates, and its goroutines' stacks.
//
// A blob socket starts with TCP_NOTSENT_LOWAT = sendLowat: the kernel then holds at most
// that much not yet sent (beside what is in flight) and counts the socket writable below
// half of it. Without it a slow client's socket takes megabytes (loopback: SO_SNDBUF grows
// to tcp_wmem's 4 MiB), a thousand of them drive TCP into memory pressure, and there a
// write blocks though the buffer has room — holding its piece. With it a thousand slow
// downloads hold about 270 MiB of kernel memory and each waits for room that it gets. A
// socket woken within fastWait of starting to wait belongs to a fast client: the mark is
// taken off (the kernel's default), so that it is woken once a third of its send buffer
// is free as before rather than for every 128 KiB (that cost 10-15 % more CPU per GiB);
// one that then waits slowWait or longer gets it back.
const (
	sendLowat  = 256 << 10
	fastWait   = 20 * time.Millisecond
	slowWait   = time.Second
	pieceSize  = 32 << 10
	pieceSlack = 2 << 10 // on top of a piece: the response headers and the TLS records' framing
	minPiece   = 4 << 10 // the least a piece is cut to when the kernel shrank the buffer
)

// piecesHeld counts the pieces being read or written at this moment (the tests check that
// a download waiting for room holds none); testHookWait, when set, runs as a socket
// starts waiting for room.
var (
	piecesHeld   atomic.Int64
	testHookWait func()
)

// connKey carries the accepted connection in each request's context (http.Server's
// ConnContext), for sendBlob to reach the socket.
type connKey struct{}

func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// rawConnOf is the socket under a request's connection (the TLS connection, the listener's
// limit wrapper, then the TCP connection), or nil where there is none to wait on.
func rawConnOf(r *http.Request) syscall.RawConn {
	if !canWaitRoom {
		return nil
	}
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// sendBlob writes length bytes of f from off to w, piece by piece, each once the socket
// (raw; nil: no waiting) has room for it. The room socketRoom finds is a budget spent by
// the pieces that follow (a fast client's socket has room for many: one look at it per
// few hundred KiB). A client is cut once a whole listener.SlowClient.Write passed without
// its acknowledging a byte (waitRoom) or finishing a write.
func sendBlob(w io.Writer, rc *http.ResponseController, raw syscall.RawConn, f io.ReaderAt, off, length int64) error {
	if raw == nil {
		w = deadlineWriter{w: w, rc: rc}
	}
	budget, lowat := 0, sendLowat
	if raw != nil {
		setLowat(raw, lowat)
	}
	for length > 0 {
		n := int(min(pieceSize, length))
		if raw != nil && budget < n+pieceSlack {
			room, err := waitRoom(rc, raw, n+pieceSlack, &lowat)
			if err != nil {
				return err
			}
			budget = room
			if fit := room - pieceSlack; fit < n {
				n = max(fit, min(minPiece, n))
			}
		}
		buf := copyBufs.Get().(*[]byte)
		piecesHeld.Add(1)
		k, err := f.ReadAt((*buf)[:n], off)
		if k == n {
			err = nil
		} else if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF // the blob is shorter than it was when the request began
		}
		if err == nil {
			_, err = w.Write((*buf)[:n])
		}
		copyBufs.Put(buf)
		piecesHeld.Add(-1)
		if err != nil {
			return err
		}
		off += int64(n)
		length -= int64(n)
		budget -= n + n>>8 // the bytes and their TLS framing (22 to 29 bytes per 16 KiB record)
	}
	return nil
}

// waitRoom waits until the socket has room for need bytes (socketRoom) under the write
// deadline, which it moves along as long as the client acknowledges bytes: a client that
// reads is never cut, however slowly its send buffer drains; one that stops is cut once a
// whole deadline passed without an acknowledged byte. The deadline it leaves is
// SlowClient.Write from when the room was found, for the writes of the budget. It takes
// the socket's TCP_NOTSENT_LOWAT off or puts it back (*lowat) by how long it waited.
func waitRoom(rc *http.ResponseController, raw syscall.RawConn, need int, lowat *int) (int, error) {
	start := time.Now()
	_ = rc.SetWriteDeadline(start.Add(listener.SlowClient.Write))
	for {
		room, queued, waited, err := socketRoom(raw, need, *lowat)
		if err == nil {
			if waited {
				now := time.Now()
				_ = rc.SetWriteDeadline(now.Add(listener.SlowClient.Write))
				switch d := now.Sub(start); {
				case d < fastWait && *lowat != 0:
					*lowat = 0
					setLowat(raw, 0)
				case d >= slowWait && *lowat == 0:
					*lowat = sendLowat
					setLowat(raw, sendLowat)
				}
			}
			return room, nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, err
		}
		if now, qerr := socketQueued(raw); qerr != nil || now >= queued {
			return 0, err
		}
		_ = rc.SetWriteDeadline(time.Now().Add(listener.SlowClient.Write))
	}
}
