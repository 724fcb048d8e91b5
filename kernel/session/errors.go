package session

import (
	"errors"
	"fmt"
	"go/scanner"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/traefik/yaegi/interp"
)

// CellError is a failed cell: a compile error, a panic, an interruption, a bad magic. The
// kernel turns it into an error message (ename, evalue, traceback).
type CellError struct {
	Name      string   // "CompileError", "panic", "Interrupted", "UsageError" or "Error"
	Value     string   // one line
	Traceback []string // lines shown to the user (never nil)
}

func (e *CellError) Error() string {
	if e.Value == "" {
		return e.Name
	}
	return e.Name + ": " + e.Value
}

// Error names.
const (
	ErrCompile     = "CompileError"
	ErrPanic       = "panic"
	ErrInterrupted = "Interrupted"
	ErrUsage       = "UsageError"
	ErrOther       = "Error"
)

// posRe matches positions the session gives cell code: "cell12/_.go:3:5" (an evaluated cell
// by sequence number) or "cell/_.go:3:5" (the cell being split).
var posRe = regexp.MustCompile(`\bcell(\d*)/_\.go:(\d+):(\d+)`)

// errorContext knows how to show positions: those of the current cell as line:col, others
// with the cell's label.
type errorContext struct {
	seq    int            // sequence number of the current cell
	src    string         // current cell source
	labels map[int]string // sequence number → label ("[5]")
}

// yaegiNoise matches wrappers yaegi puts around compiler panics, and the "incomplete type"
// it reports for undefined names.
var (
	yaegiNoise      = regexp.MustCompile(`(\S+: )?CFG post-order panic: `)
	incompleteNames = regexp.MustCompile(`incomplete type ([\pL_][\pL\pN_]*)$`)
)

// rewrite replaces internal positions in msg with user-facing ones.
func (ec errorContext) rewrite(msg string) string {
	msg = yaegiNoise.ReplaceAllString(msg, "")
	msg = incompleteNames.ReplaceAllString(msg, "undefined: $1")
	if msg == "nil type" || msg == "nil reflect type" {
		// yaegi's compiler fails this way on some top-level forms, e.g. `v, ok := <-ch`.
		msg += " (the interpreter cannot compile this statement at the top level of a cell: put it in a function)"
	}
	return posRe.ReplaceAllStringFunc(msg, func(m string) string {
		sub := posRe.FindStringSubmatch(m)
		seq := ec.seq
		if sub[1] != "" {
			seq, _ = strconv.Atoi(sub[1])
		}
		if seq == ec.seq {
			return sub[2] + ":" + sub[3]
		}
		label := ec.labels[seq]
		if label == "" {
			label = "[?]"
		}
		return "cell " + label + " " + sub[2] + ":" + sub[3]
	})
}

// excerpt returns the source line and a caret under the column for positions in the current
// cell found in msg.
func (ec errorContext) excerpt(msg string) []string {
	sub := posRe.FindStringSubmatch(msg)
	if sub == nil {
		return nil
	}
	if sub[1] != "" {
		if seq, _ := strconv.Atoi(sub[1]); seq != ec.seq {
			return nil
		}
	}
	line, _ := strconv.Atoi(sub[2])
	col, _ := strconv.Atoi(sub[3])
	lines := strings.Split(ec.src, "\n")
	if line < 1 || line > len(lines) {
		return nil
	}
	text := strings.TrimRight(lines[line-1], "\r")
	prefix := fmt.Sprintf("%4d | ", line)
	caret := strings.Repeat(" ", len(prefix)-2) + "| "
	for i, r := range text {
		if i >= col-1 {
			break
		}
		if r == '\t' {
			caret += "\t"
		} else {
			caret += " "
		}
	}
	return []string{prefix + text, caret + "^"}
}

// compileError describes a syntax or type error of the current cell.
func (ec errorContext) compileError(err error) *CellError {
	var msgs []string
	var list scanner.ErrorList
	var se *splitError
	switch {
	case errors.As(err, &se):
		list = se.list
	case errors.As(err, &list):
	}
	if len(list) > 0 {
		for i, e := range list {
			if i == 10 {
				msgs = append(msgs, fmt.Sprintf("(and %d more errors)", len(list)-10))
				break
			}
			msgs = append(msgs, e.Error())
		}
	} else {
		msgs = []string{err.Error()}
	}
	ce := &CellError{Name: ErrCompile, Value: ec.rewrite(msgs[0])}
	for _, m := range msgs {
		ce.Traceback = append(ce.Traceback, ErrCompile+": "+ec.rewrite(m))
		ce.Traceback = append(ce.Traceback, ec.excerpt(m)...)
	}
	return ce
}

