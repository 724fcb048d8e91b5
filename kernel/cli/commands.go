package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
)

// Command is one qwenrepl subcommand.
type Command struct {
	// Name is the word after the program name ("generate", "train", ...).
	Name string
	// Summary is the one-line description `qwenrepl help` lists.
	Summary string
	// Run does the work. args are the arguments after the name; output goes
	// to stdout (one JSON document with --json), diagnostics to stderr. It
	// returns the exit status (ExitOK, ExitError, ExitUsage). It must answer
	// --help by printing its usage and returning ExitOK (FlagSet.ParseCommand
	// does this).
	Run func(args []string, stdout, stderr io.Writer) int
}

var table struct {
	mu   sync.RWMutex
	cmds map[string]Command
}

// Register adds c to the subcommand table, normally from an init function:
//
//	func init() {
//		cli.Register(cli.Command{Name: "generate", Summary: "generate text from a prompt", Run: runGenerate})
//	}
//
// A duplicate or reserved name ("help"), an empty name, a name that starts
// with "-" or ends in ".go", or a nil Run is a programming error and panics.
func Register(c Command) {
	if c.Name == "" || c.Name == "help" || strings.HasPrefix(c.Name, "-") || strings.HasSuffix(c.Name, ".go") ||
		strings.ContainsAny(c.Name, " \t\n") {
		panic(fmt.Sprintf("cli.Register: invalid command name %q", c.Name))
	}
	if c.Run == nil {
		panic(fmt.Sprintf("cli.Register: command %q has no Run", c.Name))
	}
	table.mu.Lock()
	defer table.mu.Unlock()
	if table.cmds == nil {
		table.cmds = map[string]Command{}
	}
	if _, dup := table.cmds[c.Name]; dup {
		panic(fmt.Sprintf("cli.Register: command %q registered twice", c.Name))
	}
	table.cmds[c.Name] = c
}

// Lookup returns the registered command name.
func Lookup(name string) (Command, bool) {
	table.mu.RLock()
	defer table.mu.RUnlock()
	c, ok := table.cmds[name]
	return c, ok
}

// Commands returns the registered commands sorted by name.
func Commands() []Command {
	table.mu.RLock()
	defer table.mu.RUnlock()
	out := make([]Command, 0, len(table.cmds))
	for _, c := range table.cmds {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Dispatch runs the subcommand named by args[0] with the remaining
// arguments and returns its exit status. "help" lists the commands (to
// stdout); "help NAME" runs NAME --help. An unknown or missing name is a
// usage error (ExitUsage) with the list on stderr. prog is the program name
// used in messages ("qwenrepl").
func Dispatch(prog string, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "%s: missing command\n", prog)
		PrintCommands(prog, stderr)
		return ExitUsage
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		if len(args) > 1 {
			c, ok := Lookup(args[1])
			if !ok {
				fmt.Fprintf(stderr, "%s help: unknown command %q\n", prog, args[1])
				PrintCommands(prog, stderr)
				return ExitUsage
			}
			return c.Run([]string{"--help"}, stdout, stderr)
		}
		PrintCommands(prog, stdout)
		return ExitOK
	}
	c, ok := Lookup(name)
	if !ok {
		fmt.Fprintf(stderr, "%s: unknown command %q\n", prog, name)
		PrintCommands(prog, stderr)
		return ExitUsage
	}
	return c.Run(args[1:], stdout, stderr)
}

// PrintCommands writes the command table: one line per command with its
// summary.
func PrintCommands(prog string, w io.Writer) {
	cmds := Commands()
	fmt.Fprintf(w, "commands (%s COMMAND --help for each):\n", prog)
	width := 4
	for _, c := range cmds {
		width = max(width, len(c.Name))
	}
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.Name, c.Summary)
	}
	fmt.Fprintf(w, "  %-*s  %s\n", width, "help", "list commands, or show one command's flags")
}

// WriteJSON writes v to w as one indented JSON document followed by a
// newline — the --json output convention of every subcommand.
func WriteJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}
