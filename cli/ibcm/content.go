package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/progress"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/remote/frame"
	"github.com/ibcm-project/ibcm/site"
)

// The site's content (DESIGN.md §8): `ibcm content add` hashes files here, uploads what the
// origin DP lacks (resumable), has the CA sign the manifest and registers it at the MP; the
// other commands are the MP's admin API of package versions.

func contentCommand() *cli.Command {
	return &cli.Command{
		Name:  "content",
		Usage: "package versions on the distribution points: add, list, show, remove, distribute",
		Commands: []*cli.Command{
			contentAddCommand(), contentListCommand(), contentShowCommand(), contentRemoveCommand(), contentDistributeCommand(),
		},
	}
}

// contentVersionFlag is --version of a package (the root's --version is its own, local flag).
func contentVersionFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "version", Required: true, Usage: "the package `VERSION`", Sources: cli.EnvVars("IBCM_CONTENT_VERSION"),
		Validator: func(s string) error {
			if !manifest.ValidVersion(s) {
				return fmt.Errorf("must be letters, digits, '.', '_', '+', '~' or '-', starting with a letter or digit, up to 64")
			}
			return nil
		}}
}

// packageName reads the NAME argument.
func packageName(c *cli.Command) (string, error) {
	name := c.StringArg("NAME")
	if !manifest.ValidName(name) {
		return "", usageError("NAME %q: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, up to 64", name)
	}
	return name, nil
}

func contentPath(name, version string) string {
	return "/v1/admin/content/" + url.PathEscape(name) + "/" + url.PathEscape(version)
}

func contentAddCommand() *cli.Command {
	return &cli.Command{
		Name:      "add",
		Usage:     "hash files, upload what the origin DP lacks, have the CA sign the manifest and register the package version",
		Arguments: []cli.Argument{cliapp.Arg("NAME"), cliapp.Rest("PATH", 1)},
		Description: `Each PATH is a file (it goes into the package under its base name) or a directory (its files
go in with their paths below it; symbolic links inside are skipped with a warning, and a
special file such as a FIFO or a device is refused). Mode bits come from the files (0755 at
most). Every file and each --chunk-size piece of it is hashed here (SHA-256, streaming).

The upload goes to --dp, else the first online origin DP the MP knows (its intranet URL, else
its internet URL), with your certificate. Only what the DP does not hold already is sent, and
an upload that breaks resumes where the DP says it stopped. The CA then signs the manifest
with the site's content-signer key and the MP registers it; distribute it to the DPs and
deploy it next. Needs ManageContent.

--install-command runs as root by /bin/sh -c in the package's directory on the device, within
--install-timeout; an exit code in --success-codes is success.

EXAMPLES:
   ibcm content add agent-tools --version 1.4.0 ./dist/
   ibcm content add firefox --version 128.0 firefox-128.0.deb install.sh --install-command "sh install.sh" --success-codes 0,3010
   ibcm content add wallpaper --version 2026.12 --dir /srv/ibcm --chunk-size 1MiB corp.png
   ibcm content add db-driver --version 2.1 ./driver --dp dp2 --json`,
		Flags: append(adminFlags(),
			contentVersionFlag(),
			&cli.StringFlag{Name: "install-command", Usage: "command the device runs as root after every file verified (default: files only)", Sources: cli.EnvVars("IBCM_CONTENT_INSTALL_COMMAND"),
				Validator: func(s string) error {
					if strings.TrimSpace(s) == "" || len(s) > manifest.MaxCommand || strings.ContainsRune(s, 0) {
						return fmt.Errorf("must be 1 to %d bytes, not blank, no NUL", manifest.MaxCommand)
					}
					return nil
				}},
			&cli.DurationFlag{Name: "install-timeout", Value: 10 * time.Minute, Usage: "how long the install command may run", Sources: cli.EnvVars("IBCM_CONTENT_INSTALL_TIMEOUT"),
				Validator: func(d time.Duration) error {
					if d <= 0 || d > manifest.MaxInstallTime {
						return fmt.Errorf("must be above 0 and at most %s", manifest.MaxInstallTime)
					}
					return nil
				}},
			&cli.StringFlag{Name: "success-codes", Value: "0", Usage: "exit codes of the install command that mean success, comma-separated (0–255)", Sources: cli.EnvVars("IBCM_CONTENT_SUCCESS_CODES"),
				Validator: func(s string) error { _, err := parseSuccessCodes(s); return err }},
			&cli.StringFlag{Name: "chunk-size", Value: "4MiB", Usage: "size of the verified pieces of each file: bytes, or with KiB, MiB (64KiB to 64MiB)", Sources: cli.EnvVars("IBCM_CONTENT_CHUNK_SIZE"),
				Validator: func(s string) error { _, err := parseChunkSize(s); return err }},
			&cli.StringFlag{Name: "dp", Usage: "`ID` of the DP to upload to (default: the first online origin DP)", Sources: cli.EnvVars("IBCM_CONTENT_DP")},
			jsonFlag(),
		),
		Action: contentAdd,
	}
}