// panicLineRe matches the line yaegi prints for every interpreted frame a panic unwinds:
// "cell12:3:5: panic: main.f(...)".
var panicLineRe = regexp.MustCompile(`^(?:(\S*?):?(\d+):(\d+)|-): panic: (.*)\(\.\.\.\)\n?$`)

// panicError describes a panic: its value, the interpreted frames yaegi reported (innermost
// first) and the compiled frames where the panic started, if it started in compiled code.
func (ec errorContext) panicError(value any, frames []string, stack []byte) *CellError {
	msg := panicMessage(value)
	ce := &CellError{Name: ErrPanic, Value: msg}
	ce.Traceback = append(ce.Traceback, "panic: "+msg)
	if comp := compiledFrames(string(stack)); len(comp) > 0 {
		ce.Traceback = append(ce.Traceback, "compiled code:")
		ce.Traceback = append(ce.Traceback, comp...)
	}
	if len(frames) > 0 {
		ce.Traceback = append(ce.Traceback, "interpreted code (positions approximate):")
	}
	for _, f := range frames {
		if l := ec.frameLine(f); l != "" {
			ce.Traceback = append(ce.Traceback, l)
		}
	}
	return ce
}

// frameLine turns a yaegi panic line into "  in main.f at cell [3] 2:5".
func (ec errorContext) frameLine(line string) string {
	m := panicLineRe.FindStringSubmatch(line)
	if m == nil {
		return "  " + strings.TrimSpace(line)
	}
	fn := m[4]
	if m[2] == "" {
		return "" // code the session generated (the go statement wrapper)
	}
	where := ec.rewrite(m[1] + ":" + m[2] + ":" + m[3])
	if m[1] != "" && !strings.HasPrefix(m[1], "cell") {
		where = m[1] + ":" + m[2] + ":" + m[3]
	}
	if fn == "main" {
		fn = "cell code"
	}
	if strings.HasPrefix(where, "cell ") {
		return "  in " + fn + " at " + where
	}
	return "  in " + fn + " at line " + where
}

// panicMessage formats a panic value; yaegi's reflect errors for nil dereferences are named
// as what they are.
func panicMessage(v any) string {
	if rv, ok := v.(reflect.Value); ok && rv.IsValid() && rv.CanInterface() {
		v = rv.Interface()
	}
	if ve, ok := v.(*reflect.ValueError); ok && ve.Kind == reflect.Invalid {
		return "invalid memory address or nil pointer dereference (" + ve.Error() + ")"
	}
	switch x := v.(type) {
	case error:
		return x.Error()
	case fmt.Stringer:
		return x.String()
	}
	return fmt.Sprint(v)
}

// compiledFrames extracts, from a goroutine stack taken where yaegi recovered a panic, the
// compiled (non-runtime, non-reflect, non-yaegi) frames between the original panic and the
// interpreter's call into compiled code.
func compiledFrames(stack string) []string {
	lines := strings.Split(stack, "\n")
	last := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "panic(") {
			last = i
		}
	}
	if last < 0 {
		return nil
	}
	var out []string
	for i := last + 2; i+1 < len(lines); i += 2 {
		fn, file := lines[i], strings.TrimSpace(lines[i+1])
		switch {
		case strings.HasPrefix(fn, "reflect."), strings.HasPrefix(fn, "github.com/traefik/yaegi/"):
			return out
		case strings.HasPrefix(fn, "runtime."), strings.HasPrefix(fn, "panic("):
			continue
		}
		if j := strings.LastIndex(fn, "("); j > 0 {
			fn = fn[:j]
		}
		if j := strings.LastIndex(file, " +0x"); j > 0 {
			file = file[:j]
		}
		out = append(out, "  "+fn+" at "+file)
		if len(out) == 20 {
			return out
		}
	}
	return out
}

// asPanic unwraps an interp.Panic.
func asPanic(err error) (interp.Panic, bool) {
	var p interp.Panic
	if errors.As(err, &p) {
		return p, true
	}
	return p, false
}
