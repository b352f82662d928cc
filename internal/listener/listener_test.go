package listener

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/api"
)

func TestShedderSheds(t *testing.T) {
	s := NewShedder(2)
	r1, ok1 := s.Acquire()
	r2, ok2 := s.Acquire()
	if !ok1 || !ok2 {
		t.Fatal("the first two requests were shed")
	}
	if _, ok := s.Acquire(); ok {
		t.Fatal("a third request at once was let in")
	}
	r1()
	r3, ok := s.Acquire()
	if !ok {
		t.Fatal("a freed slot was not reused")
	}
	r2()
	r3()
	var none *Shedder
	if _, ok := none.Acquire(); !ok {
		t.Fatal("a nil shedder shed")
	}
	if _, ok := NewShedder(0).Acquire(); !ok {
		t.Fatal("an unlimited shedder shed")
	}
}

// Overloaded is a 503 with Retry-After and the JSON error body.
func TestOverloaded(t *testing.T) {
	w := httptest.NewRecorder()
	api.Handle(zerolog.Nop(), func(http.ResponseWriter, *http.Request) error { return Overloaded("the test") }).
		ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	var body struct{ Error struct{ Code string } }
	b, _ := io.ReadAll(w.Body)
	if w.Code != 503 || w.Header().Get("Retry-After") == "" || json.Unmarshal(b, &body) != nil || body.Error.Code != "overloaded" {
		t.Fatalf("%d %v %s", w.Code, w.Header(), b)
	}
}

// A server listens with its limits and serves until it is closed.
func TestListenServe(t *testing.T) {
	s := &Server{Role: "test", Addr: "127.0.0.1:0", MaxConns: 4, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	if s.HTTP.ReadHeaderTimeout != SlowClient.Header || s.HTTP.IdleTimeout != SlowClient.Idle || s.HTTP.MaxHeaderBytes != 16<<10 {
		t.Fatalf("timeouts: %+v", s.HTTP)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(zerolog.Nop()) }()
	resp, err := http.Get("http://" + s.Listener.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("%q", b)
	}
	s.HTTP.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
}
