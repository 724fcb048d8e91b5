package cli

import (
	"errors"
	"fmt"
	"sync"
)

// Exit statuses shared by qwenrepl, its subcommands and scripts.
const (
	ExitOK    = 0 // success (also after printing --help)
	ExitError = 1 // the work failed: an error, a panic
	ExitUsage = 2 // bad command line: unknown flag, malformed value, missing argument
)

var script struct {
	mu      sync.Mutex
	prog    string
	args    []string
	exit    int
	exitSet bool
}

// SetArgs stores the program name and arguments of the script about to run
// (the script runner calls it; Args and MustParse read it). It also clears
// any exit status left by a previous script.
func SetArgs(prog string, args []string) {
	script.mu.Lock()
	defer script.mu.Unlock()
	script.prog = prog
	script.args = append([]string(nil), args...)
	script.exitSet = false
	script.exit = 0
}

// Args returns the running script's arguments (after the script name), as
// given to SetArgs; empty in a console or notebook unless set.
func Args() []string {
	script.mu.Lock()
	defer script.mu.Unlock()
	return append([]string(nil), script.args...)
}

// Prog returns the running script's name as given to SetArgs.
func Prog() string {
	script.mu.Lock()
	defer script.mu.Unlock()
	return script.prog
}

// Exited is the panic value of Exit and of a failing MustParse: it stops
// the script without ending the process that interprets it.
type Exited struct {
	Code int
	Err  error // the reason; nil for a plain Exit
}

func (e *Exited) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("exit status %d: %v", e.Code, e.Err)
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

// Unwrap returns the reason.
func (e *Exited) Unwrap() error { return e.Err }

// Exit records code as the script's exit status and stops the script (it
// panics with *Exited; the script runner turns that into the process's
// exit status, a console into a cell error). Unlike os.Exit it never ends a
// console or kernel.
func Exit(code int) {
	setExit(code)
	panic(&Exited{Code: code})
}

func setExit(code int) {
	script.mu.Lock()
	script.exit, script.exitSet = code, true
	script.mu.Unlock()
}

// TakeExit returns, and clears, the exit status recorded by Exit or
// MustParse since the last SetArgs or TakeExit.
func TakeExit() (code int, ok bool) {
	script.mu.Lock()
	defer script.mu.Unlock()
	code, ok = script.exit, script.exitSet
	script.exit, script.exitSet = 0, false
	return code, ok
}

// ParseArgs parses the script's arguments (Args). If the set has no name,
// it takes the script's.
func (f *FlagSet) ParseArgs() error {
	if f.name == "" {
		f.name = Prog()
	}
	return f.Parse(Args())
}

// MustParse parses the script's arguments (Args). With -h/--help it prints
// Usage to Output and stops the script with status ExitOK; on an error it
// prints the error and a hint and stops the script with status ExitUsage
// (see Exit: the process interpreting the script is not ended).
func (f *FlagSet) MustParse() {
	err := f.ParseArgs()
	if err == nil {
		return
	}
	code, _ := f.ParseCommandResult(err)
	setExit(code)
	panic(&Exited{Code: code, Err: err})
}

// ParseCommandResult prints what ParseCommand prints for a Parse error and
// returns the exit status (ExitOK for help, ExitUsage otherwise); ok is
// true when err is nil.
func (f *FlagSet) ParseCommandResult(err error) (code int, ok bool) {
	if err == nil {
		return ExitOK, true
	}
	if errors.Is(err, ErrHelp) {
		f.PrintUsage()
		return ExitOK, false
	}
	fmt.Fprintf(f.Output(), "%v\nrun '%s --help' for usage\n", err, f.name)
	return ExitUsage, false
}