// contentAdded is what `ibcm content add --json` prints.
type contentAdded struct {
	Name           string `json:"name"`
	Version        string `json:"version"`
	ManifestSHA256 string `json:"manifest_sha256"`
	Files          int    `json:"files"`
	Size           int64  `json:"size"`
	DP             string `json:"dp"`
	Uploaded       int64  `json:"uploaded"` // bytes sent to the DP
	Skipped        int64  `json:"skipped"`  // bytes the DP held already
}

func contentAdd(ctx context.Context, c *cli.Command) error {
	name, err := packageName(c)
	if err != nil {
		return err
	}
	chunk, _ := parseChunkSize(c.String("chunk-size")) // the validator passed
	var install *wire.InstallSpec
	if cmd := c.String("install-command"); cmd != "" {
		codes, _ := parseSuccessCodes(c.String("success-codes"))
		install = &wire.InstallSpec{Command: cmd, Timeout: c.Duration("install-timeout").String(), SuccessCodes: codes}
	} else if c.IsSet("install-timeout") || c.IsSet("success-codes") {
		return usageError("--install-timeout and --success-codes go with --install-command")
	}
	errw := c.Root().ErrWriter
	files, err := collectFiles(c.StringArgs("PATH"), errw)
	if err != nil {
		return err
	}

	mp, err := newRoleClient(c, site.RoleMP)
	if err != nil {
		return err
	}
	caClient, err := newAdminClient(c)
	if err != nil {
		return err
	}
	// A version is added once: say so before hashing and uploading anything.
	var existing wire.ContentVersion
	switch err := mp.do(ctx, http.MethodGet, contentPath(name, c.String("version")), nil, &existing); {
	case err == nil:
		return fmt.Errorf("%s %s exists already (manifest %s, added by %s): add a new --version, or ibcm content remove it first",
			name, existing.Version, short(existing.ManifestSHA256), dash(existing.AddedBy))
	case !strings.Contains(err.Error(), ", HTTP 404)"):
		return err
	}
	var dps []wire.DPInfo
	if err := mp.do(ctx, http.MethodGet, "/v1/admin/dps", nil, &dps); err != nil {
		return fmt.Errorf("listing the distribution points: %w", err)
	}
	target, err := uploadTarget(dps, c.String("dp"))
	if err != nil {
		return err
	}

	var total int64
	for _, f := range files {
		total += f.Size
	}
	hashing := progress.New(errw, fmt.Sprintf("hashing %s", plural(len(files), "file")), total)
	m, err := buildManifest(name, c.String("version"), chunk, files, install, time.Now().UTC().Truncate(time.Second), hashing)
	hashing.Finish()
	if err != nil {
		return err
	}
	up, err := newUploader(mp, target)
	if err != nil {
		return err
	}
	up.log = errw
	up.bar = func(label string, total int64) *progress.Bar {
		return progress.New(errw, frame.Printable(label), total)
	}
	res := contentAdded{Name: m.Name, Version: m.Version, Files: len(m.Files), DP: target.ID}
	for _, f := range distinctBlobs(files) {
		sent, skipped, err := up.upload(ctx, f)
		res.Uploaded += sent
		res.Skipped += skipped
		if err != nil {
			return fmt.Errorf("uploading %s to %s: %w", f.Path, target.ID, err)
		}
	}
	for _, f := range m.Files {
		res.Size += f.Size
	}

	var sm wire.SignedManifest
	if err := caClient.do(ctx, http.MethodPost, "/v1/admin/content/sign", m, &sm); err != nil {
		return fmt.Errorf("having the CA sign the manifest: %w", err)
	}
	if err := sameManifest(m, sm.Manifest); err != nil {
		return err
	}
	res.ManifestSHA256 = manifest.Hash(sm.Manifest)
	var cv wire.ContentVersion
	if err := mp.do(ctx, http.MethodPost, "/v1/admin/content", sm, &cv); err != nil {
		return fmt.Errorf("registering %s %s at the management point (the files are on %s and the manifest is signed; run ibcm content add again): %w", m.Name, m.Version, target.ID, err)
	}
	if cv.ManifestSHA256 != "" && cv.ManifestSHA256 != res.ManifestSHA256 {
		return fmt.Errorf("the management point registered manifest %s, not the one the CA signed (%s)", cv.ManifestSHA256, res.ManifestSHA256)
	}
	if c.Bool("json") {
		return printJSON(c.Root().Writer, res)
	}
	w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "added\t%s %s\n", res.Name, res.Version)
	fmt.Fprintf(w, "manifest sha256\t%s\n", res.ManifestSHA256)
	fmt.Fprintf(w, "files\t%d (%s)\n", res.Files, progress.Bytes(res.Size))
	fmt.Fprintf(w, "uploaded\t%s to %s\n", progress.Bytes(res.Uploaded), target.ID)
	fmt.Fprintf(w, "skipped\t%s (already on %s)\n", progress.Bytes(res.Skipped), target.ID)
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(errw, "next: ibcm content distribute %s --version %s; ibcm deploy create %s --version %s --group GROUP\n", res.Name, res.Version, res.Name, res.Version)
	return nil
}

