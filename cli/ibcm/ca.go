package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/ca"
	"github.com/ibcm-project/ibcm/internal/cliapp"
	"github.com/ibcm-project/ibcm/internal/wire"
	"github.com/ibcm-project/ibcm/site"
)

func caCommand() *cli.Command {
	return &cli.Command{
		Name:  "ca",
		Usage: "the certificate authority: serve it, and issue, list, renew and revoke certificates",
		Commands: []*cli.Command{
			caServeCommand(), caTokenCommand(), caIssueCommand(), caListCommand(), caShowCommand(),
			caRevokeCommand(), caCRLCommand(), caBundleCommand(),
		},
	}
}

func caServeCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the CA role alone",
		Description: `Runs the CA's HTTPS listener (enroll, renew, admin API) and its plain-HTTP
listener (CRL, OCSP, CA certificates) from a site.yaml until SIGINT or SIGTERM. The
issuing key's password comes from IBCM_CA_PASSWORD when it is set, else from the file
ca.password_file of the site.yaml names. Roles in separate processes need a PostgreSQL
store: on SQLite a second serving process is refused.

EXAMPLES:
   ibcm ca serve --dir /srv/ibcm
   ibcm ca serve --config /srv/ibcm/site.yaml
   IBCM_CA_PASSWORD="$(cat /run/secrets/ca)" ibcm ca serve --config /etc/ibcm/site.yaml`,
		Flags: []cli.Flag{dirFlag(false), configFlag()},
		Action: func(ctx context.Context, c *cli.Command) error {
			path, err := serveConfig(c)
			if err != nil {
				return err
			}
			return serve(ctx, c, path, site.RoleCA)
		},
	}
}

func caTokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "enrollment tokens: create, list, revoke",
		Commands: []*cli.Command{
			{
				Name:  "create",
				Usage: "make an enrollment token; prints the secret alone on stdout (shown once)",
				Description: `Makes a one-time (or --uses N bulk) enrollment token bound to a profile and, with
--subject, to one device or user name. The secret is printed once and only its hash is kept.

EXAMPLES:
   ibcm ca token create --dir /srv/ibcm --profile client --subject pc-0042 --ttl 2h
   TOKEN=$(ibcm ca token create --dir /srv/ibcm --profile client --uses 500 --ttl 168h)
   ibcm ca token create --dir /srv/ibcm --device 6defabdb-743f-4a34-9830-20527b338cb5   # re-enroll a known device`,
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "profile", Value: "client", Usage: "client or admin", Sources: cli.EnvVars("IBCM_TOKEN_PROFILE")},
					&cli.StringFlag{Name: "subject", Usage: "the only device or user name this token enrolls", Sources: cli.EnvVars("IBCM_TOKEN_SUBJECT")},
					&cli.IntFlag{Name: "uses", Value: 1, Usage: "how many enrollments the token allows", Sources: cli.EnvVars("IBCM_TOKEN_USES"),
						Validator: cliapp.AtLeast(1)},
					&cli.DurationFlag{Name: "ttl", Value: 24 * time.Hour, Usage: "how long the token stays usable, such as 2h or 168h (a --device token: 1h unless set, at most 24h)", Sources: cli.EnvVars("IBCM_TOKEN_TTL"),
						Validator: cliapp.Positive},
					&cli.StringFlag{Name: "device", Usage: "re-enroll token for this existing device `ID`: one use, the certificate keeps its device id and name", Sources: cli.EnvVars("IBCM_TOKEN_DEVICE")},
				),
				Action: func(ctx context.Context, c *cli.Command) error {
					a, err := newAdminClient(c)
					if err != nil {
						return err
					}
					var t wire.TokenCreated
					ttl := c.Duration("ttl").String()
					if c.String("device") != "" && !c.IsSet("ttl") {
						ttl = "" // the CA's default for a re-enroll token
					}
					if err := a.do(ctx, http.MethodPost, "/v1/admin/tokens", wire.TokenCreateRequest{
						Profile: c.String("profile"), Subject: c.String("subject"), Uses: c.Int("uses"), TTL: ttl, DeviceID: c.String("device"),
					}, &t); err != nil {
						return err
					}
					fmt.Fprintln(c.Root().Writer, t.Secret)
					fmt.Fprintf(c.Root().ErrWriter, "token %s: profile %s, %d use(s), expires %s\n", t.ID, t.Profile, t.Uses, t.ExpiresAt.Format(time.RFC3339))
					return nil
				},
			},
			{
				Name:  "list",
				Usage: "list enrollment tokens (never their secrets)",
				Description: `EXAMPLES:
   ibcm ca token list --dir /srv/ibcm
   ibcm ca token list --dir /srv/ibcm --json`,
				Flags: append(adminFlags(), jsonFlag()),
				Action: func(ctx context.Context, c *cli.Command) error {
					a, err := newAdminClient(c)
					if err != nil {
						return err
					}
					var ts []wire.Token
					if err := a.do(ctx, http.MethodGet, "/v1/admin/tokens", nil, &ts); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.Root().Writer, ts)
					}
					w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "ID\tPROFILE\tSUBJECT\tUSES LEFT\tEXPIRES\tSTATE")
					for _, t := range ts {
						state := "usable"
						switch {
						case t.Revoked:
							state = "revoked"
						case t.UsesLeft == 0:
							state = "used"
						case time.Now().After(t.ExpiresAt):
							state = "expired"
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%d/%d\t%s\t%s\n", t.ID, t.Profile, dash(t.Subject), t.UsesLeft, t.Uses, t.ExpiresAt.Format(time.RFC3339), state)
					}
					return w.Flush()
				},
			},
			{
				Name:      "revoke",
				Usage:     "make an enrollment token unusable",
				Arguments: []cli.Argument{cliapp.Arg("ID")},
				Description: `EXAMPLES:
   ibcm ca token revoke --dir /srv/ibcm 3f9a0c1d2e4b5a69`,
				Flags: adminFlags(),
				Action: func(ctx context.Context, c *cli.Command) error {
					id := c.StringArg("ID")
					a, err := newAdminClient(c)
					if err != nil {
						return err
					}
					if err := a.do(ctx, http.MethodPost, "/v1/admin/tokens/"+url.PathEscape(id)+"/revoke", struct{}{}, nil); err != nil {
						return err
					}
					fmt.Fprintf(c.Root().Writer, "token %s revoked\n", id)
					return nil
				},
			},
		},
	}
}

