package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests below build the real binaries once (into a temp dir) and run
// them as a user would.

var builds struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string
	errs map[string]error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
	os.Exit(code)
}

// build compiles the command in pkgDir (relative to this package) once per
// test binary and returns the executable's path.
func build(t *testing.T, name, pkgDir string) (string, error) {
	t.Helper()
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.bins == nil {
		builds.bins, builds.errs = map[string]string{}, map[string]error{}
		d, err := os.MkdirTemp("", "qwenrepl-test-")
		if err != nil {
			t.Fatal(err)
		}
		builds.dir = d
	}
	if p, ok := builds.bins[name]; ok {
		return p, builds.errs[name]
	}
	out := filepath.Join(builds.dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkgDir)
	msg, err := cmd.CombinedOutput()
	if err != nil {
		err = errors.New(strings.TrimSpace(string(msg)))
	}
	builds.bins[name], builds.errs[name] = out, err
	return out, err
}

func qwenrepl(t *testing.T) string {
	t.Helper()
	p, err := build(t, "qwenrepl", ".")
	if err != nil {
		t.Fatalf("go build qwenrepl: %v", err)
	}
	return p
}

// isolatedEnv is the environment with HOME and XDG_STATE_HOME in dir.
func isolatedEnv(dir string) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HOME=") && !strings.HasPrefix(e, "XDG_STATE_HOME=") {
			env = append(env, e)
		}
	}
	return append(env, "HOME="+dir, "XDG_STATE_HOME="+filepath.Join(dir, "state"))
}

type runResult struct {
	stdout, stderr string
	code           int
}

// runBin runs qwenrepl with args (and stdin) and returns its output and
// exit status.
func runBin(t *testing.T, stdin string, args ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qwenrepl(t), args...)
	cmd.Env = isolatedEnv(t.TempDir())
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run %q: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return runResult{out.String(), errb.String(), code}
}

func writeScript(t *testing.T, name, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const flagScript = `import "github.com/qwengo/qwengo/kernel/cli"

f := cli.New("flags.go")
f.Positional = "[FILE...]"
weight := f.String("weight", "", "weights ` + "`PATH`" + `")
steps := f.Int("steps", 1, "optimizer steps")
verbose := f.Bool("verbose", false, "say more")
f.Required("weight")
f.MustParse()
fmt.Printf("weight=%s steps=%d verbose=%v args=%v\n", *weight, *steps, *verbose, f.Args())
`

func TestScriptFlags(t *testing.T) {
	script := writeScript(t, "flags.go", flagScript)
	want := "weight=w.dat steps=3 verbose=true args=[x.txt]\n"
	for _, args := range [][]string{
		{"run", script, "--weight", "w.dat", "--steps", "3", "--verbose", "x.txt"},
		{"run", script, "--weight=w.dat", "--steps=3", "--verbose", "x.txt"},
		{"run", script, "-weight", "w.dat", "-steps=3", "-verbose=true", "x.txt"},
		{script, "x.txt", "--verbose", "--weight=w.dat", "--steps", "3"}, // without "run", interleaved
	} {
		r := runBin(t, "", args...)
		if r.code != 0 || r.stdout != want {
			t.Errorf("qwenrepl %q: exit %d\nstdout %q (want %q)\nstderr %s", args[1:], r.code, r.stdout, want, r.stderr)
		}
	}
}

func TestScriptFlagErrors(t *testing.T) {
	script := writeScript(t, "flags.go", flagScript)
	cases := []struct {
		args []string
		code int
		errs []string
	}{
		{[]string{"--weight=w", "--wieght=x"}, 2, []string{"unknown flag --wieght", "did you mean --weight"}},
		{[]string{"--weight", "w", "--steps", "three"}, 2, []string{"flag --steps", `invalid value "three"`}},
		{[]string{"--steps", "2"}, 2, []string{"flag --weight: required"}},
		{[]string{"--weight"}, 2, []string{"flag --weight: needs a value"}},
		{[]string{"--help"}, 0, nil},
	}
	for _, c := range cases {
		r := runBin(t, "", append([]string{"run", script}, c.args...)...)
		if r.code != c.code {
			t.Errorf("%q: exit %d, want %d\nstderr %s", c.args, r.code, c.code, r.stderr)
		}
		for _, s := range c.errs {
			if !strings.Contains(r.stderr, s) {
				t.Errorf("%q: stderr lacks %q:\n%s", c.args, s, r.stderr)
			}
		}
		if strings.Contains(r.stdout, "weight=") {
			t.Errorf("%q: the script went on after a bad command line: %q", c.args, r.stdout)
		}
	}
	r := runBin(t, "", "run", script, "--help")
	if !strings.Contains(r.stderr, "usage: flags.go [flags] [FILE...]") || !strings.Contains(r.stderr, "--weight PATH") {
		t.Errorf("--help output: %q", r.stderr)
	}
}

func TestScriptExitCodes(t *testing.T) {
	cases := []struct {
		name, src string
		args      []string
		code      int
		stdout    string
		errs      []string
	}{
		{"package main", "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hello from main\")\n}\n", nil, 0, "hello from main\n", nil},
		{"panic", "fmt.Println(\"before\")\npanic(\"boom at step 3\")\n", nil, 1, "before\n", []string{"boom at step 3"}},
		{"panic in main", "package main\n\nfunc main() {\n\tvar m map[string]int\n\tm[\"x\"] = 1\n}\n", nil, 1, "", []string{"nil map"}},
		{"compile error", "x := 1\ny := undefinedName + x\n", nil, 1, "", []string{"s.go:2:", "undefinedName"}},
		{"syntax error", "x := 1\nfunc f( {\n", nil, 1, "", []string{"s.go:2:9: expected ')'"}},
		{"cli.Exit", "import \"github.com/qwengo/qwengo/kernel/cli\"\nfmt.Println(\"partial\")\ncli.Exit(3)\nfmt.Println(\"never\")\n", nil, 3, "partial\n", nil},
		{"error value printed", "import \"errors\"\nerr := errors.New(\"disk full\")\nif err != nil { panic(err) }\n", nil, 1, "", []string{"disk full"}},
		{"args via os.Args", "fmt.Println(os.Args[1:])\n", []string{"a", "--b=c"}, 0, "[a --b=c]\n", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			script := writeScript(t, "s.go", c.src)
			r := runBin(t, "", append([]string{"run", script}, c.args...)...)
			if r.code != c.code || r.stdout != c.stdout {
				t.Errorf("exit %d stdout %q, want %d %q\nstderr %s", r.code, r.stdout, c.code, c.stdout, r.stderr)
			}
			for _, s := range c.errs {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, r.stderr)
				}
			}
		})
	}
	r := runBin(t, "", "run", filepath.Join(t.TempDir(), "missing.go"))
	if r.code != 1 || !strings.Contains(r.stderr, "missing.go") {
		t.Errorf("missing script: %d %q", r.code, r.stderr)
	}
	r = runBin(t, "", "run", writeScript(t, "p.go", "package notmain\n"))
	if r.code != 1 || !strings.Contains(r.stderr, "package notmain") {
		t.Errorf("wrong package: %d %q", r.code, r.stderr)
	}
}

