package logging

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// openPTY opens a pseudo-terminal: the master to read what was written, the terminal
// itself to write to.
func openPTY(t *testing.T) (ptmx, tty *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("unlocking the pty: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Fatalf("naming the pty: %v", e)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	return ptmx, tty
}

// On a terminal, auto means the console writer, and json still means JSON (Linux: the
// test opens a pseudo-terminal).
func TestNewOnATerminal(t *testing.T) {
	ptmx, tty := openPTY(t)
	for _, tc := range []struct {
		format string
		json   bool
	}{{"", false}, {"json", true}} {
		l, err := New(tty, "info", tc.format)
		if err != nil {
			t.Fatal(err)
		}
		l.Info().Str(FieldDeviceID, "d-1").Msg("hello")
		buf := make([]byte, 4096)
		n, err := ptmx.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		out := strings.TrimSpace(string(buf[:n]))
		if isJSON := json.Unmarshal([]byte(out), new(map[string]any)) == nil; isJSON != tc.json || !strings.Contains(out, "hello") {
			t.Errorf("format %q on a terminal wrote %q", tc.format, out)
		}
	}
}
