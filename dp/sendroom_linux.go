//go:build linux

package dp

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The SO_MEMINFO fields read (linux/sock_diag.h).
const (
	meminfoSndbuf     = 3 // SK_MEMINFO_SNDBUF
	meminfoWmemQueued = 5 // SK_MEMINFO_WMEM_QUEUED
	meminfoVars       = 9 // SK_MEMINFO_VARS
)

// canWaitRoom: this platform waits for room in the socket's send buffer (sendroom.go).
const canWaitRoom = true

// setLowat sets TCP_NOTSENT_LOWAT on a blob's socket; 0 restores the kernel's default (none).
func setLowat(raw syscall.RawConn, lowat int) {
	_ = raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, lowat)
	})
}

// socketRoom waits until the TCP socket behind raw has room for need more bytes, or the
// kernel counts the socket writable (then room may be less than need), and returns the
// room and what the socket holds unacknowledged (SIOCOUTQ, for the caller's progress
// check). It holds nothing while it waits. The write deadline bounds the wait.
//
// The room is what a write surely gets in without blocking: half of what the send buffer
// has free by the kernel's own accounting (SO_MEMINFO: SO_SNDBUF less the queued buffers'
// true size, which exceeds the bytes they carry), and, where TCP_NOTSENT_LOWAT is set
// (lowat), no more than that less the bytes not yet sent (SIOCOUTQNSD): past it a write
// blocks too.
//
// EPOLLOUT is edge-triggered in Go's poller and Linux raises the edge only when a socket
// turns writable after a writer found it full (SOCK_NOSPACE). So the wait starts only once
// poll(2) says the socket is not writable — tcp_poll sets SOCK_NOSPACE as it says so, which
// makes the freed space wake the poller — and a writable socket short of need is answered
// at once with the room it has. A writable socket has a third of its buffer free and less
// than half of the low-water mark unsent, so a short answer means a send buffer below
// about 6 × need (a new connection's on a slow network, or one the kernel shrank under
// memory pressure); the piece is cut to fit it.
func socketRoom(raw syscall.RawConn, need, lowat int) (room, queued int, waited bool, err error) {
	err = raw.Write(func(fd uintptr) bool {
		// A socket that cannot be measured (an old kernel) is written to as if it had room.
		blind := func() bool { room = need; return true }
		var mi [meminfoVars]uint32
		n := uint32(unsafe.Sizeof(mi))
		if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO, uintptr(unsafe.Pointer(&mi)), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
			return blind()
		}
		room = (int(mi[meminfoSndbuf]) - int(mi[meminfoWmemQueued])) / 2
		if lowat > 0 {
			unsent, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQNSD)
			if err != nil {
				return blind()
			}
			room = min(room, lowat-unsent)
		}
		if room >= need {
			return true
		}
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		k, err := unix.Poll(p, 0)
		if err != nil {
			return blind() // EINTR included: never wait without knowing the edge will come
		}
		if k > 0 && p[0].Revents != 0 {
			return true // writable (or an error the write will report): go on with the room there is
		}
		if queued, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err != nil {
			return blind()
		}
		waited = true
		if testHookWait != nil {
			testHookWait()
		}
		return false
	})
	return room, queued, waited, err
}

// socketQueued is what the socket holds unacknowledged now (SIOCOUTQ); it does not wait.
func socketQueued(raw syscall.RawConn) (queued int, err error) {
	cerr := raw.Control(func(fd uintptr) { queued, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
	if cerr != nil {
		return 0, cerr
	}
	return queued, err
}
