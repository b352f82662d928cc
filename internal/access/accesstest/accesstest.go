// Package accesstest owns the check that a server's role × route test covers every admin
// route: it reads the routes a package's source registers and matches them to the
// test's table, so a new route cannot go untested for its permission.
package accesstest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var handle = regexp.MustCompile(`mux\.Handle\("([A-Z]+ /v1/admin/[^"]*)"`)

// AdminPatterns returns the admin route patterns ("GET /v1/admin/x/{id}") registered
// with mux.Handle in the non-test Go files of the current directory.
func AdminPatterns(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range handle.FindAllStringSubmatch(string(b), -1) {
			out = append(out, m[1])
		}
	}
	if len(out) < 10 {
		t.Fatalf("found only %d admin routes in the source: %v", len(out), out)
	}
	return out
}

// Route is one row of a role × route table: a concrete request.
type Route struct{ Method, Path string }

// CheckCovered fails t for each admin route of the package's source that no route of
// table matches (a {wildcard} matches one path segment).
func CheckCovered(t testing.TB, table []Route) {
	t.Helper()
	wildcard := regexp.MustCompile(`\{[^}]+\}`)
	for _, pat := range AdminPatterns(t) {
		method, path, _ := strings.Cut(pat, " ")
		re := regexp.MustCompile("^" + strings.ReplaceAll(regexp.QuoteMeta(wildcard.ReplaceAllString(path, "\x00")), "\x00", "[^/]+") + "$")
		found := false
		for _, r := range table {
			found = found || (r.Method == method && re.MatchString(r.Path))
		}
		if !found {
			t.Errorf("admin route %s is not in the role × route table", pat)
		}
	}
}
