package session

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// fakeIO records everything a cell sends.
type fakeIO struct {
	mu       sync.Mutex
	stdout   strings.Builder
	stderr   strings.Builder
	displays []displayCall
	clears   []bool
	inputs   []string // answers for Input, consumed in order
	inputErr error    // returned when inputs run out (nil: io.EOF-like error)
	prompts  int
}

type displayCall struct {
	data   map[string]any
	meta   map[string]any
	id     string
	update bool
}

func (f *fakeIO) Stream(name, text string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name == "stderr" {
		f.stderr.WriteString(text)
		return
	}
	f.stdout.WriteString(text)
}

func (f *fakeIO) Display(data, meta map[string]any, id string, update bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.displays = append(f.displays, displayCall{data, meta, id, update})
}

func (f *fakeIO) ClearOutput(wait bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clears = append(f.clears, wait)
}

func (f *fakeIO) Input(prompt string, password bool) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prompts++
	if len(f.inputs) == 0 {
		if f.inputErr != nil {
			return "", f.inputErr
		}
		return "", errors.New("no more input")
	}
	s := f.inputs[0]
	f.inputs = f.inputs[1:]
	return s, nil
}

func (f *fakeIO) out() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stdout.String()
}

func (f *fakeIO) errOut() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stderr.String()
}

// run executes a cell with a fresh fakeIO.
func run(t *testing.T, s *Session, code string) (*fakeIO, *Result, *CellError) {
	t.Helper()
	f := &fakeIO{}
	res, err := s.Execute(context.Background(), code, f)
	if res == nil {
		t.Fatalf("Execute(%q) returned a nil Result", code)
	}
	var ce *CellError
	if err != nil && !errors.As(err, &ce) {
		t.Fatalf("Execute(%q): error %T %v is not a *CellError", code, err, err)
	}
	return f, res, ce
}

// mustRun executes a cell that must succeed.
func mustRun(t *testing.T, s *Session, code string) (*fakeIO, *Result) {
	t.Helper()
	f, res, ce := run(t, s, code)
	if ce != nil {
		t.Fatalf("cell %q failed: %v\n%s\nstderr: %s", code, ce, strings.Join(ce.Traceback, "\n"), f.errOut())
	}
	return f, res
}

func newSession(t *testing.T, opt Options) *Session {
	t.Helper()
	s, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func text(res *Result) string {
	if res == nil || res.Data == nil {
		return "<none>"
	}
	return fmt.Sprint(res.Data["text/plain"])
}
