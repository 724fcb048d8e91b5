// Command qwenkernel is the qwengo Jupyter kernel: Go cells interpreted by
// yaegi against the preloaded qwengo engine. Jupyter starts it as
//
//	qwenkernel --connection-file FILE     (or -f FILE)
//
// The memory guard's flags (kernel/cli GuardFlags) set the engine's budget and
// watchdog: --gpu-limit-gb GIB (default $QWENGO_GPU_LIMIT_GB, else the device size
// minus a margin; 0 = no limit), --gpu-poll-secs S (0.5), --gpu-over-secs S (0);
// add them to the kernelspec's argv, or set QWENGO_GPU_LIMIT_GB in its env.
//
// It logs to the original standard error; file descriptors 1 and 2 are
// redirected (kernel/capture) so that whatever cells, engine code, C and
// CUDA code print lands in the notebook. --version prints the version.
// Install the kernelspec with `go run ./install`.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"

	"github.com/qwengo/qwengo/kernel"
	"github.com/qwengo/qwengo/kernel/capture"
	"github.com/qwengo/qwengo/kernel/cli"
	"github.com/qwengo/qwengo/kernel/wire"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := cli.New("qwenkernel")
	fs.Summary = "The qwengo Jupyter kernel. Install it with `go run ./install`."
	connFile := fs.String("connection-file", "", "Jupyter connection `file` (written by the front-end)")
	fs.Alias("f", "connection-file")
	version := fs.Bool("version", false, "print the version and exit")
	noCapture := fs.Bool("no-capture", false, "leave file descriptors 1 and 2 alone (debugging)")
	gf := cli.DefaultGuardFlags()
	gf.Declare(fs)
	if code, ok := fs.ParseCommand(args); !ok {
		return code
	}
	if *version {
		fmt.Printf("qwenkernel %s (%s, %s/%s)\n", kernel.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	if *connFile == "" {
		fmt.Fprintf(fs.Output(), "qwenkernel: --connection-file is required\n%s", fs.Usage())
		return cli.ExitUsage
	}
	if err := configureGuard(gf); err != nil { // validates too
		fmt.Fprintf(fs.Output(), "qwenkernel: %v\n", err)
		return cli.ExitUsage
	}
	logger := log.New(os.Stderr, "qwenkernel: ", log.LstdFlags|log.Lmicroseconds)
	ci, err := wire.ReadConnectionFile(*connFile)
	if err != nil {
		logger.Print(err)
		return 1
	}

	var kp atomic.Pointer[kernel.Kernel]
	var logFile atomic.Pointer[os.File]
	var capt *capture.Capture
	if !*noCapture {
		// Capture before the interpreter and engine start; what they
		// print before the kernel exists goes to the log.
		capt, err = capture.Start(func(name string, data []byte) {
			if k := kp.Load(); k != nil {
				k.CapturedOutput(name, data)
			} else if f := logFile.Load(); f != nil {
				f.Write(data)
			}
		})
		if err != nil {
			logger.Printf("output capture unavailable, compiled code's output goes to the log: %v", err)
		} else {
			logFile.Store(capt.Stderr)
			logger.SetOutput(capt.Stderr)
			defer capt.Stop()
		}
	}

	interp, err := newInterpreter(logger)
	if err != nil {
		logger.Printf("start interpreter: %v", err)
		return 1
	}
	k, err := kernel.New(kernel.Config{Conn: ci, Interp: interp, Log: logger, HandleSIGINT: true})
	if err != nil {
		logger.Print(err)
		return 1
	}
	if capt != nil {
		k.AttachCapture(capt)
	}
	kp.Store(k)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	logger.Printf("qwenkernel %s (%s) on %s, connection file %s", kernel.Version, runtime.Version(), kernel.DeviceName(), *connFile)
	if err := k.Run(ctx); err != nil && ctx.Err() == nil {
		logger.Print(err)
		return 1
	}
	logger.Printf("shut down")
	return 0
}
