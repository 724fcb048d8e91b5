// Package session is the Go interpreter session shared by the Jupyter kernel and the
// terminal console (the role of ipykernel's ipkernel.py): it runs cells with yaegi against the
// compiled engine, keeps state across cells, and answers completion, inspection, is-complete
// and history requests. The protocol lives in package kernel; output capture of file
// descriptors in kernel/capture; rich output in kernel/display.
//
// # Cells
//
// A cell is cut (go/scanner, go/parser) into top-level units: imports, declarations (func,
// method, type, var, const) and statements. yaegi cannot evaluate declarations and statements
// together (yaegi issue 1245), so imports are evaluated first, then runs of consecutive
// declarations and runs of consecutive statements in source order. Functions, variables,
// constants and types may be redefined by later cells (redefining a type drops its methods:
// re-run the cells that declare them). A pasted program works too: a package clause is
// ignored and a cell that declares func main() and has no statements runs main.
//
// Every position is the cell's own line:column: each unit is compiled behind a /*line*/
// directive naming the cell, and errors are rewritten ("3:5: undefined: x"; positions in
// other cells read "cell [4] 2:1").
//
// A trailing expression statement with one value becomes the result: its MIME bundle has
// text/plain (fmt's %v) and whatever the value offers through the methods documented in
// package display (HTML, Markdown, SVG, PNG, JPEG, JSON, LaTeX, MIME, or image.Image).
// Expressions without a value or with several (fmt.Println(…)) show nothing.
//
// Pre-imported in every session: fmt, os, math, strings, time, display and, when it exists,
// the engine façade (github.com/qwengo/qwengo/engine). Any standard library package (yaegi's
// Go 1.22 tables) and any engine package can be imported explicitly.
//
// # Output, input, context
//
// Interpreted prints (fmt.Print*, log, os.Stdout is left to the process: see kernel/capture)
// go to the running cell's IO.Stream; after the cell ended, to the most recent cell's IO.
// Reading os.Stdin or fmt.Scan* asks IO.Input for a line; an Input error fails the read with
// that error. display calls reach IO.Display and IO.ClearOutput.
//
// The running cell's context is display.Context() (and engine.CurrentContext, which engine
// calls honour): it is cancelled by Interrupt.
//
// # Interrupt
//
// Interrupt cancels the cell's context and stops the interpreter (yaegi stops interpreted
// loops and channel operations; time.Sleep in cells is replaced by a context-aware sleep).
// If the cell is inside a compiled call that ignores cancellation, the session says so on the
// cell's stderr after 2 s ("still running a compiled call that ignores cancellation") and keeps
// waiting for it, because the interpreter cannot run two cells at once; a second Interrupt
// while waiting abandons that interpreter and starts a fresh one (cell state is lost, engine
// state is kept). Stopping the interpreter also ends interpreted goroutines that earlier
// cells started (yaegi cancels by generation).
//
// # Goroutines
//
// Every go statement in a cell is rewritten to run its call under a recover: a panic in a
// goroutine the cell started is reported on the running cell's stderr (or the next cell's, if
// no cell is running) with its traceback, and the process survives. The call's function and
// arguments are still evaluated when the go statement runs, except constant arguments and a
// sole call argument (which may be multi-valued), evaluated in the goroutine.
//
// # Magics
//
// Lines starting with % or ! at column 0 (outside open brackets) are magics: see Magics() and
// %help.
package session

import (
	"context"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qwengo/qwengo/kernel/display"
	"github.com/qwengo/qwengo/kernel/symbols"
	"github.com/traefik/yaegi/interp"
)

// Options configure a session.
type Options struct {
	// Stdout and Stderr receive interpreted output produced when no cell has run yet, and the
	// text of displays outside cells (default os.Stdout, os.Stderr).
	Stdout, Stderr io.Writer
	// HistoryFile, if set, keeps the input history across sessions (JSONL, one entry per line,
	// appended with one write each).
	HistoryFile string
	// Args is os.Args as cells see it (default os.Args); scripts read their flags from it.
	Args []string
	// Symbols adds compiled packages to the interpreter, in interp.Exports form
	// ("importpath/name" → symbol → value), for programs embedding the session and for tests.
	Symbols []map[string]map[string]reflect.Value
}

// IO is where a running cell sends its side effects; the kernel implements it per
// execute_request, the console once. Methods may be called from several goroutines.
type IO interface {
	// Stream appends text to "stdout" or "stderr".
	Stream(name, text string)
	// Display publishes a MIME bundle, or with update replaces the output with displayID.
	Display(data map[string]any, metadata map[string]any, displayID string, update bool)
	// ClearOutput clears the cell's output (wait: when the next output arrives).
	ClearOutput(wait bool)
	// Input asks for one line of input (without its newline).
	Input(prompt string, password bool) (string, error)
}

