package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"

	"github.com/peterh/liner"
)

// LineReader is the line editor the console reads from. *liner.State
// implements it; tests use a scripted fake. Prompt returns
// liner.ErrPromptAborted for Ctrl-C and io.EOF for Ctrl-D on an empty line.
type LineReader interface {
	Prompt(prompt string) (string, error)
	PromptWithSuggestion(prompt, text string, pos int) (string, error)
	PasswordPrompt(prompt string) (string, error)
	AppendHistory(item string)
	ReadHistory(r io.Reader) (int, error)
	WriteHistory(w io.Writer) (int, error)
}

// Options configure a Console.
type Options struct {
	// Interp runs the cells (required).
	Interp Interpreter
	// Lines is the line editor; nil opens a liner terminal on stdin/stdout
	// for the duration of Run.
	Lines LineReader
	// Out and Err receive cell output and console messages (default
	// os.Stdout, os.Stderr).
	Out, Err io.Writer
	// HistoryFile keeps the input history across runs ("" keeps none).
	// It is read at start and rewritten (atomically) after every input.
	HistoryFile string
	// Banner is printed once at start.
	Banner string
	// Chat provides chat mode (nil: the provider given to RegisterChat,
	// else `:chat` answers ErrNoChat).
	Chat ChatProvider
	// HandleSignals makes Run catch SIGINT and turn it into Interrupt (a
	// terminal console wants this; tests drive Interrupt directly).
	HandleSignals bool
	// ForceExit is called after repeated Ctrl-C when a cell ignores the
	// interrupt (default: restore the terminal and exit with status 130).
	ForceExit func()
	// StartChat starts in chat mode, as `:chat ARG` would (ARG may be empty: the provider's
	// default model); :go returns to the Go prompt.
	StartChat bool
	ChatArg   string
}

// Console is an interactive read-eval-print loop over an Interpreter, with a
// chat mode over a Chatter. Create it with New and call Run.
type Console struct {
	opt   Options
	lines LineReader
	out   *trackWriter
	err   io.Writer

	count   int    // execution count of the next cell
	pending string // lines of the cell being entered (for completion)

	chatMode bool
	chat     Chatter
	quit     bool // the interpreter is gone (a remote kernel died)

	mu        sync.Mutex
	running   bool // a cell or chat turn is running
	cancel    context.CancelFunc
	inCell    bool // the running thing is a Go cell (Interrupt the interpreter too)
	interrupt int  // interrupts received by the running cell
}

// New returns a console; see Options.
func New(opt Options) *Console {
	if opt.Out == nil {
		opt.Out = os.Stdout
	}
	if opt.Err == nil {
		opt.Err = os.Stderr
	}
	return &Console{opt: opt, out: &trackWriter{w: opt.Out, nl: true}, err: opt.Err, count: 1}
}

// trackWriter remembers whether the last byte written was a newline, so the
// console can start its prompts and results on a fresh line.
type trackWriter struct {
	mu sync.Mutex
	w  io.Writer
	nl bool
}

func (t *trackWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(p) > 0 {
		t.nl = p[len(p)-1] == '\n'
	}
	return t.w.Write(p)
}

// freshLine writes a newline unless the output already ends with one.
func (t *trackWriter) freshLine() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.nl {
		t.w.Write([]byte("\n"))
		t.nl = true
	}
}

// Run reads and executes input until Ctrl-D (or :quit). It returns an error
// only when the terminal fails.
func (c *Console) Run() error {
	if c.opt.Interp == nil {
		return errors.New("console: no interpreter")
	}
	c.lines = c.opt.Lines
	if c.lines == nil {
		st := liner.NewLiner()
		defer st.Close()
		st.SetCtrlCAborts(true)
		st.SetTabCompletionStyle(liner.TabPrints)
		st.SetWordCompleter(c.complete)
		c.lines = st
		if c.opt.ForceExit == nil {
			c.opt.ForceExit = func() { st.Close(); os.Exit(130) }
		}
	}
	c.loadHistory()
	if c.opt.HandleSignals {
		sig := make(chan os.Signal, 4)
		signal.Notify(sig, os.Interrupt)
		defer signal.Stop(sig)
		go func() {
			for range sig {
				c.Interrupt()
			}
		}()
	}
	if c.opt.Banner != "" {
		fmt.Fprintln(c.out, c.opt.Banner)
	}
	if c.opt.StartChat {
		c.startChat(c.opt.ChatArg)
	}
	for {
		done, err := c.step()
		if err != nil {
			return err
		}
		if done {
			c.out.freshLine()
			return nil
		}
	}
}