// sameManifest checks that the CA signed the manifest it was sent (it may not add, drop or
// change a file).
func sameManifest(sent *wire.Manifest, signed []byte) error {
	got, err := manifest.Decode(signed)
	if err != nil {
		return fmt.Errorf("the CA's signed manifest: %w", err)
	}
	if got.Name != sent.Name || got.Version != sent.Version || got.ChunkSize != sent.ChunkSize ||
		!reflect.DeepEqual(got.Files, sent.Files) || !reflect.DeepEqual(got.Install, sent.Install) {
		return errors.New("the CA signed a manifest other than the one sent; nothing was registered")
	}
	return nil
}

// parseSuccessCodes reads "0,2,3010": exit codes 0–255.
func parseSuccessCodes(s string) ([]int, error) {
	var codes []int
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 || n > 255 {
			return nil, fmt.Errorf("must be exit codes 0–255 separated by commas, such as 0,2")
		}
		if !slices.Contains(codes, n) {
			codes = append(codes, n)
		}
	}
	return codes, nil
}

// parseChunkSize reads a size in bytes, KiB or MiB, within the manifest's limits.
func parseChunkSize(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"K", 1 << 10}, {"M", 1 << 20}, {"B", 1}} {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > manifest.MaxChunkSize/mult || n*mult < manifest.MinChunkSize {
		return 0, fmt.Errorf("must be a size from 64KiB to 64MiB, such as 4MiB or 1048576")
	}
	return n * mult, nil
}

// localFile is a file of the package being added: where it is here and its manifest entry.
type localFile struct {
	disk string
	wire.ManifestFile
}

