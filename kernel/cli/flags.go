package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ErrHelp is returned (wrapped in an *Error) by Parse when -h or --help is
// given and no flag of that name was declared.
var ErrHelp = errors.New("help requested")

// Error is a command-line error. It names the program and, when one is to
// blame, the flag.
type Error struct {
	Prog string // the FlagSet's name
	Flag string // the flag as written without dashes ("" when none is to blame)
	Msg  string // what is wrong
	Err  error  // underlying cause (ErrHelp, a strconv error, ...), may be nil
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Prog != "" {
		b.WriteString(e.Prog + ": ")
	}
	if e.Flag != "" {
		b.WriteString("flag --" + e.Flag + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Value is a flag's value: set from its command-line text, shown in Usage.
// Implement it to declare flags of other types with FlagSet.Var.
type Value interface {
	// Set parses s (one occurrence on the command line).
	Set(s string) error
	// String formats the current value (used for defaults in Usage).
	String() string
	// Type is the placeholder shown in Usage ("INT", "PATH", ...).
	Type() string
}

// boolFlag is implemented by values that may be given bare (--k).
type boolFlag interface{ isBool() bool }

type flag struct {
	name     string
	help     string
	value    Value
	def      string
	required bool
	set      bool
	aliases  []string
}

// FlagSet is a set of declared flags and the positional arguments left after
// parsing. The zero value is not usable; call New.
type FlagSet struct {
	// Summary is an optional line printed under the usage line.
	Summary string
	// Positional describes positional arguments in the usage line
	// (e.g. "FILE..."); empty means the set takes none and any positional
	// argument is an error.
	Positional string

	name    string
	flags   map[string]*flag // by name and alias
	order   []*flag
	args    []string
	parsed  bool
	output  io.Writer
	hasJSON bool
}

// New returns an empty flag set for the program or subcommand name.
func New(name string) *FlagSet {
	return &FlagSet{name: name, flags: map[string]*flag{}}
}

// Name returns the name given to New.
func (f *FlagSet) Name() string { return f.name }

// SetOutput sets where MustParse and ParseCommand print errors and usage
// (default os.Stderr).
func (f *FlagSet) SetOutput(w io.Writer) { f.output = w }

// Output returns the writer for errors and usage.
func (f *FlagSet) Output() io.Writer {
	if f.output == nil {
		return os.Stderr
	}
	return f.output
}

// Var declares a flag with a custom Value. The value's current content is the
// default. Declaring a name twice, or a name with a leading dash, '=' or
// spaces, is a programming error and panics.
func (f *FlagSet) Var(v Value, name, help string) {
	if name == "" || strings.HasPrefix(name, "-") || strings.ContainsAny(name, "= \t\n") {
		panic(fmt.Sprintf("cli: %s: invalid flag name %q", f.name, name))
	}
	if _, dup := f.flags[name]; dup {
		panic(fmt.Sprintf("cli: %s: flag --%s declared twice", f.name, name))
	}
	fl := &flag{name: name, help: help, value: v, def: v.String()}
	f.flags[name] = fl
	f.order = append(f.order, fl)
}

// Alias makes short (e.g. "n") another spelling of the declared flag name.
// It panics if name is not declared or short is taken.
func (f *FlagSet) Alias(short, name string) {
	fl, ok := f.flags[name]
	if !ok {
		panic(fmt.Sprintf("cli: %s: alias %q for undeclared flag --%s", f.name, short, name))
	}
	if _, dup := f.flags[short]; dup || short == "" {
		panic(fmt.Sprintf("cli: %s: alias %q already taken", f.name, short))
	}
	f.flags[short] = fl
	fl.aliases = append(fl.aliases, short)
}

// Required marks declared flags as required: Parse fails, naming the first
// one missing, unless each is given on the command line.
func (f *FlagSet) Required(names ...string) {
	for _, n := range names {
		fl, ok := f.flags[n]
		if !ok {
			panic(fmt.Sprintf("cli: %s: Required(%q): no such flag", f.name, n))
		}
		fl.required = true
	}
}

// String declares a string flag.
func (f *FlagSet) String(name, def, help string) *string {
	p := new(string)
	*p = def
	f.Var((*stringValue)(p), name, help)
	return p
}

// Int declares an integer flag (decimal, or 0x/0o/0b prefixed; underscores allowed).
func (f *FlagSet) Int(name string, def int, help string) *int {
	p := new(int)
	*p = def
	f.Var((*intValue)(p), name, help)
	return p
}

// Float declares a floating-point flag.
func (f *FlagSet) Float(name string, def float64, help string) *float64 {
	p := new(float64)
	*p = def
	f.Var((*floatValue)(p), name, help)
	return p
}

// Bool declares a boolean flag: bare --k is true; --k=false, --k false and
// --no-k are false.
func (f *FlagSet) Bool(name string, def bool, help string) *bool {
	p := new(bool)
	*p = def
	f.Var((*boolValue)(p), name, help)
	return p
}

// Duration declares a duration flag (time.ParseDuration syntax: 500ms, 2s, 1m30s).
func (f *FlagSet) Duration(name string, def time.Duration, help string) *time.Duration {
	p := new(time.Duration)
	*p = def
	f.Var((*durationValue)(p), name, help)
	return p
}

// StringList declares a list flag: comma-separated items, and repeating the
// flag appends. The first occurrence replaces the default. Items are trimmed
// of spaces; empty items are dropped.
func (f *FlagSet) StringList(name string, def []string, help string) *[]string {
	v := &listValue{p: new([]string)}
	*v.p = append([]string(nil), def...)
	f.Var(v, name, help)
	return v.p
}

// IntList declares a list of integers, comma-separated and/or repeated
// (e.g. token ids: --ids 1,2,3).
func (f *FlagSet) IntList(name string, def []int, help string) *[]int {
	v := &intListValue{p: new([]int)}
	*v.p = append([]int(nil), def...)
	f.Var(v, name, help)
	return v.p
}

// Choice declares a string flag whose value must be one of choices.
func (f *FlagSet) Choice(name, def string, choices []string, help string) *string {
	v := &choiceValue{p: new(string), choices: append([]string(nil), choices...)}
	*v.p = def
	f.Var(v, name, help)
	return v.p
}

// JSON declares the conventional --json switch (machine-readable output).
func (f *FlagSet) JSON() *bool {
	f.hasJSON = true
	return f.Bool("json", false, "write one JSON document to stdout instead of text")
}

// IsSet reports whether the named flag (or alias) was given on the command line.
func (f *FlagSet) IsSet(name string) bool {
	fl, ok := f.flags[name]
	return ok && fl.set
}

// Parsed reports whether Parse has succeeded.
func (f *FlagSet) Parsed() bool { return f.parsed }

// Args returns the positional arguments left after parsing.
func (f *FlagSet) Args() []string { return append([]string(nil), f.args...) }

// NArg is the number of positional arguments.
func (f *FlagSet) NArg() int { return len(f.args) }

// Arg returns positional argument i, or "" when there is none.
func (f *FlagSet) Arg(i int) string {
	if i < 0 || i >= len(f.args) {
		return ""
	}
	return f.args[i]
}

func (f *FlagSet) errf(flagName string, cause error, format string, a ...any) *Error {
	return &Error{Prog: f.name, Flag: flagName, Msg: fmt.Sprintf(format, a...), Err: cause}
}

// Parse parses args (without the program name). It may be called once per
// FlagSet; values of flags not given keep their defaults.
func (f *FlagSet) Parse(args []string) error {
	if f.parsed {
		return f.errf("", nil, "Parse called twice")
	}
	f.args = nil
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			f.args = append(f.args, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' || isNumber(a) {
			f.args = append(f.args, a)
			continue
		}
		body := strings.TrimPrefix(a, "-")
		body = strings.TrimPrefix(body, "-")
		if body == "" || body[0] == '-' || body[0] == '=' {
			return f.errf("", nil, "malformed flag %q", a)
		}
		name, val, hasVal := strings.Cut(body, "=")
		fl, ok := f.flags[name]
		negated := false
		if !ok && strings.HasPrefix(name, "no-") {
			if g, ok2 := f.flags[strings.TrimPrefix(name, "no-")]; ok2 && isBoolValue(g.value) {
				fl, ok, negated = g, true, true
			}
		}
		if !ok {
			if name == "h" || name == "help" {
				return f.errf("", ErrHelp, "help requested")
			}
			msg := fmt.Sprintf("unknown flag %s", a)
			if hasVal {
				msg = fmt.Sprintf("unknown flag --%s (in %q)", name, a)
			}
			if s := f.suggest(name); s != "" {
				msg += fmt.Sprintf(" (did you mean --%s?)", s)
			}
			if len(f.order) == 0 {
				msg += " (" + f.name + " takes no flags)"
			}
			return f.errf("", nil, "%s", msg)
		}
		switch {
		case negated:
			if hasVal {
				return f.errf(name, nil, "takes no value (got %q)", val)
			}
			val = "false"
		case hasVal:
		case isBoolValue(fl.value):
			val = "true"
			if i+1 < len(args) && (args[i+1] == "true" || args[i+1] == "false") {
				val = args[i+1]
				i++
			}
		default:
			if i+1 >= len(args) {
				return f.errf(name, nil, "needs a value (%s)", fl.value.Type())
			}
			next := args[i+1]
			if next != "-" && strings.HasPrefix(next, "-") && !isNumber(next) {
				if _, isFlag := f.flags[strings.TrimLeft(strings.SplitN(next, "=", 2)[0], "-")]; isFlag || next == "--" {
					return f.errf(name, nil, "needs a value (%s) but is followed by %s; write --%s=%s to pass that text as the value",
						fl.value.Type(), next, name, next)
				}
			}
			val = next
			i++
		}
		if err := fl.value.Set(val); err != nil {
			return f.errf(name, err, "invalid value %q: %v", val, err)
		}
		fl.set = true
	}
	for _, fl := range f.order {
		if fl.required && !fl.set {
			_, help := unquoteUsage(fl)
			return f.errf(fl.name, nil, "required but not given (%s)", help)
		}
	}
	if f.Positional == "" && len(f.args) > 0 {
		return f.errf("", nil, "unexpected argument %q (%s takes no positional arguments)", f.args[0], f.name)
	}
	f.parsed = true
	return nil
}

// suggest returns the declared flag nearest to name (edit distance ≤ 2), or "".
func (f *FlagSet) suggest(name string) string {
	best, bestD := "", 3
	for _, fl := range f.order {
		for _, n := range append([]string{fl.name}, fl.aliases...) {
			if d := editDistance(name, n); d < bestD {
				best, bestD = fl.name, d
			}
		}
	}
	return best
}

func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			c := 1
			if ra[i-1] == rb[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// isNumber reports whether s is a (negative) number, so "-1" and "-0.5" are
// values and positional arguments rather than flags.
func isNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

func isBoolValue(v Value) bool {
	b, ok := v.(boolFlag)
	return ok && b.isBool()
}

// Usage returns the help text: usage line, summary, and one entry per flag
// with its placeholder, default and whether it is required.
func (f *FlagSet) Usage() string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: %s", f.name)
	if len(f.order) > 0 {
		b.WriteString(" [flags]")
	}
	if f.Positional != "" {
		b.WriteString(" " + f.Positional)
	}
	b.WriteString("\n")
	if f.Summary != "" {
		b.WriteString("\n" + f.Summary + "\n")
	}
	if len(f.order) == 0 {
		return b.String()
	}
	b.WriteString("\nflags:\n")
	type row struct{ left, right string }
	var rows []row
	width := 0
	order := append([]*flag(nil), f.order...)
	sort.SliceStable(order, func(i, j int) bool { return order[i].name < order[j].name })
	for _, fl := range order {
		placeholder, help := unquoteUsage(fl)
		var names []string
		for _, a := range fl.aliases {
			names = append(names, "-"+a)
		}
		names = append(names, "--"+fl.name)
		left := strings.Join(names, ", ")
		if placeholder != "" {
			left += " " + placeholder
		}
		switch {
		case fl.required:
			help += " (required)"
		case fl.def != "" && fl.def != "false" && fl.def != "0" && fl.def != "0s" && fl.def != "[]":
			help += fmt.Sprintf(" (default %s)", quoteDefault(fl))
		}
		rows = append(rows, row{left, help})
		width = max(width, len(left))
	}
	for _, r := range rows {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, r.left, r.right)
	}
	b.WriteString("  -h, --help" + strings.Repeat(" ", max(0, width-10)) + "  show this help\n")
	return b.String()
}

func quoteDefault(fl *flag) string {
	if _, ok := fl.value.(*stringValue); ok {
		return strconv.Quote(fl.def)
	}
	return fl.def
}

// unquoteUsage extracts a `PLACEHOLDER` from the help text (as package flag
// does) or falls back to the value's type.
func unquoteUsage(fl *flag) (placeholder, help string) {
	help = fl.help
	if i := strings.IndexByte(help, '`'); i >= 0 {
		if j := strings.IndexByte(help[i+1:], '`'); j >= 0 {
			placeholder = help[i+1 : i+1+j]
			help = help[:i] + placeholder + help[i+1+j+1:]
			if isBoolValue(fl.value) {
				placeholder = ""
			}
			return placeholder, help
		}
	}
	if isBoolValue(fl.value) {
		return "", help
	}
	return fl.value.Type(), help
}

// PrintUsage writes Usage to Output.
func (f *FlagSet) PrintUsage() { io.WriteString(f.Output(), f.Usage()) }

// ParseCommand parses args for a subcommand. It returns ok=true when the
// command should go on. Otherwise code is the status to exit with: ExitOK
// after printing Usage for -h/--help, ExitUsage after printing the error and
// a hint for a bad command line.
func (f *FlagSet) ParseCommand(args []string) (code int, ok bool) {
	return f.ParseCommandResult(f.Parse(args))
}
