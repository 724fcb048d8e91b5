package cli

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// set declares one flag of every kind and returns a function reading them.
type vals struct {
	Weight  string
	Steps   int
	LR      float64
	Verbose bool
	KV      bool
	Timeout time.Duration
	Tags    []string
	IDs     []int
	Logits  string
	Args    []string
}

func declare() (*FlagSet, func() vals) {
	f := New("train")
	f.Positional = "[FILE...]"
	w := f.String("weight", "default.dat", "weights `PATH`")
	s := f.Int("steps", 10, "optimizer steps")
	lr := f.Float("lr", 1e-4, "learning rate")
	v := f.Bool("verbose", false, "say more")
	kv := f.Bool("kv-cache", true, "use the KV cache")
	to := f.Duration("timeout", time.Second, "give up after")
	tags := f.StringList("tags", []string{"a"}, "tags")
	ids := f.IntList("ids", nil, "token ids")
	lg := f.Choice("logits", "last", []string{"last", "all"}, "which logits")
	f.Alias("n", "steps")
	return f, func() vals {
		return vals{*w, *s, *lr, *v, *kv, *to, *tags, *ids, *lg, f.Args()}
	}
}

func TestParseSpellings(t *testing.T) {
	def := vals{Weight: "default.dat", Steps: 10, LR: 1e-4, KV: true, Timeout: time.Second, Tags: []string{"a"}, Logits: "last"}
	with := func(mod func(v *vals)) vals {
		v := def
		v.Tags = append([]string(nil), def.Tags...)
		mod(&v)
		return v
	}
	cases := []struct {
		name string
		args []string
		want vals
	}{
		{"defaults", nil, def},
		{"space", []string{"--weight", "w.dat"}, with(func(v *vals) { v.Weight = "w.dat" })},
		{"equals", []string{"--weight=w.dat"}, with(func(v *vals) { v.Weight = "w.dat" })},
		{"single dash", []string{"-weight", "w.dat"}, with(func(v *vals) { v.Weight = "w.dat" })},
		{"single dash equals", []string{"-weight=w.dat"}, with(func(v *vals) { v.Weight = "w.dat" })},
		{"equals keeps later equals", []string{"--weight=a=b"}, with(func(v *vals) { v.Weight = "a=b" })},
		{"empty value", []string{"--weight="}, with(func(v *vals) { v.Weight = "" })},
		{"unicode value", []string{"--weight", "你是誰"}, with(func(v *vals) { v.Weight = "你是誰" })},
		{"int", []string{"--steps", "42"}, with(func(v *vals) { v.Steps = 42 })},
		{"int hex underscore", []string{"--steps=0x1_0"}, with(func(v *vals) { v.Steps = 16 })},
		{"negative int value", []string{"--steps", "-3"}, with(func(v *vals) { v.Steps = -3 })},
		{"alias", []string{"-n", "7"}, with(func(v *vals) { v.Steps = 7 })},
		{"alias double dash", []string{"--n=7"}, with(func(v *vals) { v.Steps = 7 })},
		{"float", []string{"--lr", "3e-5"}, with(func(v *vals) { v.LR = 3e-5 })},
		{"bare bool", []string{"--verbose"}, with(func(v *vals) { v.Verbose = true })},
		{"bool equals false", []string{"--kv-cache=false"}, with(func(v *vals) { v.KV = false })},
		{"bool space false", []string{"--kv-cache", "false"}, with(func(v *vals) { v.KV = false })},
		{"bool no- prefix", []string{"--no-kv-cache"}, with(func(v *vals) { v.KV = false })},
		{"bool then positional", []string{"--verbose", "x.txt"}, with(func(v *vals) { v.Verbose = true; v.Args = []string{"x.txt"} })},
		{"duration", []string{"--timeout", "1m30s"}, with(func(v *vals) { v.Timeout = 90 * time.Second })},
		{"list replaces default", []string{"--tags", "x, y,,z"}, with(func(v *vals) { v.Tags = []string{"x", "y", "z"} })},
		{"list repeated", []string{"--tags=x", "--tags", "y,z"}, with(func(v *vals) { v.Tags = []string{"x", "y", "z"} })},
		{"int list", []string{"--ids", "1,2,3"}, with(func(v *vals) { v.IDs = []int{1, 2, 3} })},
		{"choice", []string{"--logits=all"}, with(func(v *vals) { v.Logits = "all" })},
		{"last wins", []string{"--steps", "1", "--steps=2"}, with(func(v *vals) { v.Steps = 2 })},
		{"positional interleaved", []string{"a", "--steps", "5", "b"}, with(func(v *vals) { v.Steps = 5; v.Args = []string{"a", "b"} })},
		{"double dash ends flags", []string{"--steps", "5", "--", "--weight", "x"}, with(func(v *vals) { v.Steps = 5; v.Args = []string{"--weight", "x"} })},
		{"lone dash positional", []string{"-"}, with(func(v *vals) { v.Args = []string{"-"} })},
		{"negative number positional", []string{"-1.5"}, with(func(v *vals) { v.Args = []string{"-1.5"} })},
		{"value looking like a flag via equals", []string{"--weight=--steps"}, with(func(v *vals) { v.Weight = "--steps" })},
		{"value starting with dash that is no flag", []string{"--weight", "-x"}, with(func(v *vals) { v.Weight = "-x" })},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, get := declare()
			if err := f.Parse(c.args); err != nil {
				t.Fatalf("Parse(%q): %v", c.args, err)
			}
			got := get()
			if got.Args == nil {
				got.Args = nil
			}
			if len(got.Args) == 0 {
				got.Args = nil
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", c.args, got, c.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		flag     string   // Error.Flag
		contains []string // in the message
	}{
		{"unknown flag equals", []string{"--wieght=path"}, "", []string{"unknown flag --wieght", "did you mean --weight"}},
		{"unknown flag space", []string{"--prompt", "hi"}, "", []string{"unknown flag --prompt"}},
		{"unknown single dash", []string{"-x"}, "", []string{"unknown flag -x"}},
		{"malformed int", []string{"--steps", "ten"}, "steps", []string{`invalid value "ten"`, "want an integer"}},
		{"int overflow", []string{"--steps=99999999999999999999999"}, "steps", []string{"out of range"}},
		{"malformed float", []string{"--lr=fast"}, "lr", []string{`"fast"`, "want a number"}},
		{"malformed bool", []string{"--verbose=maybe"}, "verbose", []string{"want true or false"}},
		{"malformed duration", []string{"--timeout", "5"}, "timeout", []string{"want a duration"}},
		{"malformed int list", []string{"--ids", "1,x,3"}, "ids", []string{`item 2 "x"`}},
		{"bad choice", []string{"--logits", "some"}, "logits", []string{"want one of last, all"}},
		{"missing value at end", []string{"--weight"}, "weight", []string{"needs a value"}},
		{"flag where value expected", []string{"--weight", "--steps", "3"}, "weight", []string{"needs a value", "followed by --steps", "--weight=--steps"}},
		{"negated with value", []string{"--no-verbose=1"}, "no-verbose", []string{"takes no value"}},
		{"triple dash", []string{"---weight"}, "", []string{"malformed flag"}},
		{"dash equals", []string{"--=x"}, "", []string{"malformed flag"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, _ := declare()
			err := f.Parse(c.args)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Parse(%q) = %v, want *Error", c.args, err)
			}
			if ce.Flag != c.flag {
				t.Errorf("Flag = %q, want %q (err %v)", ce.Flag, c.flag, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "train: ") {
				t.Errorf("message %q does not name the program", msg)
			}
			for _, s := range c.contains {
				if !strings.Contains(msg, s) {
					t.Errorf("message %q lacks %q", msg, s)
				}
			}
		})
	}
}

func TestRequiredAndPositional(t *testing.T) {
	f := New("gen")
	f.String("model", "", "model `PATH`")
	f.Required("model")
	err := f.Parse(nil)
	if err == nil || !strings.Contains(err.Error(), "gen: flag --model: required but not given (model PATH)") {
		t.Fatalf("missing required: %v", err)
	}

	f = New("gen")
	f.String("model", "", "m")
	f.Required("model")
	if err := f.Parse([]string{"--model", "m", "extra"}); err == nil || !strings.Contains(err.Error(), `unexpected argument "extra"`) {
		t.Fatalf("positional without Positional: %v", err)
	}

	f = New("gen")
	f.Positional = "PROMPT"
	f.String("model", "", "m")
	if err := f.Parse([]string{"hello", "--model=m"}); err != nil || f.NArg() != 1 || f.Arg(0) != "hello" || f.Arg(5) != "" || !f.IsSet("model") {
		t.Fatalf("positional: err %v args %q", err, f.Args())
	}
	if err := f.Parse(nil); err == nil {
		t.Fatal("second Parse succeeded")
	}

	f = New("bare")
	if err := f.Parse([]string{"--x"}); err == nil || !strings.Contains(err.Error(), "bare takes no flags") {
		t.Fatalf("no flags: %v", err)
	}
}

func TestHelp(t *testing.T) {
	for _, a := range []string{"-h", "--help", "-help"} {
		f, _ := declare()
		err := f.Parse([]string{"--steps", "3", a})
		if !errors.Is(err, ErrHelp) {
			t.Errorf("%s: %v, want ErrHelp", a, err)
		}
	}
	// A declared flag named h wins over help.
	f := New("x")
	h := f.Int("h", 0, "height")
	if err := f.Parse([]string{"-h", "3"}); err != nil || *h != 3 {
		t.Fatalf("declared -h: %v %d", err, *h)
	}
}

func TestUsage(t *testing.T) {
	f, _ := declare()
	f.Summary = "Train a model."
	f.Required("weight")
	f.JSON()
	u := f.Usage()
	for _, want := range []string{
		"usage: train [flags] [FILE...]",
		"Train a model.",
		"--weight PATH",
		"weights PATH (required)",
		"-n, --steps INT",
		"(default 10)",
		"--lr FLOAT",
		"(default 0.0001)",
		"--verbose  ",
		"--timeout DURATION",
		"(default 1s)",
		"--tags LIST",
		"(default [a])",
		"--logits last|all",
		"(default last)",
		"--json",
		"-h, --help",
	} {
		if !strings.Contains(u, want) {
			t.Errorf("usage lacks %q:\n%s", want, u)
		}
	}
	if strings.Contains(u, "--verbose BOOL") {
		t.Errorf("bool flag shows a placeholder:\n%s", u)
	}
}

func TestParseCommand(t *testing.T) {
	var out bytes.Buffer
	f, _ := declare()
	f.SetOutput(&out)
	code, ok := f.ParseCommand([]string{"--bogus"})
	if ok || code != ExitUsage || !strings.Contains(out.String(), "unknown flag --bogus") || !strings.Contains(out.String(), "train --help") {
		t.Fatalf("bad flag: code %d ok %v out %q", code, ok, out.String())
	}
	out.Reset()
	f, _ = declare()
	f.SetOutput(&out)
	code, ok = f.ParseCommand([]string{"--help"})
	if ok || code != ExitOK || !strings.Contains(out.String(), "usage: train") {
		t.Fatalf("help: code %d ok %v out %q", code, ok, out.String())
	}
	f, _ = declare()
	if code, ok = f.ParseCommand([]string{"--steps=1"}); !ok || code != ExitOK {
		t.Fatalf("good: %d %v", code, ok)
	}
}

func TestDeclarationPanics(t *testing.T) {
	cases := map[string]func(f *FlagSet){
		"dup":            func(f *FlagSet) { f.Int("a", 0, ""); f.Int("a", 0, "") },
		"dash":           func(f *FlagSet) { f.Int("-a", 0, "") },
		"equals":         func(f *FlagSet) { f.Int("a=b", 0, "") },
		"alias unknown":  func(f *FlagSet) { f.Alias("x", "nope") },
		"alias taken":    func(f *FlagSet) { f.Int("a", 0, ""); f.Int("b", 0, ""); f.Alias("a", "b") },
		"required undef": func(f *FlagSet) { f.Required("zz") },
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			fn(New("p"))
		})
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"a", "", 1}, {"weight", "wieght", 2}, {"kitten", "sitting", 3}, {"日本", "日本語", 1}} {
		if got := editDistance(c.a, c.b); got != c.d {
			t.Errorf("editDistance(%q,%q)=%d want %d", c.a, c.b, got, c.d)
		}
	}
}

func TestChoiceWithEmpty(t *testing.T) {
	f := New("gen")
	f.Choice("logits", "", []string{"", "last", "all"}, "which logits")
	if u := f.Usage(); !strings.Contains(u, "--logits last|all ") {
		t.Errorf("usage:\n%s", u)
	}
	err := f.Parse([]string{"--logits=none"})
	if err == nil || !strings.Contains(err.Error(), `want one of "", last, all`) {
		t.Errorf("bad choice: %v", err)
	}
}
