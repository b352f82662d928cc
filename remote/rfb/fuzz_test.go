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

// FuzzAcceptNone is the console's handshake with noVNC (security None) against whatever a
// viewer sends: it ends cleanly or with an error, and the device's ServerInit goes out only
// after a well-formed RFB 3.7/3.8 version, the one security type offered, and a ClientInit.
func FuzzAcceptNone(f *testing.F) {
	for _, s := range [][]byte{[]byte("RFB 003.008\n\x01\x01"), []byte("RFB 003.007\n\x01\x00"), []byte("RFB 003.008\n\x02\x01"),
		[]byte("RFB 003.003\n"), []byte("RFB 003.008\n"), {}, []byte("GET / HTTP/1.1\r\n\r\n")} {
		f.Add(s)
	}
	si := ServerInit(append(make([]byte, 20), 0, 0, 0, 4, 'd', 'e', 's', 'k'))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		called := false
		_, err := AcceptNone(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(in), &out}, func() (ServerInit, error) { called = true; return si, nil })
		wellFormed := len(in) >= 14 && (string(in[:12]) == "RFB 003.008\n" || string(in[:12]) == "RFB 003.007\n") && in[12] == SecNone
		if called != wellFormed {
			t.Fatalf("ServerInit asked for %v, the viewer's handshake well formed %v: %q", called, wellFormed, in)
		}
		if (err == nil) != wellFormed || err == nil && !bytes.HasSuffix(out.Bytes(), si) {
			t.Fatalf("%q: %v, wrote %q", in, err, out.Bytes())
		}
	})
}
