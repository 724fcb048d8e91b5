package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"go/scanner"
	"go/token"
	"io"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/qwengo/qwengo/kernel/cli"
	"github.com/qwengo/qwengo/kernel/console"
)

// prepareScript accepts two forms: a cell (statements and declarations, no
// package clause) and a `package main` file. The session runs both: it drops
// a package clause and, for a cell that declares func main and has no
// statements, calls main. Here a package clause other than main is refused
// and a leading "#!" line becomes a comment, so a script can be made
// executable; positions (line:column) are unchanged.
func prepareScript(name string, src []byte) (string, error) {
	b := []byte(string(src))
	if len(b) >= 2 && b[0] == '#' && b[1] == '!' {
		b[0], b[1] = '/', '/'
	}
	fset := token.NewFileSet()
	file := fset.AddFile(name, -1, len(b))
	var s scanner.Scanner
	s.Init(file, b, nil, 0) // scan errors are the interpreter's to report
	pos, tok, _ := s.Scan()
	if tok == token.PACKAGE {
		npos, ntok, lit := s.Scan()
		if ntok != token.IDENT {
			return "", fmt.Errorf("%s: package clause without a name", fset.Position(npos))
		}
		if lit != "main" {
			return "", fmt.Errorf("%s: package %s: a script is a package main file or has no package clause", fset.Position(pos), lit)
		}
	}
	return string(b), nil
}

// runScript runs the script at path with args (see package doc for the
// exit statuses).
func runScript(path string, args []string, stdout, stderr io.Writer) int {
	src, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "qwenrepl: %v\n", err)
		return cli.ExitError
	}
	code, err := prepareScript(path, src)
	if err != nil {
		fmt.Fprintf(stderr, "qwenrepl: %v\n", err)
		return cli.ExitError
	}
	return execCells(path, []string{code}, args, false, stdout, stderr)
}

// runCode runs a one-liner (qwenrepl -e).
func runCode(name, code string, args []string, printResult bool, stdout, stderr io.Writer) int {
	return execCells(name, []string{code}, args, printResult, stdout, stderr)
}

// execCells runs cells in a fresh session with the script's arguments set,
// stopping at the first failure.
func execCells(prog string, cells, args []string, printResult bool, stdout, stderr io.Writer) int {
	cli.SetArgs(prog, args)
	// os.Args as the script sees it, for scripts that use package flag.
	interp, err := newSession(stdout, stderr, "", append([]string{prog}, args...))
	if err != nil {
		fmt.Fprintf(stderr, "qwenrepl: start interpreter: %v\n", err)
		return cli.ExitError
	}
	var interrupted atomic.Bool
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt)
	defer signal.Stop(sig)
	go func() {
		for range sig {
			if interrupted.Swap(true) {
				fmt.Fprintln(stderr, "\nqwenrepl: interrupted twice, quitting")
				os.Exit(130)
			}
			interp.Interrupt()
		}
	}()
	sio := newScriptIO(stdout, stderr)
	for _, code := range cells {
		res, err := interp.Execute(context.Background(), code, sio)
		if status, ok := cli.TakeExit(); ok {
			// cli.Exit or MustParse: the message (if any) is printed already.
			return status
		}
		if interrupted.Load() {
			fmt.Fprintln(stderr, "qwenrepl: interrupted")
			return 130
		}
		if err != nil {
			printScriptError(stderr, prog, err)
			return cli.ExitError
		}
		if printResult && res != nil {
			if text := console.RenderBundle(res.Data); text != "" {
				sio.freshLine()
				fmt.Fprintln(stdout, strings.TrimRight(text, "\n"))
			}
		}
	}
	return cli.ExitOK
}

// posRe matches an error value that starts with the cell's line:column.
var posRe = regexp.MustCompile(`^[0-9]+:[0-9]+: `)

// printScriptError writes a failed cell's error: the traceback when there
// is one, else "prog: Name: Value". An error at a position of a script
// file is headed "FILE:LINE:COL: message", as go build writes it, so
// editors can jump to it.
func printScriptError(w io.Writer, prog string, err error) {
	var ce *console.CellError
	if errors.As(err, &ce) {
		tb := ce.Traceback
		if strings.HasSuffix(prog, ".go") && posRe.MatchString(ce.Value) {
			fmt.Fprintf(w, "%s:%s\n", prog, ce.Value)
			if len(tb) > 0 && strings.Contains(tb[0], ce.Value) {
				tb = tb[1:]
			}
			if len(tb) > 0 {
				fmt.Fprintln(w, strings.TrimRight(strings.Join(tb, "\n"), "\n"))
			}
			return
		}
		if len(tb) > 0 {
			fmt.Fprintln(w, strings.TrimRight(strings.Join(ce.Traceback, "\n"), "\n"))
			return
		}
		fmt.Fprintf(w, "%s: %s\n", prog, ce.Error())
		return
	}
	fmt.Fprintf(w, "%s: %v\n", prog, err)
}

// scriptIO is the IO of a script: output straight to stdout/stderr,
// displays as text, input read from stdin.
type scriptIO struct {
	mu       sync.Mutex
	out, err io.Writer
	nl       bool
	in       *bufio.Reader
}

func newScriptIO(out, err io.Writer) *scriptIO {
	return &scriptIO{out: out, err: err, nl: true}
}

func (s *scriptIO) Stream(name, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name == "stderr" {
		io.WriteString(s.err, text)
		return
	}
	io.WriteString(s.out, text)
	if text != "" {
		s.nl = strings.HasSuffix(text, "\n")
	}
}

func (s *scriptIO) freshLine() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.nl {
		io.WriteString(s.out, "\n")
		s.nl = true
	}
}

func (s *scriptIO) Display(data, metadata map[string]any, displayID string, update bool) {
	text := console.RenderBundle(data)
	if text == "" {
		return
	}
	s.freshLine()
	s.Stream("stdout", strings.TrimRight(text, "\n")+"\n")
}

func (s *scriptIO) ClearOutput(wait bool) {}

func (s *scriptIO) Input(prompt string, password bool) (string, error) {
	s.Stream("stdout", prompt)
	s.mu.Lock()
	if s.in == nil {
		s.in = bufio.NewReader(os.Stdin)
	}
	in := s.in
	s.mu.Unlock()
	line, err := in.ReadString('\n')
	if err != nil && (line == "" || !errors.Is(err, io.EOF)) {
		return "", err
	}
	s.mu.Lock()
	s.nl = true
	s.mu.Unlock()
	return strings.TrimRight(line, "\r\n"), nil
}
