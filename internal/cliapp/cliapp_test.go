package cliapp

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v3"
)

// testApp is a small tree that uses every convention: a group, a leaf with an argument,
// typed and validated flags, a persistent flag on the root.
func testApp(ran *[]string) *cli.Command {
	record := func(_ context.Context, c *cli.Command) error {
		*ran = append(*ran, c.FullName()+" "+c.StringArg("SERIAL")+" "+c.String("reason"))
		return nil
	}
	return Setup(&cli.Command{
		Name:  "x",
		Usage: "test",
		Description: `A test program.

EXAMPLES:
   x ca revoke 1F --reason keyCompromise`,
		Flags: []cli.Flag{&cli.StringFlag{Name: "log-level", Value: "info", Usage: "level", Sources: cli.EnvVars("X_LOG_LEVEL"), Validator: OneOf("debug", "info")}},
		Commands: []*cli.Command{{
			Name: "ca", Usage: "the CA",
			Commands: []*cli.Command{
				{
					Name: "revoke", Usage: "revoke a certificate", Arguments: []cli.Argument{Arg("SERIAL")},
					Description: "Revokes.\n\nEXAMPLES:\n   x ca revoke 1F --reason keyCompromise",
					Flags: []cli.Flag{
						&cli.StringFlag{Name: "reason", Value: "unspecified", Usage: "why", Sources: cli.EnvVars("X_REASON")},
						&cli.DurationFlag{Name: "ttl", Value: time.Hour, Usage: "how long", Sources: cli.EnvVars("X_TTL"), Validator: Positive},
						&cli.IntFlag{Name: "uses", Value: 1, Usage: "how often", Sources: cli.EnvVars("X_USES"), Validator: AtLeast(1)},
						&cli.StringFlag{Name: "profile", Required: true, Usage: "profile", Sources: cli.EnvVars("X_PROFILE")},
					},
					Action: record,
				},
				{
					Name: "issue", Usage: "issue", Description: "EXAMPLES:\n   x ca issue",
					Action: func(context.Context, *cli.Command) error { return UsageErrorf("--out: pick one") },
				},
			},
		}},
	})
}

// TestErrors pins what the user reads for each kind of bad input: the error with the flag
// named as typed and the form it wants, then one usage line of the command, never the help.
func TestErrors(t *testing.T) {
	cases := []struct {
		name string
		env  string
		args []string
		want string // the first line
		cmd  string // the command in the usage line
	}{
		{"flags after the argument", "", []string{"ca", "revoke", "1F", "--profile", "p", "--reason", "keyCompromise"}, "", ""},
		{"missing argument", "", []string{"ca", "revoke", "--profile", "p"}, "x ca revoke needs SERIAL", "x ca revoke [options] SERIAL"},
		{"extra argument", "", []string{"ca", "revoke", "1F", "2F", "--profile", "p"}, `unexpected argument "2F": x ca revoke takes one argument, SERIAL`, "x ca revoke"},
		{"duration", "", []string{"ca", "revoke", "1F", "--profile", "p", "--ttl", "2"}, `--ttl: must be a duration such as 2h or 30m (got "2")`, "x ca revoke"},
		{"duration validator", "", []string{"ca", "revoke", "1F", "--profile", "p", "--ttl", "-1h"}, `--ttl: must be more than 0s (got "-1h")`, "x ca revoke"},
		{"number", "", []string{"ca", "revoke", "1F", "--profile", "p", "--uses", "many"}, `--uses: must be a whole number (got "many")`, "x ca revoke"},
		{"number validator", "", []string{"ca", "revoke", "1F", "--profile", "p", "--uses", "0"}, `--uses: must be at least 1 (got "0")`, "x ca revoke"},
		{"persistent flag after the argument", "", []string{"ca", "revoke", "1F", "--profile", "p", "--log-level", "chatty"}, `--log-level: must be debug or info (got "chatty")`, "x ca revoke"},
		{"from the environment", "X_TTL=2", []string{"ca", "revoke", "1F", "--profile", "p"}, `X_TTL (--ttl): must be a duration such as 2h or 30m (got "2")`, ""},
		{"help for an unknown command", "", []string{"help", "nosuch"}, `no help for "nosuch": there is no such command`, "x COMMAND"},
		{"unknown flag", "", []string{"ca", "revoke", "1F", "--profile", "p", "--reasn", "x"}, `unknown flag --reasn for "x ca revoke"; did you mean --reason?`, "x ca revoke"},
		{"flag without value", "", []string{"ca", "revoke", "1F", "--profile"}, `--profile needs a value`, "x ca revoke"},
		{"required flag", "", []string{"ca", "revoke", "1F"}, `--profile is required`, "x ca revoke"},
		{"unknown command", "", []string{"ca", "revkoe", "--reason", "x"}, `unknown command "revkoe" for "x ca"; did you mean "revoke"?`, "x ca COMMAND (revoke, issue"},
		{"unknown command, nothing close", "", []string{"ca", "frobnicate"}, `unknown command "frobnicate" for "x ca"`, "x ca"},
		{"usage error of an action", "", []string{"ca", "issue"}, `--out: pick one`, "x ca issue"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				k, v, _ := strings.Cut(tc.env, "=")
				t.Setenv(k, v)
			}
			var ran []string
			app := testApp(&ran)
			var out, errOut bytes.Buffer
			app.Writer, app.ErrWriter = &out, &errOut
			err := Run(context.Background(), app, append([]string{"x"}, tc.args...))
			if tc.want == "" {
				if err != nil || len(ran) != 1 || ran[0] != "x ca revoke 1F keyCompromise" {
					t.Fatalf("err %v, ran %q", err, ran)
				}
				return
			}
			if err == nil || ExitCode(err) != ExitUsage || len(ran) != 0 {
				t.Fatalf("err %v (exit %d), ran %q; want a usage error", err, ExitCode(err), ran)
			}
			var report bytes.Buffer
			Report(&report, app, err)
			lines := strings.Split(strings.TrimSpace(report.String()), "\n")
			if tc.cmd == "" { // not from the command line: no usage line
				lines = append(lines, "usage: ")
			}
			if len(lines) != 2 || lines[0] != "x: "+tc.want || !strings.HasPrefix(lines[1], "usage: "+tc.cmd) {
				t.Errorf("report:\n%s\nwant x: %s\nand usage: %s...", report.String(), tc.want, tc.cmd)
			}
			if out.Len()+errOut.Len() > 0 {
				t.Errorf("the framework printed too:\n%s%s", out.String(), errOut.String())
			}
		})
	}
}

