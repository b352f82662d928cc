package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// Security review: `sudo ibcm-client download NAME --output /tmp/x` resumed into whatever
// /tmp/x.partial was: another user could plant it (a directory of theirs, or a symlink to
// one) and have root write blobs, truncate a .part and read a blob through their symlinks.
// The partial and output directories are accepted only when the effective user owns them
// alone.
func TestHandDownloadRefusesPlantedDirectories(t *testing.T) {
	base := t.TempDir()
	victim := t.TempDir()
	mine := filepath.Join(base, "mine")
	if err := ownDir(mine, 0o700); err != nil {
		t.Fatalf("a new directory: %v", err)
	}
	if err := ownDir(mine, 0o700); err != nil {
		t.Fatalf("our own directory again (a resumed download): %v", err)
	}

	link := filepath.Join(base, "link.partial")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	if err := ownDir(link, 0o700); err == nil {
		t.Error("a symlink planted as the partial directory was accepted")
	}

	open := filepath.Join(base, "open.partial")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := ownDir(open, 0o700); err == nil {
		t.Error("a world-writable partial directory was accepted")
	}

	if os.Geteuid() == 0 {
		theirs := filepath.Join(base, "theirs.partial")
		if err := os.Mkdir(theirs, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(theirs, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if err := ownDir(theirs, 0o700); err == nil {
			t.Error("another user's partial directory was accepted")
		}
	}
}