// Complete is the tab completer for the line being edited: line is the
// current line, pos the cursor in runes. It asks the interpreter about the
// whole cell entered so far. Its signature is liner.WordCompleter.
func (c *Console) complete(line string, pos int) (head string, completions []string, tail string) {
	if c.chatMode {
		return line, nil, ""
	}
	r := []rune(line)
	if pos < 0 || pos > len(r) {
		pos = len(r)
	}
	cur := len(string(r[:pos]))
	code := c.pending + line
	comp := c.opt.Interp.Complete(code, len(c.pending)+cur)
	start, end := comp.Start-len(c.pending), comp.End-len(c.pending)
	if len(comp.Matches) == 0 || start < 0 || start > cur || end < start || end > len(line) {
		return line[:cur], nil, line[cur:]
	}
	return line[:start], comp.Matches, line[end:]
}

// prompts returns the main and continuation prompts for the next cell.
func (c *Console) prompts() (main, cont string) {
	main = fmt.Sprintf("In [%d]: ", c.count)
	return main, strings.Repeat(" ", len(main)-len("...: ")) + "...: "
}

// step reads and runs one input. done is true at end of input.
func (c *Console) step() (done bool, err error) {
	if c.chatMode {
		return c.chatStep()
	}
	c.out.freshLine()
	mainP, contP := c.prompts()
	c.pending = ""
	var lines []string
	blank := 0
	for {
		var line string
		var err error
		if len(lines) == 0 {
			line, err = c.lines.Prompt(mainP)
		} else {
			_, indent := c.opt.Interp.IsComplete(strings.Join(lines, "\n") + "\n")
			indent = strings.ReplaceAll(indent, "\t", "    ")
			line, err = c.lines.PromptWithSuggestion(contP, indent, -1)
		}
		switch {
		case errors.Is(err, liner.ErrPromptAborted):
			c.pending = ""
			return false, nil // Ctrl-C: drop the cell, new prompt
		case errors.Is(err, io.EOF):
			if len(lines) > 0 {
				// Ctrl-D inside a cell drops the cell; at the prompt it exits.
				fmt.Fprintln(c.out)
				c.pending = ""
				return false, nil
			}
			return true, nil
		case err != nil:
			return true, fmt.Errorf("console: read input: %w", err)
		}
		if len(lines) == 0 {
			t := strings.TrimSpace(line)
			if t == "" {
				return false, nil
			}
			if strings.HasPrefix(t, ":") {
				c.lines.AppendHistory(t)
				c.saveHistory()
				return c.command(t), nil
			}
		}
		lines = append(lines, line)
		c.pending = strings.Join(lines, "\n") + "\n"
		if strings.TrimSpace(line) == "" {
			blank++
		} else {
			blank = 0
		}
		code := strings.Join(lines, "\n")
		status, _ := c.opt.Interp.IsComplete(code)
		if status != "incomplete" || blank >= 2 {
			break
		}
	}
	c.pending = ""
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			c.lines.AppendHistory(l)
		}
	}
	c.saveHistory()
	c.execute(strings.TrimRight(strings.Join(lines, "\n"), " \t\n"))
	return c.quit, nil
}

// execute runs one cell and prints its result or error.
func (c *Console) execute(code string) {
	n := c.count
	c.count++
	ctx, cancel := context.WithCancel(context.Background())
	c.setRunning(cancel, true)
	res, err := c.opt.Interp.Execute(ctx, code, &termIO{c: c})
	c.setRunning(nil, false)
	cancel()
	if err != nil {
		c.out.freshLine()
		printError(c.err, err)
		if errors.Is(err, ErrKernelDied) {
			c.quit = true
		}
		return
	}
	if res == nil {
		return
	}
	if text := RenderBundle(res.Data); text != "" {
		c.out.freshLine()
		prefix := fmt.Sprintf("Out[%d]: ", n)
		if strings.Contains(strings.TrimRight(text, "\n"), "\n") {
			prefix += "\n"
		}
		fmt.Fprint(c.out, prefix+strings.TrimRight(text, "\n")+"\n")
	}
}

