package rfb

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// Client messages, byte for byte.
var (
	pixelFormat = []byte{0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0}
	// SetEncodings: ZRLE, Tight, ExtendedDesktopSize (-308), Raw, Cursor (-239), QEMU key (-258), extended clipboard.
	encodingsIn   = []byte{2, 0, 0, 7, 0, 0, 0, 16, 0, 0, 0, 7, 0xff, 0xff, 0xfe, 0xcc, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x11, 0xff, 0xff, 0xfe, 0xfe, 0xc0, 0xa1, 0xe5, 0xce}
	encodingsOut  = []byte{2, 0, 0, 4, 0, 0, 0, 16, 0, 0, 0, 7, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x11}
	updateRequest = []byte{3, 1, 0, 0, 0, 0, 0x05, 0, 0x03, 0x20}
	keyEvent      = []byte{4, 1, 0, 0, 0, 0, 0, 'a'}
	pointerEvent  = []byte{5, 1, 0, 10, 0, 20}
	cutText       = []byte{6, 0, 0, 0, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'}
	continuous    = []byte{150, 1, 0, 0, 0, 0, 0x05, 0, 0x03, 0x20}
	fence         = []byte{248, 0, 0, 0, 0x80, 0, 0, 0x03, 2, 'h', 'i'}
)

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func filter(t *testing.T, f *Filter, in []byte) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	err := f.Copy(&out, bytes.NewReader(in))
	return out.Bytes(), err
}

func TestFilterView(t *testing.T) {
	var dropped []byte
	f := &Filter{Dropped: func(m byte) { dropped = append(dropped, m) }, Clipboard: func([]byte) bool { return true }}
	in := cat(pixelFormat, encodingsIn, updateRequest, keyEvent, pointerEvent, cutText, continuous, fence, updateRequest)
	out, err := filter(t, f, in)
	if err != nil {
		t.Fatal(err)
	}
	want := cat(pixelFormat, encodingsOut, updateRequest, continuous, fence, updateRequest)
	if !bytes.Equal(out, want) {
		t.Fatalf("view mode passed\n%v\nwant\n%v", out, want)
	}
	if !bytes.Equal(dropped, []byte{4, 5, 6}) {
		t.Fatalf("dropped %v, want key, pointer, cut text", dropped)
	}
}

func TestFilterControl(t *testing.T) {
	control := func() Mode { return Control }
	in := cat(pixelFormat, encodingsIn, keyEvent, pointerEvent, cutText, updateRequest)
	t.Run("clipboard refused", func(t *testing.T) {
		var asked []byte
		out, err := filter(t, &Filter{Mode: control, Clipboard: func(p []byte) bool { asked = append(asked, p...); return false }}, in)
		if err != nil {
			t.Fatal(err)
		}
		if want := cat(pixelFormat, encodingsOut, keyEvent, pointerEvent, updateRequest); !bytes.Equal(out, want) {
			t.Fatalf("passed %v, want %v", out, want)
		}
		if string(asked) != "hello" {
			t.Fatalf("clipboard asked about %q", asked)
		}
	})
	t.Run("clipboard allowed", func(t *testing.T) {
		out, err := filter(t, &Filter{Mode: control, Clipboard: func([]byte) bool { return true }}, in)
		if err != nil {
			t.Fatal(err)
		}
		if want := cat(pixelFormat, encodingsOut, keyEvent, pointerEvent, cutText, updateRequest); !bytes.Equal(out, want) {
			t.Fatalf("passed %v, want %v", out, want)
		}
	})
	t.Run("no clipboard policy", func(t *testing.T) {
		out, err := filter(t, &Filter{Mode: control}, in)
		if err != nil {
			t.Fatal(err)
		}
		if want := cat(pixelFormat, encodingsOut, keyEvent, pointerEvent, updateRequest); !bytes.Equal(out, want) {
			t.Fatalf("passed %v, want %v", out, want)
		}
	})
}

// The mode is read per message: a switch takes effect at the next one.
func TestFilterModeSwitch(t *testing.T) {
	mode := View
	f := &Filter{Mode: func() Mode { return mode }, Dropped: func(byte) { mode = Control }}
	out, err := filter(t, f, cat(keyEvent, keyEvent))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, keyEvent) {
		t.Fatalf("passed %v, want one key event", out)
	}
}

func TestFilterEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"qemu key event", []byte{255, 0, 0, 1, 0, 0, 0, 'a', 0, 0, 0, 30}, ErrForbidden},
		{"xvp", []byte{250, 0, 1, 2}, ErrForbidden},
		{"set desktop size", []byte{251, 0, 4, 0, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 3, 0, 0, 0, 0, 0}, ErrForbidden},
		{"unknown", []byte{7}, ErrForbidden},
		{"unknown high", []byte{127}, ErrForbidden},
		{"too many encodings", []byte{2, 0, 1, 1}, ErrTooLarge},
		{"cut text too long", []byte{6, 0, 0, 0, 0, 0x10, 0, 1}, ErrTooLarge},
		{"extended clipboard", []byte{6, 0, 0, 0, 0xff, 0xff, 0xff, 0xf0}, ErrTooLarge},
		{"fence too long", []byte{248, 0, 0, 0, 0, 0, 0, 0, 65}, ErrTooLarge},
		{"cut inside pixel format", pixelFormat[:10], io.ErrUnexpectedEOF},
		{"cut inside encodings", encodingsIn[:9], io.ErrUnexpectedEOF},
		{"cut inside encodings header", encodingsIn[:2], io.ErrUnexpectedEOF},
		{"cut inside cut text", cutText[:10], io.ErrUnexpectedEOF},
		{"cut inside fence", fence[:10], io.ErrUnexpectedEOF},
		{"cut inside key event", keyEvent[:3], io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, mode := range []Mode{View, Control} {
				// A good message before the bad one passes; nothing after it is read.
				out, err := filter(t, &Filter{Mode: func() Mode { return mode }}, cat(updateRequest, tc.in, updateRequest))
				if tc.want == io.ErrUnexpectedEOF {
					out, err = filter(t, &Filter{Mode: func() Mode { return mode }}, cat(updateRequest, tc.in))
				}
				if !errors.Is(err, tc.want) {
					t.Fatalf("%s: error %v, want %v", mode, err, tc.want)
				}
				if !bytes.Equal(out, updateRequest) {
					t.Fatalf("%s: passed %v, want the first update request only", mode, out)
				}
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	for _, e := range []int32{0, 1, 2, 5, 7, 8, 15, 16, -223, -224, -239, -23, -32, -247, -256, -312, -313} {
		if !Allowed(e) {
			t.Errorf("encoding %d removed", e)
		}
	}
	for _, e := range []int32{3, 6, 9, 21, -1, -22, -33, -246, -257, -258, -259, -305, -307, -308, -309, -314, -1063131698} {
		if Allowed(e) {
			t.Errorf("encoding %d kept", e)
		}
	}
}

// Messages split across writes anywhere come out whole, one Write each.
func TestFilterSplitWrites(t *testing.T) {
	in := cat(pixelFormat, encodingsIn, updateRequest, keyEvent, pointerEvent, cutText, continuous, fence, updateRequest)
	want := cat(pixelFormat, encodingsOut, updateRequest, continuous, fence, updateRequest)
	var writes [][]byte
	f := &Filter{Dst: writerFunc(func(p []byte) (int, error) { writes = append(writes, append([]byte(nil), p...)); return len(p), nil })}
	for i := range in {
		if _, err := f.Write(in[i : i+1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := cat(writes...); !bytes.Equal(got, want) {
		t.Fatalf("passed %v, want %v", got, want)
	}
	if len(writes) != 6 {
		t.Fatalf("%d writes, want one per message passed (6)", len(writes))
	}
}

// An error is sticky: nothing after a refused message reaches the server.
func TestFilterErrorSticky(t *testing.T) {
	var out bytes.Buffer
	f := &Filter{Dst: &out}
	if _, err := f.Write([]byte{250}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("xvp: %v", err)
	}
	if _, err := f.Write(updateRequest); !errors.Is(err, ErrForbidden) || out.Len() != 0 {
		t.Fatalf("after the error: %v, %d bytes passed", err, out.Len())
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }
