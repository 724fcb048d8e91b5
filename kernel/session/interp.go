package session

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"image"
	"io"
	"path"
	"reflect"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/qwengo/qwengo/kernel/display"
	"github.com/qwengo/qwengo/kernel/symbols"
	"github.com/traefik/yaegi/interp"
	"github.com/traefik/yaegi/stdlib"
	"github.com/traefik/yaegi/stdlib/unrestricted"
)

// Import paths the session knows by name.
const (
	enginePath  = "github.com/qwengo/qwengo/engine"
	displayPath = "github.com/qwengo/qwengo/kernel/display"
	rtPath      = "qwengo/internal/rt" // the session's hidden runtime package
	rtName      = "_qgrt"
	lastVar     = "_qgLast" // holds the trailing expression's value
	hiddenPref  = "_qg"     // names the session defines in the interpreter
)

// preImports are the packages every cell sees without importing them: name → path.
func preImports() map[string]string {
	m := map[string]string{
		"fmt": "fmt", "os": "os", "math": "math", "strings": "strings", "time": "time",
		"display": displayPath,
	}
	if _, ok := symbols.Symbols[enginePath+"/engine"]; ok {
		m["engine"] = enginePath
	}
	return m
}

// newInterpreter creates an interpreter with every symbol table, the session's overrides
// (context-aware time.Sleep, os.Stdin through IO.Input), the hidden runtime package and the
// pre-imports.
func (s *Session) newInterpreter() (*interp.Interpreter, error) {
	in := interp.New(interp.Options{
		Stdin:        s.stdin,
		Stdout:       &cellWriter{s: s, name: "stdout"},
		Stderr:       &cellWriter{s: s, name: "stderr"},
		Args:         s.opt.Args,
		Unrestricted: true, // the real environment (%env and os.Getenv agree)
	})
	if err := in.Use(stdlib.Symbols); err != nil {
		return nil, fmt.Errorf("session: loading the standard library: %w", err)
	}
	// os/exec is only in the unrestricted table; os.Exit stays the restricted one (a panic).
	if err := in.Use(interp.Exports{"os/exec/exec": unrestricted.Symbols["os/exec/exec"]}); err != nil {
		return nil, err
	}
	for _, t := range s.symbolTables() {
		if err := in.Use(t); err != nil {
			return nil, fmt.Errorf("session: loading compiled packages: %w", err)
		}
	}
	var stdinVar io.Reader = s.stdin
	overrides := interp.Exports{
		"time/time": {"Sleep": reflect.ValueOf(s.sleep)},
		"os/os":     {"Stdin": reflect.ValueOf(&stdinVar).Elem()},
		rtPath + "/rt": {
			"Go":       reflect.ValueOf(s.goWrap),
			"Cell":     reflect.ValueOf(s.cellSeq),
			"Bundle":   reflect.ValueOf(rtBundle),
			"ImagePNG": reflect.ValueOf(rtImagePNG),
		},
	}
	if err := in.Use(overrides); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("import (\n")
	for name, p := range preImports() {
		fmt.Fprintf(&b, "\t%s %q\n", name, p)
	}
	fmt.Fprintf(&b, "\t%s %q\n\t%sfmt \"fmt\"\n)\n", rtName, rtPath, hiddenPref)
	if _, err := in.Eval(b.String()); err != nil {
		return nil, fmt.Errorf("session: prelude: %w", err)
	}
	if _, err := in.Eval("func " + hiddenPref + "One(v any) {}"); err != nil {
		return nil, fmt.Errorf("session: prelude: %w", err)
	}
	return in, nil
}

// cellSeq is the running cell's sequence number (0 outside cells), for the go wrapper.
func (s *Session) cellSeq() int {
	if c := s.cur.Load(); c != nil {
		return c.seq
	}
	return 0
}

// sleep replaces time.Sleep in cells: it returns early when the cell is interrupted.
func (s *Session) sleep(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.cellContext().Done():
	}
}

