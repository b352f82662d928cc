package deploy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/wire"
)

// ErrCorruptBlob is a cached blob whose bytes no longer hash to its name (it is removed).
var ErrCorruptBlob = errors.New("cached blob corrupted")

// realDir makes name a directory below root unless it is one already; a symlink or any
// other file in its place is refused (never followed).
func realDir(root *os.Root, name string) error {
	err := root.Mkdir(name, 0o755)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := root.Lstat(name)
	if err != nil {
		return err
	}
	if !fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a %s, not a directory: refused", filepath.Join(root.Name(), name), fi.Mode().Type())
	}
	return nil
}

// PackageDir empties and makes <dir>/packages/<name>/<version> (every level a real
// directory, never through a symlink) and returns it.
func PackageDir(dir, name, version string) (string, error) {
	if !manifest.ValidName(name) || !manifest.ValidVersion(version) {
		return "", fmt.Errorf("package %q version %q: not a valid name", name, version)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	for _, d := range []string{PackagesDir, path.Join(PackagesDir, name)} {
		if fi, err := root.Lstat(d); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if err := root.Remove(d); err != nil { // a planted link: the agent made a directory here
				return "", err
			}
		}
		if err := realDir(root, d); err != nil {
			return "", err
		}
	}
	rel := path.Join(PackagesDir, name, version)
	if err := root.RemoveAll(rel); err != nil {
		return "", fmt.Errorf("removing the old %s: %w", rel, err)
	}
	if err := root.Mkdir(rel, 0o755); err != nil {
		return "", err
	}
	return filepath.Join(dir, PackagesDir, name, version), nil
}

// prunePackages removes below <dir>/packages every <name>/<version> that keep (a set of
// "name/version") does not hold, and every <name> none of whose versions keep holds. It
// never follows a symlink: each entry is looked at with Lstat inside an os.Root, a link or
// a file is removed itself (never what it points to), and a <name> that is not a real
// directory is not looked into. It returns the paths it removed, relative to dir.
func prunePackages(dir string, keep map[string]bool) ([]string, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	if fi, err := root.Lstat(PackagesDir); errors.Is(err, fs.ErrNotExist) || (err == nil && !fi.IsDir()) {
		return nil, nil // nothing placed yet, or a planted link: PackageDir replaces it
	} else if err != nil {
		return nil, err
	}
	keepName := map[string]bool{}
	for nv := range keep {
		if n, _, ok := strings.Cut(nv, "/"); ok {
			keepName[n] = true
		}
	}
	var removed []string
	var errs []error
	remove := func(rel string) {
		if err := root.RemoveAll(rel); err != nil {
			errs = append(errs, err)
			return
		}
		removed = append(removed, rel)
	}
	names, err := readDirNames(root, PackagesDir)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		rel := path.Join(PackagesDir, name)
		if !keepName[name] {
			remove(rel)
			continue
		}
		if fi, err := root.Lstat(rel); err != nil || !fi.IsDir() {
			continue // a link or a file where a kept package's directory belongs: PackageDir replaces it
		}
		versions, err := readDirNames(root, rel)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, v := range versions {
			if !keep[name+"/"+v] {
				remove(path.Join(rel, v))
			}
		}
	}
	return removed, errors.Join(errs...)
}

// readDirNames lists the directory name of root, sorted.
func readDirNames(root *os.Root, name string) ([]string, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

// Place writes every file of m below dir, from the blobs blob(sum) names: directories
// made here, each file opened with O_NOFOLLOW|O_CREAT|O_EXCL inside dir (a symlink in dir
// cannot redirect a write, nothing can leave dir), its bytes hashed again while copied,
// its mode from the manifest. A blob that does not hash to its name is removed and
// ErrCorruptBlob returned.
func Place(dir string, m *wire.Manifest, blob func(sum string) string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, f := range m.Files {
		if _, err := manifest.Target(dir, f.Path); err != nil { // manifest.Check refused it already
			return err
		}
		var dirs []string
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			dirs = append([]string{d}, dirs...)
		}
		for _, d := range dirs {
			if err := realDir(root, d); err != nil {
				return err
			}
		}
		if err := placeFile(root, f, blob(f.SHA256)); err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
	}
	return nil
}

func placeFile(root *os.Root, f wire.ManifestFile, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := root.OpenFile(f.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if err == nil && (n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256) {
		_ = os.Remove(src)
		err = fmt.Errorf("%w: %s", ErrCorruptBlob, f.SHA256)
	}
	if err == nil {
		err = out.Chmod(fs.FileMode(f.Mode) & 0o755)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
