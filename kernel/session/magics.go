package session

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Magic is a special command: a line starting with % (or ! for the shell).
type Magic struct {
	Name  string // "%time", "!"
	Usage string // "%env [NAME[=VALUE]]"
	Help  string // one paragraph
	run   func(s *Session, c *cell, args string) error
}

// magics is the one table of special commands (gonb style). %time is handled by runCell
// because it wraps what follows; its entry is here for help and completion.
var magics []Magic

func init() { magics = magicTable() }

func magicTable() []Magic {
	return []Magic{
		{Name: "%help", Usage: "%help", Help: "List the special commands and how cells work.", run: (*Session).magicHelp},
		{Name: "%time", Usage: "%time [statement]", Help: "Time the rest of the cell (or the statement on the same line) and print the wall time after it."},
		{Name: "%env", Usage: "%env [NAME[=VALUE] | NAME VALUE]", Help: "Without arguments, list the environment; with NAME, print it; with a value, set it (os.Setenv: cells and commands see it).", run: (*Session).magicEnv},
		{Name: "%reset", Usage: "%reset", Help: "Start a fresh interpreter: variables, functions, types and imports defined in cells are gone; loaded models and all engine state are kept (they live in compiled packages). History and the execution count stay.", run: (*Session).magicReset},
		{Name: "%mem", Usage: "%mem", Help: "Show the engine's memory: device, bytes in use per category, peak and the guard's budget, and the Go heap.", run: (*Session).magicMem},
		{Name: "%who", Usage: "%who", Help: "List the names cells defined (functions, types, variables, constants) with their types.", run: (*Session).magicWho},
		{Name: "%history", Usage: "%history [N]", Help: "Print the last N inputs (default 10) with their session and line numbers.", run: (*Session).magicHistory},
		{Name: "!", Usage: "!command", Help: "Run a shell command (/bin/sh -c) and stream its output; interrupting the cell kills it.", run: (*Session).magicShell},
	}
}

// Magics returns the special commands with their help.
func (s *Session) Magics() []Magic {
	out := make([]Magic, len(magics))
	copy(out, magics)
	return out
}

// segment is a magic line or a stretch of Go code. Go text is the whole cell with the lines
// of other segments blanked, so positions stay the cell's.
type segment struct {
	magic bool
	line  int // 1-based line of a magic
	text  string
}

// splitSegments separates magic lines (% or ! at column 0, where the Go code before them is
// complete) from Go code.
func splitSegments(src string) []segment {
	lines := strings.Split(src, "\n")
	var segs []segment
	goFrom := -1 // first line of the current Go stretch
	flushGo := func(to int) {
		if goFrom < 0 {
			return
		}
		var b strings.Builder
		for i := range lines {
			if i >= goFrom && i < to {
				b.WriteString(lines[i])
			}
			if i < len(lines)-1 {
				b.WriteByte('\n')
			}
		}
		segs = append(segs, segment{text: b.String()})
		goFrom = -1
	}
	for i, l := range lines {
		if (strings.HasPrefix(l, "%") || strings.HasPrefix(l, "!")) && (goFrom < 0 || goComplete(strings.Join(lines[goFrom:i], "\n"))) {
			flushGo(i)
			segs = append(segs, segment{magic: true, line: i + 1, text: strings.TrimRight(l, " \t\r")})
			continue
		}
		if goFrom < 0 {
			if strings.TrimSpace(l) == "" {
				continue
			}
			goFrom = i
		}
	}
	flushGo(len(lines))
	return segs
}

// goComplete reports whether Go code needs no more lines (is_complete's "complete" or an
// error no more input fixes).
func goComplete(code string) bool {
	st, _ := isCompleteGo(code)
	return st != "incomplete"
}

// runMagic runs one magic line.
func (s *Session) runMagic(c *cell, line string) error {
	if strings.HasPrefix(line, "!") {
		return s.magicShell(c, strings.TrimSpace(line[1:]))
	}
	name, args, _ := strings.Cut(line, " ")
	for _, m := range magics {
		if m.Name == name && m.run != nil {
			return m.run(s, c, strings.TrimSpace(args))
		}
	}
	msg := fmt.Sprintf("unknown magic %s (%%help lists them)", name)
	return &CellError{Name: ErrUsage, Value: msg, Traceback: []string{ErrUsage + ": " + msg}}
}

func usage(m string) error {
	return &CellError{Name: ErrUsage, Value: m, Traceback: []string{ErrUsage + ": " + m}}
}

func (s *Session) magicHelp(c *cell, _ string) error {
	var b strings.Builder
	b.WriteString("Special commands (a line starting with % or ! at column 0):\n\n")
	for _, m := range magics {
		fmt.Fprintf(&b, "  %-34s %s\n", m.Usage, m.Help)
	}
	b.WriteString(`
Cells: Go statements and declarations, mixed freely; state persists across cells and names can
be redefined. A trailing expression is shown (rich output when its value has HTML, Markdown, SVG,
PNG, JPEG, JSON, LaTeX or MIME methods, or is an image.Image).
Pre-imported: fmt, os, math, strings, time, display, and engine when compiled in.
display.Context() is the cell's context: cancelled on interrupt (engine calls use it already).
display.HTML/Markdown/Image/..., display.NewDisplay() for outputs updated in place.
`)
	c.io.Stream("stdout", b.String())
	return nil
}

