package pull

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest/manifesttest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// forgetfulLibrary never says it holds a blob (a library whose index and paths disagree,
// or that quarantines what arrives), while fetch.Get finds the blob already at its path.
type forgetfulLibrary struct {
	dirLibrary
	paths atomic.Int64
}

func (l *forgetfulLibrary) Has(string) bool { return false }
func (l *forgetfulLibrary) Path(sum string) string {
	l.paths.Add(1)
	return l.dirLibrary.Path(sum)
}

// Security review: a download that succeeds but leaves the library without the blob is a
// failure with backoff, not a reason to download again at once (a tight loop re-hashing
// the blob each time).
func TestNoSpinWhenLibraryLacksFetchedBlob(t *testing.T) {
	ca := manifesttest.New(t, "TEST")
	key, cert := ca.Key, ca.Cert
	files := randomFiles(1, 2*testChunk)
	s := newDP(t, files)
	lib := &forgetfulLibrary{dirLibrary: dirLibrary{t.TempDir()}}
	reports := make(chan wire.DPPackageState, 10000)
	p := New(Options{Library: lib, Client: s.Client(), Trust: ca.Trust(), StartJitter: -1, MinBackoff: time.Minute,
		Report: func(st wire.DPPackageState) {
			select {
			case reports <- st:
			default:
			}
		}})
	p.Set([]wire.DPPackage{pkgOf(t, "app", files, key, cert)}, []Source{{URL: s.URL, Priority: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	timeout := time.After(10 * time.Second)
	for failed := false; !failed; {
		select {
		case st := <-reports:
			failed = st.State == wire.DPFailed
		case <-timeout:
			t.Fatalf("never failed; %d downloads; states %+v", lib.paths.Load(), p.States())
		}
	}
	time.Sleep(300 * time.Millisecond) // would a loop go on?
	if n := lib.paths.Load(); n > 2 {
		t.Fatalf("%d downloads of one blob", n)
	}
	if st := p.States(); len(st) != 1 || !strings.Contains(st[0].Error, "library") {
		t.Fatalf("states %+v", st)
	}
}