// goWrap runs the call of a rewritten go statement (see rewriteGo), reporting a panic
// instead of crashing: fn called with args when reflection can pass them, else lazy.
func (s *Session) goWrap(seq int, lazy func(), fn any, ellipsis bool, args ...any) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		stack := debug.Stack()
		frames := s.takePanicLines()
		label := s.snapshotLabels()[seq]
		if label == "" {
			label = "[?]"
		}
		ec := errorContext{seq: -1, labels: s.snapshotLabels()}
		ce := ec.panicError(r, frames, stack)
		s.report(fmt.Sprintf("panic in a goroutine started by cell %s (the session keeps running):\n%s\n",
			label, strings.Join(ce.Traceback, "\n")))
	}()
	pprof.SetGoroutineLabels(context.Background())
	if f, in, ok := reflectCall(fn, ellipsis, args); ok {
		if ellipsis {
			f.CallSlice(in)
		} else {
			f.Call(in)
		}
		return
	}
	lazy()
}

// reflectCall prepares a call of fn with args: untyped constants are converted to the
// parameter types, nil becomes the zero value. ok is false when an argument does not fit.
func reflectCall(fn any, ellipsis bool, args []any) (reflect.Value, []reflect.Value, bool) {
	f := reflect.ValueOf(fn)
	if !f.IsValid() || f.Kind() != reflect.Func {
		return f, nil, false
	}
	t := f.Type()
	n := t.NumIn()
	if (!t.IsVariadic() || ellipsis) && len(args) != n || t.IsVariadic() && !ellipsis && len(args) < n-1 {
		return f, nil, false
	}
	in := make([]reflect.Value, len(args))
	for i, a := range args {
		var pt reflect.Type
		if t.IsVariadic() && !ellipsis && i >= n-1 {
			pt = t.In(n - 1).Elem()
		} else {
			pt = t.In(i)
		}
		v := reflect.ValueOf(a)
		switch {
		case !v.IsValid():
			switch pt.Kind() {
			case reflect.Chan, reflect.Func, reflect.Interface, reflect.Map, reflect.Pointer, reflect.Slice:
				v = reflect.Zero(pt)
			default:
				return f, nil, false
			}
		case v.Type().AssignableTo(pt):
		case v.Type().ConvertibleTo(pt) && isBasic(v.Kind()) && isBasic(pt.Kind()):
			v = v.Convert(pt)
		default:
			return f, nil, false
		}
		in[i] = v
	}
	return f, in, true
}

func isBasic(k reflect.Kind) bool {
	return k >= reflect.Bool && k <= reflect.Complex128 || k == reflect.String
}

func (s *Session) snapshotLabels() map[int]string {
	s.namesMu.RLock()
	defer s.namesMu.RUnlock()
	m := make(map[int]string, len(s.labels))
	for k, v := range s.labels {
		m[k] = v
	}
	return m
}

// rtBundle is the compiled view of a value's MIME bundle (see display.Bundle). Its
// text/plain is kept only for images and bundles a MIME method gave: otherwise the
// interpreter's fmt.Sprint, which sees interpreted String methods, is better.
func rtBundle(v any) map[string]any {
	d := display.Bundle(v)
	_, isImage := v.(image.Image)
	m, isMIME := v.(display.MIMEer)
	if isMIME {
		_, isMIME = m.MIME()[display.MIMEText]
	}
	if !isImage && !isMIME {
		delete(d, display.MIMEText)
	}
	return d
}

// rtImagePNG encodes an image for the trailing-expression probe (nil on failure).
func rtImagePNG(img image.Image) []byte {
	b, err := display.EncodePNG(img)
	if err != nil {
		return nil
	}
	return b
}

// cellWriter is the interpreter's stdout or stderr: it routes to the running (or most recent)
// cell. On stderr, the lines yaegi prints for each frame a panic unwinds are kept for the
// traceback instead.
type cellWriter struct {
	s    *Session
	name string
}

