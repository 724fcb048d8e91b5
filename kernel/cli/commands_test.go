package cli

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
)

func init() {
	Register(Command{Name: "echo", Summary: "print arguments", Run: func(args []string, stdout, stderr io.Writer) int {
		f := New("qwenrepl echo")
		f.SetOutput(stderr)
		f.Positional = "WORD..."
		upper := f.Bool("upper", false, "upper-case")
		js := f.JSON()
		if code, ok := f.ParseCommand(args); !ok {
			return code
		}
		s := strings.Join(f.Args(), " ")
		if *upper {
			s = strings.ToUpper(s)
		}
		if *js {
			if err := WriteJSON(stdout, map[string]any{"text": s, "words": f.NArg()}); err != nil {
				fmt.Fprintln(stderr, err)
				return ExitError
			}
			return ExitOK
		}
		fmt.Fprintln(stdout, s)
		return ExitOK
	}})
}

func TestDispatch(t *testing.T) {
	cases := []struct {
		args         []string
		code         int
		stdout, errs string
	}{
		{[]string{"echo", "a", "--upper", "b"}, ExitOK, "A B\n", ""},
		{[]string{"echo", "--json", "hi"}, ExitOK, "{\n  \"text\": \"hi\",\n  \"words\": 1\n}\n", ""},
		{[]string{"echo", "--loud"}, ExitUsage, "", "unknown flag --loud"},
		{[]string{"help"}, ExitOK, "echo  print arguments", ""},
		{[]string{"--help"}, ExitOK, "help  list commands", ""},
		{[]string{"help", "echo"}, ExitOK, "", "usage: qwenrepl echo [flags] WORD..."},
		{[]string{"help", "nope"}, ExitUsage, "", `unknown command "nope"`},
		{[]string{"nope"}, ExitUsage, "", `prog: unknown command "nope"`},
		{nil, ExitUsage, "", "missing command"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := Dispatch("prog", c.args, &out, &errb)
		if code != c.code || !strings.Contains(out.String(), c.stdout) || !strings.Contains(errb.String(), c.errs) {
			t.Errorf("Dispatch(%q) = %d\nstdout %q (want %q)\nstderr %q (want %q)", c.args, code, out.String(), c.stdout, errb.String(), c.errs)
		}
	}
}

func TestRegisterRejects(t *testing.T) {
	run := func([]string, io.Writer, io.Writer) int { return 0 }
	for _, c := range []Command{{Name: "", Run: run}, {Name: "help", Run: run}, {Name: "-x", Run: run},
		{Name: "a.go", Run: run}, {Name: "a b", Run: run}, {Name: "norun"}, {Name: "echo", Run: run}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register(%q) did not panic", c.Name)
				}
			}()
			Register(c)
		}()
	}
	if _, ok := Lookup("echo"); !ok {
		t.Fatal("echo not registered")
	}
	if cs := Commands(); len(cs) != 1 || cs[0].Name != "echo" {
		t.Fatalf("Commands = %v", cs)
	}
}
