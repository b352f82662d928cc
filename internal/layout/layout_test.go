package layout

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const tags = "nobadger,nomysql,nopgx,nobbolt"

type pkg struct {
	ImportPath string
	Doc        string
	Name       string
	Imports    []string
	Deps       []string
}

func list(t *testing.T, patterns ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-tags", tags, "-json"}, patterns...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func TestEveryPackageSaysWhatItOwns(t *testing.T) {
	for _, p := range list(t, "./...") {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", p.ImportPath)
		}
	}
}

// The agent runs on every device and must stay small: no CA libraries, no database
// drivers, no server code.
func TestAgentLinksNoServerCode(t *testing.T) {
	forbidden := []string{
		"github.com/smallstep/", "go.step.sm/", "github.com/cloudflare/cfssl", "github.com/lib/pq",
		"modernc.org/sqlite", "github.com/mattn/go-sqlite3",
		"github.com/ibcm-project/ibcm/ca", "github.com/ibcm-project/ibcm/site", "github.com/ibcm-project/ibcm/internal/sitedb",
		"github.com/ibcm-project/ibcm/internal/trust",
	}
	for _, p := range list(t, "./cli/ibcm-client") {
		for _, d := range append(p.Deps, p.ImportPath) {
			for _, f := range forbidden {
				if d == f || strings.HasPrefix(d, f+"/") || (strings.HasSuffix(f, "/") && strings.HasPrefix(d, f)) {
					t.Errorf("ibcm-client links %s", d)
				}
			}
		}
	}
}

// client/ speaks to the site only through internal/wire (DESIGN.md §3) and shares only
// internal/atomicfile; besides the
// standard library it uses only miekg/dns (SRV lookups), coder/websocket (the
// notification channel) and rs/zerolog (the site's log library, DESIGN.md §4), and for
// remote control the device's side (remote/device) with the contracts it shares
// (remote/ticket, frame, e2e, recording), creack/pty and x/term, and for deployments the
// signed manifests (dp/manifest) and the blob downloader (dp/fetch).
func TestClientImportsOnlyWireAndTheStandardLibrary(t *testing.T) {
	allowed := func(imp string) bool {
		switch {
		case !strings.Contains(strings.SplitN(imp, "/", 2)[0], "."), // standard library
			imp == "github.com/ibcm-project/ibcm/internal/wire", imp == "github.com/ibcm-project/ibcm/internal/atomicfile",
			imp == "github.com/ibcm-project/ibcm/client" || strings.HasPrefix(imp, "github.com/ibcm-project/ibcm/client/"),
			imp == "github.com/miekg/dns", imp == "github.com/coder/websocket", imp == "github.com/rs/zerolog",
			imp == "github.com/ibcm-project/ibcm/remote/ticket", imp == "github.com/ibcm-project/ibcm/remote/frame",
			imp == "github.com/ibcm-project/ibcm/remote/e2e", imp == "github.com/ibcm-project/ibcm/remote/recording",
			imp == "github.com/ibcm-project/ibcm/remote/device", imp == "github.com/creack/pty", imp == "golang.org/x/term",
			imp == "github.com/ibcm-project/ibcm/dp/manifest", imp == "github.com/ibcm-project/ibcm/dp/fetch": // deployments (client/deploy)
			return true
		}
		return false
	}
	for _, p := range list(t, "./client/...") {
		for _, imp := range p.Imports {
			if !allowed(imp) {
				t.Errorf("%s imports %s", p.ImportPath, imp)
			}
		}
	}
}

// The roles reach the PKI through internal/trust, never by importing the CA (DESIGN.md §3).
func TestRolesDoNotImportTheCA(t *testing.T) {
	for _, p := range list(t, "./mp/...") {
		for _, d := range append(p.Deps, p.Imports...) {
			if d == "github.com/ibcm-project/ibcm/ca" || strings.HasPrefix(d, "github.com/smallstep/") || strings.HasPrefix(d, "github.com/cloudflare/cfssl") {
				t.Errorf("%s depends on %s", p.ImportPath, d)
			}
		}
	}
}

// remote/device is linked into the agent: it imports the standard library, internal/wire,
// internal/atomicfile, the remote contracts, remote/rfb, creack/pty and zerolog, and depends on no
// server code.
func TestRemoteDeviceImportsNoServerCode(t *testing.T) {
	allowed := func(imp string) bool {
		switch {
		case !strings.Contains(strings.SplitN(imp, "/", 2)[0], "."),
			imp == "github.com/ibcm-project/ibcm/internal/wire", imp == "github.com/ibcm-project/ibcm/internal/atomicfile",
			imp == "github.com/ibcm-project/ibcm/remote/ticket", imp == "github.com/ibcm-project/ibcm/remote/frame",
			imp == "github.com/ibcm-project/ibcm/remote/e2e", imp == "github.com/ibcm-project/ibcm/remote/recording",
			imp == "github.com/ibcm-project/ibcm/remote/rfb", // screen sessions' RFB filter and handshakes
			imp == "github.com/creack/pty", imp == "github.com/rs/zerolog":
			return true
		}
		return false
	}
	server := []string{"github.com/ibcm-project/ibcm/mp", "github.com/ibcm-project/ibcm/ca", "github.com/ibcm-project/ibcm/site",
		"github.com/ibcm-project/ibcm/internal/sitedb", "github.com/ibcm-project/ibcm/internal/trust", "github.com/ibcm-project/ibcm/internal/access",
		"github.com/ibcm-project/ibcm/internal/api", "github.com/ibcm-project/ibcm/remote/helper", "github.com/ibcm-project/ibcm/client",
		"github.com/lib/pq", "modernc.org/sqlite", "github.com/smallstep/", "github.com/cloudflare/cfssl"}
	for _, p := range list(t, "./remote/device") {
		for _, imp := range p.Imports {
			if !allowed(imp) {
				t.Errorf("%s imports %s", p.ImportPath, imp)
			}
		}
		for _, d := range p.Deps {
			for _, f := range server {
				if d == f || strings.HasPrefix(d, strings.TrimSuffix(f, "/")+"/") {
					t.Errorf("%s depends on %s", p.ImportPath, d)
				}
			}
		}
	}
}