// collectFiles lists the files of the PATH arguments with their manifest paths, sizes and
// modes (not hashed yet). A directory is walked without following symbolic links (each
// skipped with a warning on warn); a special file is refused.
func collectFiles(paths []string, warn io.Writer) ([]localFile, error) {
	var files []localFile
	add := func(disk, rel string, fi fs.FileInfo) error {
		if _, err := manifest.CleanPath(rel); err != nil {
			return usageError("%s: cannot be a path in a package: %v", disk, err)
		}
		files = append(files, localFile{disk: disk, ManifestFile: wire.ManifestFile{Path: rel, Size: fi.Size(), Mode: uint32(fi.Mode().Perm() & 0o755)}})
		return nil
	}
	for _, p := range paths {
		fi, err := os.Stat(p) // a PATH that is itself a link is what the admin named: followed
		if err != nil {
			return nil, usageError("PATH %s: %v", p, pathErr(err))
		}
		switch {
		case fi.Mode().IsRegular():
			if err := add(p, filepath.Base(p), fi); err != nil {
				return nil, err
			}
		case fi.IsDir():
			root := p
			if lfi, err := os.Lstat(p); err == nil && lfi.Mode()&fs.ModeSymlink != 0 {
				if root, err = filepath.EvalSymlinks(p); err != nil {
					return nil, usageError("PATH %s: %v", p, pathErr(err))
				}
			}
			err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return fmt.Errorf("reading %s: %w", path, err)
				}
				t := d.Type()
				switch {
				case d.IsDir():
					return nil
				case t&fs.ModeSymlink != 0:
					dest, _ := os.Readlink(path)
					fmt.Fprintf(warn, "warning: skipped the symbolic link %s -> %s (a package holds regular files; name the target as a PATH to include it)\n", path, dest)
					return nil
				case !t.IsRegular():
					return usageError("%s is a %s, not a regular file: a package holds regular files only", path, fileKind(t))
				}
				info, err := d.Info()
				if err != nil {
					return fmt.Errorf("reading %s: %w", path, err)
				}
				rel, err := filepath.Rel(root, path)
				if err != nil {
					return err
				}
				return add(path, filepath.ToSlash(rel), info)
			})
			if err != nil {
				return nil, err
			}
		default:
			return nil, usageError("PATH %s is a %s: give regular files or directories", p, fileKind(fi.Mode().Type()))
		}
	}
	if len(files) == 0 {
		return nil, usageError("no files in %s", strings.Join(paths, " "))
	}
	slices.SortFunc(files, func(a, b localFile) int { return cmp.Compare(a.Path, b.Path) })
	for i := 1; i < len(files); i++ {
		if files[i].Path == files[i-1].Path {
			return nil, usageError("%s and %s would both be %s in the package", files[i-1].disk, files[i].disk, files[i].Path)
		}
	}
	return files, nil
}

func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func fileKind(t fs.FileMode) string {
	switch {
	case t&fs.ModeNamedPipe != 0:
		return "named pipe"
	case t&fs.ModeSocket != 0:
		return "socket"
	case t&fs.ModeCharDevice != 0:
		return "character device"
	case t&fs.ModeDevice != 0:
		return "device"
	case t&fs.ModeSymlink != 0:
		return "symbolic link"
	case t&fs.ModeIrregular != 0:
		return "irregular file"
	}
	return "special file"
}

// hashFile fills in f's SHA-256 and the SHA-256 of each chunkSize piece, reading the file
// once as a stream. The file must still have the size it was listed with.
func hashFile(f *localFile, chunkSize int64, bar *progress.Bar) error {
	fh, err := os.Open(f.disk)
	if err != nil {
		return fmt.Errorf("hashing %s: %w", f.disk, err)
	}
	defer fh.Close()
	whole := sha256.New()
	chunks := []string{}
	piece := sha256.New()
	buf := make([]byte, 64<<10)
	var n int64
	for {
		want := min(int64(len(buf)), chunkSize-n%chunkSize)
		k, err := io.ReadFull(fh, buf[:want])
		if k > 0 {
			whole.Write(buf[:k])
			piece.Write(buf[:k])
			n += int64(k)
			if bar != nil {
				bar.Add(int64(k))
			}
			if n%chunkSize == 0 {
				chunks = append(chunks, sum(piece))
				piece.Reset()
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("hashing %s: %w", f.disk, err)
		}
	}
	if n%chunkSize != 0 {
		chunks = append(chunks, sum(piece))
	}
	if n != f.Size {
		return fmt.Errorf("%s changed while it was read (%d bytes, listed with %d): add it again once it is still", f.disk, n, f.Size)
	}
	f.SHA256, f.Chunks = sum(whole), chunks
	return nil
}

func sum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

// buildManifest hashes the files and makes the manifest of the package version, checked
// as the CA and the devices will check it; bar (may be nil) shows the bytes hashed.
func buildManifest(name, version string, chunkSize int64, files []localFile, install *wire.InstallSpec, now time.Time, bar *progress.Bar) (*wire.Manifest, error) {
	m := &wire.Manifest{Name: name, Version: version, ChunkSize: chunkSize, Install: install, Created: now}
	for i := range files {
		if err := hashFile(&files[i], chunkSize, bar); err != nil {
			return nil, err
		}
		m.Files = append(m.Files, files[i].ManifestFile)
	}
	if err := manifest.Check(m); err != nil {
		return nil, usageError("%v", err)
	}
	return m, nil
}

// distinctBlobs is one file per blob: two files with the same content are one upload.
func distinctBlobs(files []localFile) []localFile {
	seen := map[string]bool{}
	var out []localFile
	for _, f := range files {
		if !seen[f.SHA256] {
			seen[f.SHA256] = true
			out = append(out, f)
		}
	}
	return out
}

// uploadTarget picks the DP to upload to: the one named, else the online origin DP of the
// lowest priority value (then id).
func uploadTarget(dps []wire.DPInfo, id string) (wire.DPInfo, error) {
	if id != "" {
		for _, d := range dps {
			if d.ID == id {
				if d.IntranetURL == "" && d.InternetURL == "" {
					return d, fmt.Errorf("DP %s has no URL registered", id)
				}
				return d, nil
			}
		}
		return wire.DPInfo{}, usageError("--dp %s: no such DP registered at the management point (see ibcm dp list)", id)
	}
	var origins []wire.DPInfo
	for _, d := range dps {
		if d.Origin && d.Online && (d.IntranetURL != "" || d.InternetURL != "") {
			origins = append(origins, d)
		}
	}
	if len(origins) == 0 {
		return wire.DPInfo{}, errors.New("no origin DP is online to take the upload (ibcm site up runs one; see ibcm dp list), or name one with --dp")
	}
	slices.SortFunc(origins, func(a, b wire.DPInfo) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(a.ID, b.ID))
	})
	return origins[0], nil
}

func contentListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the package versions of the site",
		Description: `EXAMPLES:
   ibcm content list
   ibcm content list --json | jq -r '.[] | select(.deployments == 0) | .name + " " + .version'`,
		Flags: append(adminFlags(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			mp, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			var cvs []wire.ContentVersion
			if err := mp.do(ctx, http.MethodGet, "/v1/admin/content", nil, &cvs); err != nil {
				return err
			}
			if c.Bool("json") {
				if cvs == nil {
					cvs = []wire.ContentVersion{}
				}
				return printJSON(c.Root().Writer, cvs)
			}
			w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tVERSION\tSIZE\tINSTALL\tDEPLOYMENTS\tMANIFEST\tCREATED\tADDED BY")
			for _, cv := range cvs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", cv.Name, cv.Version, progress.Bytes(cv.Size), yesNo(cv.Install != nil), cv.Deployments,
					short(cv.ManifestSHA256), cv.Created.Format(time.RFC3339), dash(cv.AddedBy))
			}
			return w.Flush()
		},
	}
}

func contentShowCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "show a package version: files, install command, deployments and its state on each DP",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `EXAMPLES:
   ibcm content show agent-tools --version 1.4.0
   ibcm content show agent-tools --version 1.4.0 --json | jq .dps`,
		Flags: append(adminFlags(), contentVersionFlag(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			name, err := packageName(c)
			if err != nil {
				return err
			}
			mp, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			var cv wire.ContentVersion
			if err := mp.do(ctx, http.MethodGet, contentPath(name, c.String("version")), nil, &cv); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, cv)
			}
			return printContentVersion(c.Root().Writer, cv)
		},
	}
}

func printContentVersion(out io.Writer, cv wire.ContentVersion) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "name\t%s\nversion\t%s\nmanifest sha256\t%s\n", cv.Name, cv.Version, cv.ManifestSHA256)
	fmt.Fprintf(w, "size\t%s in %s\n", progress.Bytes(cv.Size), plural(len(cv.Files), "file"))
	fmt.Fprintf(w, "created\t%s by %s\n", cv.Created.Format(time.RFC3339), dash(cv.AddedBy))
	if in := cv.Install; in != nil {
		codes := make([]string, 0, len(in.SuccessCodes))
		for _, n := range manifest.SuccessCodes(in) {
			codes = append(codes, strconv.Itoa(n))
		}
		fmt.Fprintf(w, "install\t%s\n\t(timeout %s, success codes %s)\n", frame.Printable(in.Command), in.Timeout, strings.Join(codes, ","))
	} else {
		fmt.Fprintf(w, "install\tnone (files only)\n")
	}
	fmt.Fprintf(w, "deployments\t%d\n", cv.Deployments)
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nFILES")
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PATH\tSIZE\tMODE\tSHA256")
	for _, f := range cv.Files {
		fmt.Fprintf(w, "%s\t%d\t%04o\t%s\n", frame.Printable(f.Path), f.Size, f.Mode, f.SHA256)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nDISTRIBUTION POINTS")
	if len(cv.DPs) == 0 {
		fmt.Fprintln(out, "none: ibcm content distribute "+cv.Name+" --version "+cv.Version)
		return nil
	}
	return printDPStates(out, cv.DPs)
}

