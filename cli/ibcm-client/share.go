package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	osuser "os/user"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v3"
	"golang.org/x/term"

	"github.com/rs/zerolog"

	"github.com/ibcm-project/ibcm/client"
	"github.com/ibcm-project/ibcm/client/agent"
	"github.com/ibcm-project/ibcm/remote/device"
)

func shareSocketFlag() *cli.StringFlag {
	return &cli.StringFlag{
		Name: "share-socket", Value: device.DefaultShareSocket, Sources: cli.EnvVars("IBCM_CLIENT_SHARE_SOCKET"), TakesFile: true,
		Usage: "the agent's share socket `PATH`, where local users share their terminal and answer consent questions",
	}
}

func shareCommand() *cli.Command {
	return &cli.Command{
		Name:  "share",
		Usage: "share this terminal with a remote helper: your shell, mirrored while a session runs",
		Description: `share starts your shell on a new terminal and connects it to the agent, so that a helper's
remote session (when you accept it) sees it, and types into it in control mode. The last row
is the status line: who is connected (name, title, organisation), in which mode, questions
and chat. Press Ctrl-] and then:
   y / n   accept or deny the question shown
   v       drop the helper to view (they see, they cannot type)
   e       end the session
   c       type a chat line (Enter sends, Esc cancels)
   Ctrl-]  send Ctrl-] itself
Leaving the shell (exit) ends the sharing and any session on it. share checks that the
socket belongs to root before it trusts it.

On a device that is not enrolled (no agent), --code takes the security code a helper read
to you (` + "`ibcm remote code create`" + `, valid 10 minutes, once): share trusts the site's CA only
through --root-sha256, as enrollment does, makes a key in memory, exchanges the code at
--site for a one-hour guest certificate of that one session, and runs the session itself
over the MP's relay (--mp, or the site's first internet MP). The helper sees "not
enrolled: guest <your user name>"; nothing is installed or kept. --code - asks for the code
on the terminal without echoing it, so that it is not in the process list (the environment
variable IBCM_CLIENT_SHARE_CODE keeps it out too).

With --screen, share also offers your X display (DISPLAY and XAUTHORITY of its environment)
to screen sessions: when you accept one, the agent runs x11vnc as you on that display for
the session only, on a private Unix socket, and stops it at the end.

EXAMPLES:
   ibcm-client share
   ibcm-client share --screen

   ibcm-client share --shell /bin/zsh

   ibcm-client share --code - --site https://ibcm.example.com:8443 --root-sha256 3F:A1:...`,
		Flags: []cli.Flag{shareSocketFlag(),
			&cli.StringFlag{Name: "shell", Sources: cli.EnvVars("IBCM_CLIENT_SHELL"), TakesFile: true, Usage: "the shell `PATH` to share (default: your login shell)"},
			&cli.StringFlag{Name: "code", Sources: cli.EnvVars("IBCM_CLIENT_SHARE_CODE"), Usage: "a helper's security `CODE`, on a device that is not enrolled; - asks for it without echo (prefer it: a code on the command line is visible to the machine's other users)"},
			&cli.StringFlag{Name: "site", Sources: cli.EnvVars("IBCM_CLIENT_SITE"), Usage: "with --code: the site CA's `URL` (https://host:port)"},
			&cli.StringFlag{Name: "root-sha256", Sources: cli.EnvVars("IBCM_CLIENT_ROOT_SHA256"), Usage: "with --code: the SHA-256 `FINGERPRINT` of the site's root certificate"},
			&cli.StringFlag{Name: "mp", Sources: cli.EnvVars("IBCM_CLIENT_MP"), Usage: "with --code: the MP `URL` whose relay carries the session (default: the site's first internet MP)"},
			timeoutFlag(),
			&cli.BoolFlag{Name: "screen", Sources: cli.EnvVars("IBCM_CLIENT_SHARE_SCREEN"), Usage: "offer this X display (DISPLAY) to screen sessions too"}},
		Action: func(ctx context.Context, c *cli.Command) error {
			fd := int(os.Stdin.Fd())
			if !term.IsTerminal(fd) || !term.IsTerminal(int(os.Stdout.Fd())) {
				return errors.New("share needs a terminal on its standard input and output")
			}
			var guest *client.Guest
			if code := c.String("code"); code != "" {
				if c.String("site") == "" || c.String("root-sha256") == "" {
					return errors.New("share --code needs --site and --root-sha256")
				}
				if code == "-" {
					fmt.Fprint(os.Stdout, "Security code (not shown): ")
					b, err := term.ReadPassword(fd)
					fmt.Fprint(os.Stdout, "\r\n")
					if err != nil {
						return fmt.Errorf("reading the security code: %w", err)
					}
					if code = strings.TrimSpace(string(b)); code == "" {
						return errors.New("no security code typed")
					}
				}
				user := "guest"
				if u, err := osuser.Current(); err == nil {
					user = u.Username
				}
				g, err := client.ExchangeCode(ctx, client.GuestOptions{CAURL: c.String("site"), RootSHA256: c.String("root-sha256"),
					Code: code, User: user, Timeout: c.Duration("timeout")})
				if err != nil {
					return err
				}
				guest = g
				fmt.Fprintf(os.Stdout, "ibcm: the code is good: %s asks for a %s session; accept it on the status line (Ctrl-] y)\r\n", g.Grant.Helper, g.Grant.Mode)
			} else if err := device.CheckSocket(c.String("share-socket")); err != nil {
				return err
			}
			var display, xauth string
			if c.Bool("screen") {
				display, xauth = os.Getenv("DISPLAY"), os.Getenv("XAUTHORITY")
				if xauth == "" {
					if home, err := os.UserHomeDir(); err == nil {
						if _, err := os.Stat(filepath.Join(home, ".Xauthority")); err == nil {
							xauth = filepath.Join(home, ".Xauthority")
						}
					}
				}
				if err := device.CheckDisplay(display, xauth); err != nil {
					return fmt.Errorf("--screen: %w", err)
				}
			}
			old, err := term.MakeRaw(fd)
			if err != nil {
				return err
			}
			defer term.Restore(fd, old)
			winch := make(chan os.Signal, 1)
			signal.Notify(winch, syscall.SIGWINCH)
			defer signal.Stop(winch)
			resized := make(chan struct{}, 1)
			go func() {
				for range winch {
					select {
					case resized <- struct{}{}:
					default:
					}
				}
			}()
			size := func() (uint16, uint16) {
				w, h, err := term.GetSize(int(os.Stdout.Fd()))
				if err != nil || w <= 0 || h <= 0 {
					return 24, 80
				}
				return uint16(min(h, 0xffff)), uint16(min(w, 0xffff))
			}
			so := device.ShareOptions{Socket: c.String("share-socket"), Shell: c.String("shell"),
				In: os.Stdin, Out: os.Stdout, Size: size, Resized: resized, Display: display, XAuthority: xauth}
			if guest != nil {
				return agent.ShareGuest(ctx, agent.GuestShareOptions{Guest: guest, MPURL: c.String("mp"), Share: so, Log: zerolog.Nop()})
			}
			return device.Share(ctx, so)
		},
	}
}
