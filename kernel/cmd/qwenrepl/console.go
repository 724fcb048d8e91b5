package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/qwengo/qwengo/engine"
	"github.com/qwengo/qwengo/kernel"
	"github.com/qwengo/qwengo/kernel/cli"
	"github.com/qwengo/qwengo/kernel/console"
)

// runConsole runs the interactive console on an in-process session.
func runConsole(stdout, stderr io.Writer) int { return runConsoleChat(stdout, stderr, false, "") }

// runConsoleChat is runConsole, starting in chat mode on model (empty: the default) when chat.
func runConsoleChat(stdout, stderr io.Writer, chat bool, model string) int {
	hist := console.DefaultHistoryFile()
	sessHist := ""
	if hist != "" {
		// The session keeps its own record of executed cells (for %history
		// and history_request); the line editor's file holds input lines.
		sessHist = filepath.Join(filepath.Dir(hist), "cells.jsonl")
	}
	interp, err := newSession(stdout, stderr, sessHist, nil)
	if err != nil {
		fmt.Fprintf(stderr, "qwenrepl: start interpreter: %v\n", err)
		return cli.ExitError
	}
	// engine.Load in a cell draws a terminal progress bar.
	loads := map[string]func(done, total int64){}
	engine.DefaultProgress = func(path string, done, total int64) {
		p := loads[path]
		if p == nil {
			p = progressPrinter("loading " + path)
			loads[path] = p
		}
		p(done, total)
		if total > 0 && done >= total {
			fmt.Fprintln(os.Stderr)
			delete(loads, path)
		}
	}
	c := console.New(console.Options{
		Interp:        interp,
		Out:           stdout,
		Err:           stderr,
		HistoryFile:   hist,
		Banner:        banner(),
		HandleSignals: true,
		StartChat:     chat,
		ChatArg:       model,
	})
	if err := c.Run(); err != nil {
		fmt.Fprintf(stderr, "qwenrepl: %v\n", err)
		return cli.ExitError
	}
	return cli.ExitOK
}

// runExisting runs the console attached to the kernel whose connection file
// is path.
func runExisting(path string, stdout, stderr io.Writer) int {
	r, err := console.Dial(path, 15*time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "qwenrepl --existing %s: %v\n", path, err)
		return cli.ExitError
	}
	defer r.Close()
	b := r.Banner()
	if b == "" {
		b = "connected"
	}
	c := console.New(console.Options{
		Interp:        r,
		Out:           stdout,
		Err:           stderr,
		HistoryFile:   console.DefaultHistoryFile(),
		Banner:        b + "\n(attached to " + path + "; Ctrl-D detaches and leaves the kernel running)",
		HandleSignals: true,
		// Chat needs the model in this process; attached, use engine
		// calls in cells instead.
		Chat: func(string) (console.Chatter, error) {
			return nil, fmt.Errorf("chat mode needs the model in this process; attached to a kernel, chat from a cell (engine.Model.NewChat)")
		},
	})
	if err := c.Run(); err != nil {
		fmt.Fprintf(stderr, "qwenrepl: %v\n", err)
		return cli.ExitError
	}
	return cli.ExitOK
}

func banner() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("qwengo %s console (Go %s, %s) on %s, %s (%s) — :help for help, Ctrl-D to exit",
		kernel.Version, runtime.Version()[2:], runtime.GOARCH, host, engine.Device(), engine.MemoryGuard().Short())
}
