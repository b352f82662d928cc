package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/wire"
)

type sample struct {
	Name string `json:"name"`
	N    int    `json:"n"`
}

func TestDecode(t *testing.T) {
	cases := []struct {
		name   string
		body   string
		status int // 0: accepted
	}{
		{"valid", `{"name":"a","n":1}`, 0},
		{"valid with spaces", " {\"name\":\"a\"}\n", 0},
		{"empty", ``, 400},
		{"not json", `name=a`, 400},
		{"unknown field", `{"name":"a","admin":true}`, 400},
		{"wrong type", `{"n":"one"}`, 400},
		{"trailing data", `{"name":"a"}{"name":"b"}`, 400},
		{"array", `[1,2]`, 400},
		{"too large", `{"name":"` + strings.Repeat("a", wire.MaxBody) + `"}`, 413},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body))
			var v sample
			err := Decode(httptest.NewRecorder(), r, &v)
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if got := StatusOf(err); got != tc.status {
				t.Fatalf("status = %d (%v), want %d", got, err, tc.status)
			}
			if err2 := DecodeBytes([]byte(tc.body), &v); StatusOf(err2) != tc.status {
				t.Errorf("DecodeBytes status = %d, want %d", StatusOf(err2), tc.status)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		status     int
		code, text string
	}{
		{"api error", Errorf(http.StatusForbidden, "token_used", "token %s already used", "abc"), 403, "token_used", "token abc already used"},
		{"wrapped api error", errors.Join(errors.New("ctx"), BadRequest("bad")), 400, "bad_request", "bad"},
		{"internal detail stays inside", errors.New("pq: password authentication failed for user x"), 500, "internal", "internal error"},
		{"overload", Errorf(http.StatusServiceUnavailable, "overloaded", "busy"), 503, "overloaded", "busy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			WriteError(w, tc.err)
			if w.Code != tc.status {
				t.Errorf("status = %d, want %d", w.Code, tc.status)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q", ct)
			}
			var body wire.Error
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", w.Body.String(), err)
			}
			if body.Error.Code != tc.code || body.Error.Message != tc.text {
				t.Errorf("body = %+v, want %s %q", body.Error, tc.code, tc.text)
			}
			if tc.status == 503 && w.Header().Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
		})
	}
}

// FuzzDecode: any body either decodes or yields a 4xx *Error; never a panic or a 500.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"name":"a","n":1}`, `{}`, `{"name":`, `[`, `{"n":1e999}`, "\x00", `{"name":"a"} x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var v sample
		if err := DecodeBytes(b, &v); err != nil {
			if s := StatusOf(err); s < 400 || s > 499 {
				t.Fatalf("status %d for %q: %v", s, b, err)
			}
		}
	})
}

func TestRedactPath(t *testing.T) {
	for in, want := range map[string]string{
		"/v1/admin/tokens/3f9a/revoke":           "/v1/admin/tokens/3f9a/revoke",
		"/v1/admin/tokens/ibcm_SECRETxyz/revoke": "/v1/admin/tokens/ibcm_<redacted>/revoke",
		"/a/ibcm_one/b/ibcm_two":                 "/a/ibcm_<redacted>/b/ibcm_<redacted>",
	} {
		if got := RedactPath(in); got != want {
			t.Errorf("RedactPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// ShedWhen turns the store's unavailability into a 503 with Retry-After and leaves other
// errors, and errors already meant for the caller, as they are.
func TestShedWhen(t *testing.T) {
	down := errors.New("connection refused")
	isDown := func(err error) bool { return errors.Is(err, down) }
	for _, tc := range []struct {
		name       string
		err        error
		status     int
		code       string
		retryAfter bool
	}{
		{"store down", fmt.Errorf("storing: %w", down), 503, "unavailable", true},
		{"other error", errors.New("bug"), 500, "internal", false},
		{"caller's error kept", Wrap(down, 400, "bad_request", "no"), 400, "bad_request", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := Handle(zerolog.Nop(), ShedWhen(isDown, func(http.ResponseWriter, *http.Request) error { return tc.err }))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
			var body wire.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != tc.status || body.Error.Code != tc.code {
				t.Fatalf("HTTP %d %s, want %d %s", rec.Code, rec.Body, tc.status, tc.code)
			}
			if got := rec.Header().Get("Retry-After") != ""; got != tc.retryAfter {
				t.Errorf("Retry-After present %v, want %v", got, tc.retryAfter)
			}
			if strings.Contains(rec.Body.String(), "refused") {
				t.Errorf("the cause reached the caller: %s", rec.Body)
			}
		})
	}
}

// DecodeOptional takes an empty body as "nothing given" and anything else by Decode's rules.
func TestDecodeOptional(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   string
		status int // 0: accepted
		want   string
	}{
		{"empty", ``, 0, "kept"},
		{"blank", " \n", 0, "kept"},
		{"object", `{"name":"a"}`, 0, "a"},
		{"cut", `{"name":`, 400, ""},
		{"unknown field", `{"admin":true}`, 400, ""},
		{"too large", `{"name":"` + strings.Repeat("a", wire.MaxBody) + `"}`, 413, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := sample{Name: "kept"}
			err := DecodeOptional(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body)), &v)
			if got := StatusOf(err); tc.status != 0 && got != tc.status || tc.status == 0 && err != nil {
				t.Fatalf("err = %v (status %d), want status %d", err, got, tc.status)
			}
			if tc.status == 0 && v.Name != tc.want {
				t.Errorf("name = %q, want %q", v.Name, tc.want)
			}
		})
	}
}
