package library

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Security review: a symlink under a blob's name (planted, or left by a restore that
// copied links) was served (Open followed it to any file the DP can read) and counted as
// held (Has), while Validate and Collect skip it as not a regular file, so it was never
// checked nor removed. The library holds regular files only.
func TestSymlinkIsNoBlob(t *testing.T) {
	l := newLib(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("not content"), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sumOf([]byte("a blob"))
	if err := os.MkdirAll(filepath.Dir(l.Path(sum)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, l.Path(sum)); err != nil {
		t.Fatal(err)
	}
	if l.Has(sum) {
		t.Error("Has counts a symlink as the blob")
	}
	if f, err := l.Open(sum); !errors.Is(err, ErrNotFound) {
		if f != nil {
			f.Close()
		}
		t.Errorf("Open of a symlink: %v, want ErrNotFound", err)
	}
	if n, complete, err := l.Received(sum); complete || err != nil {
		t.Errorf("Received of a symlink: %d %v %v", n, complete, err)
	}
}

// A symlink planted as an upload's part is never written through.
func TestSymlinkPartNotWrittenThrough(t *testing.T) {
	l := newLib(t)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := []byte("uploaded bytes")
	sum := sumOf(data)
	if err := os.MkdirAll(filepath.Dir(l.Path(sum)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, l.Path(sum)+PartSuffix); err != nil {
		t.Fatal(err)
	}
	_, _, err := l.Append(sum, 0, int64(len(data)), bytesReader(data))
	_, perr := l.Put(sum, bytesReader(data))
	if got, _ := os.ReadFile(victim); string(got) != "keep me" {
		t.Fatalf("the upload wrote through the symlink (Append: %v, Put: %v): %q", err, perr, got)
	}
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