func printDPStates(out io.Writer, states []wire.DPPackageState) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DP\tSTATE\tERROR\tUPDATED")
	for _, s := range states {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", s.Name, progressState(s.State, s.Percent), dash(frame.Printable(s.Error)), timeOrDashValue(s.Updated))
	}
	return w.Flush()
}

// progressState reads "syncing 40 %" or "downloading 40 %" for the states that count, else
// the state.
func progressState(state string, percent int) string {
	if state == wire.DPSyncing || state == wire.DeployDownloading {
		return fmt.Sprintf("%s %d %%", state, percent)
	}
	return dash(frame.Printable(state))
}

func timeOrDashValue(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// short is the first 12 hex digits of a hash.
func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return dash(h)
}

func contentRemoveCommand() *cli.Command {
	return &cli.Command{
		Name:      "remove",
		Usage:     "remove a package version (refused while a deployment uses it)",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `The DPs drop its files that no other package version holds.

EXAMPLES:
   ibcm content remove agent-tools --version 1.3.0`,
		Flags: append(adminFlags(), contentVersionFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			name, err := packageName(c)
			if err != nil {
				return err
			}
			version := c.String("version")
			mp, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			if err := mp.do(ctx, http.MethodDelete, contentPath(name, version), nil, nil); err != nil {
				if hasCode(err, "deployment_uses_content") {
					return fmt.Errorf("%s %s is still deployed: remove its deployments first (ibcm deploy list, then ibcm deploy remove ID): %w", name, version, err)
				}
				return err
			}
			fmt.Fprintf(c.Root().Writer, "removed %s %s\n", name, version)
			return nil
		},
	}
}

// hasCode reports whether err is an error answer of the admin API with this code (as
// adminClient.do words it).
func hasCode(err error, code string) bool {
	return err != nil && strings.Contains(err.Error(), "("+code+", HTTP ")
}

func contentDistributeCommand() *cli.Command {
	return &cli.Command{
		Name:      "distribute",
		Usage:     "distribute a package version to DPs (every registered DP unless --dp names some)",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `Each DP pulls the files from its sources and reports its state (ibcm dp list, ibcm content show).

EXAMPLES:
   ibcm content distribute agent-tools --version 1.4.0
   ibcm content distribute agent-tools --version 1.4.0 --dp dp2 --dp dp3
   ibcm content distribute agent-tools --version 1.4.0 --dp dp2,dp3 --json`,
		Flags: append(adminFlags(), contentVersionFlag(),
			&cli.StringSliceFlag{Name: "dp", Usage: "`ID` of a DP to distribute to; repeat for more (default: every registered DP)", Sources: cli.EnvVars("IBCM_CONTENT_DP")},
			jsonFlag(),
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			name, err := packageName(c)
			if err != nil {
				return err
			}
			req := wire.ContentDistribute{DPs: []string{}}
			for _, id := range c.StringSlice("dp") {
				if id = strings.TrimSpace(id); id == "" {
					return usageError("--dp: an empty DP id")
				}
				if !slices.Contains(req.DPs, id) {
					req.DPs = append(req.DPs, id)
				}
			}
			mp, err := newRoleClient(c, site.RoleMP)
			if err != nil {
				return err
			}
			var cv wire.ContentVersion
			if err := mp.do(ctx, http.MethodPost, contentPath(name, c.String("version"))+"/distribute", req, &cv); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, cv)
			}
			to := "every registered DP"
			if len(req.DPs) > 0 {
				to = strings.Join(req.DPs, ", ")
			}
			fmt.Fprintf(c.Root().Writer, "distributing %s %s to %s\n", cv.Name, cv.Version, to)
			if len(cv.DPs) == 0 {
				return nil
			}
			return printDPStates(c.Root().Writer, cv.DPs)
		},
	}
}

// plural reads "1 file", "3 files".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
