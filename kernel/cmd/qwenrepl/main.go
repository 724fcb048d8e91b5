// Command qwenrepl is the qwengo terminal front end: an interactive Go
// console on the same interpreter session as the notebook kernel, a script
// runner, and the table of non-interactive subcommands.
//
//	qwenrepl                          interactive console (engine pre-imported)
//	qwenrepl --existing FILE          console attached to a running kernel (its connection file)
//	qwenrepl -e 'CODE' [ARGS...]      run a one-liner; its trailing expression is printed
//	qwenrepl run SCRIPT.go [ARGS...]  run a Go script (also: qwenrepl SCRIPT.go ARGS...)
//	qwenrepl COMMAND [FLAGS...]       a subcommand: generate, train, probe, ... (qwenrepl help)
//	qwenrepl help [COMMAND]           list subcommands, or show one's flags
//	qwenrepl --version
//
// The memory guard flags --gpu-limit-gb, --gpu-poll-secs and --gpu-over-secs
// (kernel/cli GuardFlags) may come first, before any of these: they set the
// engine's budget and watchdog (`qwenrepl --gpu-limit-gb 40 run train.go`).
//
// A script is either a cell (statements and declarations, run top to
// bottom) or a `package main` file whose main function is called. It reads
// its arguments with the kernel/cli flag helper:
//
//	f := cli.New("train.go")
//	weight := f.String("weight", "", "weights `PATH`")
//	f.MustParse()
//
// The exit status is 0 on success, 1 when the script fails to compile,
// returns an error from a cell, or panics (the message goes to stderr), 2 for
// a bad command line, 130 after Ctrl-C, or the status given to cli.Exit.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/qwengo/qwengo/kernel"
	"github.com/qwengo/qwengo/kernel/cli"
	_ "github.com/qwengo/qwengo/kernel/jobs" // subcommands generate, train, probe
)

const usage = `usage:
  qwenrepl                          interactive Go console (Ctrl-D exits, :help for help)
  qwenrepl chat [--model M]         the console in chat mode (default model: the embedded qwengo-mini)
  qwenrepl --existing FILE          attach the console to a running kernel (a Jupyter connection file)
  qwenrepl -e 'CODE' [ARGS...]      run a one-liner and print its trailing expression
  qwenrepl run SCRIPT.go [ARGS...]  run a Go script; ARGS are read with kernel/cli (cli.New(...).MustParse())
  qwenrepl SCRIPT.go [ARGS...]      the same
  qwenrepl COMMAND [FLAGS...]       run a subcommand (list: qwenrepl help; flags: qwenrepl help COMMAND)
  qwenrepl --version                print the version

memory guard flags (before the command; kept for the console, scripts and subcommands that load models):
  --gpu-limit-gb GIB    engine memory budget in GiB, 0 = no limit (default $QWENGO_GPU_LIMIT_GB,
                        else the device size minus max(2 GiB, 5 %))
  --gpu-poll-secs S     watchdog period (default 0.5, minimum 0.05, 0 = no watchdog)
  --gpu-over-secs S     cancel the running engine call once device memory has stayed over the
                        limit this long (default 0 = the first sample over)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches on the command line and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	gf, rest, err := cli.TakeGuardFlags("qwenrepl", args)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n%s", err, usage)
		return cli.ExitUsage
	}
	if len(rest) < len(args) {
		if err := configureGuard(gf); err != nil {
			fmt.Fprintf(stderr, "qwenrepl: %v\n", err)
			return cli.ExitUsage
		}
		args = rest
	}
	if len(args) == 0 {
		return runConsole(stdout, stderr)
	}
	a := args[0]
	switch {
	case a == "-h" || a == "--help" || a == "-help":
		io.WriteString(stdout, usage+"\n")
		cli.PrintCommands("qwenrepl", stdout)
		return cli.ExitOK
	case a == "help":
		if len(args) == 1 {
			io.WriteString(stdout, usage+"\n")
		}
		return cli.Dispatch("qwenrepl", args, stdout, stderr)
	case a == "--version" || a == "-version":
		fmt.Fprintf(stdout, "qwenrepl %s (%s, %s/%s)\n", kernel.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return cli.ExitOK
	case a == "-e" || a == "--e":
		if len(args) < 2 {
			fmt.Fprintln(stderr, "qwenrepl: -e needs the code to run: qwenrepl -e 'CODE' [ARGS...]")
			return cli.ExitUsage
		}
		return runCode("-e", args[1], args[2:], true, stdout, stderr)
	case strings.HasPrefix(a, "-e=") || strings.HasPrefix(a, "--e="):
		_, code, _ := strings.Cut(a, "=")
		return runCode("-e", code, args[1:], true, stdout, stderr)
	case a == "--existing" || a == "-existing" || strings.HasPrefix(a, "--existing=") || strings.HasPrefix(a, "-existing="):
		f := cli.New("qwenrepl")
		f.SetOutput(stderr)
		file := f.String("existing", "", "connection `FILE` of a running kernel")
		f.Required("existing")
		if code, ok := f.ParseCommand(args); !ok {
			return code
		}
		return runExisting(*file, stdout, stderr)
	case a == "chat":
		f := cli.New("chat")
		f.SetOutput(stderr)
		model := f.String("model", "", "model to chat with (default: $QWENGO_MODEL, else the embedded qwengo-mini)")
		if code, ok := f.ParseCommand(args[1:]); !ok {
			return code
		}
		return runConsoleChat(stdout, stderr, true, *model)
	case a == "run":
		if len(args) < 2 || strings.HasPrefix(args[1], "-") {
			fmt.Fprintln(stderr, "qwenrepl run: missing script: qwenrepl run SCRIPT.go [ARGS...]")
			return cli.ExitUsage
		}
		return runScript(args[1], args[2:], stdout, stderr)
	case strings.HasSuffix(a, ".go"):
		return runScript(a, args[1:], stdout, stderr)
	case strings.HasPrefix(a, "-"):
		fmt.Fprintf(stderr, "qwenrepl: unknown flag %s\n%s", a, usage)
		return cli.ExitUsage
	}
	return cli.Dispatch("qwenrepl", args, stdout, stderr)
}
