package site

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/internal/sitedb"
	"github.com/ibcm-project/ibcm/internal/tlspark"
)

// TestParkIdleChannelsSwitch: mp.park_idle_channels decides whether the MP's listeners can
// park a TLS 1.3 connection (on unless set to false); the channel's side of it is
// mp.TestNotifyChannelParked and mp.TestNotifyChannelOnCryptoTLS.
func TestParkIdleChannelsSwitch(t *testing.T) {
	off := false
	for _, tc := range []struct {
		name   string
		yaml   string // the line under mp:, if any
		set    *bool
		parked bool
	}{
		{"unset: parked", "", nil, true},
		{"false: kept on crypto/tls", "park_idle_channels: false", &off, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := "version: 1\nsite: {code: ABC, intranet_name: a.corp, internet_name: a.example}\n"
			if tc.yaml != "" {
				base += "mp: {" + tc.yaml + "}\n"
			}
			parsed, err := Parse([]byte(base))
			if err != nil {
				t.Fatal(err)
			}
			if parsed.MP.ParksIdleChannels() != tc.parked {
				t.Fatalf("%q: ParksIdleChannels %v, want %v", tc.yaml, parsed.MP.ParksIdleChannels(), tc.parked)
			}

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			o := initOptions(filepath.Join(t.TempDir(), "site"))
			o.MPIntranetAddr, o.MPInternetAddr = freeAddr(t), freeAddr(t)
			o.NoConsole = true // the MP's own listeners only
			cfg, err := Init(ctx, o, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			cfg.MP.ParkIdleChannels = tc.set
			db, err := sitedb.Open(ctx, sitedb.Driver(cfg.Store.Driver), cfg.StoreDSN())
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			verifier, err := newVerifier(ctx, db, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			servers, _, m, err := openMP(ctx, cfg, db, verifier, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			defer cancel()
			if len(servers) != 2 {
				t.Fatalf("%d MP listeners, want 2", len(servers))
			}
			for _, s := range servers {
				if err := s.Listen(); err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				accepted := make(chan *tls.Conn, 1)
				go func() {
					c, err := s.Listener.Accept()
					if err != nil {
						close(accepted)
						return
					}
					tc := c.(*tls.Conn)
					if err := tc.Handshake(); err != nil {
						tc.Close()
						close(accepted)
						return
					}
					accepted <- tc
				}()
				c, err := tls.Dial("tcp", s.Listener.Addr().String(), adminTLS(t, cfg))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
					t.Fatalf("%s: %s, want TLS 1.3", s.Role, tls.VersionName(v))
				}
				sc := <-accepted
				if sc == nil {
					t.Fatalf("%s: handshake failed", s.Role)
				}
				defer sc.Close()
				pc, err := tlspark.Park(sc)
				switch {
				case tc.parked && err != nil:
					t.Errorf("%s: Park: %v, want the connection parked", s.Role, err)
				case !tc.parked && !errors.Is(err, tlspark.ErrNotParkable):
					t.Errorf("%s: Park: %v, want ErrNotParkable with parking off", s.Role, err)
				}
				if pc != nil {
					pc.Close()
				}
			}
		})
	}
}

// adminTLS is a client config with the site's admin identity.
func adminTLS(t *testing.T, cfg *Config) *tls.Config {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(cfg.Path(AdminCert), cfg.Path(AdminKey))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(cfg.Path(cfg.CA.RootCert))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, ServerName: cfg.Site.IntranetName}
}
