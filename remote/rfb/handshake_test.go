package rfb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
)

var testInit = func() ServerInit {
	b := binary.BigEndian.AppendUint16(nil, 640)
	b = binary.BigEndian.AppendUint16(b, 480)
	b = append(b, pixelFormat[4:]...)
	b = binary.BigEndian.AppendUint32(b, 4)
	return ServerInit(append(b, "desk"...))
}()

// Dial against Accept: the viewer's password opens the port and the ServerInit comes
// through unchanged; a wrong one gets the failure and its reason.
func TestDialAccept(t *testing.T) {
	for _, tc := range []struct {
		name, password string
		want           error
	}{
		{"right", "s3cretpw", nil},
		{"longer than 8 counts 8", "s3cretpwIGNORED", nil},
		{"wrong", "s3cretpX", ErrAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			done := make(chan error, 1)
			go func() {
				shared, err := Accept(a, "s3cretpw", func() (ServerInit, error) { return testInit, nil }, nil)
				if err == nil && !shared {
					err = errors.New("not shared")
				}
				if err != nil {
					a.Close()
				}
				done <- err
			}()
			si, err := Dial(b, tc.password)
			if !errors.Is(err, tc.want) {
				t.Fatalf("dial: %v, want %v", err, tc.want)
			}
			if err := <-done; !errors.Is(err, tc.want) {
				t.Fatalf("accept: %v, want %v", err, tc.want)
			}
			if tc.want == nil {
				if !bytes.Equal(si, testInit) || si.Name() != "desk" {
					t.Fatalf("ServerInit %v", si)
				}
				if w, h := si.Size(); w != 640 || h != 480 {
					t.Fatalf("size %dx%d", w, h)
				}
			} else if !strings.Contains(err.Error(), "wrong password") {
				t.Fatalf("the reason: %v", err)
			}
		})
	}
}

// Accept refuses what is not RFB 3.7/3.8 with VNC Authentication, before any ServerInit.
func TestAcceptRefuses(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"old version", "RFB 003.003\n"},
		{"not rfb", "GET / HTTP/1.1\r\n"},
		{"security none", "RFB 003.008\n\x01"},
		{"cut", "RFB 003.008\n\x02short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			called := false
			var out bytes.Buffer
			_, err := Accept(struct {
				io.Reader
				io.Writer
			}{strings.NewReader(tc.in), &out}, "pw", func() (ServerInit, error) { called = true; return testInit, nil }, nil)
			if err == nil || called {
				t.Fatalf("accepted (%v), init called %v", err, called)
			}
		})
	}
}

func TestParseServerInit(t *testing.T) {
	if _, err := ParseServerInit(testInit); err != nil {
		t.Fatal(err)
	}
	long := append(append([]byte(nil), testInit[:20]...), 0, 0, 0x10, 1)
	for _, p := range [][]byte{testInit[:10], testInit[:len(testInit)-1], long} {
		if _, err := ParseServerInit(p); !errors.Is(err, ErrHandshake) {
			t.Errorf("%v: %v", p, err)
		}
	}
	if _, err := ReadServerInit(bytes.NewReader(long)); !errors.Is(err, ErrHandshake) {
		t.Errorf("a name over the limit: %v", err)
	}
}

func TestNewPassword(t *testing.T) {
	p, err := NewPassword(nil)
	if err != nil || len(p) != 8 || strings.Trim(p, passwordAlphabet) != "" {
		t.Fatalf("%q %v", p, err)
	}
	if q, _ := NewPassword(nil); q == p {
		t.Fatal("the same password twice")
	}
}

// FuzzAccept feeds a viewer's bytes to Accept: it never panics, and never sends the
// ServerInit to a viewer that did not answer the challenge.
func FuzzAccept(f *testing.F) {
	f.Add([]byte("RFB 003.008\n\x02" + strings.Repeat("x", 16) + "\x01"))
	f.Add([]byte("RFB 003.007\n\x02"))
	f.Add([]byte("RFB 003.008\n\x01"))
	f.Fuzz(func(t *testing.T, in []byte) {
		zero := bytes.NewReader(make([]byte, 16)) // a fixed challenge
		_, err := Accept(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(in), io.Discard}, "pw", func() (ServerInit, error) { return testInit, nil }, zero)
		if err == nil {
			c := EncryptChallenge("pw", [16]byte{})
			if len(in) < 29 || !bytes.Equal(in[13:29], c[:]) {
				t.Fatal("accepted a viewer without the password's response")
			}
		}
	})
}

// AcceptNone offers security None only: Dial (which takes None when offered) gets the
// ServerInit; a viewer choosing VNC Authentication is refused before it; 3.7 gets no
// SecurityResult.
func TestAcceptNone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() {
		_, err := AcceptNone(a, func() (ServerInit, error) { return testInit, nil })
		done <- err
	}()
	si, err := Dial(b, "")
	if err != nil || !bytes.Equal(si, testInit) {
		t.Fatalf("dial: %v %v", si, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, in string
		ok       bool
		out      string
	}{
		{"vnc auth chosen", "RFB 003.008\n\x02", false, "RFB 003.008\n\x01\x01"},
		{"3.7", "RFB 003.007\n\x01\x01", true, "RFB 003.008\n\x01\x01" + string(testInit)},
		{"3.8", "RFB 003.008\n\x01\x00", true, "RFB 003.008\n\x01\x01\x00\x00\x00\x00" + string(testInit)},
		{"cut", "RFB 003.008\n", false, "RFB 003.008\n\x01\x01"},
	} {
		var out bytes.Buffer
		_, err := AcceptNone(struct {
			io.Reader
			io.Writer
		}{strings.NewReader(tc.in), &out}, func() (ServerInit, error) { return testInit, nil })
		if (err == nil) != tc.ok || out.String() != tc.out {
			t.Errorf("%s: %v, sent %q", tc.name, err, out.String())
		}
	}
}