func (s *Session) magicEnv(c *cell, args string) error {
	if args == "" {
		env := os.Environ()
		sort.Strings(env)
		c.io.Stream("stdout", strings.Join(env, "\n")+"\n")
		return nil
	}
	var k, v string
	var set bool
	if i := strings.IndexAny(args, "= \t"); i >= 0 {
		k, v, set = args[:i], strings.TrimSpace(args[i+1:]), true
	} else {
		k = args
	}
	if k == "" || strings.ContainsAny(k, "\x00") {
		return usage("%env: bad variable name " + strconv.Quote(k))
	}
	if !set {
		if val, ok := os.LookupEnv(k); ok {
			c.io.Stream("stdout", val+"\n")
			return nil
		}
		return usage("%env: " + k + " is not set")
	}
	if err := os.Setenv(k, v); err != nil {
		return usage("%env: " + err.Error())
	}
	c.io.Stream("stdout", "env: "+k+"="+v+"\n")
	return nil
}

func (s *Session) magicReset(c *cell, _ string) error {
	if err := s.reset(); err != nil {
		return &CellError{Name: ErrOther, Value: err.Error(), Traceback: []string{err.Error()}}
	}
	c.io.Stream("stdout", "Fresh interpreter: cell definitions cleared, engine state kept.\n")
	return nil
}

func (s *Session) magicMem(c *cell, _ string) error {
	c.io.Stream("stdout", MemReport()+"\n")
	return nil
}

func (s *Session) magicHistory(c *cell, args string) error {
	n := 10
	if args != "" {
		v, err := strconv.Atoi(args)
		if err != nil || v < 0 {
			return usage("%history: want a count, got " + strconv.Quote(args))
		}
		n = v
	}
	var b strings.Builder
	for _, e := range s.hist.Tail(n) {
		fmt.Fprintf(&b, "%d/%d: %s\n", e.Session, e.Line, strings.ReplaceAll(e.Input, "\n", "\n      "))
	}
	c.io.Stream("stdout", b.String())
	return nil
}

func (s *Session) magicWho(c *cell, _ string) error {
	var b strings.Builder
	s.namesMu.RLock()
	for _, n := range sortedKeys(s.decls) {
		d := s.decls[n]
		fmt.Fprintf(&b, "%-20s %-7s %s\n", n, d.kind, d.label)
	}
	s.namesMu.RUnlock()
	for _, n := range sortedKeys(s.globals()) {
		if _, ok := s.decls[n]; !ok {
			v := s.globals()[n]
			t := "?"
			if v.IsValid() {
				t = v.Type().String()
			}
			fmt.Fprintf(&b, "%-20s var     %s\n", n, t)
		}
	}
	if b.Len() == 0 {
		b.WriteString("no names defined yet\n")
	}
	c.io.Stream("stdout", b.String())
	return nil
}

// globals is the interpreter's package-level variables and constants, without the session's
// own.
func (s *Session) globals() (g map[string]reflect.Value) {
	defer func() {
		if recover() != nil { // a compiled but never executed declaration is out of yaegi's frame
			g = map[string]reflect.Value{}
		}
	}()
	g = s.in.Globals()
	for k := range g {
		if strings.HasPrefix(k, hiddenPref) || k == "_" {
			delete(g, k)
		}
	}
	return g
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// magicShell runs a command with /bin/sh, streaming its output; an interrupt kills its
// process group.
func (s *Session) magicShell(c *cell, command string) error {
	if command == "" {
		return usage("!: no command")
	}
	cmd := exec.CommandContext(c.ctx, "/bin/sh", "-c", command)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 2 * time.Second
	cmd.Stdin = nil
	var wg sync.WaitGroup
	pipe := func(name string) (io.WriteCloser, error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Read(buf)
				if n > 0 {
					c.io.Stream(name, string(buf[:n]))
				}
				if err != nil {
					return
				}
			}
		}()
		return w, nil
	}
	stdout, err := pipe("stdout")
	if err != nil {
		return usage("!: " + err.Error())
	}
	stderr, err := pipe("stderr")
	if err != nil {
		stdout.Close()
		return usage("!: " + err.Error())
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err = cmd.Start()
	stdout.Close()
	stderr.Close()
	if err == nil {
		err = cmd.Wait()
	}
	wg.Wait()
	if c.ctx.Err() != nil {
		return interrupted()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		c.io.Stream("stderr", fmt.Sprintf("!%s: %v\n", command, ee))
		return nil
	}
	if err != nil {
		return usage("!: " + err.Error())
	}
	return nil
}
