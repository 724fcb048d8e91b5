package main

import (
	"context"
	"errors"
	"io"
	"reflect"

	"github.com/qwengo/qwengo/kernel/console"
	"github.com/qwengo/qwengo/kernel/session"
)

// sessionInterp adapts the in-process interpreter session to the console's
// Interpreter (the console's IO has session.IO's method set).
type sessionInterp struct{ s *session.Session }

// newSession starts an interpreter session; args is os.Args as cells see it
// (nil: the process's).
func newSession(stdout, stderr io.Writer, historyFile string, args []string) (*sessionInterp, error) {
	s, err := session.New(session.Options{Stdout: stdout, Stderr: stderr, HistoryFile: historyFile, Args: args,
		Symbols: []map[string]map[string]reflect.Value{Symbols}})
	if err != nil {
		return nil, err
	}
	return &sessionInterp{s}, nil
}

func (a *sessionInterp) Execute(ctx context.Context, code string, io console.IO) (*console.Result, error) {
	res, err := a.s.Execute(ctx, code, io)
	if err != nil {
		var ce *session.CellError
		if errors.As(err, &ce) {
			return nil, &console.CellError{Name: ce.Name, Value: ce.Value, Traceback: ce.Traceback}
		}
		return nil, err
	}
	if res == nil {
		return &console.Result{}, nil
	}
	return &console.Result{Data: res.Data, Duration: res.Duration, PeakDeviceBytes: res.PeakDeviceBytes}, nil
}

func (a *sessionInterp) Interrupt() { a.s.Interrupt() }

func (a *sessionInterp) Complete(code string, cursor int) console.Completion {
	c := a.s.Complete(code, cursor)
	return console.Completion{Matches: c.Matches, Start: c.Start, End: c.End}
}

func (a *sessionInterp) IsComplete(code string) (string, string) { return a.s.IsComplete(code) }