// printError writes a cell error: its traceback when it has one, else its
// name and value.
func printError(w io.Writer, err error) {
	var ce *CellError
	if errors.As(err, &ce) {
		if len(ce.Traceback) > 0 {
			fmt.Fprintln(w, strings.TrimRight(strings.Join(ce.Traceback, "\n"), "\n"))
			return
		}
		fmt.Fprintln(w, ce.Error())
		return
	}
	fmt.Fprintln(w, "error:", err)
}

func (c *Console) setRunning(cancel context.CancelFunc, cell bool) {
	c.mu.Lock()
	c.running = cancel != nil
	c.cancel = cancel
	c.inCell = cell
	c.interrupt = 0
	c.mu.Unlock()
}

// Interrupt stops the running cell (the interpreter's Interrupt and the
// cell's context) or chat reply. With nothing running it does nothing: at
// the prompt, Ctrl-C is handled by the line editor. When a cell keeps
// running through repeated interrupts, the third says so and the fourth
// calls Options.ForceExit.
func (c *Console) Interrupt() {
	c.mu.Lock()
	if !c.running {
		c.mu.Unlock()
		return
	}
	c.interrupt++
	n, cell, cancel := c.interrupt, c.inCell, c.cancel
	c.mu.Unlock()
	// The interpreter first, then the context: a Remote sends one
	// interrupt_request for both.
	if cell {
		c.opt.Interp.Interrupt()
	}
	if cancel != nil {
		cancel()
	}
	switch {
	case n == 3:
		c.out.freshLine()
		fmt.Fprintln(c.err, "the cell ignores interrupts (a compiled call that does not check its context?); press Ctrl-C once more to quit qwenrepl")
	case n >= 4 && c.opt.ForceExit != nil:
		fmt.Fprintln(c.err, "quitting: the running cell did not stop")
		c.opt.ForceExit()
	}
}

// ConsoleHelp is printed by :help.
const ConsoleHelp = `Go console (the same interpreter session as the notebook kernel).
  Enter runs the cell once it is complete; an open brace continues on the next line
  (two empty lines run an unfinished cell anyway, to see the error).
  Tab completes; Up/Down and Ctrl-R search the history; Ctrl-C clears the line or
  interrupts a running cell; Ctrl-D exits.
  %help lists the magics (%time, %env, %reset, %mem, !cmd, ...).
console commands:
  :chat [MODEL]   chat with the loaded model (MODEL: a path to load first)
  :go             back to Go input from chat mode
  :help           this text
  :quit           leave (Ctrl-D does the same)`

// command runs a console command (input starting with ':').
func (c *Console) command(t string) (done bool) {
	cmd, arg, _ := strings.Cut(t, " ")
	arg = strings.TrimSpace(arg)
	switch cmd {
	case ":quit", ":exit", ":q":
		return true
	case ":help", ":h", ":?":
		io.WriteString(c.out, ConsoleHelp+"\n")
	case ":go":
		if !c.chatMode {
			fmt.Fprintln(c.out, "already in Go mode")
		}
		c.chatMode = false
	case ":chat":
		c.startChat(arg)
	default:
		fmt.Fprintf(c.err, "unknown console command %s (:help lists them)\n", cmd)
	}
	return false
}

func (c *Console) startChat(arg string) {
	if c.chat != nil && arg == "" {
		c.chatMode = true
		fmt.Fprintln(c.out, "chat mode (conversation kept; /help for commands, :go for Go)")
		return
	}
	p := c.opt.Chat
	if p == nil {
		p = registeredChat()
	}
	if p == nil {
		fmt.Fprintln(c.err, ErrNoChat)
		return
	}
	ch, err := p(arg)
	if err != nil {
		fmt.Fprintln(c.err, err)
		return
	}
	if ch == nil {
		fmt.Fprintln(c.err, ErrNoChat)
		return
	}
	c.chat, c.chatMode = ch, true
	fmt.Fprintln(c.out, "chat mode: type a message; /help for commands, :go for Go")
}

