package rfb

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzFilter checks that whatever a viewer sends, the filter ends cleanly or with an error,
// and that in view mode what it passes is only the allowed messages, whole: run the
// output through the filter again and it comes out the same, with nothing dropped.
func FuzzFilter(f *testing.F) {
	for _, s := range [][]byte{pixelFormat, encodingsIn, updateRequest, keyEvent, pointerEvent, cutText, continuous, fence,
		cat(pixelFormat, encodingsIn, updateRequest, keyEvent, pointerEvent, cutText, continuous, fence),
		{255, 0}, {250}, {251}, {2, 0, 1, 1}, {6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in []byte, control bool) {
		mode := View
		if control {
			mode = Control
		}
		var out bytes.Buffer
		err := (&Filter{Mode: func() Mode { return mode }, Clipboard: func([]byte) bool { return true }}).Copy(&out, bytes.NewReader(in))
		if err != nil && !errors.Is(err, ErrForbidden) && !errors.Is(err, ErrTooLarge) && err != io.ErrUnexpectedEOF {
			t.Fatalf("unexpected error %v", err)
		}
		if out.Len() > len(in) {
			t.Fatalf("passed %d bytes of %d", out.Len(), len(in))
		}
		var again bytes.Buffer
		dropped := false
		err = (&Filter{Mode: func() Mode { return mode }, Clipboard: func([]byte) bool { return true }, Dropped: func(byte) { dropped = true }}).Copy(&again, bytes.NewReader(out.Bytes()))
		if err != nil || !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatalf("the filter's output does not pass again whole: %v", err)
		}
		if mode == View && dropped {
			t.Fatal("view mode passed a message view mode drops")
		}
	})
}
