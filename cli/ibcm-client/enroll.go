package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/agent"
	"github.com/ibcm-project/ibcm/internal/cliapp"
)

func enrollCommand() *cli.Command {
	return &cli.Command{
		Name:  "enroll",
		Usage: "make the device's key and get its certificate from the site's CA with a one-time token",
		Description: `enroll makes a key on this device (it never leaves the device), sends a certificate
request with a one-time enrollment token to the site's CA and stores the key, the
certificate, the site's roots and the device id in the state directory.

The CA is trusted only if its TLS chain contains the root whose SHA-256 is given with
--root-sha256 (as printed by ibcm site init, or by
openssl x509 -in root.crt -noout -fingerprint -sha256). The token is a secret: pass it
in IBCM_CLIENT_TOKEN or a file (--token-file) rather than on the command line, where
other users can see it. It is never printed.

enroll refuses to replace an existing identity unless --force is given. While
ibcm-client run runs on the directory, the running agent does the enrollment (over its
control socket) and switches to the new identity at once, so the state directory has one
writer.

EXAMPLES:
   IBCM_CLIENT_TOKEN=... ibcm-client enroll --ca https://ca.corp.example:8443 \
       --root-sha256 3F:1A:...:9C --fqdn pc-01.corp.example

   ibcm-client enroll --ca https://ca.corp.example:8443 --root-sha256 3f1a...9c \
       --token-file /run/secrets/ibcm-token --key-type rsa3072 --name kiosk-7`,
		Flags: []cli.Flag{
			dirFlag(),
			&cli.StringFlag{Name: "ca", Sources: cli.EnvVars("IBCM_CLIENT_CA"), Required: true,
				Usage: "`URL` of the CA's enrollment API, e.g. https://ca.corp.example:8443"},
			&cli.StringFlag{Name: "token", Sources: cli.EnvVars("IBCM_CLIENT_TOKEN"),
				Usage: "one-time enrollment `TOKEN` (a secret; prefer the environment variable or --token-file)"},
			&cli.StringFlag{Name: "token-file", Sources: cli.EnvVars("IBCM_CLIENT_TOKEN_FILE"), TakesFile: true,
				Usage: "read the enrollment token from `FILE`"},
			&cli.StringFlag{Name: "root-sha256", Sources: cli.EnvVars("IBCM_CLIENT_ROOT_SHA256"), Required: true,
				Usage: "SHA-256 `FINGERPRINT` of the site's root certificate (hex, colons allowed)"},
			&cli.StringFlag{Name: "name", Sources: cli.EnvVars("IBCM_CLIENT_NAME"),
				Usage: "device `NAME` for the certificate's CN (default: the token's subject when it is bound to one, else the short host name)"},
			&cli.StringFlag{Name: "fqdn", Sources: cli.EnvVars("IBCM_CLIENT_FQDN"),
				Usage: "the device's `FQDN`, put in the certificate as its DNS name (must start with the name)"},
			&cli.StringFlag{Name: "key-type", Value: string(client.P256), Sources: cli.EnvVars("IBCM_CLIENT_KEY_TYPE"),
				Usage: "device key `TYPE`: p256, p384, rsa2048 or rsa3072", Validator: cliapp.OneOf("p256", "p384", "rsa2048", "rsa3072")},
			&cli.BoolFlag{Name: "force", Sources: cli.EnvVars("IBCM_CLIENT_FORCE"),
				Usage: "replace an existing identity in the state directory"},
			timeoutFlag(),
		},
		Action: runEnroll,
	}
}

func runEnroll(ctx context.Context, c *cli.Command) error {
	token, err := enrollToken(c)
	if err != nil {
		return err
	}
	kt, err := client.ParseKeyType(c.String("key-type"))
	if err != nil {
		return fmt.Errorf("--key-type: %w", err)
	}
	opts := client.EnrollOptions{
		Dir: c.String("dir"), CAURL: c.String("ca"), Token: token, RootSHA256: c.String("root-sha256"),
		Name: c.String("name"), FQDN: c.String("fqdn"), KeyType: kt, Force: c.Bool("force"),
		Timeout: c.Duration("timeout"),
	}
	res, err := agent.Enroll(ctx, opts.Dir, opts)
	if err == nil {
		fmt.Fprintf(c.Root().Writer, "enrolled %s as device %s through the running agent\nserial %s, valid until %s; stored in %s\n",
			res.Name, res.DeviceID, res.Serial, res.NotAfter.UTC().Format(timeFormat), res.Dir)
		return nil
	}
	if !errors.Is(err, agent.ErrNotRunning) {
		return err
	}
	unlock, err := client.LockDir(opts.Dir)
	if err != nil {
		return fmt.Errorf("%w: an agent may be starting; try again", err)
	}
	defer unlock()
	id, err := client.Enroll(ctx, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Root().Writer, "enrolled %s as device %s\nserial %s, valid until %s; stored in %s\n",
		id.Name, id.DeviceID, id.SerialHex(), id.NotAfter.UTC().Format(timeFormat), id.Dir)
	return nil
}

// enrollToken takes the token from --token (or IBCM_CLIENT_TOKEN) or --token-file.
func enrollToken(c *cli.Command) (string, error) {
	token, file := c.String("token"), c.String("token-file")
	switch {
	case token != "" && file != "":
		return "", errors.New("give the enrollment token once: --token (IBCM_CLIENT_TOKEN) or --token-file, not both")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("reading the enrollment token: %w", err)
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return "", fmt.Errorf("the token file %s is empty", file)
		}
	case token == "":
		return "", errors.New("an enrollment token is required: set IBCM_CLIENT_TOKEN or pass --token-file (get one with `ibcm ca token create`)")
	}
	return strings.TrimSpace(token), nil
}
