package cli_test

import (
	"fmt"
	"io"
	"os"

	"github.com/qwengo/qwengo/kernel/cli"
)

// A script run as `qwenrepl run train.go --weight w.dat --steps=3 --verbose`
// reads its flags like this (the runner has called cli.SetArgs).
func Example_script() {
	cli.SetArgs("train.go", []string{"--weight", "w.dat", "--steps=3", "--verbose"})

	f := cli.New("train.go")
	weight := f.String("weight", "", "weights to start from (`PATH`)")
	steps := f.Int("steps", 100, "optimizer steps")
	verbose := f.Bool("verbose", false, "print every step")
	f.Required("weight")
	f.MustParse() // on a bad flag: prints it and stops the script with status 2

	fmt.Println(*weight, *steps, *verbose)
	// Output: w.dat 3 true
}

// A subcommand registers itself in the table `qwenrepl` dispatches on.
func ExampleRegister() {
	cli.Register(cli.Command{
		Name:    "greet",
		Summary: "say hello",
		Run: func(args []string, stdout, stderr io.Writer) int {
			f := cli.New("qwenrepl greet")
			f.SetOutput(stderr)
			name := f.String("name", "world", "who to greet")
			js := f.JSON()
			if code, ok := f.ParseCommand(args); !ok {
				return code
			}
			if *js {
				if err := cli.WriteJSON(stdout, map[string]string{"greeting": "hello " + *name}); err != nil {
					return cli.ExitError
				}
				return cli.ExitOK
			}
			fmt.Fprintln(stdout, "hello", *name)
			return cli.ExitOK
		},
	})
	code := cli.Dispatch("qwenrepl", []string{"greet", "--name=gopher", "--json"}, os.Stdout, os.Stderr)
	fmt.Println("exit", code)
	// Output:
	// {
	//   "greeting": "hello gopher"
	// }
	// exit 0
}
