package cliapp

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v3"
)

// manCommand writes the man pages; `make man` runs it. It is hidden: it is for packagers.
func manCommand(program string) *cli.Command {
	return &cli.Command{
		Name:      "man",
		Hidden:    true,
		Usage:     "write a man page for the program and for each of its commands into DIR",
		Arguments: []cli.Argument{Arg("DIR")},
		Description: fmt.Sprintf(`Writes %[1]s.1 for the program and %[1]s-COMMAND-SUBCOMMAND.1 for every command, made
from the same text as --help.

EXAMPLES:
   %[1]s man ./man && man -l man/%[1]s.1`, program),
		Action: func(_ context.Context, cmd *cli.Command) error {
			n, err := WriteMan(cmd.Root(), cmd.StringArg("DIR"))
			if err == nil {
				fmt.Fprintf(cmd.Root().Writer, "wrote %d man pages to %s\n", n, cmd.StringArg("DIR"))
			}
			return err
		},
	}
}

// WriteMan writes the man pages of root's tree into dir (made if missing) and returns how
// many it wrote: one for the program, with every command listed, and one for every
// visible command that runs something.
func WriteMan(root *cli.Command, dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	pages := map[string]string{root.Name: rootPage(root)}
	walk(root, func(c *cli.Command) {
		if c != root && visible(c) && !isGroup(c) {
			pages[pageName(c)] = commandPage(c)
		}
	})
	for name, page := range pages {
		if err := os.WriteFile(filepath.Join(dir, name+".1"), []byte(page), 0o644); err != nil {
			return 0, err
		}
	}
	return len(pages), nil
}

// visible reports whether c and its parents are shown in help.
func visible(c *cli.Command) bool {
	for _, l := range c.Lineage() {
		if l.Hidden || l.Name == "help" {
			return false
		}
	}
	return true
}

func pageName(c *cli.Command) string { return strings.Join(c.Path(), "-") }

func header(name, title string, root *cli.Command) string {
	return fmt.Sprintf(".TH %s 1 \"\" \"%s %s\" \"%s manual\"\n.SH NAME\n%s \\- %s\n",
		strings.ToUpper(name), root.Name, roffEscape(strings.SplitN(root.Version, " ", 2)[0]), root.Name, name, roffEscape(title))
}

func rootPage(root *cli.Command) string {
	var b strings.Builder
	b.WriteString(header(root.Name, root.Usage, root))
	fmt.Fprintf(&b, ".SH SYNOPSIS\n.B %s\n[options] COMMAND ...\n", root.Name)
	body, examples := splitExamples(root.Description)
	section(&b, "DESCRIPTION", body)
	b.WriteString(".SH COMMANDS\n")
	var see []string
	walk(root, func(c *cli.Command) {
		if c == root || !visible(c) || isGroup(c) {
			return
		}
		fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", roffEscape(UsageLine(c)), roffEscape(c.Usage))
		see = append(see, pageName(c))
	})
	flags(&b, "OPTIONS", root.Flags)
	preformatted(&b, "EXAMPLES", examples)
	seeAlso(&b, see)
	return b.String()
}

func commandPage(c *cli.Command) string {
	root := c.Root()
	var b strings.Builder
	b.WriteString(header(pageName(c), c.Usage, root))
	fmt.Fprintf(&b, ".SH SYNOPSIS\n.B %s\n", roffEscape(UsageLine(c)))
	body, examples := splitExamples(c.Description)
	section(&b, "DESCRIPTION", body)
	flags(&b, "OPTIONS", c.Flags)
	var global []cli.Flag
	for _, l := range c.Lineage()[1:] {
		for _, f := range l.Flags {
			if lf, ok := f.(cli.LocalFlag); ok && !lf.IsLocal() {
				global = append(global, f)
			}
		}
	}
	flags(&b, "GLOBAL OPTIONS", global)
	preformatted(&b, "EXAMPLES", examples)
	seeAlso(&b, []string{root.Name})
	return b.String()
}

// splitExamples cuts a Description at its EXAMPLES section.
func splitExamples(d string) (body, examples string) {
	i := strings.LastIndex(d, "EXAMPLES:")
	if i < 0 {
		return strings.TrimSpace(d), ""
	}
	return strings.TrimSpace(d[:i]), strings.Trim(d[i+len("EXAMPLES:"):], "\n")
}

// section writes paragraphs of text; a blank line starts a new paragraph and an indented
// line is kept as it is.
func section(b *strings.Builder, title, text string) {
	if text == "" {
		return
	}
	fmt.Fprintf(b, ".SH %s\n", title)
	for _, para := range strings.Split(text, "\n\n") {
		if strings.HasPrefix(para, " ") {
			preformattedBlock(b, para)
			continue
		}
		fmt.Fprintf(b, ".PP\n%s\n", roffEscape(para))
	}
}

func preformatted(b *strings.Builder, title, text string) {
	if strings.TrimSpace(text) == "" {
		return
	}
	fmt.Fprintf(b, ".SH %s\n", title)
	preformattedBlock(b, text)
}

func preformattedBlock(b *strings.Builder, text string) {
	b.WriteString(".PP\n.nf\n.RS 4\n")
	for _, line := range strings.Split(text, "\n") {
		b.WriteString(roffEscape(strings.TrimPrefix(line, "   ")) + "\n")
	}
	b.WriteString(".RE\n.fi\n")
}

func flags(b *strings.Builder, title string, fs []cli.Flag) {
	var items []string
	for _, f := range fs {
		df, ok := f.(cli.DocGenerationFlag)
		if !ok {
			continue
		}
		if vf, ok := f.(cli.VisibleFlag); ok && !vf.IsVisible() {
			continue
		}
		var names []string
		for _, n := range f.Names() {
			names = append(names, `\fB`+roffEscape(flagName(n))+`\fR`)
		}
		head := strings.Join(names, ", ")
		if df.TakesValue() {
			head += ` \fI` + strings.ToUpper(df.TypeName()) + `\fR`
		}
		text := df.GetUsage()
		if def := df.GetValue(); df.TakesValue() && df.IsDefaultVisible() && def != "" && def != `""` {
			text += " (default: " + def + ")"
		}
		if envs := df.GetEnvVars(); len(envs) > 0 {
			text += "; environment: " + strings.Join(envs, ", ")
		}
		items = append(items, fmt.Sprintf(".TP\n%s\n%s\n", head, roffEscape(text)))
	}
	if len(items) == 0 {
		return
	}
	fmt.Fprintf(b, ".SH %s\n%s", title, strings.Join(items, ""))
}

func seeAlso(b *strings.Builder, pages []string) {
	refs := make([]string, len(pages))
	for i, p := range pages {
		refs[i] = fmt.Sprintf(`\fB%s\fR(1)`, roffEscape(p))
	}
	fmt.Fprintf(b, ".SH SEE ALSO\n%s\n", strings.Join(refs, ", "))
}

// roffEscape makes text safe for roff: backslashes, dashes, and a leading . or ' that
// would read as a request.
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}
