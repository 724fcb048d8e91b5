package kernel

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// fake is a tiny line-oriented "language" for dispatcher tests. Each line
// is a command: print X, eprint X, lines N, captured X, result X, error,
// plainerror, panic, sleep D, stuck, input P, password P, display, update
// ID, displayid ID, clear, late, peak N.
type fake struct {
	mu         sync.Mutex
	interrupts int
	captured   func(name string, data []byte)
	release    chan struct{}
	history    []HistoryEntry
	executing  chan struct{} // receives a token when a cell starts
	opts       []ExecOptions
}

func newFake() *fake {
	return &fake{release: make(chan struct{}), executing: make(chan struct{}, 16)}
}

func (f *fake) ExecuteWith(ctx context.Context, code string, io IO, opt ExecOptions) (*Result, error) {
	f.mu.Lock()
	f.opts = append(f.opts, opt)
	f.mu.Unlock()
	return f.Execute(ctx, code, io)
}

func (f *fake) Execute(ctx context.Context, code string, io IO) (*Result, error) {
	f.mu.Lock()
	f.history = append(f.history, HistoryEntry{Session: 1, Line: len(f.history) + 1, Input: code})
	f.mu.Unlock()
	select {
	case f.executing <- struct{}{}:
	default:
	}
	res := &Result{}
	for _, line := range strings.Split(code, "\n") {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch cmd {
		case "":
		case "print":
			io.Stream("stdout", arg+"\n")
		case "eprint":
			io.Stream("stderr", arg+"\n")
		case "lines":
			n, _ := strconv.Atoi(arg)
			for i := 0; i < n; i++ {
				io.Stream("stdout", fmt.Sprintf("line %d\n", i))
			}
		case "captured":
			f.captured("stdout", []byte(arg+"\n"))
		case "result":
			res.Data = map[string]any{"text/plain": arg}
		case "error":
			return nil, &CellError{Name: "CompileError", Value: "1:1: " + arg, Traceback: []string{"cell:1:1: " + arg}}
		case "plainerror":
			return nil, errors.New("plain failure\nsecond line")
		case "panic":
			panic("fake interpreter bug")
		case "sleep":
			d, _ := time.ParseDuration(arg)
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		case "stuck": // a compiled call that ignores cancellation
			<-f.release
		case "input", "password":
			v, err := io.Input(arg, cmd == "password")
			if err != nil {
				return nil, &CellError{Name: "InputError", Value: err.Error()}
			}
			io.Stream("stdout", "got "+v+"\n")
		case "display":
			io.Display(map[string]any{"text/plain": "shown", "text/html": "<b>shown</b>"}, nil, "", false)
		case "displayid":
			io.Display(map[string]any{"text/plain": "v1"}, nil, arg, false)
		case "update":
			io.Display(map[string]any{"text/plain": "v2"}, nil, arg, true)
		case "clear":
			io.ClearOutput(false)
		case "late":
			go func() {
				time.Sleep(100 * time.Millisecond)
				io.Stream("stdout", "late output\n")
			}()
		case "peak":
			res.PeakDeviceBytes, _ = strconv.ParseInt(arg, 10, 64)
		case "nan":
			res.Data = map[string]any{"application/json": nanValue()}
		default:
			return nil, &CellError{Name: "UnknownCommand", Value: cmd}
		}
	}
	return res, nil
}

func nanValue() any { var z float64; return z / z }

func (f *fake) Interrupt() {
	f.mu.Lock()
	f.interrupts++
	f.mu.Unlock()
}

func (f *fake) Complete(code string, cursor int) Completion {
	if code == "boom" {
		panic("completion bug")
	}
	// Complete the word before cursor with two candidates.
	start := strings.LastIndexAny(code[:cursor], " .") + 1
	word := code[start:cursor]
	return Completion{Matches: []string{word + "ln", word + "f"}, Start: start, End: cursor}
}

func (f *fake) Inspect(code string, cursor, detail int) (map[string]string, bool) {
	if strings.Contains(code, "Println") {
		return map[string]string{"text/plain": fmt.Sprintf("func Println(a ...any) (detail %d, cursor %d)", detail, cursor)}, true
	}
	return nil, false
}

func (f *fake) IsComplete(code string) (string, string) {
	switch {
	case strings.HasSuffix(code, "{"):
		return "incomplete", "\t"
	case strings.HasPrefix(code, ")"):
		return "invalid", ""
	case code == "weird":
		return "maybe", ""
	}
	return "complete", ""
}

func (f *fake) History() History { return fakeHistory{f} }

type fakeHistory struct{ f *fake }

func (h fakeHistory) all() []HistoryEntry {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	return append([]HistoryEntry(nil), h.f.history...)
}

func (h fakeHistory) Tail(n int) []HistoryEntry {
	a := h.all()
	if n < len(a) {
		a = a[len(a)-n:]
	}
	return a
}

func (h fakeHistory) Range(session, start, stop int) []HistoryEntry {
	var out []HistoryEntry
	for _, e := range h.all() {
		if e.Session == session && e.Line >= start && (stop <= 0 || e.Line < stop) {
			out = append(out, e)
		}
	}
	return out
}

func (h fakeHistory) Search(pattern string, n int, unique bool) []HistoryEntry {
	var out []HistoryEntry
	for _, e := range h.all() {
		if strings.Contains(e.Input, strings.Trim(pattern, "*")) {
			out = append(out, e)
		}
	}
	return out
}
