package session

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qwengo/qwengo/kernel/symbols"
)

// cellCase is one cell of a stateful sequence run in a single session.
type cellCase struct {
	code    string
	out     string // expected stdout (exact) unless "" and outHas is set
	outHas  string // substring of stdout
	errHas  string // substring of stderr
	text    string // expected text/plain of the result ("<none>": no result)
	mime    map[string]string
	errName string // expected CellError name ("" : success)
	errVal  string // substring of the CellError value
	tbHas   string // substring of the traceback
}

func runCases(t *testing.T, s *Session, cases []cellCase) {
	t.Helper()
	for i, c := range cases {
		f, res, ce := run(t, s, c.code)
		where := fmt.Sprintf("cell %d %q", i, c.code)
		if c.errName == "" && ce != nil {
			t.Errorf("%s: failed: %v\n%s\nstderr: %s", where, ce, strings.Join(ce.Traceback, "\n"), f.errOut())
			continue
		}
		if c.errName != "" {
			if ce == nil {
				t.Errorf("%s: succeeded, want %s error", where, c.errName)
				continue
			}
			if ce.Name != c.errName || !strings.Contains(ce.Value, c.errVal) {
				t.Errorf("%s: error %s: %q, want %s containing %q", where, ce.Name, ce.Value, c.errName, c.errVal)
			}
			if tb := strings.Join(ce.Traceback, "\n"); !strings.Contains(tb, c.tbHas) {
				t.Errorf("%s: traceback\n%s\ndoes not contain %q", where, tb, c.tbHas)
			}
		}
		if c.out != "" && f.out() != c.out {
			t.Errorf("%s: stdout %q, want %q", where, f.out(), c.out)
		}
		if !strings.Contains(f.out(), c.outHas) {
			t.Errorf("%s: stdout %q does not contain %q", where, f.out(), c.outHas)
		}
		if !strings.Contains(f.errOut(), c.errHas) {
			t.Errorf("%s: stderr %q does not contain %q", where, f.errOut(), c.errHas)
		}
		if c.text != "" && text(res) != c.text {
			t.Errorf("%s: result %q, want %q (bundle %v)", where, text(res), c.text, res.Data)
		}
		for k, v := range c.mime {
			got, ok := res.Data[k]
			if !ok {
				t.Errorf("%s: bundle %v has no %s", where, res.Data, k)
				continue
			}
			gs := fmt.Sprint(got)
			if raw, ok := got.(json.RawMessage); ok {
				gs = string(raw)
			}
			if !strings.Contains(gs, v) {
				t.Errorf("%s: %s = %q, want %q", where, k, gs, v)
			}
		}
	}
}

