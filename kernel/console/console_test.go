package console

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/peterh/liner"
)

// fakeLines is a scripted line editor. Each input is returned by the next
// Prompt call; a nil-string input with err set returns the error.
type fakeLines struct {
	mu      sync.Mutex
	inputs  []input
	prompts []string // prompts shown, in order
	suggest []string // suggestion texts given to PromptWithSuggestion
	history []string
	// before is called with the prompt before each input is returned.
	before func(prompt string)
}

type input struct {
	line string
	err  error
}

func lines(ls ...string) []input {
	out := make([]input, len(ls))
	for i, l := range ls {
		out[i] = input{line: l}
	}
	return out
}

func (f *fakeLines) next(prompt string) (string, error) {
	if f.before != nil {
		f.before(prompt)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prompts = append(f.prompts, prompt)
	if len(f.inputs) == 0 {
		return "", io.EOF
	}
	in := f.inputs[0]
	f.inputs = f.inputs[1:]
	return in.line, in.err
}

func (f *fakeLines) Prompt(p string) (string, error) { return f.next(p) }
func (f *fakeLines) PromptWithSuggestion(p, text string, pos int) (string, error) {
	f.mu.Lock()
	f.suggest = append(f.suggest, text)
	f.mu.Unlock()
	return f.next(p) // the scripted line is the final text (the user may have edited the indent)
}
func (f *fakeLines) PasswordPrompt(p string) (string, error) { return f.next(p) }
func (f *fakeLines) AppendHistory(s string)                  { f.history = append(f.history, s) }
func (f *fakeLines) ReadHistory(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		f.history = append(f.history, sc.Text())
		n++
	}
	return n, sc.Err()
}
func (f *fakeLines) WriteHistory(w io.Writer) (int, error) {
	for _, h := range f.history {
		fmt.Fprintln(w, h)
	}
	return len(f.history), nil
}

// fakeInterp is a tiny "language": braces make input incomplete; "boom"
// fails; "loop" runs until interrupted; "say X" streams X; "input" reads a
// line; "png" displays an image; anything else is its own trailing value.
type fakeInterp struct {
	mu          sync.Mutex
	executed    []string
	interrupted int
	running     chan struct{} // receives when a "loop" cell starts
}

func (f *fakeInterp) Execute(ctx context.Context, code string, io IO) (*Result, error) {
	f.mu.Lock()
	f.executed = append(f.executed, code)
	f.mu.Unlock()
	switch {
	case code == "boom":
		return nil, &CellError{Name: "panic", Value: "boom", Traceback: []string{"panic: boom", "  at cell:1"}}
	case code == "loop":
		if f.running != nil {
			f.running <- struct{}{}
		}
		<-ctx.Done()
		return nil, &CellError{Name: "Interrupted", Value: "cell interrupted"}
	case strings.HasPrefix(code, "say "):
		io.Stream("stdout", strings.TrimPrefix(code, "say "))
		io.Stream("stderr", "warn\n")
		return &Result{}, nil
	case code == "input":
		s, err := io.Input("name? ", false)
		if err != nil {
			return nil, err
		}
		return &Result{Data: map[string]any{"text/plain": "hello " + s}}, nil
	case code == "png":
		io.Display(map[string]any{"image/png": strings.Repeat("A", 16384)}, nil, "", false)
		return &Result{}, nil
	}
	return &Result{Data: map[string]any{"text/plain": code}}, nil
}

func (f *fakeInterp) Interrupt() {
	f.mu.Lock()
	f.interrupted++
	f.mu.Unlock()
}

func (f *fakeInterp) Complete(code string, cursor int) Completion {
	i := strings.LastIndex(code[:cursor], "fmt.")
	if i < 0 {
		return Completion{}
	}
	prefix := code[i+4 : cursor]
	var m []string
	for _, c := range []string{"Printf", "Println", "Sprint"} {
		if strings.HasPrefix(c, prefix) {
			m = append(m, c)
		}
	}
	return Completion{Matches: m, Start: i + 4, End: cursor}
}

func (f *fakeInterp) IsComplete(code string) (string, string) {
	depth := strings.Count(code, "{") - strings.Count(code, "}")
	if depth > 0 {
		return "incomplete", strings.Repeat("\t", depth)
	}
	return "complete", ""
}

func (f *fakeInterp) cells() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.executed...)
}

func newTest(in []input, opt Options) (*Console, *fakeLines, *fakeInterp, *bytes.Buffer, *bytes.Buffer) {
	fl := &fakeLines{inputs: in}
	fi := &fakeInterp{}
	var out, errb bytes.Buffer
	if opt.Interp == nil {
		opt.Interp = fi
	}
	opt.Lines, opt.Out, opt.Err = fl, &out, &errb
	return New(opt), fl, fi, &out, &errb
}