func caIssueCommand() *cli.Command {
	return &cli.Command{
		Name:  "issue",
		Usage: "issue a certificate of a profile; writes PREFIX.crt and (when it made the key) PREFIX.key",
		Description: `Issues a certificate. Without --csr the key is made here and written to PREFIX.key (0600);
it never leaves this machine. PREFIX.crt holds the leaf followed by the issuing chain.
site-server certificates need --role (ca, mp or dp) and at least one --dns (IP addresses allowed).

--out - prints the certificate on stdout. A key made here then goes where --key-out says
(--key-out - prints it on stdout before the certificate); it is never printed unasked.
The files are created before the CA is asked, so a certificate is only issued when it and
its key can be stored; if writing still fails, the certificate is revoked again.

EXAMPLES:
   ibcm ca issue --dir /srv/ibcm --profile site-server --role mp --subject mp1 \
       --dns mp1.corp.example --dns mp.example.com --out /etc/ibcm/mp1
   ibcm ca issue --dir /srv/ibcm --profile admin --subject alice --out ./alice
   ibcm ca issue --dir /srv/ibcm --profile client --subject kiosk-7 --csr kiosk-7.csr --out - > kiosk-7.crt`,
		Flags: append(adminFlags(),
			&cli.StringFlag{Name: "profile", Required: true, Usage: "client, site-server, admin or ocsp", Sources: cli.EnvVars("IBCM_ISSUE_PROFILE")},
			&cli.StringFlag{Name: "subject", Usage: "common name: device, server or user name (default: the CSR's)", Sources: cli.EnvVars("IBCM_ISSUE_SUBJECT")},
			&cli.StringSliceFlag{Name: "dns", Usage: "DNS name (or IP for site-server); repeat for more", Sources: cli.EnvVars("IBCM_ISSUE_DNS")},
			&cli.StringFlag{Name: "role", Usage: "site-server role: ca, mp or dp", Sources: cli.EnvVars("IBCM_ISSUE_ROLE")},
			&cli.StringFlag{Name: "csr", Usage: "PEM CSR to sign instead of making a key here", Sources: cli.EnvVars("IBCM_ISSUE_CSR"), TakesFile: true},
			&cli.StringFlag{Name: "key-type", Value: "p256", Usage: "key to make without --csr: p256, p384, rsa2048, rsa3072", Sources: cli.EnvVars("IBCM_ISSUE_KEY_TYPE"),
				Validator: keyType},
			&cli.StringFlag{Name: "out", Required: true, Usage: "write PREFIX.crt and PREFIX.key; - prints the certificate on stdout", Sources: cli.EnvVars("IBCM_ISSUE_OUT"), TakesFile: true},
			&cli.StringFlag{Name: "key-out", Usage: "write the key made here to this file instead of PREFIX.key; - prints it on stdout", Sources: cli.EnvVars("IBCM_ISSUE_KEY_OUT"), TakesFile: true},
		),
		Action: issueCertificate,
	}
}

