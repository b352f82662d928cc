package clitest

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"
)

// recorder is a testing.TB that keeps what CheckTree reports.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func app(serveHelp, flagUsage string) *cli.Command {
	noop := func(context.Context, *cli.Command) error { return nil }
	return &cli.Command{
		Name:        "x",
		Usage:       "test",
		Description: "Every flag can be set from its X_... variable; X_DIR names the site.",
		Flags:       []cli.Flag{&cli.StringFlag{Name: "log-level", Usage: "level", Sources: cli.EnvVars("X_LOG_LEVEL")}},
		Commands: []*cli.Command{
			{Name: "site", Usage: "site", Flags: []cli.Flag{&cli.StringFlag{Name: "dir", Usage: "dir", Sources: cli.EnvVars("X_DIR")}},
				Commands: []*cli.Command{{Name: "init", Usage: "init", Action: noop,
					Description: "Uses X_DIR and X_PASSWORD.\n\nEXAMPLES:\n   X_LOG_LEVEL=debug x site init",
					Flags:       []cli.Flag{&cli.StringFlag{Name: "password-file", Usage: "file", Sources: cli.EnvVars("X_PASSWORD_FILE")}}}}},
			{Name: "serve", Usage: "serve", Action: noop, Description: serveHelp + "\n\nEXAMPLES:\n   x serve",
				Flags: []cli.Flag{&cli.StringFlag{Name: "config", Usage: flagUsage, Sources: cli.EnvVars("X_CONFIG")}}},
		},
	}
}

func TestCheckTreeEnvironmentMentions(t *testing.T) {
	cases := []struct {
		name, serveHelp, flagUsage string
		want                       []string // substrings of the reports, one each
	}{
		{"own, inherited and documented variables", "Reads X_CONFIG, X_LOG_LEVEL and X_PASSWORD.", "site.yaml (X_CONFIG)", nil},
		{"another command's flag", "X_PASSWORD_FILE=/run/secrets/ca x serve", "site.yaml", []string{"serve: help names X_PASSWORD_FILE"}},
		{"a sibling's parent's flag", "Reads X_DIR.", "site.yaml", []string{"serve: help names X_DIR"}},
		{"in a flag's usage", "Serves.", "site.yaml, else X_CONFIG_FILE", []string{"serve: help names X_CONFIG_FILE"}},
		{"no such variable", "Reads X_NOPE and X_ALSO_NOPE.", "site.yaml", []string{"X_NOPE", "X_ALSO_NOPE"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{TB: t}
			CheckTree(r, app(tc.serveHelp, tc.flagUsage), "X_", "X_PASSWORD")
			if len(r.errs) != len(tc.want) {
				t.Fatalf("reports %q, want %d", r.errs, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(r.errs[i], w) {
					t.Errorf("report %q does not name %q", r.errs[i], w)
				}
			}
		})
	}
}
