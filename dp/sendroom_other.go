//go:build !linux

package dp

import "syscall"

// canWaitRoom: elsewhere the copy does not wait for room first (sendroom.go); a write to a
// slow client blocks holding its piece, as any write does.
const canWaitRoom = false

func socketRoom(syscall.RawConn, int, int) (room, queued int, waited bool, err error) {
	return 0, 0, false, nil
}

func socketQueued(syscall.RawConn) (int, error) { return 0, nil }

func setLowat(syscall.RawConn, int) {}
