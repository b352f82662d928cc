package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v3"
	"golang.org/x/term"

	"github.com/ibcm-project/ibcm/client/agent"
	"github.com/ibcm-project/ibcm/client/deploy"
	"github.com/ibcm-project/ibcm/internal/cliapp"
)

func stallTimeoutFlag() *cli.DurationFlag {
	return &cli.DurationFlag{Name: "stall-timeout", Value: deploy.DefaultStallTimeout, Sources: cli.EnvVars("IBCM_CLIENT_STALL_TIMEOUT"),
		Usage: "abandon a DP that sends nothing for `DURATION` and go on with the next"}
}

func downloadCommand() *cli.Command {
	return &cli.Command{
		Name:      "download",
		Usage:     "fetch a package this device's policy deploys, by hand, without installing it",
		Arguments: []cli.Argument{cliapp.Arg("NAME")},
		Description: `download fetches a package of the policy's deployments the way the agent does, without
installing it: it detects the location, asks that location's MP for its DPs, verifies the
signed manifest against the site's roots and the SHA-256 the policy pins, downloads every
file from the DPs in order (resuming, checking each chunk as it arrives, going on with the
next DP after bad bytes or a stall) and places the files in --output (default
./NAME-VERSION, which must not exist or be empty). What arrived before an interruption is
kept in OUTPUT.partial and resumed by the next run. A progress bar shows on a terminal.
It reads the device's key, so it runs as the agent's user (root).

EXAMPLES:
   sudo ibcm-client download firefox

   sudo ibcm-client download firefox --version 128.0.2 --output /tmp/firefox`,
		Flags: []cli.Flag{dirFlag(), resolvConfFlag(), stallTimeoutFlag(),
			&cli.StringFlag{Name: "version", Sources: cli.EnvVars("IBCM_CLIENT_VERSION"), Usage: "the `VERSION` (needed when the policy deploys several)"},
			&cli.StringFlag{Name: "output", Sources: cli.EnvVars("IBCM_CLIENT_OUTPUT"), TakesFile: true, Usage: "the `DIR` to place the files in (default ./NAME-VERSION)"},
		},
		Action: func(ctx context.Context, c *cli.Command) error {
			bar := newProgressBar(c.Root().ErrWriter, c.StringArg("NAME"))
			res, err := agent.Download(ctx, agent.HandDownload{Dir: c.String("dir"), ResolvConf: c.String("resolv-conf"),
				Name: c.StringArg("NAME"), Version: c.String("version"), Output: c.String("output"),
				StallTimeout: c.Duration("stall-timeout"), Progress: bar.update})
			bar.finish(err == nil)
			if errors.Is(err, agent.ErrNoDeployment) {
				return cliapp.UsageErrorf("%v", err)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.Root().Writer, "%s %s: %d files, %s, from %s (%s), verified, in %s (not installed)\n",
				res.Package, res.Version, res.Files, humanBytes(res.Size), res.DP, res.Location, res.Output)
			return nil
		},
	}
}

// progressBar draws one line on a terminal (nothing elsewhere), at most ten times a second.
type progressBar struct {
	mu    sync.Mutex
	w     io.Writer
	name  string
	tty   bool
	last  time.Time
	drawn bool
}

func newProgressBar(w io.Writer, name string) *progressBar {
	f, ok := w.(*os.File)
	return &progressBar{w: w, name: name, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (p *progressBar) update(have, total int64) {
	if !p.tty {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.last) < 100*time.Millisecond && have < total {
		return
	}
	p.last = time.Now()
	p.drawn = true
	fmt.Fprint(p.w, "\r"+renderBar(p.name, have, total, 30))
}

func (p *progressBar) finish(ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

func renderBar(name string, have, total int64, width int) string {
	pct := 100
	if total > 0 {
		pct = int(have * 100 / total)
	}
	fill := pct * width / 100
	bar := strings.Repeat("=", fill)
	if fill < width {
		bar += ">" + strings.Repeat(" ", width-fill-1)
	}
	return fmt.Sprintf("%s [%s] %3d%%  %s / %s", name, bar, pct, humanBytes(have), humanBytes(total))
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