func TestMultiLineAndResults(t *testing.T) {
	c, fl, fi, out, errb := newTest(lines("func f() int {", "return 1", "}", "f()", "", "boom", "say hi"), Options{})
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	want := []string{"func f() int {\nreturn 1\n}", "f()", "boom", "say hi"}
	if got := fi.cells(); !reflect.DeepEqual(got, want) {
		t.Errorf("executed %q, want %q", got, want)
	}
	wantPrompts := []string{"In [1]: ", "   ...: ", "   ...: ", "In [2]: ", "In [3]: ", "In [3]: ", "In [4]: ", "In [5]: "}
	if !reflect.DeepEqual(fl.prompts, wantPrompts) {
		t.Errorf("prompts %q, want %q", fl.prompts, wantPrompts)
	}
	// The continuation line is pre-filled with the indent (tabs as spaces).
	if !reflect.DeepEqual(fl.suggest, []string{"    ", "    "}) {
		t.Errorf("suggestions %q", fl.suggest)
	}
	o := out.String()
	for _, s := range []string{"Out[1]: \nfunc f() int {\nreturn 1\n}\n", "Out[2]: f()\n", "hi\n"} {
		if !strings.Contains(o, s) {
			t.Errorf("stdout lacks %q:\n%s", s, o)
		}
	}
	if e := errb.String(); !strings.Contains(e, "panic: boom\n  at cell:1\n") || !strings.Contains(e, "warn\n") {
		t.Errorf("stderr %q", e)
	}
	if !reflect.DeepEqual(fl.history, []string{"func f() int {", "return 1", "}", "f()", "boom", "say hi"}) {
		t.Errorf("history %q", fl.history)
	}
}

func TestCtrlCAndCtrlD(t *testing.T) {
	in := []input{
		{line: "func g() {"},
		{err: liner.ErrPromptAborted}, // Ctrl-C in the continuation drops the cell
		{line: "1"},
		{line: "{"},
		{err: io.EOF}, // Ctrl-D in a continuation drops the cell too
		{line: "2"},
		{line: "{"}, {line: ""}, {line: ""}, // two blank lines run an unfinished cell
		{err: io.EOF}, // Ctrl-D at the prompt exits
		{line: "never"},
	}
	c, fl, fi, _, _ := newTest(in, Options{})
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	if got, want := fi.cells(), []string{"1", "2", "{"}; !reflect.DeepEqual(got, want) {
		t.Errorf("executed %q, want %q", got, want)
	}
	if len(fl.inputs) != 1 {
		t.Errorf("console did not stop at Ctrl-D: %d inputs left", len(fl.inputs))
	}
	if fl.prompts[2] != "In [1]: " {
		t.Errorf("count advanced after Ctrl-C: %q", fl.prompts)
	}
}

func TestInterruptRunningCell(t *testing.T) {
	fl := &fakeLines{inputs: lines("loop", "after")}
	fi := &fakeInterp{running: make(chan struct{}, 1)}
	var out, errb bytes.Buffer
	c := New(Options{Interp: fi, Lines: fl, Out: &out, Err: &errb})
	c.Interrupt() // nothing running: no effect
	done := make(chan error, 1)
	go func() { done <- c.Run() }()
	select {
	case <-fi.running:
	case <-time.After(5 * time.Second):
		t.Fatal("loop cell did not start")
	}
	c.Interrupt()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("console stuck after interrupt")
	}
	if fi.interrupted != 1 {
		t.Errorf("interpreter interrupted %d times, want 1", fi.interrupted)
	}
	if got := fi.cells(); !reflect.DeepEqual(got, []string{"loop", "after"}) {
		t.Errorf("executed %q", got)
	}
	if !strings.Contains(errb.String(), "Interrupted: cell interrupted") || !strings.Contains(out.String(), "Out[2]: after") {
		t.Errorf("stdout %q stderr %q", out.String(), errb.String())
	}
}

func TestRepeatedInterruptForceExit(t *testing.T) {
	var out, errb bytes.Buffer
	forced := 0
	c := New(Options{Interp: &fakeInterp{}, Out: &out, Err: &errb, ForceExit: func() { forced++ }})
	c.setRunning(func() {}, true)
	for i := 0; i < 3; i++ {
		c.Interrupt()
	}
	if forced != 0 || !strings.Contains(errb.String(), "press Ctrl-C once more") {
		t.Fatalf("after 3: forced %d, stderr %q", forced, errb.String())
	}
	c.Interrupt()
	if forced != 1 {
		t.Fatalf("4th interrupt did not force exit")
	}
}