func (w *cellWriter) Write(p []byte) (int, error) {
	if w.name == "stderr" && panicLineRe.Match(p) {
		w.s.panicMu.Lock()
		if len(w.s.panicLines) < 200 {
			w.s.panicLines = append(w.s.panicLines, strings.TrimRight(string(p), "\n"))
		}
		w.s.panicMu.Unlock()
		return len(p), nil
	}
	if c := w.s.route(); c != nil {
		c.io.Stream(w.name, string(p))
		return len(p), nil
	}
	if w.name == "stderr" {
		return w.s.opt.Stderr.Write(p)
	}
	return w.s.opt.Stdout.Write(p)
}

// publisher routes display calls to the running (or most recent) cell.
type publisher struct{ s *Session }

func (p publisher) Display(data map[string]any, metadata map[string]any, id string, update bool) {
	if c := p.s.route(); c != nil {
		c.io.Display(data, metadata, id, update)
		return
	}
	fmt.Fprintln(p.s.opt.Stdout, display.TextOf(data))
}

func (p publisher) ClearOutput(wait bool) {
	if c := p.s.route(); c != nil {
		c.io.ClearOutput(wait)
	}
}

func (p publisher) Context() context.Context { return p.s.cellContext() }

// writerIO is the IO of Execute(…, nil): output to writers, no input.
type writerIO struct{ out, err io.Writer }

func (w *writerIO) Stream(name, text string) {
	if name == "stderr" {
		io.WriteString(w.err, text)
		return
	}
	io.WriteString(w.out, text)
}

func (w *writerIO) Display(data map[string]any, _ map[string]any, _ string, _ bool) {
	fmt.Fprintln(w.out, display.TextOf(data))
}

func (w *writerIO) ClearOutput(bool) {}

func (w *writerIO) Input(string, bool) (string, error) {
	return "", fmt.Errorf("stdin: no input available")
}

// stdinReader is os.Stdin and the source of fmt.Scan* in cells: each line comes from the
// running cell's IO.Input. It is an io.RuneScanner so fmt's scanners lose nothing.
type stdinReader struct {
	s    *Session
	mu   sync.Mutex
	buf  []byte // rest of the current line, with its newline
	last int    // size of the last rune read, for UnreadRune (-1: none)
	done []byte // the consumed part of the current line (for UnreadRune)
}

// newCell drops input left over from the previous cell.
func (r *stdinReader) newCell() {
	r.mu.Lock()
	r.buf, r.done, r.last = nil, nil, -1
	r.mu.Unlock()
}

// fill reads a line through IO.Input when the buffer is empty; r.mu is held.
func (r *stdinReader) fill() error {
	if len(r.buf) > 0 {
		return nil
	}
	c := r.s.cur.Load()
	if c == nil {
		return io.EOF
	}
	type answer struct {
		line string
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		line, err := c.io.Input("", false)
		ch <- answer{line, err}
	}()
	select {
	case a := <-ch:
		if a.err != nil {
			return a.err
		}
		r.buf = append([]byte(a.line), '\n')
		r.done = r.done[:0]
		return nil
	case <-c.ctx.Done():
		return fmt.Errorf("stdin: %w", c.ctx.Err())
	}
}

func (r *stdinReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.fill(); err != nil {
		return 0, err
	}
	n := copy(p, r.buf)
	r.done = append(r.done, r.buf[:n]...)
	r.buf = r.buf[n:]
	r.last = -1
	return n, nil
}

// ReadRune implements io.RuneReader.
func (r *stdinReader) ReadRune() (rune, int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.fill(); err != nil {
		return 0, 0, err
	}
	ch, n := utf8.DecodeRune(r.buf)
	r.done = append(r.done, r.buf[:n]...)
	r.buf = r.buf[n:]
	r.last = n
	return ch, n, nil
}

