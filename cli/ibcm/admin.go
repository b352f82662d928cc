package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

// adminFlags find the CA and the admin identity: --dir for the site directory made by
// `ibcm site init`, or --ca, --cert, --key and --ca-root given one by one, else the
// identity `ibcm login` stored in the user config directory.
func adminFlags() []cli.Flag {
	return []cli.Flag{
		dirFlag(false),
		&cli.StringFlag{Name: "ca", Usage: "CA URL (default: ca.url of DIR/site.yaml)", Sources: cli.EnvVars("IBCM_CA_URL")},
		&cli.StringFlag{Name: "mp", Usage: "MP URL (default: the intranet URL of the MP in DIR/site.yaml, else its internet URL)", Sources: cli.EnvVars("IBCM_MP_URL")},
		&cli.StringFlag{Name: "cert", Usage: "admin certificate (default: DIR/admin/admin.crt)", Sources: cli.EnvVars("IBCM_ADMIN_CERT")},
		&cli.StringFlag{Name: "key", Usage: "admin key (default: DIR/admin/admin.key)", Sources: cli.EnvVars("IBCM_ADMIN_KEY")},
		&cli.StringFlag{Name: "ca-root", Usage: "root certificate to trust (default: ca.root_cert of DIR/site.yaml)", Sources: cli.EnvVars("IBCM_CA_ROOT")},
		passphraseFlag(),
		&cli.StringFlag{Name: "resolv-conf", Usage: "resolvers for finding the intranet MP after ibcm login (default: /etc/resolv.conf)", Sources: cli.EnvVars("IBCM_RESOLV_CONF"), TakesFile: true},
	}
}

// adminClient calls the admin API of the CA or of the MP over mutual TLS.
type adminClient struct {
	base string
	who  string // "the CA" or "the management point", for error messages
	http *http.Client
	root string // SHA-256 of the trusted root, for the ibcm login a login token is for
}

func newAdminClient(c *cli.Command) (*adminClient, error) { return newRoleClient(c, site.RoleCA) }

// newRoleClient calls the admin API of the CA or of the MP.
func newRoleClient(c *cli.Command, role string) (*adminClient, error) {
	caURL, cert, key, root := c.String("ca"), c.String("cert"), c.String("key"), c.String("ca-root")
	if role == site.RoleMP {
		caURL = c.String("mp")
	}
	if dir := c.String("dir"); dir != "" {
		cfg, err := site.Load(filepath.Join(dir, site.FileName))
		if err != nil {
			return nil, err
		}
		base := cfg.CA.URL
		if role == site.RoleMP {
			base = cfg.MP.InternetURL
			if cfg.MPIntranet() {
				base = cfg.MP.IntranetURL
			}
		}
		caURL = orDefault(caURL, base)
		cert = orDefault(cert, cfg.Path(site.AdminCert))
		key = orDefault(key, cfg.Path(site.AdminKey))
		root = orDefault(root, cfg.Path(cfg.CA.RootCert))
	} else if cert == "" && key == "" && root == "" {
		// No site directory and no identity given: the one of `ibcm login`, if any.
		ud, err := userDir()
		if err != nil {
			return nil, err
		}
		l, ok, err := loadUserLogin(ud)
		if err != nil {
			return nil, err
		}
		if ok {
			return userClient(c, role, ud, l)
		}
	}
	if caURL == "" || cert == "" || key == "" || root == "" {
		return nil, usageError("say where the %s and the admin identity are: --dir DIR, or --%s URL --cert F --key F --ca-root F, or run ibcm login first", strings.ToUpper(role), role)
	}
	pair, err := loadKeyPair(c, cert, key)
	if err != nil {
		return nil, fmt.Errorf("loading the admin identity: %w", err)
	}
	rootPEM, err := os.ReadFile(root)
	if err != nil {
		return nil, fmt.Errorf("reading the CA root: %w", err)
	}
	roots, err := ca.ParseCerts(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("reading the CA root: %w", err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	who := "the CA"
	if role == site.RoleMP {
		who = "the management point"
	}
	return &adminClient{base: strings.TrimSuffix(caURL, "/"), who: who, root: ca.Fingerprint(roots[0]), http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}}, nil
}

func orDefault(v, d string) string {
	if v != "" {
		return v
	}
	return d
}

// do sends a JSON request (in may be nil) and decodes the JSON answer into out (or returns
// the raw body when out is a *[]byte). An error answer becomes an error with its code.
func (a *adminClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("calling %s: %w", a.who, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer of %s: %w", a.who, err)
	}
	if resp.StatusCode >= 300 {
		var e wire.Error
		if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
			return fmt.Errorf("%s (%s, HTTP %d)", e.Error.Message, e.Error.Code, resp.StatusCode)
		}
		return fmt.Errorf("%s answered HTTP %d", a.who, resp.StatusCode)
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return nil
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding the answer of %s: %w", a.who, err)
		}
	}
	return nil
}