// Result is what a cell produced.
type Result struct {
	Data            map[string]any // MIME bundle of the trailing expression; nil if none
	Duration        time.Duration  // wall time of the cell
	PeakDeviceBytes int64          // the engine's peak accounted memory during the cell (0: none)
}

// ExecOptions modify one execution.
type ExecOptions struct {
	// NoHistory runs the cell without counting it or recording it in the history
	// (execute_request with store_history false).
	NoHistory bool
}

// Session is one interpreter and its bookkeeping. Execute calls are serialised; Interrupt,
// Complete, Inspect, IsComplete, History, Magics and ExecutionCount may be called at any time.
type Session struct {
	opt  Options
	hist *History

	mu    sync.Mutex // held while a cell (or Reset) runs
	in    *interp.Interpreter
	count atomic.Int64 // execution count
	seq   int          // cell sequence number (every Execute)

	cur  atomic.Pointer[cell] // the running cell
	last atomic.Pointer[cell] // the most recent cell

	namesMu sync.RWMutex
	decls   map[string]*declInfo // cell-defined top-level names
	imports map[string]string    // package name in cells → import path
	labels  map[int]string       // cell sequence → label "[5]"

	panicMu    sync.Mutex
	panicLines []string // yaegi's per-frame panic lines, waiting to be claimed
	pending    []string // goroutine panic reports waiting for the next cell

	stdin *stdinReader
	id    string // distinguishes this session's evaluation goroutines
}

// declInfo is what the session remembers of a cell-defined name, for completion and
// inspection.
type declInfo struct {
	kind  string // "func", "method", "type", "var", "const"
	decl  string // the declaration's source (functions without their body)
	doc   string
	label string // the cell that defined it
}

// cell is one execution.
type cell struct {
	seq, count int
	label      string
	io         IO
	src        string
	ctx        context.Context
	cancel     context.CancelFunc

	interrupted atomic.Bool
	hard        chan struct{} // closed by a second Interrupt
	hardOnce    sync.Once
}

var sessionIDs atomic.Int64

// New starts a session: an interpreter with the standard library, the engine packages and
// display, and the pre-imports. It fails only if the history file cannot be opened or the
// prelude does not compile.
func New(opt Options) (*Session, error) {
	if opt.Stdout == nil {
		opt.Stdout = os.Stdout
	}
	if opt.Stderr == nil {
		opt.Stderr = os.Stderr
	}
	if opt.Args == nil {
		opt.Args = os.Args
	}
	h, err := OpenHistory(opt.HistoryFile)
	if err != nil {
		return nil, err
	}
	s := &Session{
		opt:    opt,
		hist:   h,
		labels: map[int]string{},
		id:     fmt.Sprintf("s%d", sessionIDs.Add(1)),
	}
	s.stdin = &stdinReader{s: s}
	go symbols.Docs() // decode the documentation table before the first inspection needs it
	if err := s.reset(); err != nil {
		return nil, err
	}
	return s, nil
}

// History returns the input history.
func (s *Session) History() *History { return s.hist }

// ExecutionCount returns the execution count: the number of cells run with history (the
// running cell's number while it runs). The next such cell gets ExecutionCount()+1.
func (s *Session) ExecutionCount() int {
	return int(s.count.Load())
}

// Reset replaces the interpreter with a fresh one: cell-defined names and imports are gone,
// the history and the execution count stay, and compiled engine state (loaded models) is kept
// because it lives in Go packages. Goroutines started by earlier cells keep running on the old
// interpreter.
func (s *Session) Reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reset()
}

// reset builds the interpreter; s.mu is held (or the session is new).
func (s *Session) reset() error {
	in, err := s.newInterpreter()
	if err != nil {
		return err
	}
	s.in = in
	s.namesMu.Lock()
	s.decls = map[string]*declInfo{}
	s.imports = map[string]string{}
	for name, path := range preImports() {
		s.imports[name] = path
	}
	s.namesMu.Unlock()
	return nil
}

// Interrupt stops the running cell (no-op when none runs): its context is cancelled and the
// interpreter stopped. A second Interrupt while the session waits for a compiled call that
// ignores cancellation abandons the interpreter (see the package documentation).
func (s *Session) Interrupt() {
	c := s.cur.Load()
	if c == nil {
		return
	}
	if c.interrupted.Swap(true) {
		c.hardOnce.Do(func() { close(c.hard) })
		return
	}
	c.cancel()
}