func issueCertificate(ctx context.Context, c *cli.Command) error {
	out, keyOut, makeKey := c.String("out"), c.String("key-out"), c.String("csr") == ""
	crtPath, keyPath := out+".crt", out+".key"
	if out == "-" {
		crtPath, keyPath = "-", ""
	}
	switch {
	case !makeKey && keyOut != "":
		return usageError("--key-out: with --csr no key is made here")
	case !makeKey:
		keyPath = ""
	case keyOut != "":
		keyPath = keyOut
	case out == "-":
		return usageError("--out -: the key made here needs a place: --key-out FILE, or --key-out - to print it too (or sign a --csr)")
	}
	var csrPEM, keyPEM []byte
	if makeKey {
		kt, err := ca.ParseKeyType(c.String("key-type"))
		if err != nil {
			return usageError("--key-type: %v", err)
		}
		key, err := kt.Generate(rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: c.String("subject")}}, key)
		if err != nil {
			return err
		}
		csrPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	} else {
		b, err := os.ReadFile(c.String("csr"))
		if err != nil {
			return err
		}
		csrPEM = b
	}
	a, err := newAdminClient(c)
	if err != nil {
		return err
	}

	// Create the files before asking the CA: a certificate whose key cannot be stored is
	// never issued.
	var outs []*output
	if keyPath != "" {
		flag := "--out"
		if keyOut != "" {
			flag = "--key-out"
		}
		o, err := reserve(c, keyPath, 0o600, flag)
		if err != nil {
			return err
		}
		outs = append(outs, o)
		o.data = keyPEM
	}
	crt, err := reserve(c, crtPath, 0o644, "--out")
	if err != nil {
		discard(outs)
		return err
	}
	outs = append(outs, crt)

	var resp wire.CertificateResponse
	if err := a.do(ctx, http.MethodPost, "/v1/admin/certificates", wire.IssueRequest{
		Profile: c.String("profile"), Subject: c.String("subject"), DNS: c.StringSlice("dns"), Role: c.String("role"), CSR: string(csrPEM),
	}, &resp); err != nil {
		discard(outs)
		return err
	}
	crt.data = []byte(resp.Certificate)
	for _, o := range outs {
		if err := o.write(); err != nil {
			discard(outs)
			var rev wire.Revoked
			if rerr := a.do(ctx, http.MethodPost, "/v1/admin/certificates/"+url.PathEscape(resp.Serial)+"/revoke", wire.RevokeRequest{Reason: "cessationOfOperation"}, &rev); rerr != nil {
				return fmt.Errorf("writing %s: %w; the certificate %s was issued but is lost, and revoking it failed too (run ibcm ca revoke %s): %v", o.name(), err, resp.Serial, resp.Serial, rerr)
			}
			return fmt.Errorf("writing %s: %w; the certificate %s was issued, so it is revoked again and nothing was kept", o.name(), err, resp.Serial)
		}
	}
	report := c.Root().Writer
	if crtPath == "-" || keyPath == "-" {
		report = c.Root().ErrWriter // stdout holds the PEM
	}
	fmt.Fprintf(report, "issued serial %s (not after %s)\n", resp.Serial, resp.NotAfter.Format(time.RFC3339))
	for _, o := range outs {
		if o.file != nil {
			fmt.Fprintf(report, "  %s\n", o.path)
		}
	}
	return nil
}

// output is where a command writes what it made: a new file, created (and so checked)
// before the work starts, or stdout for "-".
type output struct {
	path string
	file *os.File  // the reserved file; nil for stdout
	w    io.Writer // stdout
	data []byte
}

// reserve creates path (which must not exist yet), or takes stdout for "-"; flag names
// the flag the path came from, for the error.
func reserve(c *cli.Command, path string, mode os.FileMode, flag string) (*output, error) {
	if path == "-" {
		return &output{path: path, w: c.Root().Writer}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	switch {
	case errors.Is(err, fs.ErrExist):
		return nil, usageError("%s: %s exists; choose another", flag, path)
	case err != nil:
		return nil, usageError("%s: cannot create %s: %v", flag, path, errors.Unwrap(err))
	}
	return &output{path: path, file: f}, nil
}

func (o *output) name() string {
	if o.file == nil {
		return "stdout"
	}
	return o.path
}

func (o *output) write() error {
	if o.file == nil {
		_, err := o.w.Write(o.data)
		return err
	}
	if _, err := o.file.Write(o.data); err != nil {
		return err
	}
	return o.file.Close()
}

// discard removes the files reserved for outputs.
func discard(outs []*output) {
	for _, o := range outs {
		if o.file != nil {
			o.file.Close()
			os.Remove(o.path)
		}
	}
}

func caListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list issued certificates",
		Description: `EXAMPLES:
   ibcm ca list --dir /srv/ibcm
   ibcm ca list --dir /srv/ibcm --status revoked --profile client --json`,
		Flags: append(adminFlags(), jsonFlag(),
			&cli.StringFlag{Name: "status", Usage: "valid, revoked or expired", Sources: cli.EnvVars("IBCM_LIST_STATUS")},
			&cli.StringFlag{Name: "profile", Usage: "client, site-server, admin or ocsp", Sources: cli.EnvVars("IBCM_LIST_PROFILE")},
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			q := url.Values{}
			if s := c.String("status"); s != "" {
				q.Set("status", s)
			}
			if p := c.String("profile"); p != "" {
				q.Set("profile", p)
			}
			var certs []wire.Certificate
			if err := a.do(ctx, http.MethodGet, "/v1/admin/certificates?"+q.Encode(), nil, &certs); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, certs)
			}
			w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SERIAL\tPROFILE\tSUBJECT\tNOT AFTER\tSTATUS")
			for _, ct := range certs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", ct.Serial, ct.Profile, ct.Subject, ct.NotAfter.Format(time.RFC3339), ct.Status)
			}
			return w.Flush()
		},
	}
}

func caShowCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "show one certificate",
		Arguments: []cli.Argument{cliapp.Arg("SERIAL")},
		Description: `SERIAL is hex as openssl prints it (5A0F…, or serial=5A0F…), optionally with
colons or 0x.

EXAMPLES:
   ibcm ca show --dir /srv/ibcm 5A0F3C9E2B1D4E6F7A8B9C0D1E2F3A4B
   ibcm ca show --dir /srv/ibcm --json 5A:0F:3C:9E:2B:1D:4E:6F:7A:8B:9C:0D:1E:2F:3A:4B | jq .pem -r`,
		Flags: append(adminFlags(), jsonFlag()),
		Action: func(ctx context.Context, c *cli.Command) error {
			serial, err := serialArg(c)
			if err != nil {
				return err
			}
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var ct wire.Certificate
			if err := a.do(ctx, http.MethodGet, "/v1/admin/certificates/"+url.PathEscape(serial), nil, &ct); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.Root().Writer, ct)
			}
			w := tabwriter.NewWriter(c.Root().Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "serial\t%s\n", ct.Serial)
			fmt.Fprintf(w, "profile\t%s\nsubject\t%s\n", ct.Profile, ct.Subject)
			if len(ct.DNS) > 0 {
				fmt.Fprintf(w, "names\t%s\n", strings.Join(ct.DNS, ", "))
			}
			if len(ct.URIs) > 0 {
				fmt.Fprintf(w, "uris\t%s\n", strings.Join(ct.URIs, ", "))
			}
			fmt.Fprintf(w, "valid\t%s to %s\nstatus\t%s\nissued by\t%s\n", ct.NotBefore.Format(time.RFC3339), ct.NotAfter.Format(time.RFC3339), ct.Status, ct.IssuedBy)
			if ct.RenewedFrom != "" {
				fmt.Fprintf(w, "renewed from\t%s\n", ct.RenewedFrom)
			}
			if ct.RevokedAt != nil {
				fmt.Fprintf(w, "revoked\t%s (%s)\n", ct.RevokedAt.Format(time.RFC3339), ct.Reason)
			}
			return w.Flush()
		},
	}
}