func TestComplete(t *testing.T) {
	c, _, _, _, _ := newTest(nil, Options{})
	c.opt.Interp = &fakeInterp{}
	cases := []struct {
		pending, line string
		pos           int
		head          string
		matches       []string
		tail          string
	}{
		{"", "x := fmt.Pr", 11, "x := fmt.", []string{"Printf", "Println"}, ""},
		{"", "fmt.Pr(1)", 6, "fmt.", []string{"Printf", "Println"}, "(1)"},
		{"", "y := 1", 6, "y := 1", nil, ""},
		{"func f() {\n", "\tfmt.S", 6, "\tfmt.", []string{"Sprint"}, ""},
		{"", "s := \"日本\"; fmt.P", 16, "s := \"日本\"; fmt.", []string{"Printf", "Println"}, ""},
	}
	for _, cs := range cases {
		c.pending = cs.pending
		h, m, tl := c.complete(cs.line, cs.pos)
		if h != cs.head || !reflect.DeepEqual(m, cs.matches) || tl != cs.tail {
			t.Errorf("complete(%q|%q,%d) = %q %q %q, want %q %q %q", cs.pending, cs.line, cs.pos, h, m, tl, cs.head, cs.matches, cs.tail)
		}
	}
}

func TestInputAndDisplay(t *testing.T) {
	c, fl, _, out, _ := newTest(lines("input", "gopher", "png"), Options{})
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	if fl.prompts[1] != "name? " {
		t.Errorf("input prompt %q", fl.prompts)
	}
	if o := out.String(); !strings.Contains(o, "Out[1]: hello gopher") || !strings.Contains(o, "[image/png 12 KB]") {
		t.Errorf("stdout %q", o)
	}
}

func TestHistoryFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "qwengo", "history")
	c, _, _, _, errb := newTest(lines("a := 1", "func h() {", "}", ":help"), Options{HistoryFile: path})
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err, errb.String())
	}
	if got := string(data); got != "a := 1\nfunc h() {\n}\n:help\n" {
		t.Errorf("history file %q", got)
	}
	c2, fl2, _, _, _ := newTest(nil, Options{HistoryFile: path})
	if err := c2.Run(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fl2.history, []string{"a := 1", "func h() {", "}", ":help"}) {
		t.Errorf("reloaded history %q", fl2.history)
	}
	// An unwritable location is reported once, not fatal.
	bad := filepath.Join(path, "under-a-file", "history")
	c3, _, fi3, _, errb3 := newTest(lines("1", "2"), Options{HistoryFile: bad})
	if err := c3.Run(); err != nil {
		t.Fatal(err)
	}
	if strings.Count(errb3.String(), "history will not be kept") != 1 || len(fi3.cells()) != 2 {
		t.Errorf("bad history path: stderr %q cells %q", errb3.String(), fi3.cells())
	}
}

func TestDefaultHistoryFile(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/xdg")
	if got := DefaultHistoryFile(); got != "/xdg/qwengo/history" {
		t.Errorf("with XDG_STATE_HOME: %q", got)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got := DefaultHistoryFile(); got != "/home/u/.local/state/qwengo/history" {
		t.Errorf("default: %q", got)
	}
	t.Setenv("XDG_STATE_HOME", "relative") // the spec says to ignore relative paths
	if got := DefaultHistoryFile(); got != "/home/u/.local/state/qwengo/history" {
		t.Errorf("relative XDG: %q", got)
	}
}

func TestConsoleCommands(t *testing.T) {
	RegisterChat(nil)
	c, _, fi, out, errb := newTest(lines(":help", ":go", ":bogus", ":chat", "1", ":quit", "2"), Options{})
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	if got := fi.cells(); !reflect.DeepEqual(got, []string{"1"}) {
		t.Errorf("executed %q", got)
	}
	o, e := out.String(), errb.String()
	for _, s := range []string{":chat [MODEL]", "already in Go mode"} {
		if !strings.Contains(o, s) {
			t.Errorf("stdout lacks %q", s)
		}
	}
	for _, s := range []string{"unknown console command :bogus", "chat needs a loaded model: engine cannot generate yet"} {
		if !strings.Contains(e, s) {
			t.Errorf("stderr lacks %q: %q", s, e)
		}
	}
}

func TestRenderBundle(t *testing.T) {
	cases := []struct {
		data map[string]any
		want string
	}{
		{nil, ""},
		{map[string]any{"text/plain": "42", "text/html": "<b>42</b>"}, "42"},
		{map[string]any{"text/plain": []any{"a\n", "b"}}, "a\nb"},
		{map[string]any{"image/png": strings.Repeat("A", 4000)}, "[image/png 2.9 KB]"},
		{map[string]any{"text/html": "<p>x</p>", "image/svg+xml": "<svg/>"}, "[image/svg+xml 6 B] [text/html 8 B]"},
		{map[string]any{"application/json": map[string]any{"a": 1}}, "[application/json 7 B]"},
	}
	for _, c := range cases {
		if got := RenderBundle(c.data); got != c.want {
			t.Errorf("RenderBundle(%v) = %q, want %q", c.data, got, c.want)
		}
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KB", 12 * 1024: "12 KB", 3 << 20: "3.0 MB", 5 << 30: "5.0 GB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

var _ = errors.New
