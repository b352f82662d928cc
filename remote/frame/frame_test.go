package frame

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	var b bytes.Buffer
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(Write(&b, Data, []byte("ls -l\r")))
	must(Write(&b, Resize, ResizePayload(40, 120)))
	must(Write(&b, Chat, []byte("你好 مرحبا")))
	must(WriteJSON(&b, Mode, ModeChange{Mode: "control"}))
	must(Write(&b, Ping, nil))
	r := NewReader(&b)
	f, err := r.Next()
	if err != nil || f.Type != Data || string(f.Payload) != "ls -l\r" {
		t.Fatalf("data: %v %v %q", err, f.Type, f.Payload)
	}
	f, _ = r.Next()
	if rows, cols, err := ParseResize(f.Payload); err != nil || rows != 40 || cols != 120 {
		t.Fatalf("resize: %d %d %v", rows, cols, err)
	}
	f, _ = r.Next()
	if f.Type != Chat || string(f.Payload) != "你好 مرحبا" {
		t.Fatalf("chat: %q", f.Payload)
	}
	f, _ = r.Next()
	var m ModeChange
	if err := DecodeJSON(f, &m); err != nil || m.Mode != "control" {
		t.Fatalf("mode: %v %+v", err, m)
	}
	if f, err := r.Next(); err != nil || f.Type != Ping {
		t.Fatalf("ping: %v", err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v, want EOF", err)
	}
}

func TestBadFrames(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"unknown type", Append(nil, Type(99), nil), ErrFrame},
		{"type zero", Append(nil, Type(0), nil), ErrFrame},
		{"data too large", []byte{byte(Data), 0, 0, 0x80, 1}, ErrFrame},
		{"length beyond 4 GiB is not read", []byte{byte(Chat), 0xff, 0xff, 0xff, 0xff}, ErrFrame},
		{"resize of 3 bytes", Append(nil, Resize, []byte{0, 1, 2}), ErrFrame},
		{"chat not UTF-8", Append(nil, Chat, []byte{0xff, 0xfe}), ErrFrame},
		{"ping with a body", Append(nil, Ping, []byte{1}), ErrFrame},
		{"cut in the header", []byte{byte(Data), 0}, io.ErrUnexpectedEOF},
		{"cut in the payload", []byte{byte(Data), 0, 0, 0, 5, 'a'}, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tc.in)).Next()
			if !errors.Is(err, tc.want) {
				t.Fatalf("Next = %v, want %v", err, tc.want)
			}
		})
	}
	if err := Write(io.Discard, Chat, make([]byte, MaxChat+1)); !errors.Is(err, ErrFrame) {
		t.Fatalf("writing an oversized chat: %v", err)
	}
	var m ModeChange
	if err := DecodeJSON(Frame{Type: Mode, Payload: []byte(`{"mode":"view","x":1}`)}, &m); !errors.Is(err, ErrFrame) {
		t.Fatalf("unknown JSON field: %v", err)
	}
	if _, _, err := ParseResize(ResizePayload(0, 80)); err == nil {
		t.Fatal("a resize to zero rows was taken")
	}
}

func FuzzReader(f *testing.F) {
	f.Add(Append(nil, Data, []byte("x")))
	f.Add(Append(Append(nil, Resize, ResizePayload(24, 80)), Chat, []byte("hi")))
	f.Add(Append(nil, Mode, []byte(`{"mode":"control"}`)))
	f.Add([]byte{byte(Data), 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		for {
			fr, err := r.Next()
			if err != nil {
				return
			}
			if len(fr.Payload) > limit(fr.Type) {
				t.Fatalf("%s of %d bytes passed", fr.Type, len(fr.Payload))
			}
			var v map[string]any
			_ = DecodeJSON(fr, &v)
		}
	})
}
