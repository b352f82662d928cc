package library

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func sumOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func newLib(t *testing.T, opts ...Option) *Library {
	t.Helper()
	l, err := Open(filepath.Join(t.TempDir(), "content"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestPutPathHasOpen(t *testing.T) {
	l := newLib(t)
	data := []byte("hello, library")
	sum := sumOf(data)
	if l.Has(sum) {
		t.Fatal("empty library has the blob")
	}
	if want := filepath.Join(l.Dir(), sum[:2], sum[2:4], sum); l.Path(sum) != want {
		t.Fatalf("Path = %s, want %s", l.Path(sum), want)
	}
	if _, err := l.Put(sum, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if !l.Has(sum) {
		t.Fatal("Has after Put = false")
	}
	f, err := l.Open(sum)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %q", got)
	}
	if _, err := os.Stat(l.Path(sum) + PartSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a part is left beside the blob: %v", err)
	}
	if _, err := l.Open(sumOf([]byte("other"))); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open of a missing blob: %v", err)
	}
	for _, bad := range []string{"", "../../etc/passwd", sum[:63], sum + "0", "G" + sum[1:], "AB" + sum[2:]} {
		if l.Has(bad) {
			t.Errorf("Has(%q) = true", bad)
		}
		if _, err := l.Open(bad); !errors.Is(err, ErrBadHash) {
			t.Errorf("Open(%q): %v", bad, err)
		}
	}
}

func TestPutRefusesAWrongHash(t *testing.T) {
	l := newLib(t)
	sum := sumOf([]byte("the real content"))
	if _, err := l.Put(sum, bytes.NewReader([]byte("something else"))); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("Put with wrong content: %v", err)
	}
	if l.Has(sum) {
		t.Fatal("a blob with the wrong content is under the hash name")
	}
	if _, err := os.Stat(l.Path(sum) + PartSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bad part is kept: %v", err)
	}
}

// TestCrashHalfwayLeavesNoBlob kills a process in the middle of writing a blob: no file is
// under the hash name afterwards, and a new write completes.
func TestCrashHalfwayLeavesNoBlob(t *testing.T) {
	if os.Getenv("LIBRARY_CRASH_DIR") != "" {
		crashHelper()
		return
	}
	dir := filepath.Join(t.TempDir(), "content")
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	sum := sumOf(data)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHalfwayLeavesNoBlob$")
	cmd.Env = append(os.Environ(), "LIBRARY_CRASH_DIR="+dir, "LIBRARY_CRASH_SUM="+sum)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "halfway\n" {
		cmd.Process.Kill()
		t.Fatalf("helper said %q, %v", line, err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	l, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.Path(sum)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after a crash halfway, something is under the hash name: %v", err)
	}
	if l.Has(sum) {
		t.Fatal("Has = true after a crash halfway")
	}
	if fi, err := os.Stat(l.Path(sum) + PartSuffix); err != nil || fi.Size() == 0 {
		t.Errorf("expected the half-written part beside it: %v", err)
	}
	if _, err := l.Put(sum, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if !l.Has(sum) {
		t.Fatal("the blob is not there after a new write")
	}
}

// crashHelper writes half of the 1 MiB blob, says so, and blocks until it is killed.
func crashHelper() {
	l, err := Open(os.Getenv("LIBRARY_CRASH_DIR"))
	if err != nil {
		os.Exit(3)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10)
	r := io.MultiReader(bytes.NewReader(data[:len(data)/2]), readerFunc(func([]byte) (int, error) {
		os.Stdout.WriteString("halfway\n")
		select {} // killed here
	}))
	_, _ = l.Put(os.Getenv("LIBRARY_CRASH_SUM"), r)
	os.Exit(4)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestAppendResumes(t *testing.T) {
	l := newLib(t)
	data := bytes.Repeat([]byte("resumable "), 10000)
	sum := sumOf(data)
	size := int64(len(data))

	// The first request breaks off after 30000 bytes.
	n, complete, err := l.Append(sum, 0, size, io.MultiReader(bytes.NewReader(data[:30000]), errReader{}))
	if err == nil || complete || n != 30000 {
		t.Fatalf("broken first request: n=%d complete=%v err=%v", n, complete, err)
	}
	if got, done, _ := l.Received(sum); got != 30000 || done {
		t.Fatalf("Received = %d, %v", got, done)
	}
	// Resuming anywhere else is refused.
	if _, _, err := l.Append(sum, 100, size, bytes.NewReader(data[100:])); !errors.Is(err, ErrOffset) {
		t.Fatalf("Append at a wrong offset: %v", err)
	}
	// A second piece, then the rest.
	if n, complete, err = l.Append(sum, 30000, size, bytes.NewReader(data[30000:60000])); err != nil || complete || n != 60000 {
		t.Fatalf("second piece: n=%d complete=%v err=%v", n, complete, err)
	}
	if n, complete, err = l.Append(sum, 60000, size, bytes.NewReader(data[60000:])); err != nil || !complete || n != size {
		t.Fatalf("last piece: n=%d complete=%v err=%v", n, complete, err)
	}
	if !l.Has(sum) {
		t.Fatal("not in the library once complete")
	}
	// Appending to a complete blob says so.
	if _, complete, err := l.Append(sum, 0, size, bytes.NewReader(data)); err != nil || !complete {
		t.Fatalf("Append to a complete blob: %v %v", complete, err)
	}
}

func TestAppendBadHashAndTooLong(t *testing.T) {
	l := newLib(t)
	data := []byte("twelve bytes")
	sum := sumOf(data)
	wrong := []byte("TWELVE BYTES")
	if _, _, err := l.Append(sum, 0, int64(len(data)), bytes.NewReader(wrong)); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("wrong content: %v", err)
	}
	if _, err := os.Stat(l.Path(sum) + PartSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the part of a bad upload is kept: %v", err)
	}
	if _, _, err := l.Append(sum, 0, int64(len(data)), bytes.NewReader(append(data, 'x'))); !errors.Is(err, ErrTooLong) {
		t.Fatalf("too long: %v", err)
	}
	if l.Has(sum) {
		t.Fatal("blob present after a too-long upload")
	}
	for _, c := range []struct{ off, size int64 }{{-1, 5}, {6, 5}, {0, -1}} {
		if _, _, err := l.Append(sum, c.off, c.size, bytes.NewReader(nil)); !errors.Is(err, ErrOffset) {
			t.Errorf("offset %d size %d: %v", c.off, c.size, err)
		}
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestValidateQuarantines(t *testing.T) {
	l := newLib(t)
	good, bad := []byte("good blob"), []byte("bad blob")
	gs, bs := sumOf(good), sumOf(bad)
	for _, b := range [][]byte{good, bad} {
		if _, err := l.Put(sumOf(b), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	// Flip a byte of one blob on disk.
	if err := os.WriteFile(l.Path(bs), []byte("bad blOb"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Things that are not blobs stay alone.
	os.MkdirAll(filepath.Join(l.Dir(), "state"), 0o700)
	os.WriteFile(filepath.Join(l.Dir(), "state", "feed.json"), []byte("{}"), 0o600)
	got, err := l.Validate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != bs {
		t.Fatalf("Validate = %v, want [%s]", got, bs)
	}
	if l.Has(bs) || !l.Has(gs) {
		t.Fatalf("after validation: bad present %v, good present %v", l.Has(bs), l.Has(gs))
	}
	q, _ := os.ReadDir(filepath.Join(l.Dir(), QuarantineDir))
	if len(q) != 1 {
		t.Fatalf("quarantine holds %d files", len(q))
	}
	if _, err := os.Stat(filepath.Join(l.Dir(), "state", "feed.json")); err != nil {
		t.Errorf("a state file was touched: %v", err)
	}
}

func TestCollectKeepsReferencedAndYoung(t *testing.T) {
	now := time.Now()
	l := newLib(t, WithClock(func() time.Time { return now }))
	put := func(s string, age time.Duration) string {
		sum := sumOf([]byte(s))
		if _, err := l.Put(sum, bytes.NewReader([]byte(s))); err != nil {
			t.Fatal(err)
		}
		mt := now.Add(-age)
		os.Chtimes(l.Path(sum), mt, mt)
		return sum
	}
	referenced := put("referenced", 48*time.Hour)
	oldUnreferenced := put("old", 48*time.Hour)
	freshUpload := put("fresh", time.Hour) // uploaded, not yet registered
	removed, err := l.Collect(context.Background(), func(s string) bool { return s == referenced }, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != oldUnreferenced {
		t.Fatalf("Collect removed %v, want only %s", removed, oldUnreferenced)
	}
	if !l.Has(referenced) || !l.Has(freshUpload) || l.Has(oldUnreferenced) {
		t.Fatal("wrong blobs left")
	}
	if err := l.Remove(referenced); err != nil || l.Has(referenced) {
		t.Fatalf("Remove: %v", err)
	}
}
