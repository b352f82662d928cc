package location

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"time"
)

// DefaultWatchInterval is how often WatchFile looks at the file.
const DefaultWatchInterval = 200 * time.Millisecond

// WatchFile calls fn whenever the content of the file at path changes, until ctx is done.
// It hashes the file every interval (DefaultWatchInterval when not positive), so an edit
// in place, an atomic replacement by rename, a new symlink target, and the file appearing
// or disappearing all count; a write of the same content does not. fn runs on WatchFile's
// goroutine: WatchFile returns when ctx is done, after fn returns.
func WatchFile(ctx context.Context, path string, interval time.Duration, fn func()) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	last := fileHash(path)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if h := fileHash(path); h != last {
			last = h
			fn()
		}
	}
}

// fileHash is the SHA-256 of the file's content; a missing or unreadable file hashes to
// zero, so its coming and going counts as a change too.
func fileHash(path string) [sha256.Size]byte {
	var sum [sha256.Size]byte
	f, err := os.Open(path)
	if err != nil {
		return sum
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, maxResolvConf)); err != nil {
		return sum
	}
	h.Sum(sum[:0])
	return sum
}
