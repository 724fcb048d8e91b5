package main

import (
	"context"
	"errors"
	"log"
	"os"
	"path/filepath"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/kernel"
	"github.com/qwengo/qwengo/kernel/session"
)

// interp adapts *session.Session (the yaegi session shared with the
// console) to kernel.Interpreter: the two packages keep their own result,
// error and history types so that neither depends on the other.
type interp struct{ s *session.Session }

// newInterpreter starts the session; the input history is kept in the
// user's data dir (QWENGO_HISTORY overrides, "" disables) so history_request
// and %history see earlier sessions.
func newInterpreter(logger *log.Logger) (kernel.Interpreter, error) {
	kernel.DeviceName = deviceBanner
	engine.DefaultProgress = cellProgress()
	opt := session.Options{Stdout: logger.Writer(), Stderr: logger.Writer(), Args: []string{"qwenkernel"}}
	if f, ok := os.LookupEnv("QWENGO_HISTORY"); ok {
		opt.HistoryFile = f
	} else if dir, err := os.UserConfigDir(); err == nil {
		opt.HistoryFile = filepath.Join(dir, "qwengo", "kernel_history.jsonl")
		if err := os.MkdirAll(filepath.Dir(opt.HistoryFile), 0o755); err != nil {
			logger.Printf("history not kept across sessions: %v", err)
			opt.HistoryFile = ""
		}
	}
	s, err := session.New(opt)
	if err != nil {
		return nil, err
	}
	return interp{s}, nil
}

func (i interp) Execute(ctx context.Context, code string, io kernel.IO) (*kernel.Result, error) {
	return i.ExecuteWith(ctx, code, io, kernel.ExecOptions{StoreHistory: true})
}

func (i interp) ExecuteWith(ctx context.Context, code string, io kernel.IO, opt kernel.ExecOptions) (*kernel.Result, error) {
	res, err := i.s.ExecuteWith(ctx, code, io, session.ExecOptions{NoHistory: !opt.StoreHistory})
	var out *kernel.Result
	if res != nil {
		out = &kernel.Result{Data: res.Data, Duration: res.Duration, PeakDeviceBytes: res.PeakDeviceBytes}
	}
	var ce *session.CellError
	if errors.As(err, &ce) {
		return out, &kernel.CellError{Name: ce.Name, Value: ce.Value, Traceback: ce.Traceback}
	}
	return out, err
}

func (i interp) Interrupt() { i.s.Interrupt() }

func (i interp) Complete(code string, cursor int) kernel.Completion {
	c := i.s.Complete(code, cursor)
	return kernel.Completion{Matches: c.Matches, Start: c.Start, End: c.End, Metadata: c.Metadata}
}

func (i interp) Inspect(code string, cursor, detail int) (map[string]string, bool) {
	return i.s.Inspect(code, cursor, detail)
}

func (i interp) IsComplete(code string) (string, string) { return i.s.IsComplete(code) }

func (i interp) History() kernel.History {
	if h := i.s.History(); h != nil {
		return history{h}
	}
	return nil
}

type history struct{ h *session.History }

func entries(es []session.HistoryEntry) []kernel.HistoryEntry {
	out := make([]kernel.HistoryEntry, len(es))
	for j, e := range es {
		out[j] = kernel.HistoryEntry{Session: e.Session, Line: e.Line, Input: e.Input}
	}
	return out
}

func (h history) Tail(n int) []kernel.HistoryEntry { return entries(h.h.Tail(n)) }

func (h history) Range(sess, start, stop int) []kernel.HistoryEntry {
	return entries(h.h.Range(sess, start, stop))
}

func (h history) Search(pattern string, n int, unique bool) []kernel.HistoryEntry {
	return entries(h.h.Search(pattern, n, unique))
}
