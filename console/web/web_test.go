package web

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := fs.ReadFile(Dist, name)
	if err != nil {
		t.Fatalf("dist lacks %s (run make console-assets): %v", name, err)
	}
	if len(b) == 0 {
		t.Fatalf("%s is empty", name)
	}
	return string(b)
}

func TestDistHasTheBuiltFiles(t *testing.T) {
	for _, name := range []string{"dist/index.html", "dist/logged-out.html", "dist/assets/app.js", "dist/assets/app.css"} {
		read(t, name)
	}
	lic := read(t, "dist/assets/THIRD-PARTY-LICENSES.txt")
	for _, want := range []string{"@xterm/xterm", "@xterm/addon-fit", "@novnc/novnc", "MPL-2.0", "Mozilla Public License Version 2.0", "MIT"} {
		if !strings.Contains(lic, want) {
			t.Errorf("THIRD-PARTY-LICENSES.txt does not mention %q", want)
		}
	}
}

var (
	urlAttr     = regexp.MustCompile(`(?i)\b(src|href|action)\s*=\s*"([^"]*)"`)
	scriptTag   = regexp.MustCompile(`(?is)<script\b([^>]*)>(.*?)</script>`)
	styleTag    = regexp.MustCompile(`(?i)<style\b`)
	styleAttr   = regexp.MustCompile(`(?i)\sstyle\s*=`)
	handlerAttr = regexp.MustCompile(`(?i)\son[a-z]+\s*=`)
)

// The pages must work under the console's Content-Security-Policy (script-src 'self';
// style-src 'self'): no inline script, style or handler, and only same-origin /assets/ URLs
// for what they load.
func TestPagesFitTheCSP(t *testing.T) {
	for _, name := range []string{"dist/index.html", "dist/logged-out.html"} {
		page := read(t, name)
		for _, m := range urlAttr.FindAllStringSubmatch(page, -1) {
			attr, u := strings.ToLower(m[1]), m[2]
			switch {
			case attr == "href" && (u == "/devices" || u == "/sessions"): // the nav links
			case attr == "action" && u == "/logout":
			case !strings.HasPrefix(u, "/assets/") || strings.Contains(u, ".."):
				t.Errorf("%s: %s=%q loads from outside /assets/", name, attr, u)
			}
		}
		for _, m := range scriptTag.FindAllStringSubmatch(page, -1) {
			if strings.TrimSpace(m[2]) != "" {
				t.Errorf("%s: inline script %q", name, m[0])
			}
			if !strings.Contains(m[1], `src="/assets/`) {
				t.Errorf("%s: script without an /assets/ src: %q", name, m[0])
			}
		}
		if styleTag.MatchString(page) {
			t.Errorf("%s: has a <style> element", name)
		}
		if styleAttr.MatchString(page) {
			t.Errorf("%s: has a style attribute", name)
		}
		if handlerAttr.MatchString(page) {
			t.Errorf("%s: has an inline event handler", name)
		}
	}
	// the link tag: rel=stylesheet href=/assets/...
	if !strings.Contains(read(t, "dist/index.html"), `href="/assets/app.css"`) {
		t.Error("index.html does not load /assets/app.css")
	}
}

// The page structure helper D's browser test relies on is in the shell.
func TestIndexHasTheHeader(t *testing.T) {
	page := read(t, "dist/index.html")
	for _, id := range []string{`id="user"`, `id="logout"`, `id="logout-button"`, `id="nav-devices"`, `id="nav-sessions"`, `id="error"`, `id="main"`} {
		if !strings.Contains(page, id) {
			t.Errorf("index.html lacks %s", id)
		}
	}
	if !strings.Contains(read(t, "dist/logged-out.html"), `id="login-needed"`) {
		t.Error("logged-out.html lacks #login-needed")
	}
}

// The bundle must not need 'unsafe-eval'.
func TestScriptNeedsNoEval(t *testing.T) {
	js := read(t, "dist/assets/app.js")
	for _, bad := range []string{"new Function(", "eval("} {
		if strings.Contains(js, bad) {
			t.Errorf("app.js contains %q (the CSP has no 'unsafe-eval')", bad)
		}
	}
}

// dist/ must be built from the sources as they are: SOURCES.sha256 (written by the build)
// names every input with its hash. A change to src/, build.mjs or the lockfile without
// `make console-assets` fails here.
func TestDistIsBuiltFromTheseSources(t *testing.T) {
	sums := read(t, "dist/SOURCES.sha256")
	listed := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSuffix(sums, "\n"), "\n") {
		want, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SOURCES.sha256: bad line %q", line)
		}
		listed[name] = true
		b, err := os.ReadFile(filepath.FromSlash(name))
		if err != nil {
			t.Errorf("%s: %v (run make console-assets)", name, err)
			continue
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(b)); got != want {
			t.Errorf("%s changed since dist/ was built: run make console-assets", name)
		}
	}
	src, err := os.ReadDir("src")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range src {
		if !listed["src/"+e.Name()] {
			t.Errorf("src/%s is not in dist/ (run make console-assets)", e.Name())
		}
	}
}
