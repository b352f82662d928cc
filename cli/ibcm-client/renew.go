package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/agent"
)

func renewCommand() *cli.Command {
	return &cli.Command{
		Name:  "renew",
		Usage: "renew the device's certificate over mutual TLS with the current one",
		Description: `renew asks the CA that issued the device's certificate for a successor, proving the
device's identity with the current certificate in the TLS handshake. A new key is made
for the new certificate unless --keep-key is given. The device id stays the same.

The key asked for is stored (renew-key.pem) before the request and asked for again on
every retry, so an answer lost on the way costs nothing: the CA gives a certificate one
successor. A certificate already renewed for another key is refused (renewal_superseded):
a copy of this device's key and certificate exists, and the site shows a clone warning.

While ibcm-client run runs on the directory, the running agent does the renewal (over its
control socket), so the state directory has one writer; otherwise renew does it itself.

A revoked or expired certificate cannot be renewed: enroll again with a new token
(ibcm-client enroll --force).

EXAMPLES:
   ibcm-client renew

   ibcm-client renew --dir /srv/agent --keep-key

   # from a timer: renew only after two thirds of the lifetime
   ibcm-client renew --if-due`,
		Flags: []cli.Flag{
			dirFlag(),
			&cli.BoolFlag{Name: "keep-key", Sources: cli.EnvVars("IBCM_CLIENT_KEEP_KEY"),
				Usage: "keep the current key instead of making a new one"},
			&cli.BoolFlag{Name: "if-due", Sources: cli.EnvVars("IBCM_CLIENT_RENEW_IF_DUE"),
				Usage: "renew only when two thirds of the certificate's lifetime have passed"},
			timeoutFlag(),
		},
		Action: runRenew,
	}
}

func runRenew(ctx context.Context, c *cli.Command) error {
	dir := c.String("dir")
	if c.Bool("if-due") {
		id, err := client.Load(dir)
		if err != nil {
			return err
		}
		if !id.RenewDue(time.Now()) {
			fmt.Fprintf(c.Root().Writer, "not due: serial %s renews from %s\n", id.SerialHex(), id.RenewAt().UTC().Format(timeFormat))
			return nil
		}
	}
	res, err := agent.Renew(ctx, dir, c.Bool("keep-key"))
	if err == nil {
		fmt.Fprintf(c.Root().Writer, "renewed device %s through the running agent: serial %s, valid until %s\n",
			res.DeviceID, res.Serial, res.NotAfter.UTC().Format(timeFormat))
		return nil
	}
	if !errors.Is(err, agent.ErrNotRunning) {
		return err
	}
	unlock, err := client.LockDir(dir)
	if err != nil {
		return fmt.Errorf("%w: an agent may be starting; try again", err)
	}
	defer unlock()
	id, err := client.Renew(ctx, client.RenewOptions{Dir: dir, KeepKey: c.Bool("keep-key"), Timeout: c.Duration("timeout")})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Root().Writer, "renewed device %s: serial %s, valid until %s\n",
		id.DeviceID, id.SerialHex(), id.NotAfter.UTC().Format(timeFormat))
	return nil
}