func caRevokeCommand() *cli.Command {
	return &cli.Command{
		Name:      "revoke",
		Usage:     "revoke a certificate: every site server refuses it within a second; CRL and OCSP say so",
		Arguments: []cli.Argument{cliapp.Arg("SERIAL")},
		Description: `SERIAL is hex as openssl prints it (5A0F…, or serial=5A0F…), optionally with
colons or 0x. REASON is an RFC 5280 name: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded,
cessationOfOperation, privilegeWithdrawn, aACompromise. A revocation is final.
keyCompromise also revokes every certificate of the same key (a renewal may keep its key)
and every certificate renewed from one of those, transitively: whoever holds the key may
have renewed it. keyCompromise of a certificate already revoked for another reason changes
its reason to keyCompromise and revokes the others.

EXAMPLES:
   ibcm ca revoke --dir /srv/ibcm --reason keyCompromise 5A0F3C9E2B1D4E6F7A8B9C0D1E2F3A4B
   ibcm ca revoke --dir /srv/ibcm --reason superseded "$(openssl x509 -in old.crt -noout -serial)"`,
		Flags: append(adminFlags(),
			&cli.StringFlag{Name: "reason", Value: "unspecified", Usage: "RFC 5280 reason name", Sources: cli.EnvVars("IBCM_REVOKE_REASON")},
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			serial, err := serialArg(c)
			if err != nil {
				return err
			}
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var rev wire.Revoked
			if err := a.do(ctx, http.MethodPost, "/v1/admin/certificates/"+url.PathEscape(serial)+"/revoke", wire.RevokeRequest{Reason: c.String("reason")}, &rev); err != nil {
				return err
			}
			printRevoked(c.Root().Writer, "", rev)
			return nil
		},
	}
}

// printRevoked says what a revocation did, each line after indent.
func printRevoked(w io.Writer, indent string, rev wire.Revoked) {
	if rev.ReasonChangedFrom != "" {
		fmt.Fprintf(w, "%scertificate %s (%s) was already revoked (%s); its reason is now %s\n", indent, rev.Serial, rev.Subject, rev.ReasonChangedFrom, rev.Reason)
	} else {
		fmt.Fprintf(w, "%srevoked certificate %s (%s, %s)\n", indent, rev.Serial, rev.Subject, rev.Reason)
	}
	for _, sn := range rev.AlsoRevoked {
		fmt.Fprintf(w, "%s  and revoked certificate %s with it (%s)\n", indent, sn, rev.Reason)
	}
}

func caCRLCommand() *cli.Command {
	return &cli.Command{
		Name:  "crl",
		Usage: "write the current CRL (DER) to a file",
		Description: `EXAMPLES:
   ibcm ca crl --dir /srv/ibcm --out site.crl && openssl crl -inform DER -in site.crl -noout -text
   ibcm ca crl --dir /srv/ibcm --out - | openssl crl -inform DER -noout -nextupdate`,
		Flags: append(adminFlags(),
			&cli.StringFlag{Name: "out", Required: true, Usage: "file to write; - writes it to stdout", Sources: cli.EnvVars("IBCM_CRL_OUT"), TakesFile: true},
		),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var der []byte
			if err := a.do(ctx, http.MethodGet, "/v1/admin/crl", nil, &der); err != nil {
				return err
			}
			crl, err := x509.ParseRevocationList(der)
			if err != nil {
				return fmt.Errorf("the CA sent an unreadable CRL: %w", err)
			}
			if out := c.String("out"); out == "-" {
				if _, err := c.Root().Writer.Write(der); err != nil {
					return err
				}
			} else if err := os.WriteFile(out, der, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(c.Root().ErrWriter, "CRL number %s, %d revoked, next update %s\n", crl.Number, len(crl.RevokedCertificateEntries), crl.NextUpdate.Format(time.RFC3339))
			return nil
		},
	}
}

func caBundleCommand() *cli.Command {
	return &cli.Command{
		Name:  "bundle",
		Usage: "print the trust bundle (the site's root certificates, PEM)",
		Description: `EXAMPLES:
   ibcm ca bundle --dir /srv/ibcm > roots.pem
   ibcm ca bundle --dir /srv/ibcm | openssl x509 -noout -fingerprint -sha256`,
		Flags: adminFlags(),
		Action: func(ctx context.Context, c *cli.Command) error {
			a, err := newAdminClient(c)
			if err != nil {
				return err
			}
			var b wire.Bundle
			if err := a.do(ctx, http.MethodGet, "/v1/bundle", nil, &b); err != nil {
				return err
			}
			_, err = io.WriteString(c.Root().Writer, b.Roots)
			return err
		},
	}
}

// serialArg is the argument SERIAL, read with wire.ParseSerial and written back as openssl
// prints it.
func serialArg(c *cli.Command) (string, error) {
	sn, err := wire.ParseSerial(c.StringArg("SERIAL"))
	if err != nil {
		return "", usageError("%v", err)
	}
	return wire.FormatSerial(sn), nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