func TestStateAndDeclarations(t *testing.T) {
	s := newSession(t, Options{})
	runCases(t, s, []cellCase{
		{code: "x := 40", text: "<none>"},
		{code: "x += 2\nx", text: "42"},
		{code: "func double(v int) int { return 2 * v }\ny := double(x)\nfmt.Println(y)", out: "84\n", text: "<none>"},
		// Declarations after statements see them; statements after declarations see those.
		{code: "base := 10\nfunc addBase(v int) int { return v + base }\naddBase(5)", text: "15"},
		// Redefinitions: function, variable with another type, constant, type.
		{code: "func double(v int) int { return 3 * v }\ndouble(2)", text: "6"},
		{code: "x := \"now a string\"\nx", text: "now a string"},
		{code: "const K = 1", text: "<none>"},
		{code: "const K = \"k\"\nK + \"!\"", text: "k!"},
		{code: "type Point struct{ X, Y int }\nfunc (p Point) Sum() int { return p.X + p.Y }\nPoint{1, 2}.Sum()", text: "3"},
		{code: "type Point struct{ Name string }\nPoint{Name: \"p\"}", text: "{p}"},
		// Imports: explicit standard library import, pre-imports.
		{code: "import \"sort\"\nv := []int{3, 1, 2}\nsort.Ints(v)\nv", text: "[1 2 3]"},
		{code: "math.Sqrt(16) + float64(len(strings.Fields(\"a b\")))", text: "6"},
		{code: "import (\n\t\"encoding/hex\"\n\tb64 \"encoding/base64\"\n)\nhex.EncodeToString([]byte{255}) + b64.StdEncoding.EncodeToString([]byte(\"a\"))", text: "ffYQ=="},
		// Expressions without a single value show nothing.
		{code: "fmt.Println(\"printed\")", out: "printed\n", text: "<none>"},
		{code: "func pair() (int, int) { return 1, 2 }\npair()", text: "<none>"},
		{code: "func nothing() {}\nnothing()", text: "<none>"},
		{code: "time.Sleep(time.Millisecond)", text: "<none>"},
		{code: "a, b := pair()\na + b", text: "3"},
		// Multi-value definitions inside top-level blocks (a yaegi bug the session works around).
		{code: "sum := 0\nif true {\n\tc, d := pair()\n\tsum = c + d\n}\nsum", text: "3"},
		{code: "m := map[string]int{\"k\": 4}\nfor _, key := range []string{\"k\"} {\n\tv, ok := m[key]\n\tfmt.Println(key, v, ok)\n}", out: "k 4 true\n"},
		{code: "switch {\ndefault:\n\tvar e, f = pair()\n\tfmt.Println(e * f)\n}", out: "2\n"},
		{code: "{\n\tn, k := pair()\n\tfmt.Println(n+k, sum)\n}", out: "3 3\n"},
		// A failed comma-ok gives the zero value, in loops too (the other yaegi bug).
		{code: "for _, key := range []string{\"k\", \"z\"} {\n\tv, ok := m[key]\n\tfmt.Println(key, v, ok)\n}", out: "k 4 true\nz 0 false\n"},
		{code: "func kinds(xs []any) (out []int) {\n\tfor _, x := range xs {\n\t\tn, ok := x.(int)\n\t\t_ = ok\n\t\tout = append(out, n)\n\t}\n\treturn\n}\nkinds([]any{3, \"s\", 5})", text: "[3 0 5]"},
		{code: "w, found := 7, true\nfor _, key := range []string{\"k\", \"z\"} {\n\tw, found = m[key]\n}\nfmt.Println(w, found)", out: "0 false\n"},
		// A pasted program: package clause ignored, main runs once.
		{code: "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"main ran\")\n}", out: "main ran\n"},
		{code: "func later() int { return 1 }\nlater()", out: "", text: "1"},
		// Loops and control flow with semicolons in headers.
		{code: "total := 0\nfor i := 0; i < 5; i++ {\n\ttotal += i\n}\ntotal", text: "10"},
		{code: "if v := total * 2; v > 10 {\n\tfmt.Println(\"big\", v)\n}", out: "big 20\n"},
		// Names of the session's helpers do not leak.
		{code: "%who", outHas: "double"},
	})
	if n := s.ExecutionCount(); n != 30 {
		t.Errorf("ExecutionCount %d, want 30", n)
	}
	names := s.Names()
	for _, want := range []string{"double", "addBase", "Point", "K"} {
		if !contains(names, want) {
			t.Errorf("Names() %v lacks %s", names, want)
		}
	}
	for _, n := range names {
		if strings.HasPrefix(n, hiddenPref) {
			t.Errorf("Names() leaks %s", n)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Rich values: methods of interpreted and compiled types give MIME types.
func TestTrailingExpressionMIME(t *testing.T) {
	s := newSession(t, Options{})
	png1x1 := "iVBORw0KGgo"
	runCases(t, s, []cellCase{
		{code: "type Card struct{ Title string }\n" +
			"func (c Card) HTML() string { return \"<h1>\" + c.Title + \"</h1>\" }\n" +
			"func (c Card) Markdown() string { return \"# \" + c.Title }\n" +
			"func (c Card) String() string { return \"Card(\" + c.Title + \")\" }\n" +
			"Card{\"hi\"}",
			text: "Card(hi)", mime: map[string]string{"text/html": "<h1>hi</h1>", "text/markdown": "# hi"}},
		{code: "type Pic struct{}\nfunc (*Pic) SVG() string { return \"<svg/>\" }\nfunc (*Pic) LaTeX() string { return \"$x$\" }\n&Pic{}",
			mime: map[string]string{"image/svg+xml": "<svg/>", "text/latex": "$x$"}},
		{code: "type Obj struct{ N int }\nfunc (o Obj) JSON() any { return map[string]int{\"n\": o.N} }\nObj{7}",
			mime: map[string]string{"application/json": `{"n":7}`}},
		{code: "type Raw struct{}\nfunc (Raw) MIME() map[string]any { return map[string]any{\"text/x-custom\": \"c\", \"text/plain\": \"raw\"} }\nRaw{}",
			text: "raw", mime: map[string]string{"text/x-custom": "c"}},
		{code: "display.Data{\"text/html\": \"<b>d</b>\"}", mime: map[string]string{"text/html": "<b>d</b>"}},
		{code: "import (\"image\"; \"image/color\")\nimg := image.NewRGBA(image.Rect(0, 0, 3, 2))\nimg.Set(0, 0, color.White)\nimg",
			text: "<image 3×2>", mime: map[string]string{"image/png": png1x1}},
		// An image.Image implemented in the cell.
		{code: "type Checker struct{}\n" +
			"func (Checker) ColorModel() color.Model { return color.GrayModel }\n" +
			"func (Checker) Bounds() image.Rectangle { return image.Rect(0, 0, 4, 4) }\n" +
			"func (Checker) At(x, y int) color.Color { return color.Gray{uint8(255 * ((x + y) % 2))} }\n" +
			"Checker{}",
			text: "<image 4×4>", mime: map[string]string{"image/png": png1x1}},
		{code: "type Thumb struct{}\nfunc (Thumb) PNG() []byte { return []byte{1, 2, 3} }\nThumb{}",
			mime: map[string]string{"image/png": base64.StdEncoding.EncodeToString([]byte{1, 2, 3})}},
		{code: "strings.Repeat(\"ab\", 3)", text: "ababab"},
		{code: "var e error\ne", text: "<nil>"},
	})
	// Very long text is cut.
	_, res := mustRun(t, s, "strings.Repeat(\"x\", 100000)")
	if got := text(res); len(got) > MaxText+100 || !strings.Contains(got, "more bytes") {
		t.Errorf("long text not cut: %d bytes", len(got))
	}
	// The JSON bundle entry is valid JSON.
	_, res = mustRun(t, s, "Obj{8}")
	raw, ok := res.Data["application/json"].(json.RawMessage)
	if !ok || !json.Valid(raw) {
		t.Errorf("application/json %T %v is not a json.RawMessage", res.Data["application/json"], res.Data["application/json"])
	}
}

func TestErrors(t *testing.T) {
	s := newSession(t, Options{})
	runCases(t, s, []cellCase{
		{code: "a := 1\n\nb := a +\n", errName: ErrCompile, errVal: "3:9: expected operand, found end of cell", tbHas: "   3 | b := a +"},
		{code: "v := 1\nw := v + \"s\"", errName: ErrCompile, errVal: "2:6", tbHas: "   2 | w := v + \"s\""},
		{code: "x := 1\nfmt.Println(y)", errName: ErrCompile, errVal: "2:13: undefined: y", tbHas: "^"},
		{code: "func broken() int {\n\treturn \"s\"\n}", errName: ErrCompile, errVal: "2:"},
		{code: "import \"no/such/pkg\"", errName: ErrCompile, errVal: "no/such/pkg"},
		// The cell before an error in the same cell ran; state stays usable.
		{code: "ok := 5\nvar m map[string]int\nm[\"k\"] = ok", errName: ErrPanic, errVal: "assignment to entry in nil map", tbHas: "in cell code at line 3:"},
		{code: "ok", text: "5"},
		{code: "func inner() { panic(\"deep\") }\nfunc outer() { inner() }", text: "<none>"},
		{code: "outer()", errName: ErrPanic, errVal: "deep", tbHas: "in main.inner at cell [8]"},
		{code: "var p *struct{ A int }\np.A = 1", errName: ErrPanic, errVal: "nil pointer dereference"},
		{code: "s := []int{1}\ni := 3\ns[i]", errName: ErrPanic, errVal: "index out of range"},
		{code: "panic(fmt.Errorf(\"wrapped %d\", 7))", errName: ErrPanic, errVal: "wrapped 7"},
		{code: "os.Exit(3)", errName: ErrPanic, errVal: "os.Exit(3)"},
		// A panic in compiled code names its compiled frames.
		{code: "import \"regexp\"\nregexp.MustCompile(\"(\")", errName: ErrPanic, errVal: "missing closing )", tbHas: "regexp.MustCompile"},
		// yaegi's compiler panics on some forms: an error, with a hint.
		{code: "ch := make(chan int, 1)\nclose(ch)\nv, open := <-ch", errName: ErrCompile, errVal: "put it in a function"},
		{code: "ok + 1", text: "6"},
	})
}

func TestGoroutinePanic(t *testing.T) {
	s := newSession(t, Options{})
	f, _ := mustRun(t, s, "done := make(chan bool)\ngo func() {\n\tdefer close(done)\n\tpanic(\"in goroutine\")\n}()\n<-done\ntime.Sleep(20 * time.Millisecond)")
	if e := f.errOut(); !strings.Contains(e, "panic in a goroutine started by cell [1]") || !strings.Contains(e, "in goroutine") {
		t.Errorf("stderr %q lacks the goroutine panic report", e)
	}
	// Arguments are evaluated when the go statement runs (per-iteration values).
	f, _ = mustRun(t, s, "import \"sync\"\nvar wg sync.WaitGroup\nres := make([]int, 4)\nfor i := 0; i < 4; i++ {\n\twg.Add(1)\n\tgo func(k int, out []int) {\n\t\tdefer wg.Done()\n\t\tout[k] = k * k\n\t}(i, res)\n}\nwg.Wait()\nfmt.Println(res)")
	if f.out() != "[0 1 4 9]\n" {
		t.Errorf("goroutines computed %q", f.out())
	}
	// A goroutine that panics after its cell ended is reported in the next cell.
	mustRun(t, s, "go func() {\n\ttime.Sleep(100 * time.Millisecond)\n\tvar m map[int]int\n\tm[1] = 1\n}()")
	time.Sleep(300 * time.Millisecond)
	f, _ = mustRun(t, s, "1")
	if e := f.errOut(); !strings.Contains(e, "assignment to entry in nil map") || !strings.Contains(e, "cell [3]") {
		t.Errorf("late goroutine panic not reported in the next cell: %q", e)
	}
	// Builtins and literals stay inline in rewritten go statements.
	f, _ = mustRun(t, s, "ch := make(chan int, 1)\ngo close(ch)\nfunc isOpen(c chan int) bool { _, ok := <-c; return ok }\nfmt.Println(isOpen(ch))\nfunc half(x float64) { fmt.Println(x / 2) }\ngo half(1)\ntime.Sleep(50 * time.Millisecond)")
	if f.out() != "false\n0.5\n" {
		t.Errorf("go close: %q", f.out())
	}
}

// blockingSymbols is a compiled package whose call ignores cancellation.
func blockingSymbols(release chan struct{}) map[string]map[string]reflect.Value {
	return map[string]map[string]reflect.Value{
		"example.com/block/block": {
			"Wait": reflect.ValueOf(func() { <-release }),
		},
	}
}

func TestInterrupt(t *testing.T) {
	release := make(chan struct{})
	s := newSession(t, Options{Symbols: []map[string]map[string]reflect.Value{blockingSymbols(release)}})
	mustRun(t, s, "state := 41")
	for _, code := range []string{
		"for {\n}",
		"n := 0\nfor {\n\tn++\n}",
		"time.Sleep(time.Hour)",
		"ch := make(chan int)\n<-ch",
		"select {}",
		"<-display.Context().Done()\nfmt.Println(\"saw cancel\")",
	} {
		t.Run(strings.Fields(code)[0], func(t *testing.T) {
			timer := time.AfterFunc(300*time.Millisecond, s.Interrupt)
			defer timer.Stop()
			start := time.Now()
			_, _, ce := run(t, s, code)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("interrupt took %v", d)
			}
			if ce == nil || ce.Name != ErrInterrupted {
				t.Errorf("want Interrupted, got %v", ce)
			}
			_, res := mustRun(t, s, "state + 1")
			if text(res) != "42" {
				t.Errorf("state after interrupt: %q", text(res))
			}
		})
	}
	t.Run("compiled call that ignores cancellation", func(t *testing.T) {
		defer func(d time.Duration) { stillRunningAfter = d }(stillRunningAfter)
		stillRunningAfter = 200 * time.Millisecond
		go func() {
			time.Sleep(100 * time.Millisecond)
			s.Interrupt()
			time.Sleep(500 * time.Millisecond)
			close(release)
		}()
		f, _, ce := run(t, s, "import \"example.com/block\"\nblock.Wait()")
		if ce == nil || ce.Name != ErrInterrupted {
			t.Errorf("want Interrupted, got %v", ce)
		}
		if !strings.Contains(f.errOut(), StillRunningMessage) || !strings.Contains(f.errOut(), "returned after") {
			t.Errorf("stderr %q lacks the notice", f.errOut())
		}
		_, res := mustRun(t, s, "state")
		if text(res) != "41" {
			t.Errorf("state %q", text(res))
		}
	})
}

func TestInterruptAbandon(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	defer func(d time.Duration) { stillRunningAfter = d }(stillRunningAfter)
	stillRunningAfter = 100 * time.Millisecond
	s := newSession(t, Options{Symbols: []map[string]map[string]reflect.Value{blockingSymbols(release)}})
	mustRun(t, s, "import \"example.com/block\"\nkept := 1")
	go func() {
		time.Sleep(100 * time.Millisecond)
		s.Interrupt()
		time.Sleep(300 * time.Millisecond)
		s.Interrupt()
	}()
	f, _, ce := run(t, s, "block.Wait()")
	if ce == nil || !strings.Contains(ce.Value, "abandoned") || !strings.Contains(f.errOut(), StillRunningMessage) {
		t.Fatalf("want abandon, got %v; stderr %q", ce, f.errOut())
	}
	// A fresh interpreter: earlier definitions are gone, pre-imports work.
	_, _, ce = run(t, s, "kept")
	if ce == nil || ce.Name != ErrCompile {
		t.Errorf("kept survived the abandon: %v", ce)
	}
	_, res := mustRun(t, s, "strings.ToUpper(\"ok\")")
	if text(res) != "OK" {
		t.Errorf("after abandon: %q", text(res))
	}
}

func TestStdin(t *testing.T) {
	s := newSession(t, Options{})
	f := &fakeIO{inputs: []string{"Ada 36", "second line", "third"}}
	res, err := s.Execute(context.Background(), "var name string\nvar age int\nn, err := fmt.Scanln(&name, &age)\nfmt.Println(n, err, name, age)\n"+
		"import \"bufio\"\nr := bufio.NewReader(os.Stdin)\nline, _ := r.ReadString('\\n')\nfmt.Printf(\"%q\\n\", line)\n"+
		"var word string\nfmt.Scan(&word)\nword", f)
	if err != nil {
		t.Fatal(err)
	}
	if want := "2 <nil> Ada 36\n\"second line\\n\"\n"; f.out() != want {
		t.Errorf("stdout %q, want %q", f.out(), want)
	}
	if text(res) != "third" {
		t.Errorf("result %q", text(res))
	}
	// A failing Input fails the read with its error.
	f = &fakeIO{inputErr: errors.New("stdin not allowed")}
	_, err = s.Execute(context.Background(), "var z string\n_, err := fmt.Scanln(&z)\nfmt.Println(\"err:\", err)\n_, err = bufio.NewReader(os.Stdin).ReadString('\\n')\nfmt.Println(\"err:\", err)", f)
	if err != nil {
		t.Fatal(err)
	}
	if want := "err: stdin not allowed\nerr: stdin not allowed\n"; f.out() != want {
		t.Errorf("stdout %q, want %q", f.out(), want)
	}
}

func TestDisplay(t *testing.T) {
	s := newSession(t, Options{})
	f, _ := mustRun(t, s, "display.HTML(\"<p>x</p>\")\nd := display.NewDisplay()\nd.Text(\"step 1\")\nd.Text(\"step 2\")\ndisplay.Clear(true)\n"+
		"display.Markdown(\"**b**\")\nfmt.Println(d.ID != \"\")")
	if f.out() != "true\n" {
		t.Errorf("stdout %q", f.out())
	}
	if len(f.displays) != 4 {
		t.Fatalf("displays %+v", f.displays)
	}
	if f.displays[0].data["text/html"] != "<p>x</p>" || f.displays[0].id != "" {
		t.Errorf("display 0 %+v", f.displays[0])
	}
	if d := f.displays[1]; d.data["text/plain"] != "step 1" || d.id == "" || d.update {
		t.Errorf("display 1 %+v", d)
	}
	if d := f.displays[2]; d.data["text/plain"] != "step 2" || d.id != f.displays[1].id || !d.update {
		t.Errorf("display 2 %+v (want update of %s)", d, f.displays[1].id)
	}
	if f.displays[3].data["text/markdown"] != "**b**" {
		t.Errorf("display 3 %+v", f.displays[3])
	}
	if len(f.clears) != 1 || !f.clears[0] {
		t.Errorf("clears %v", f.clears)
	}
	// An updatable display created in one cell is updated from the next.
	f, _ = mustRun(t, s, "d.Text(\"step 3\")")
	if len(f.displays) != 1 || !f.displays[0].update {
		t.Errorf("later update %+v", f.displays)
	}
}

func TestOutputAfterCell(t *testing.T) {
	s := newSession(t, Options{})
	f, _ := mustRun(t, s, "go func() {\n\ttime.Sleep(50 * time.Millisecond)\n\tfmt.Println(\"late\")\n}()")
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(f.out(), "late") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if f.out() != "late\n" {
		t.Errorf("output of a goroutine after its cell: %q", f.out())
	}
}

func TestNoHistoryAndConcurrentQueries(t *testing.T) {
	s := newSession(t, Options{})
	mustRun(t, s, "a := 1")
	res, err := s.ExecuteWith(context.Background(), "a + 1", &fakeIO{}, ExecOptions{NoHistory: true})
	if err != nil || text(res) != "2" {
		t.Fatalf("%v %v", text(res), err)
	}
	if s.ExecutionCount() != 1 || len(s.History().Range(0, 0, 0)) != 1 {
		t.Errorf("count %d history %v", s.ExecutionCount(), s.History().Range(0, 0, 0))
	}
	// Completion and inspection while a cell runs neither block nor race (the documentation
	// table is decoded once per process, up front).
	symbols.Docs()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		mustRunNoT(s, "time.Sleep(200 * time.Millisecond)")
	}()
	time.Sleep(50 * time.Millisecond)
	done := make(chan bool)
	go func() {
		s.Complete("strings.Sp", 10)
		s.Complete("a", 1)
		s.Inspect("strings.Split", 10, 0)
		s.IsComplete("for {")
		s.History().Tail(5)
		s.ExecutionCount()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(150 * time.Millisecond):
		t.Error("queries blocked while a cell ran")
	}
	wg.Wait()
}

func mustRunNoT(s *Session, code string) {
	_, _ = s.Execute(context.Background(), code, &fakeIO{})
}
