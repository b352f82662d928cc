package deploy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// DefaultCacheSize bounds the blob cache unless the agent is told otherwise.
const DefaultCacheSize = 4 << 30

// ErrTooLarge is a package that cannot fit the cache even when it is empty.
var ErrTooLarge = errors.New("package larger than the cache")

// BlobPath is where the blob sum lives below the cache directory: ab/cd/<sum>.
func BlobPath(cache, sum string) string {
	return filepath.Join(cache, sum[:2], sum[2:4], sum)
}

// uniqueBlobs returns each blob of m once (two files may share content).
func uniqueBlobs(m *wire.Manifest) []wire.ManifestFile {
	seen := map[string]bool{}
	var out []wire.ManifestFile
	for _, f := range m.Files {
		if !seen[f.SHA256] {
			seen[f.SHA256] = true
			out = append(out, f)
		}
	}
	return out
}

// PackageSize is the number of bytes m's distinct blobs take.
func PackageSize(m *wire.Manifest) int64 {
	var n int64
	for _, f := range uniqueBlobs(m) {
		n += f.Size
	}
	return n
}

type cacheFile struct {
	path string
	sum  string // the blob the file is (a .part of)
	size int64
	used time.Time
}

func scanCache(cache string) ([]cacheFile, error) {
	var out []cacheFile
	err := filepath.WalkDir(cache, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		sum := strings.TrimSuffix(d.Name(), ".part")
		out = append(out, cacheFile{path: p, sum: sum, size: fi.Size(), used: fi.ModTime()})
		return nil
	})
	return out, err
}

// makeRoom evicts blobs until m fits beside what the cache keeps: least recently used
// first, those no unfinished deployment needs (keep) before the others, and never m's own.
// A package larger than the whole cache is ErrTooLarge.
func makeRoom(cache string, limit int64, m *wire.Manifest, keep map[string]bool) error {
	total := PackageSize(m)
	if total > limit {
		return fmt.Errorf("%w: %s %s is %d bytes, the cache holds at most %d (--cache-size)", ErrTooLarge, m.Name, m.Version, total, limit)
	}
	files, err := scanCache(cache)
	if err != nil {
		return err
	}
	mine := map[string]bool{}
	for _, f := range m.Files {
		mine[f.SHA256] = true
	}
	var used int64
	have := map[string]int64{}
	for _, f := range files {
		used += f.size
		if mine[f.sum] {
			have[f.sum] += f.size
		}
	}
	var need int64
	for _, f := range uniqueBlobs(m) {
		need += max(f.Size-have[f.SHA256], 0)
	}
	var cand []cacheFile
	for _, f := range files {
		if !mine[f.sum] {
			cand = append(cand, f)
		}
	}
	sort.SliceStable(cand, func(i, j int) bool {
		if keep[cand[i].sum] != keep[cand[j].sum] {
			return !keep[cand[i].sum]
		}
		return cand[i].used.Before(cand[j].used)
	})
	for _, f := range cand {
		if used+need <= limit {
			break
		}
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("evicting %s from the cache: %w", f.path, err)
		}
		used -= f.size
	}
	if used+need > limit {
		return fmt.Errorf("%w: %d bytes needed, %d of %d in use", ErrTooLarge, need, used, limit)
	}
	return nil
}

// haveBlob reports whether the cache holds the whole blob f (and marks it used).
func haveBlob(cache string, f wire.ManifestFile) bool {
	p := BlobPath(cache, f.SHA256)
	fi, err := os.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != f.Size {
		return false
	}
	now := time.Now()
	_ = os.Chtimes(p, now, now)
	return true
}

// emptyBlob makes the blob of an empty file, which needs no download.
func emptyBlob(cache string, f wire.ManifestFile) error {
	if f.SHA256 != manifest.Hash(nil) {
		return fmt.Errorf("%s: 0 bytes but sha256 %s is not the hash of nothing", f.Path, f.SHA256)
	}
	p := BlobPath(cache, f.SHA256)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return os.WriteFile(p, nil, 0o600)
}
