package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/dp/manifest"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

// writeFile writes size pseudo-random bytes (seeded) to dir/rel with mode.
func writeFile(t *testing.T, dir, rel string, size int, seed uint64, mode os.FileMode) []byte {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return b
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestBuildManifest: a directory with nested files and a symbolic link, and a file named
// alone; every hash is checked against a direct computation over the bytes.
func TestBuildManifest(t *testing.T) {
	dir := t.TempDir()
	const chunk = 64 << 10
	tree := filepath.Join(dir, "tree")
	want := map[string][]byte{
		"bin/tool":           writeFile(t, tree, "bin/tool", 2*chunk+17, 1, 0o755),
		"etc/deep/conf.yaml": writeFile(t, tree, "etc/deep/conf.yaml", 100, 2, 0o640),
		"exact":              writeFile(t, tree, "exact", chunk, 3, 0o600),
		"empty":              writeFile(t, tree, "empty", 0, 4, 0o644),
		"setuid":             writeFile(t, tree, "setuid", 10, 5, 0o755|os.ModeSetuid),
		"readme.txt":         writeFile(t, dir, "readme.txt", 5, 6, 0o644),
	}
	wantMode := map[string]uint32{"bin/tool": 0o755, "etc/deep/conf.yaml": 0o640, "exact": 0o600, "empty": 0o644, "setuid": 0o755, "readme.txt": 0o644}
	if err := os.Symlink("bin/tool", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(tree, "etc", "outside")); err != nil {
		t.Fatal(err)
	}
	var warn bytes.Buffer
	files, err := collectFiles([]string{tree, filepath.Join(dir, "readme.txt")}, &warn)
	if err != nil {
		t.Fatal(err)
	}
	created := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	m, err := buildManifest("tools", "1.0", chunk, files, nil, created, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(warn.String(), "skipped the symbolic link "+filepath.Join(tree, "link")) || !strings.Contains(warn.String(), filepath.Join(tree, "etc", "outside")) {
		t.Errorf("warnings:\n%s", warn.String())
	}
	var paths []string
	for _, f := range m.Files {
		paths = append(paths, f.Path)
		b, ok := want[f.Path]
		if !ok {
			t.Errorf("unexpected file %s in the manifest", f.Path)
			continue
		}
		if f.Size != int64(len(b)) || f.SHA256 != hexSum(b) || f.Mode != wantMode[f.Path] {
			t.Errorf("%s: size %d sha %s mode %o, want %d %s %o", f.Path, f.Size, f.SHA256, f.Mode, len(b), hexSum(b), wantMode[f.Path])
		}
		var chunks []string
		for off := 0; off < len(b); off += chunk {
			chunks = append(chunks, hexSum(b[off:min(off+chunk, len(b))]))
		}
		if !slices.Equal(f.Chunks, chunks) {
			t.Errorf("%s: chunks %v, want %v", f.Path, f.Chunks, chunks)
		}
	}
	if wantPaths := []string{"bin/tool", "empty", "etc/deep/conf.yaml", "exact", "readme.txt", "setuid"}; !slices.Equal(paths, wantPaths) {
		t.Errorf("paths %v, want %v", paths, wantPaths)
	}
	if len(m.Files[0].Chunks) != 3 || len(m.Files[1].Chunks) != 0 || len(m.Files[3].Chunks) != 1 {
		t.Errorf("chunk counts: %d %d %d", len(m.Files[0].Chunks), len(m.Files[1].Chunks), len(m.Files[3].Chunks))
	}
	if !m.Created.Equal(created) || m.ChunkSize != chunk || manifest.Check(m) != nil {
		t.Errorf("manifest: %+v %v", m, manifest.Check(m))
	}
	// What is sent to the CA is what Decode reads back.
	b, err := manifest.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameManifest(m, b); err != nil {
		t.Error(err)
	}
}

func TestCollectFilesRefuses(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a/x", 3, 1, 0o644)
	writeFile(t, dir, "b/x", 3, 2, 0o644)
	fifoDir := filepath.Join(dir, "withfifo")
	writeFile(t, fifoDir, "ok", 3, 3, 0o644)
	if err := syscall.Mkfifo(filepath.Join(fifoDir, "pipe"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "emptydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "back\\slash", 1, 4, 0o644)
	for _, tc := range []struct {
		name  string
		paths []string
		want  string
	}{
		{"a FIFO in a directory", []string{fifoDir}, "pipe is a named pipe, not a regular file"},
		{"a FIFO named", []string{filepath.Join(fifoDir, "pipe")}, "is a named pipe"},
		{"a device", []string{"/dev/null"}, "is a character device"},
		{"two files of one name", []string{filepath.Join(dir, "a/x"), filepath.Join(dir, "b/x")}, "would both be x"},
		{"missing", []string{filepath.Join(dir, "nope")}, "no such file"},
		{"an empty directory", []string{filepath.Join(dir, "emptydir")}, "no files in"},
		{"a backslash", []string{filepath.Join(dir, "back\\slash")}, "backslash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := collectFiles(tc.paths, io.Discard)
			if err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v (exit %d), want exit %d saying %s", err, exitCode(err), exitUsage, tc.want)
			}
		})
	}
}

// TestHashFileChanged: a file whose size changed since it was listed is refused.
func TestHashFileChanged(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "f", 1000, 1, 0o644)
	f := localFile{disk: filepath.Join(dir, "f")}
	f.Size = 999
	if err := hashFile(&f, 64<<10, nil); err == nil || !strings.Contains(err.Error(), "changed while it was read") {
		t.Errorf("a changed file: %v", err)
	}
}

func TestParseFlagsValues(t *testing.T) {
	for in, want := range map[string]int64{"4MiB": 4 << 20, "64KiB": 64 << 10, "1048576": 1 << 20, "64M": 64 << 20, "128K": 128 << 10, "65536B": 65536} {
		if got, err := parseChunkSize(in); err != nil || got != want {
			t.Errorf("parseChunkSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "1KiB", "65MiB", "-4MiB", "4GiB", "x", "99999999999999999999"} {
		if _, err := parseChunkSize(bad); err == nil {
			t.Errorf("parseChunkSize(%q) passed", bad)
		}
	}
	if got, err := parseSuccessCodes("0, 2,3010"); err == nil {
		t.Errorf("3010 passed: %v", got)
	}
	if got, err := parseSuccessCodes("0,2,2,255"); err != nil || !slices.Equal(got, []int{0, 2, 255}) {
		t.Errorf("parseSuccessCodes = %v, %v", got, err)
	}
}

// contentSite is the fake site of these tests on newRemoteSite's server: the MP's content,
// DP and deployment routes, the CA's sign route and one DP's upload routes (dp1, origin,
// at the same URL), which cuts the first PUT of the blob cut names halfway.
type contentSite struct {
	*remoteSite
	mu       sync.Mutex
	blobs    map[string][]byte // what the DP holds, complete or not
	complete map[string]bool
	offsets  map[string][]int64 // the offset of each PUT, per blob
	received map[string]int64   // bytes the DP read from PUT bodies, per blob
	cut      string             // the blob whose first PUT breaks halfway
	dps      []wire.DPInfo
	signed   []wire.Manifest
	content  []wire.ContentVersion
	deploys  []wire.DeploymentInfo
	requests []string // method and path of the admin calls other than uploads
}

func newContentSite(t *testing.T) *contentSite {
	t.Helper()
	s := &contentSite{remoteSite: newRemoteSite(t), blobs: map[string][]byte{}, complete: map[string]bool{}, offsets: map[string][]int64{}, received: map[string]int64{}}
	s.dps = []wire.DPInfo{
		{ID: "dp0", Mode: wire.DPModeIntranet, IntranetURL: "https://127.0.0.1:1", Priority: 0, Origin: true, Online: false},
		{ID: "dp9", Mode: wire.DPModeIntranet, IntranetURL: "https://127.0.0.1:1", Priority: 1, Origin: false, Online: true},
		{ID: "dp1", Mode: wire.DPModeBoth, IntranetURL: s.srv.URL, InternetURL: "https://127.0.0.1:2", Priority: 5, Origin: true, Online: true},
	}
	s.flags = append(s.flags, "--ca", s.srv.URL)
	answer := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	fail := func(w http.ResponseWriter, status int, code, msg string) {
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(wire.Error{Error: wire.ErrorDetail{Code: code, Message: msg}})
	}
	logged := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			s.requests = append(s.requests, r.Method+" "+r.URL.Path)
			s.mu.Unlock()
			h(w, r)
		}
	}
	m := s.mux
	m.HandleFunc("GET /v1/admin/dps", logged(func(w http.ResponseWriter, r *http.Request) { answer(w, s.dps) }))
	m.HandleFunc("GET /v1/admin/uploads/{sha}", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		sha := r.PathValue("sha")
		answer(w, wire.UploadState{SHA256: sha, Received: int64(len(s.blobs[sha])), Complete: s.complete[sha]})
	})
	m.HandleFunc("PUT /v1/admin/uploads/{sha}", func(w http.ResponseWriter, r *http.Request) {
		sha := r.PathValue("sha")
		off, err1 := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
		size, err2 := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		s.mu.Lock()
		have := int64(len(s.blobs[sha]))
		s.offsets[sha] = append(s.offsets[sha], off)
		first := len(s.offsets[sha]) == 1
		s.mu.Unlock()
		if err1 != nil || err2 != nil || off != have || r.ContentLength != size-off {
			fail(w, http.StatusConflict, "offset_mismatch", fmt.Sprintf("the DP holds %d bytes", have))
			return
		}
		limit := size - off
		if sha == s.cut && first {
			limit /= 2 // the connection breaks halfway
		}
		buf := make([]byte, 32<<10)
		for n := int64(0); n < limit; {
			k, err := r.Body.Read(buf[:min(int64(len(buf)), limit-n)])
			s.mu.Lock()
			s.blobs[sha] = append(s.blobs[sha], buf[:k]...)
			s.received[sha] += int64(k)
			s.mu.Unlock()
			n += int64(k)
			if err != nil {
				break
			}
		}
		if limit < size-off {
			panic(http.ErrAbortHandler) // closes the connection
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if int64(len(s.blobs[sha])) != size || hexSum(s.blobs[sha]) != sha {
			delete(s.blobs, sha)
			fail(w, http.StatusUnprocessableEntity, "hash_mismatch", "the bytes do not hash to the name")
			return
		}
		s.complete[sha] = true
		w.WriteHeader(http.StatusCreated)
		answer(w, wire.UploadState{SHA256: sha, Size: size, Received: size, Complete: true})
	})
	m.HandleFunc("POST /v1/admin/content/sign", logged(func(w http.ResponseWriter, r *http.Request) {
		var mf wire.Manifest
		if err := json.NewDecoder(r.Body).Decode(&mf); err != nil || manifest.Check(&mf) != nil {
			fail(w, http.StatusBadRequest, "bad_manifest", "bad manifest")
			return
		}
		s.mu.Lock()
		s.signed = append(s.signed, mf)
		s.mu.Unlock()
		b, _ := manifest.Encode(&mf)
		answer(w, wire.SignedManifest{Manifest: b, Signature: []byte{1}, Chain: [][]byte{{2}}})
	}))
	m.HandleFunc("POST /v1/admin/content", logged(func(w http.ResponseWriter, r *http.Request) {
		var sm wire.SignedManifest
		_ = json.NewDecoder(r.Body).Decode(&sm)
		mf, err := manifest.Decode(sm.Manifest)
		if err != nil {
			fail(w, http.StatusBadRequest, "bad_manifest", err.Error())
			return
		}
		cv := wire.ContentVersion{Name: mf.Name, Version: mf.Version, ManifestSHA256: manifest.Hash(sm.Manifest), Files: mf.Files, Install: mf.Install, Created: mf.Created, AddedBy: "alice"}
		for _, f := range mf.Files {
			cv.Size += f.Size
		}
		s.mu.Lock()
		s.content = append(s.content, cv)
		s.mu.Unlock()
		answer(w, cv)
	}))
	m.HandleFunc("GET /v1/admin/content", logged(func(w http.ResponseWriter, r *http.Request) { answer(w, s.content) }))
	find := func(w http.ResponseWriter, r *http.Request) (wire.ContentVersion, bool) {
		for _, cv := range s.content {
			if cv.Name == r.PathValue("name") && cv.Version == r.PathValue("version") {
				return cv, true
			}
		}
		fail(w, http.StatusNotFound, "not_found", "no such package version")
		return wire.ContentVersion{}, false
	}
	m.HandleFunc("GET /v1/admin/content/{name}/{version}", logged(func(w http.ResponseWriter, r *http.Request) {
		if cv, ok := find(w, r); ok {
			answer(w, cv)
		}
	}))
	m.HandleFunc("DELETE /v1/admin/content/{name}/{version}", logged(func(w http.ResponseWriter, r *http.Request) {
		if cv, ok := find(w, r); ok && cv.Deployments > 0 {
			fail(w, http.StatusConflict, "deployment_uses_content", fmt.Sprintf("%d deployments use %s %s", cv.Deployments, cv.Name, cv.Version))
		} else if ok {
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	m.HandleFunc("POST /v1/admin/content/{name}/{version}/distribute", logged(func(w http.ResponseWriter, r *http.Request) {
		var req wire.ContentDistribute
		_ = json.NewDecoder(r.Body).Decode(&req)
		if cv, ok := find(w, r); ok {
			for _, id := range req.DPs {
				cv.DPs = append(cv.DPs, wire.DPPackageState{Name: id, Version: cv.Version, State: wire.DPPending})
			}
			answer(w, cv)
		}
	}))
	m.HandleFunc("POST /v1/admin/deployments", logged(func(w http.ResponseWriter, r *http.Request) {
		var req wire.DeploymentCreate
		_ = json.NewDecoder(r.Body).Decode(&req)
		if req.Group != "kiosks" {
			fail(w, http.StatusForbidden, "forbidden", "group "+req.Group+" is not in your scope")
			return
		}
		d := wire.DeploymentInfo{ID: "d0000000000000000000000000000001", Package: req.Package, Version: req.Version, Group: req.Group, Install: req.Install,
			Created: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC), CreatedBy: "alice", Counts: map[string]int{wire.DeployPending: 2}}
		s.mu.Lock()
		s.deploys = append(s.deploys, d)
		s.mu.Unlock()
		answer(w, d)
	}))
	m.HandleFunc("GET /v1/admin/deployments", logged(func(w http.ResponseWriter, r *http.Request) { answer(w, s.deploys) }))
	m.HandleFunc("GET /v1/admin/deployments/{id}", logged(func(w http.ResponseWriter, r *http.Request) {
		for _, d := range s.deploys {
			if d.ID == r.PathValue("id") {
				answer(w, d)
				return
			}
		}
		fail(w, http.StatusNotFound, "not_found", "no such deployment")
	}))
	m.HandleFunc("DELETE /v1/admin/deployments/{id}", logged(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	return s
}

// TestContentAddResumesABrokenUpload: the DP holds one file already, and the connection of
// the first PUT of the big file breaks halfway; the second PUT starts where the DP's
// state said and the DP ends with exactly the file's bytes, each received once.
func TestContentAddResumesABrokenUpload(t *testing.T) {
	s := newContentSite(t)
	dir := t.TempDir()
	big := writeFile(t, dir, "pkg/big.bin", 3<<20+12345, 7, 0o644)
	known := writeFile(t, dir, "pkg/sub/known.txt", 70000, 8, 0o644)
	dup := writeFile(t, dir, "pkg/sub/same-as-known.txt", 70000, 8, 0o644)
	if !bytes.Equal(known, dup) {
		t.Fatal("the fixture's duplicate differs")
	}
	s.cut = hexSum(big)
	s.blobs[hexSum(known)], s.complete[hexSum(known)] = known, true

	// Flags after the arguments.
	args := append([]string{"content", "add", "agent-tools", filepath.Join(dir, "pkg"), "--version", "1.4.0", "--chunk-size", "1MiB",
		"--install-command", "sh install.sh", "--success-codes", "0,2", "--install-timeout", "5m", "--json"}, s.flags...)
	stdout, stderr, err := runIBCM(t, "", args...)
	if err != nil {
		t.Fatalf("content add: %v\n%s", err, stderr)
	}
	var res contentAdded
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("--json output %q: %v", stdout, err)
	}

	sha := hexSum(big)
	s.mu.Lock()
	if offs := s.offsets[sha]; len(offs) != 2 || offs[0] != 0 || offs[1] != int64(len(big))/2 {
		t.Errorf("PUT offsets %v, want [0 %d]", offs, len(big)/2)
	}
	if !bytes.Equal(s.blobs[sha], big) || !s.complete[sha] {
		t.Errorf("the DP holds %d bytes (complete %v), want the file's %d", len(s.blobs[sha]), s.complete[sha], len(big))
	}
	if got := s.received[sha]; got != int64(len(big)) {
		t.Errorf("the DP read %d bytes of PUT bodies, want exactly %d (nothing sent twice)", got, len(big))
	}
	if n := len(s.offsets[hexSum(known)]); n != 0 {
		t.Errorf("%d PUTs of a blob the DP held", n)
	}
	if !strings.Contains(stderr, "upload of big.bin broke; resuming at byte "+strconv.Itoa(len(big)/2)) {
		t.Errorf("stderr:\n%s", stderr)
	}

	if len(s.signed) != 1 || len(s.content) != 1 {
		t.Fatalf("signed %d, registered %d", len(s.signed), len(s.content))
	}
	mf := s.signed[0]
	if mf.Name != "agent-tools" || mf.Version != "1.4.0" || mf.ChunkSize != 1<<20 || len(mf.Files) != 3 || mf.Created.Location() != time.UTC ||
		mf.Install == nil || mf.Install.Command != "sh install.sh" || mf.Install.Timeout != "5m0s" || !slices.Equal(mf.Install.SuccessCodes, []int{0, 2}) {
		t.Errorf("the manifest sent to the CA: %+v %+v", mf, mf.Install)
	}
	if mf.Files[0].Path != "big.bin" || len(mf.Files[0].Chunks) != 4 || mf.Files[2].Path != "sub/same-as-known.txt" {
		t.Errorf("files: %+v", mf.Files)
	}
	if res.Name != "agent-tools" || res.Version != "1.4.0" || res.ManifestSHA256 != s.content[0].ManifestSHA256 || res.Files != 3 || res.DP != "dp1" ||
		res.Size != int64(len(big)+2*len(known)) || res.Skipped != int64(len(known)) || res.Uploaded < int64(len(big)) {
		t.Errorf("--json: %+v", res)
	}
	if !slices.Equal(s.requests, []string{"GET /v1/admin/content/agent-tools/1.4.0", "GET /v1/admin/dps", "POST /v1/admin/content/sign", "POST /v1/admin/content"}) {
		t.Errorf("calls: %v", s.requests)
	}

	s.mu.Unlock()

	// A second add of the same files sends nothing, and the table says so.
	stdout, stderr, err = runIBCM(t, "", append([]string{"content", "add", "agent-tools", "--version", "1.4.1", filepath.Join(dir, "pkg")}, s.flags...)...)
	if err != nil {
		t.Fatalf("content add again: %v\n%s", err, stderr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, want := range []string{"added agent-tools 1.4.1", "files 3 (3.1 MiB)", "uploaded 0 B to dp1", "skipped 3.1 MiB (already on dp1)", "manifest sha256 " + s.content[1].ManifestSHA256} {
		if !strings.Contains(oneSpace(stdout), want) {
			t.Errorf("content add printed\n%s\nwant %q", stdout, want)
		}
	}
	if s.received[sha] != int64(len(big)) {
		t.Errorf("the second add sent %d bytes", s.received[sha]-int64(len(big)))
	}
	s.mu.Unlock()

	// A version that exists is refused before anything is hashed or sent.
	_, _, err = runIBCM(t, "", append([]string{"content", "add", "agent-tools", "--version", "1.4.1", filepath.Join(dir, "pkg")}, s.flags...)...)
	s.mu.Lock()
	if err == nil || !strings.Contains(err.Error(), "agent-tools 1.4.1 exists already") || len(s.signed) != 2 {
		t.Errorf("adding an existing version: %v (signed %d)", err, len(s.signed))
	}
}

// oneSpace collapses each run of spaces (a table's padding) to one.
func oneSpace(s string) string {
	var lines []string
	for l := range strings.SplitSeq(s, "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(lines, "\n")
}

// TestUploaderGivesUp: a DP that refuses the bytes (not a broken connection) is not asked
// again; one that keeps breaking is given up after the retries.
func TestUploaderGivesUp(t *testing.T) {
	s := newContentSite(t)
	dir := t.TempDir()
	b := writeFile(t, dir, "f", 100000, 9, 0o644)
	mp, err := newRoleClientForTest(t, s)
	if err != nil {
		t.Fatal(err)
	}
	u, err := newUploader(mp, s.dps[2])
	if err != nil {
		t.Fatal(err)
	}
	u.backoff = func(int) time.Duration { return 0 }
	// A file whose bytes do not hash to the name it is uploaded under.
	f := localFile{disk: filepath.Join(dir, "f")}
	f.Path, f.Size, f.SHA256 = "f", int64(len(b)), strings.Repeat("ab", 32)
	if _, _, err := u.upload(t.Context(), f); err == nil || !strings.Contains(err.Error(), "hash_mismatch") {
		t.Errorf("a refused upload: %v", err)
	}
	if n := len(s.offsets[f.SHA256]); n != 1 {
		t.Errorf("a refused upload was sent %d times", n)
	}

	// A DP that keeps cutting the connection.
	u.retries = 2
	u.bases = []string{s.srv.URL + "/v1/nothing"}
	u.state.base = u.bases[0]
	s.mux.HandleFunc("GET /v1/nothing/v1/admin/uploads/{sha}", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(wire.UploadState{})
	})
	var puts int
	s.mux.HandleFunc("PUT /v1/nothing/v1/admin/uploads/{sha}", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		puts++
		s.mu.Unlock()
		panic(http.ErrAbortHandler)
	})
	f.SHA256 = hexSum(b)
	if _, _, err := u.upload(t.Context(), f); err == nil || !strings.Contains(err.Error(), "gave up after 3 attempts") {
		t.Errorf("a DP that always breaks: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if puts != 3 {
		t.Errorf("%d PUTs, want 3", puts)
	}
}

// newRoleClientForTest is the MP client of the fake site's flags.
func newRoleClientForTest(t *testing.T, s *contentSite) (*adminClient, error) {
	t.Helper()
	app := newApp()
	var a *adminClient
	var err error
	cmd := app.Command("content").Command("list")
	cmd.Action = func(_ context.Context, c *cli.Command) error {
		a, err = newRoleClient(c, site.RoleMP)
		return nil
	}
	if rerr := cliapp.Run(t.Context(), app, append([]string{"ibcm", "content", "list"}, s.flags...)); rerr != nil {
		return nil, rerr
	}
	return a, err
}

func TestUploadTarget(t *testing.T) {
	dps := []wire.DPInfo{
		{ID: "b", Origin: true, Online: true, Priority: 5, InternetURL: "https://b"},
		{ID: "a", Origin: true, Online: true, Priority: 5, IntranetURL: "https://a"},
		{ID: "c", Origin: true, Online: false, Priority: 1, IntranetURL: "https://c"},
		{ID: "d", Origin: false, Online: true, Priority: 0, IntranetURL: "https://d"},
		{ID: "e", Origin: true, Online: true, Priority: 0},
	}
	if d, err := uploadTarget(dps, ""); err != nil || d.ID != "a" {
		t.Errorf("default target %s, %v; want a", d.ID, err)
	}
	if d, err := uploadTarget(dps, "d"); err != nil || d.ID != "d" {
		t.Errorf("--dp d: %s, %v", d.ID, err)
	}
	if _, err := uploadTarget(dps, "zz"); err == nil || exitCode(err) != exitUsage {
		t.Errorf("--dp zz: %v", err)
	}
	if _, err := uploadTarget(dps[2:4], ""); err == nil || !strings.Contains(err.Error(), "no origin DP is online") {
		t.Errorf("no online origin: %v", err)
	}
}

// TestContentAddProgressOnATerminal: with stderr on a terminal, hashing and each upload
// draw a progress bar that ends at 100 %; off a terminal none is drawn.
func TestContentAddProgressOnATerminal(t *testing.T) {
	s := newContentSite(t)
	dir := t.TempDir()
	writeFile(t, dir, "pkg.bin", 300000, 11, 0o644)
	master, slave := openPTY(t)
	scr := &screen{changed: make(chan struct{}, 1)}
	go scr.copy(master)
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, slave
	err := cliapp.Run(t.Context(), app, append([]string{"ibcm", "content", "add", "pkg", filepath.Join(dir, "pkg.bin"), "--version", "1"}, s.flags...))
	if err != nil {
		t.Fatal(err)
	}
	mark := scr.wait(t, 0, "hashing 1 file")
	mark = scr.wait(t, mark, "100 % 293.0 KiB / 293.0 KiB")
	mark = scr.wait(t, mark, "pkg.bin")
	scr.wait(t, mark, "100 % 293.0 KiB / 293.0 KiB")
	if !strings.Contains(out.String(), "added") {
		t.Errorf("stdout: %q", out.String())
	}

	// Off a terminal: no bar.
	writeFile(t, dir, "other.bin", 1000, 12, 0o644)
	_, stderr, err := runIBCM(t, "", append([]string{"content", "add", "pkg", filepath.Join(dir, "other.bin"), "--version", "2"}, s.flags...)...)
	if err != nil || strings.Contains(stderr, "\r") || strings.Contains(stderr, "%") {
		t.Errorf("off a terminal: %v, stderr %q", err, stderr)
	}
}

// TestUploaderFallsBackToTheInternetURL: a DP whose intranet URL does not answer is
// reached at its internet URL, which then stays.
func TestUploaderFallsBackToTheInternetURL(t *testing.T) {
	s := newContentSite(t)
	dir := t.TempDir()
	b := writeFile(t, dir, "f", 5000, 13, 0o644)
	mp, err := newRoleClientForTest(t, s)
	if err != nil {
		t.Fatal(err)
	}
	u, err := newUploader(mp, wire.DPInfo{ID: "dp5", IntranetURL: "https://127.0.0.1:1", InternetURL: s.srv.URL + "/"})
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	u.log = &log
	f := localFile{disk: filepath.Join(dir, "f")}
	f.Path, f.Size, f.SHA256 = "f", int64(len(b)), hexSum(b)
	sent, skipped, err := u.upload(t.Context(), f)
	if err != nil || sent != int64(len(b)) || skipped != 0 {
		t.Fatalf("upload: sent %d skipped %d: %v", sent, skipped, err)
	}
	if !strings.Contains(log.String(), "DP dp5: https://127.0.0.1:1 did not answer") || len(u.bases) != 1 || u.bases[0] != s.srv.URL {
		t.Errorf("log %q, bases %v", log.String(), u.bases)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !bytes.Equal(s.blobs[f.SHA256], b) || !s.complete[f.SHA256] {
		t.Error("the DP does not hold the file")
	}
}
