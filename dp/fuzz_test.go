package dp

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/wire"
)

// FuzzParseRange: whatever the header, a served range lies inside the blob and is not empty.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-0", "bytes=5-", "bytes=-5", "bytes=0-1,2-3", "bytes=9-3", "bytes=-0", "bytes= 1-2", "items=1-2",
		"bytes=99999999999999999999-", "bytes=-99999999999999999999", "bytes=1-2-3", "bytes=+1-2", "bytes=0x1-2", ""} {
		f.Add(s, int64(10))
		f.Add(s, int64(0))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -size
		}
		if size < 0 { // MinInt64
			return
		}
		r, outcome := parseRange(h, size)
		switch outcome {
		case rangeOK:
			if r.Start < 0 || r.Length < 1 || r.Start+r.Length > size || r.Start+r.Length < r.Start {
				t.Fatalf("parseRange(%q, %d) = %+v", h, size, r)
			}
		case rangeNone, rangeUnsatisfiable:
		default:
			t.Fatalf("outcome %d", outcome)
		}
	})
}

// FuzzContentPath: any path under /v1/content/ either serves exactly the blob it names
// from the library or is refused; nothing outside the library is ever read.
func FuzzContentPath(f *testing.F) {
	p := newPKI(f)
	_ = p
	f.Add("/v1/content/" + sha([]byte("blob")))
	f.Add("/v1/content/../../etc/passwd")
	f.Add("/v1/content/%2e%2e%2fstate%2ffeed.json")
	f.Add("/v1/content/state/feed.json")
	f.Add("/v1/content/" + strings.Repeat("a", 64))
	f.Add("/v1/content/" + strings.Repeat("A", 64))
	f.Add("/v1/content//" + sha([]byte("blob")))
	f.Add("/v1/manifests/../content/x")
	dir := f.TempDir()
	s := settingsFor(p, nil, dir)
	d, err := New(Options{Settings: s, Log: zerolog.Nop()})
	if err != nil {
		f.Fatal(err)
	}
	d.apply(wire.DPEvent{Type: wire.DPEventSnapshot})
	data := []byte("blob")
	sum := sha(data)
	if _, err := d.Library().Put(sum, bytes.NewReader(data)); err != nil {
		f.Fatal(err)
	}
	h := d.handler("dp-intranet")
	dev := p.client(f, "device")
	f.Fuzz(func(t *testing.T, path string) {
		u, err := url.ParseRequestURI(path)
		if err != nil || !strings.HasPrefix(path, "/") {
			return
		}
		req := &http.Request{Method: http.MethodGet, URL: u, RequestURI: path, Header: http.Header{}, Host: "dp",
			TLS: &tls.ConnectionState{PeerCertificates: []*x509.Certificate{dev.leaf}}}
		req = req.WithContext(t.Context())
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		switch w.Code {
		case http.StatusOK, http.StatusPartialContent:
			if u.Path != "/v1/content/"+sum && u.Path != "/healthz" {
				t.Fatalf("%q served %d", path, w.Code)
			}
			if u.Path != "/healthz" && !bytes.Equal(w.Body.Bytes(), data) {
				t.Fatalf("%q served other bytes", path)
			}
		case http.StatusBadRequest, http.StatusNotFound, http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusMethodNotAllowed, http.StatusForbidden:
		default:
			t.Fatalf("%q: status %d", path, w.Code)
		}
	})
}
