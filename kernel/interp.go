package kernel

import (
	"context"
	"strings"
	"time"
)

// Interpreter is the language side of the kernel: everything the dispatcher
// needs from the Go interpreter session. kernel/session implements it (an
// adapter in cmd/qwenkernel converts its concrete types); tests use a fake.
// The dispatcher serialises Execute calls; Interrupt, Complete, Inspect,
// IsComplete and History may be called while Execute runs.
type Interpreter interface {
	// Execute runs one cell and records it in the history. Output goes
	// to io while the cell runs. A failure of the cell (compile error,
	// panic, interruption) is returned as a *CellError; any other error is
	// reported the same way with a generic name.
	Execute(ctx context.Context, code string, io IO) (*Result, error)
	// Interrupt stops the running cell as soon as possible (ctx is
	// cancelled as well). The kernel calls it once per interrupt; an
	// interpreter stuck in a compiled call that ignores cancellation
	// should say so on the cell's stderr and give up the cell on the
	// second call.
	Interrupt()
	// Complete returns completions at byte offset cursor of code.
	Complete(code string, cursor int) Completion
	// Inspect returns a MIME bundle describing the symbol at byte offset
	// cursor; detail is 0 or 1.
	Inspect(code string, cursor, detail int) (data map[string]string, found bool)
	// IsComplete classifies code as "complete", "incomplete" (with the
	// indent for the next line), "invalid" or "unknown".
	IsComplete(code string) (status, indent string)
	// History returns the input history (nil: none kept).
	History() History
}

// IO is where a running cell sends its side effects. The kernel implements
// it once per execute_request; it stays valid after the cell returns (output
// from goroutines the cell started still reaches the notebook, attached to
// that cell's request). All methods are safe for concurrent use.
type IO interface {
	// Stream appends text to "stdout" or "stderr".
	Stream(name, text string)
	// Display publishes a MIME bundle (display_data), or with update
	// replaces the output with transient display_id (update_display_data).
	Display(data map[string]any, metadata map[string]any, displayID string, update bool)
	// ClearOutput clears the cell's output (wait: when the next output
	// arrives).
	ClearOutput(wait bool)
	// Input asks the front-end for a line of input (input_request). It
	// fails with ErrStdinNotAllowed when the request did not allow stdin,
	// and with an error when the cell is interrupted while waiting.
	Input(prompt string, password bool) (string, error)
}

// ExecOptions modify one execution.
type ExecOptions struct {
	StoreHistory bool // count the cell and record it in the history
}

// OptionsExecutor is implemented by interpreters that can run a cell
// without counting or recording it (store_history false, silent). The
// kernel uses ExecuteWith when the interpreter has it, so that the
// interpreter's history line numbers stay equal to execution_count;
// otherwise every cell goes through Execute.
type OptionsExecutor interface {
	ExecuteWith(ctx context.Context, code string, io IO, opt ExecOptions) (*Result, error)
}

// Result is what a successful cell returns.
type Result struct {
	Data            map[string]any // MIME bundle of the trailing expression; nil if none
	Duration        time.Duration  // wall time of the cell (0: measured by the kernel)
	PeakDeviceBytes int64          // peak device memory during the cell (0: unknown)
}

// CellError is a failed cell: it becomes an error message and an
// execute_reply with status "error".
type CellError struct {
	Name      string   // ename, e.g. "CompileError", "panic", "Interrupted"
	Value     string   // evalue, one line
	Traceback []string // lines shown to the user (never nil in messages)
}

func (e *CellError) Error() string {
	if e.Value == "" {
		return e.Name
	}
	return e.Name + ": " + e.Value
}

// Completion is the answer to a complete_request, in byte offsets of the
// code (the kernel converts to the protocol's code points).
type Completion struct {
	Matches    []string
	Start, End int
	Metadata   map[string]any
}

// HistoryEntry is one input in the history: session number, line number
// (the execution count) and source.
type HistoryEntry struct {
	Session int
	Line    int
	Input   string
}

// History answers history_request.
type History interface {
	// Tail returns the last n entries, oldest first.
	Tail(n int) []HistoryEntry
	// Range returns the entries of session with start <= line < stop
	// (stop <= 0: to the end).
	Range(session, start, stop int) []HistoryEntry
	// Search returns entries whose input matches the glob pattern, at
	// most the last n (n <= 0: all), each input once when unique.
	Search(pattern string, n int, unique bool) []HistoryEntry
}

// DeviceName describes the engine's compute device for the kernel banner
// ("CPU", or a GPU model and its memory). The engine side sets it at start.
var DeviceName = func() string { return "CPU" }

// Version is the kernel implementation version reported in kernel_info.
var Version = "0.1.0"

// goVersion returns the Go version without the "go" prefix.
func goVersion(v string) string { return strings.TrimPrefix(v, "go") }