func TestOneLiner(t *testing.T) {
	cases := []struct {
		args   []string
		code   int
		stdout string
		errs   string
	}{
		{[]string{"-e", "1+2"}, 0, "3\n", ""},
		{[]string{"-e", `strings.ToUpper("go")`}, 0, "GO", ""},
		{[]string{"-e", `fmt.Print("no newline")`}, 0, "no newline", ""},
		{[]string{"-e", "x := 5; x * x"}, 0, "25\n", ""},
		{[]string{"-e", `panic("bad")`}, 1, "", "bad"},
		{[]string{"-e", "nope("}, 1, "", ""},
		{[]string{"-e", "import \"github.com/qwengo/qwengo/kernel/cli\"\ncli.Args()", "a", "--b"}, 0, "a --b", ""},
		{[]string{"-e"}, 2, "", "-e needs the code"},
	}
	for _, c := range cases {
		r := runBin(t, "", c.args...)
		if r.code != c.code || !strings.Contains(r.stdout, c.stdout) || !strings.Contains(r.stderr, c.errs) {
			t.Errorf("qwenrepl %q: exit %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", c.args, r.code, c.code, r.stdout, c.stdout, r.stderr, c.errs)
		}
	}
}

func TestSubcommands(t *testing.T) {
	r := runBin(t, "", "help")
	if r.code != 0 || !strings.Contains(r.stdout, "usage:") || !strings.Contains(r.stdout, "generate") || !strings.Contains(r.stdout, "train") {
		t.Errorf("help: %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = runBin(t, "", "nosuchcommand")
	if r.code != 2 || !strings.Contains(r.stderr, `unknown command "nosuchcommand"`) {
		t.Errorf("unknown command: %d %q", r.code, r.stderr)
	}
	r = runBin(t, "", "--bogus")
	if r.code != 2 || !strings.Contains(r.stderr, "unknown flag --bogus") {
		t.Errorf("unknown flag: %d %q", r.code, r.stderr)
	}
	r = runBin(t, "", "--version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "qwenrepl ") {
		t.Errorf("--version: %d %q", r.code, r.stdout)
	}
	r = runBin(t, "", "generate", "--modle", "x")
	if r.code != 2 || !strings.Contains(r.stderr, "--modle") {
		t.Errorf("generate with a misspelt flag: %d %q", r.code, r.stderr)
	}
}

// TestConsolePiped drives the console with stdin that is not a terminal
// (the line editor falls back to plain line reading).
func TestConsolePiped(t *testing.T) {
	in := "func add(a, b int) int {\n\treturn a + b\n}\nadd(2, 3)\n:help\nfmt.Println(\"printed\")\n"
	r := runBin(t, in)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	for _, s := range []string{"Out[2]: 5", "printed", ":chat [MODEL]"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("stdout lacks %q:\n%s\nstderr %s", s, r.stdout, r.stderr)
		}
	}
}