// UnreadRune implements io.RuneScanner.
func (r *stdinReader) UnreadRune() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last <= 0 || len(r.done) < r.last {
		return fmt.Errorf("stdin: UnreadRune without ReadRune")
	}
	k := len(r.done) - r.last
	r.buf = append(append([]byte{}, r.done[k:]...), r.buf...)
	r.done = r.done[:k]
	r.last = -1
	return nil
}

// evalAlive reports whether an evaluation goroutine with the given label is still running:
// the goroutine yaegi's ExecuteWithContext started carries the labels of the goroutine that
// called it, and its stack holds ExecuteWithContext's closure.
func evalAlive(label string) bool {
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 1); err != nil {
		return false
	}
	want := `"qwengo_eval":"` + label + `"`
	for _, rec := range strings.Split(b.String(), "\n\n") {
		if strings.Contains(rec, want) && strings.Contains(rec, "interp.(*Interpreter).ExecuteWithContext.func") {
			return true
		}
	}
	return false
}

// scopeSymbols reaches the symbol map of the interpreter's main package scope. yaegi keeps a
// type's first definition when a later cell redefines it (nodeType looks the name up first);
// removing the old symbol before the new declaration is compiled makes redefinition work.
// It depends on yaegi v0.16.1's unexported fields (Interpreter.scopes, scope.sym) and reports
// false if they are not there.
func scopeSymbols(in *interp.Interpreter) (reflect.Value, bool) {
	v := reflect.ValueOf(in).Elem().FieldByName("scopes")
	if !v.IsValid() || v.Kind() != reflect.Map {
		return reflect.Value{}, false
	}
	sc := v.MapIndex(reflect.ValueOf("main"))
	if !sc.IsValid() || sc.Kind() != reflect.Pointer || sc.IsNil() {
		return reflect.Value{}, false
	}
	sym := sc.Elem().FieldByName("sym")
	if !sym.IsValid() || sym.Kind() != reflect.Map || !sym.CanAddr() {
		return reflect.Value{}, false
	}
	return reflect.NewAt(sym.Type(), unsafe.Pointer(sym.UnsafeAddr())).Elem(), true
}

// forgetTypes removes the given names from the main scope and returns a function that puts
// the old symbols back (for when the new declarations fail to compile).
func forgetTypes(in *interp.Interpreter, names []string) (restore func(), ok bool) {
	m, ok := scopeSymbols(in)
	if !ok {
		return func() {}, false
	}
	saved := map[string]reflect.Value{}
	for _, n := range names {
		k := reflect.ValueOf(n)
		if old := m.MapIndex(k); old.IsValid() {
			saved[n] = old
			m.SetMapIndex(k, reflect.Value{})
		}
	}
	return func() {
		for n, old := range saved {
			m.SetMapIndex(reflect.ValueOf(n), old)
		}
	}, true
}

// packageNames maps the package names compiled packages are known by to their import paths;
// for names shared by several packages (rand), the shortest path wins.
func (s *Session) packageNames() map[string]string {
	out := map[string]string{}
	add := func(key string) {
		p, name := path.Dir(key), path.Base(key)
		if p == "." || strings.HasPrefix(p, "qwengo/internal") || strings.Contains(p, "traefik/yaegi") {
			return
		}
		if old, ok := out[name]; !ok || len(p) < len(old) {
			out[name] = p
		}
	}
	for k := range stdlib.Symbols {
		add(k)
	}
	for _, t := range s.symbolTables() {
		for k := range t {
			add(k)
		}
	}
	return out
}

// exportsOf returns the compiled symbols of an import path.
func (s *Session) exportsOf(importPath string) map[string]reflect.Value {
	key := importPath + "/" + path.Base(importPath)
	for _, t := range s.symbolTables() {
		if m, ok := t[key]; ok {
			return m
		}
	}
	if m, ok := stdlib.Symbols[key]; ok {
		return m
	}
	return nil
}

// pngBase64 encodes bytes for a bundle.
func pngBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