func TestUnknownCommandWithoutParent(t *testing.T) {
	var ran []string
	// "list" is close to nothing under ca but must still be named with its parent
	app := testApp(&ran)
	err := Run(context.Background(), app, []string{"x", "list"})
	if err == nil || err.Error() != `unknown command "list" for "x"` {
		t.Errorf("err = %v", err)
	}
}

func TestVersion(t *testing.T) {
	var ran []string
	app := testApp(&ran)
	var out bytes.Buffer
	app.Writer = &out
	if err := Run(context.Background(), app, []string{"x", "--version"}); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^x version \S+ \(.*go1\.\d+.*\)\n$`).MatchString(out.String()) {
		t.Errorf("--version printed %q", out.String())
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		var ran []string
		app := testApp(&ran)
		var out bytes.Buffer
		app.Writer = &out
		if err := Run(context.Background(), app, []string{"x", "completion", shell}); err != nil {
			t.Fatalf("%s: %v", shell, err)
		}
		if !strings.Contains(out.String(), "x") || out.Len() < 100 {
			t.Errorf("completion %s printed %q", shell, out.String())
		}
	}
	var ran []string
	if err := Run(context.Background(), testApp(&ran), []string{"x", "completion", "tcsh"}); err == nil || !strings.Contains(err.Error(), `unknown command "tcsh" for "x completion"`) {
		t.Errorf("completion tcsh: %v", err)
	}
}

// TestManPages writes the pages of the test tree and has groff check them.
func TestManPages(t *testing.T) {
	var ran []string
	app := testApp(&ran)
	dir := t.TempDir()
	app.Writer = &bytes.Buffer{}
	if err := Run(context.Background(), app, []string{"x", "man", dir}); err != nil {
		t.Fatal(err)
	}
	for _, page := range []string{"x.1", "x-ca-revoke.1", "x-ca-issue.1", "x-completion-bash.1"} {
		if _, err := os.Stat(filepath.Join(dir, page)); err != nil {
			t.Errorf("no %s: %v", page, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x-man.1")); err == nil {
		t.Error("the hidden man command has a page")
	}
	b, err := os.ReadFile(filepath.Join(dir, "x-ca-revoke.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".TH X-CA-REVOKE 1", ".SH SYNOPSIS", `x ca revoke [options] SERIAL`, `\fB\-\-reason\fR`, "X_REASON", ".SH GLOBAL OPTIONS", `\-\-log\-level`, ".SH EXAMPLES"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("x-ca-revoke.1 lacks %q:\n%s", want, b)
		}
	}
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skip("groff is not installed")
	}
	out, err := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z", filepath.Join(dir, "x-ca-revoke.1"), filepath.Join(dir, "x.1")).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("groff: %v\n%s", err, out)
	}
}
