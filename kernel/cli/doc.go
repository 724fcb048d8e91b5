// Package cli is the one flag convention shared by qwengo scripts, the qwenrepl
// subcommands and anything else that reads a command line.
//
// # Flags
//
// A FlagSet declares typed flags with defaults and help, then parses:
//
//	f := cli.New("train")
//	weight := f.String("weight", "", "weights to start from (`PATH`)")
//	steps := f.Int("steps", 100, "optimizer steps")
//	lr := f.Float("lr", 1e-4, "learning rate")
//	f.Required("weight")
//	f.MustParse() // a script: parses cli.Args()
//
// Accepted spellings, for every flag: --k v, --k=v, -k v, -k=v; a bool flag
// given bare (--k) is true, --k=false sets it false and --no-k is false too
// (unless a flag named "no-k" is declared). "--" ends the flags; everything
// after it, and every argument that does not start with "-", is positional.
// Flags and positional arguments may be interleaved.
//
// Nothing is ignored silently: an unknown flag, a malformed value, a missing
// value and a missing required flag are each an *Error that names the flag
// (the seed project's scripts ignored --weight=path and fell back to default
// weights; that cannot happen here). -h and --help print Usage.
//
// # Scripts
//
// `qwenrepl run script.go --flags…` (and `qwenrepl -e CODE args…`) store the
// script's arguments with SetArgs before running it in the interpreter;
// Args returns them and MustParse parses them. MustParse and Exit never call
// os.Exit (that would end a console or notebook kernel): they record an exit
// status the runner collects with TakeExit, and panic so the script stops.
//
// # Subcommands
//
// Register adds a subcommand to the table qwenrepl dispatches on
// (`qwenrepl NAME args…`); `qwenrepl help` lists it and `qwenrepl help NAME`
// runs it with --help. Conventions every subcommand follows:
//
//   - flags parsed with a FlagSet (ParseCommand does the help/usage-error
//     handling and returns the exit status);
//   - --json (declared with FlagSet.JSON) switches the output to exactly one
//     JSON document on stdout, written with WriteJSON; progress and
//     diagnostics always go to stderr so stdout stays machine-readable;
//   - exit status ExitOK on success, ExitError when the work failed,
//     ExitUsage for a bad command line.
package cli
