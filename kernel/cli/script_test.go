package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// catch runs fn and returns the *Exited it panicked with (nil if none).
func catch(fn func()) (ex *Exited) {
	defer func() {
		if r := recover(); r != nil {
			var ok bool
			if ex, ok = r.(*Exited); !ok {
				panic(r)
			}
		}
	}()
	fn()
	return nil
}

func TestScriptArgsAndMustParse(t *testing.T) {
	SetArgs("train.go", []string{"--steps", "3", "--weight=w.dat", "--verbose"})
	if Prog() != "train.go" || len(Args()) != 4 {
		t.Fatalf("Prog %q Args %q", Prog(), Args())
	}
	f := New("")
	steps := f.Int("steps", 1, "")
	w := f.String("weight", "", "")
	v := f.Bool("verbose", false, "")
	if ex := catch(f.MustParse); ex != nil {
		t.Fatalf("MustParse: %v", ex)
	}
	if *steps != 3 || *w != "w.dat" || !*v || f.Name() != "train.go" {
		t.Fatalf("got steps %d weight %q verbose %v name %q", *steps, *w, *v, f.Name())
	}
	if _, ok := TakeExit(); ok {
		t.Fatal("exit recorded after a good parse")
	}

	// A bad flag: message on Output, ExitUsage recorded, panic with *Exited.
	SetArgs("train.go", []string{"--weight", "w", "--stpes", "3"})
	var out bytes.Buffer
	f = New("train.go")
	f.SetOutput(&out)
	f.String("weight", "", "")
	f.Int("steps", 1, "")
	ex := catch(f.MustParse)
	if ex == nil || ex.Code != ExitUsage {
		t.Fatalf("bad flag: %v", ex)
	}
	var ce *Error
	if !errors.As(ex, &ce) || !strings.Contains(out.String(), "unknown flag --stpes") || !strings.Contains(out.String(), "did you mean --steps") {
		t.Fatalf("bad flag error %v, output %q", ex, out.String())
	}
	if code, ok := TakeExit(); !ok || code != ExitUsage {
		t.Fatalf("TakeExit = %d %v", code, ok)
	}
	if _, ok := TakeExit(); ok {
		t.Fatal("TakeExit did not clear")
	}

	// --help: usage printed, status 0.
	SetArgs("train.go", []string{"--help"})
	out.Reset()
	f = New("train.go")
	f.SetOutput(&out)
	ex = catch(f.MustParse)
	if ex == nil || ex.Code != ExitOK || !strings.Contains(out.String(), "usage: train.go") {
		t.Fatalf("help: %v %q", ex, out.String())
	}
	if code, ok := TakeExit(); !ok || code != 0 {
		t.Fatalf("help TakeExit %d %v", code, ok)
	}
}

func TestExit(t *testing.T) {
	SetArgs("x", nil)
	ex := catch(func() { Exit(3) })
	if ex == nil || ex.Code != 3 || ex.Error() != "exit status 3" {
		t.Fatalf("Exit(3): %v", ex)
	}
	if code, ok := TakeExit(); !ok || code != 3 {
		t.Fatalf("TakeExit %d %v", code, ok)
	}
	Exit2 := func() { Exit(4) }
	catch(Exit2)
	SetArgs("y", nil) // a new script forgets the old status
	if _, ok := TakeExit(); ok {
		t.Fatal("SetArgs kept an old exit status")
	}
}
