package cliapp

import (
	"strconv"
	"strings"

	"github.com/urfave/cli/v3"
)

// The help of a command ends with its EXAMPLES, after the options (the framework prints
// the whole Description, examples included, before them). The text is put into the
// template as quoted string constants, so nothing in it is read as template syntax.

const leafHelp = `NAME:
   {{template "helpNameTemplate" .}}

USAGE:
   {{template "usageTemplate" .}}%s{{if .VisibleFlags}}

OPTIONS:{{template "visibleFlagTemplate" .}}{{end}}{{if .VisiblePersistentFlags}}

GLOBAL OPTIONS:{{template "visiblePersistentFlagTemplate" .}}{{end}}%s
`

const rootHelp = `NAME:
   {{template "helpNameTemplate" .}}

USAGE:
   {{.FullName}} [global options] command [command options] [arguments...]{{if .Version}}

VERSION:
   {{.Version}}{{end}}%s{{if .VisibleCommands}}

COMMANDS:{{template "visibleCommandCategoryTemplate" .}}{{end}}{{if .VisibleFlags}}

GLOBAL OPTIONS:{{template "visibleFlagTemplate" .}}{{end}}%s
`

// helpTemplates sets the help template of the root or a command without subcommands
// when its Description has EXAMPLES.
func helpTemplates(cmd *cli.Command, isRoot bool) {
	if !strings.Contains(cmd.Description, "EXAMPLES:") || (isGroup(cmd) && !isRoot) {
		return // a group's help lists its commands in the framework's template
	}
	body, examples := splitExamples(cmd.Description)
	desc := ""
	if body != "" {
		desc = "\n\nDESCRIPTION:\n   {{wrap " + strconv.Quote(body) + " 3}}"
	}
	ex := "\n\nEXAMPLES:\n{{" + strconv.Quote(examples) + "}}"
	if isRoot {
		cmd.CustomRootCommandHelpTemplate = sprintf(rootHelp, desc, ex)
		return
	}
	cmd.CustomHelpTemplate = sprintf(leafHelp, desc, ex)
}

// sprintf fills the two %s of a template (which has no other % verbs).
func sprintf(tmpl, a, b string) string {
	first, rest, _ := strings.Cut(tmpl, "%s")
	second, third, _ := strings.Cut(rest, "%s")
	return first + a + second + b + third
}