// Execute runs a cell and records it in the history. Output goes to io (nil: the session's
// Stdout/Stderr, and no input). It always returns a Result; the error is a *CellError when the
// cell failed.
func (s *Session) Execute(ctx context.Context, code string, io IO) (*Result, error) {
	return s.ExecuteWith(ctx, code, io, ExecOptions{})
}

// ExecuteWith is Execute with options.
func (s *Session) ExecuteWith(ctx context.Context, code string, cio IO, o ExecOptions) (*Result, error) {
	if cio == nil {
		cio = &writerIO{out: s.opt.Stdout, err: s.opt.Stderr}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()

	s.seq++
	c := &cell{seq: s.seq, io: cio, src: code, hard: make(chan struct{})}
	c.label = "[-]"
	if !o.NoHistory {
		c.count = int(s.count.Add(1))
		c.label = fmt.Sprintf("[%d]", c.count)
		if strings.TrimSpace(code) != "" {
			if err := s.hist.AppendLine(c.count, code); err != nil {
				cio.Stream("stderr", "history: "+err.Error()+"\n")
			}
		}
	}
	s.namesMu.Lock()
	s.labels[c.seq] = c.label
	s.namesMu.Unlock()
	c.ctx, c.cancel = context.WithCancel(ctx)
	defer c.cancel()

	s.cur.Store(c)
	s.last.Store(c)
	defer s.cur.Store(nil)
	display.SetPublisher(publisher{s})
	engineHooks.setContext(s.cellContext)
	engineHooks.resetPeak()
	s.stdin.newCell()
	s.flushPending(c)
	s.takePanicLines() // stale lines from output after the previous cell

	data, err := s.runCell(c)
	res := &Result{Data: data, Duration: time.Since(start), PeakDeviceBytes: engineHooks.peak()}
	if err != nil {
		return res, err
	}
	return res, nil
}

// cellContext is the running cell's context, or Background.
func (s *Session) cellContext() context.Context {
	if c := s.cur.Load(); c != nil {
		return c.ctx
	}
	return context.Background()
}

// route returns where output goes now: the running cell, else the most recent one.
func (s *Session) route() *cell {
	if c := s.cur.Load(); c != nil {
		return c
	}
	return s.last.Load()
}

// errCtx gives positions for the cell.
func (s *Session) errCtx(c *cell) errorContext {
	s.namesMu.RLock()
	labels := make(map[int]string, len(s.labels))
	for k, v := range s.labels {
		labels[k] = v
	}
	s.namesMu.RUnlock()
	return errorContext{seq: c.seq, src: c.src, labels: labels}
}

// flushPending writes goroutine panic reports queued while no cell ran.
func (s *Session) flushPending(c *cell) {
	s.panicMu.Lock()
	p := s.pending
	s.pending = nil
	s.panicMu.Unlock()
	for _, msg := range p {
		c.io.Stream("stderr", msg)
	}
}

// takePanicLines claims yaegi's panic frame lines printed so far.
func (s *Session) takePanicLines() []string {
	s.panicMu.Lock()
	defer s.panicMu.Unlock()
	l := s.panicLines
	s.panicLines = nil
	return l
}

// report sends a message about a background event to the running cell's stderr, or queues
// it for the next cell (and writes it to the session's Stderr so it is never lost).
func (s *Session) report(msg string) {
	if c := s.cur.Load(); c != nil {
		c.io.Stream("stderr", msg)
		return
	}
	s.panicMu.Lock()
	s.pending = append(s.pending, msg)
	s.panicMu.Unlock()
	fmt.Fprint(s.opt.Stderr, msg)
}

// Names returns the names cells defined (functions, types, variables, constants; methods as
// "Type.Method"), sorted.
func (s *Session) Names() []string {
	s.namesMu.RLock()
	defer s.namesMu.RUnlock()
	out := make([]string, 0, len(s.decls))
	for k := range s.decls {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// goHeap describes the Go heap (the default memory report).
func goHeap() string {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return fmt.Sprintf("Go heap: %s in use, %s from the OS, %d GCs", human(int64(m.HeapAlloc)), human(int64(m.Sys)), m.NumGC)
}

func human(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// MemReport produces the %mem report. By default it reports the engine's accounted memory
// (engine.Memory: device, per category, peak, budget) when the engine is compiled in, and the
// Go heap. The program embedding the session (or the engine's guard) may replace it.
var MemReport = func() string {
	if s := engineHooks.memory(); s != "" {
		return s + "\n" + goHeap()
	}
	return goHeap()
}

// symbolTables returns every compiled package table the interpreter gets, besides the
// standard library.
func (s *Session) symbolTables() []map[string]map[string]reflect.Value {
	return append([]map[string]map[string]reflect.Value{symbols.Symbols}, s.opt.Symbols...)
}
