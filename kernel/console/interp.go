package console

import (
	"context"
	"time"
)

// Interpreter is what the console drives: the in-process interpreter
// session (kernel/session, adapted in cmd/qwenrepl) or a running kernel
// reached over the messaging protocol (Remote). Execute calls are made one
// at a time; Interrupt may be called from another goroutine while Execute
// runs.
type Interpreter interface {
	// Execute runs one cell, sending its output to io while it runs. A
	// failed cell (compile error, panic, interruption) returns a
	// *CellError.
	Execute(ctx context.Context, code string, io IO) (*Result, error)
	// Interrupt stops the running cell (no-op when none runs).
	Interrupt()
	// Complete returns completions at byte offset cursor of code;
	// Start..End (byte offsets) is the text the matches replace.
	Complete(code string, cursor int) Completion
	// IsComplete classifies code as "complete", "incomplete" (with the
	// indent for the next line), "invalid" or "unknown".
	IsComplete(code string) (status, indent string)
}

// IO receives a running cell's side effects. Its method set is the same as
// kernel/session's IO, so the console's implementation is passed to the
// session as is.
type IO interface {
	// Stream writes text to "stdout" or "stderr".
	Stream(name, text string)
	// Display shows a MIME bundle; with update it replaces the display
	// with that id.
	Display(data, metadata map[string]any, displayID string, update bool)
	// ClearOutput clears the cell's output so far (wait: when the next
	// output arrives).
	ClearOutput(wait bool)
	// Input reads a line from the user (password: without echo).
	Input(prompt string, password bool) (string, error)
}

// Result is a successful cell.
type Result struct {
	Data            map[string]any // MIME bundle of the trailing expression; nil if none
	Duration        time.Duration  // wall time of the cell
	PeakDeviceBytes int64          // peak device memory during the cell (0: unknown)
}

// CellError is a failed cell.
type CellError struct {
	Name      string   // e.g. "CompileError", "panic", "Interrupted"
	Value     string   // one line
	Traceback []string // lines shown to the user
}

func (e *CellError) Error() string {
	if e.Value == "" {
		return e.Name
	}
	return e.Name + ": " + e.Value
}

// Completion is a completion answer in byte offsets of the code.
type Completion struct {
	Matches    []string
	Start, End int
}