// chatStep reads and handles one line in chat mode.
func (c *Console) chatStep() (done bool, err error) {
	c.out.freshLine()
	line, err := c.lines.Prompt("chat> ")
	switch {
	case errors.Is(err, liner.ErrPromptAborted):
		return false, nil
	case errors.Is(err, io.EOF):
		return true, nil
	case err != nil:
		return true, fmt.Errorf("console: read input: %w", err)
	}
	t := strings.TrimSpace(line)
	if t == "" {
		return false, nil
	}
	c.lines.AppendHistory(t)
	c.saveHistory()
	switch {
	case strings.HasPrefix(t, ":"):
		return c.command(t), nil
	case strings.HasPrefix(t, "//"):
		t = t[1:]
	case strings.HasPrefix(t, "/"):
		msg, err := ChatCommand(c.chat, t)
		if err != nil {
			fmt.Fprintln(c.err, err)
		} else if msg != "" {
			fmt.Fprintln(c.out, msg)
		}
		return false, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.setRunning(cancel, false)
	_, err = chatTurn(ctx, c.chat, t, c.out)
	c.setRunning(nil, false)
	interrupted := ctx.Err() != nil
	cancel()
	switch {
	case interrupted:
		fmt.Fprintln(c.err, "(reply interrupted)")
	case err != nil:
		fmt.Fprintln(c.err, "chat:", err)
	}
	return false, nil
}

// loadHistory reads the history file into the line editor (a missing file
// is a first run, not an error).
func (c *Console) loadHistory() {
	if c.opt.HistoryFile == "" {
		return
	}
	f, err := os.Open(c.opt.HistoryFile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(c.err, "history: %v\n", err)
		}
		return
	}
	defer f.Close()
	if _, err := c.lines.ReadHistory(f); err != nil {
		fmt.Fprintf(c.err, "history %s: %v\n", c.opt.HistoryFile, err)
	}
}

// saveHistory rewrites the history file atomically (temp file + rename in
// the same directory). A failure is reported once per run, not fatal.
func (c *Console) saveHistory() {
	if c.opt.HistoryFile == "" {
		return
	}
	if err := writeHistory(c.opt.HistoryFile, c.lines); err != nil {
		fmt.Fprintf(c.err, "history: %v (history will not be kept)\n", err)
		c.opt.HistoryFile = ""
	}
}

func writeHistory(path string, lr LineReader) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".history-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := lr.WriteHistory(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// DefaultHistoryFile is $XDG_STATE_HOME/qwengo/history, or
// ~/.local/state/qwengo/history when XDG_STATE_HOME is unset; "" when
// neither can be determined.
func DefaultHistoryFile() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "qwengo", "history")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return ""
	}
	return filepath.Join(home, ".local", "state", "qwengo", "history")
}

// termIO is the IO of a cell run by the console: streams and displays go
// to the terminal, input is read with the line editor.
type termIO struct{ c *Console }

func (t *termIO) Stream(name, text string) {
	if name == "stderr" {
		t.c.out.mu.Lock() // keep ordering with stdout writes
		io.WriteString(t.c.err, text)
		t.c.out.mu.Unlock()
		return
	}
	io.WriteString(t.c.out, text)
}

func (t *termIO) Display(data, metadata map[string]any, displayID string, update bool) {
	text := RenderBundle(data)
	if text == "" {
		return
	}
	t.c.out.freshLine()
	io.WriteString(t.c.out, strings.TrimRight(text, "\n")+"\n")
}

func (t *termIO) ClearOutput(wait bool) {}

func (t *termIO) Input(prompt string, password bool) (string, error) {
	// The line editor refuses prompts with control characters: print
	// everything up to the last newline, prompt with the rest.
	if i := strings.LastIndexByte(prompt, '\n'); i >= 0 {
		io.WriteString(t.c.out, prompt[:i+1])
		prompt = prompt[i+1:]
	} else {
		t.c.out.freshLine()
	}
	prompt = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return -1
		}
		return r
	}, prompt)
	var s string
	var err error
	if password {
		s, err = t.c.lines.PasswordPrompt(prompt)
	} else {
		s, err = t.c.lines.Prompt(prompt)
	}
	switch {
	case errors.Is(err, liner.ErrPromptAborted):
		go t.c.Interrupt()
		return "", errors.New("input interrupted")
	case errors.Is(err, io.EOF):
		return "", io.EOF
	case err != nil:
		return "", fmt.Errorf("input: %w", err)
	}
	return s, nil
}
