package session

import (
	"strings"
	"testing"
)

// querySession is a session with a few definitions for completion and inspection.
func querySession(t *testing.T) *Session {
	t.Helper()
	s := newSession(t, Options{})
	mustRun(t, s, "import \"bufio\"\n"+
		"type Pt struct{ X, Y int; name string }\n"+
		"func (p Pt) Norm() int { return p.X*p.X + p.Y*p.Y }\n"+
		"// Scale multiplies both coordinates by k.\n"+
		"func (p *Pt) Scale(k int) { p.X *= k; p.Y *= k }\n"+
		"p := Pt{1, 2, \"a\"}\n"+
		"var sb strings.Builder\n"+
		"w := bufio.NewWriter(os.Stdout)\n"+
		"number := 42\n"+
		"// helper returns a and no error.\n"+
		"func helper(a int, b string) (int, error) { return a, nil }")
	return s
}

func TestComplete(t *testing.T) {
	s := querySession(t)
	tests := []struct {
		code     string
		cursor   int // -1: end
		want     []string
		not      []string
		start    int // -1: don't check
		wantNone bool
	}{
		{code: "strings.Sp", cursor: -1, want: []string{"Split", "SplitN", "SplitAfter"}, not: []string{"Fields"}, start: 8},
		{code: "x := strings.ToU", cursor: -1, want: []string{"ToUpper"}, start: 13},
		{code: "fmt.Print", cursor: -1, want: []string{"Print", "Printf", "Println"}},
		{code: "bufio.NewR", cursor: -1, want: []string{"NewReader", "NewReaderSize"}},
		{code: "sort.Sl", cursor: -1, want: []string{"Slice", "SliceStable"}}, // not imported: still known
		{code: "display.New", cursor: -1, want: []string{"NewDisplay"}},
		{code: "p.", cursor: -1, want: []string{"Norm", "Scale", "X", "Y", "name"}, start: 2},
		{code: "p.N", cursor: -1, want: []string{"Norm"}, not: []string{"Scale"}},
		{code: "sb.Wr", cursor: -1, want: []string{"WriteString", "WriteByte"}},
		{code: "w.Fl", cursor: -1, want: []string{"Flush"}},
		{code: "num", cursor: -1, want: []string{"number"}, start: 0},
		{code: "hel", cursor: -1, want: []string{"helper"}},
		{code: "fmt.Println(num", cursor: -1, want: []string{"number"}, start: 12},
		{code: "str", cursor: -1, want: []string{"strings", "string", "strconv", "struct"}},
		{code: "Pt", cursor: -1, want: []string{"Pt"}},
		{code: "%ti", cursor: -1, want: []string{"%time"}, start: 0},
		{code: "%", cursor: -1, want: []string{"%help", "%env", "%reset", "%mem", "%time"}},
		{code: "x := 1\nstrings.Rep + 2", cursor: 18, want: []string{"Repeat", "ReplaceAll"}, start: 15},
		{code: "_q", cursor: -1, wantNone: true}, // the session's own names are hidden
		{code: "f().x", cursor: -1, wantNone: true},
		{code: "", cursor: -1, want: []string{"fmt", "number", "for"}},
	}
	for _, tt := range tests {
		cur := tt.cursor
		if cur < 0 {
			cur = len(tt.code)
		}
		c := s.Complete(tt.code, cur)
		if tt.wantNone && len(c.Matches) > 0 {
			t.Errorf("Complete(%q): %v, want none", tt.code, c.Matches)
		}
		for _, w := range tt.want {
			if !contains(c.Matches, w) {
				t.Errorf("Complete(%q) = %v lacks %s", tt.code, c.Matches, w)
			}
		}
		for _, n := range tt.not {
			if contains(c.Matches, n) {
				t.Errorf("Complete(%q) = %v has %s", tt.code, c.Matches, n)
			}
		}
		if tt.start > 0 && c.Start != tt.start || c.End != cur {
			t.Errorf("Complete(%q): range [%d:%d], want [%d:%d]", tt.code, c.Start, c.End, tt.start, cur)
		}
		types, _ := c.Metadata["_jupyter_types_experimental"].([]map[string]any)
		if len(types) != len(c.Matches) {
			t.Errorf("Complete(%q): %d type entries for %d matches", tt.code, len(types), len(c.Matches))
		}
	}
}

func TestInspect(t *testing.T) {
	s := querySession(t)
	tests := []struct {
		code   string
		cursor int // -1: end
		detail int
		want   []string
	}{
		{"strings.Split", -1, 0, []string{"func strings.Split(s, sep string) []string", "Split slices s"}},
		{"strings.Split(s, \",\")", 14, 0, []string{"func strings.Split("}},      // inside the call
		{"x := strings.Split(s, \",\")", 15, 0, []string{"func strings.Split("}}, // on the name
		{"x := strings.Split(s, \",\")", 8, 0, []string{"package strings"}},      // on the package
		{"fmt", -1, 0, []string{"package fmt", "formatted I/O"}},
		{"strings.Builder", -1, 1, []string{"type Builder struct", "Methods:", "WriteString"}},
		{"sb.WriteString", -1, 0, []string{"func (b *Builder) WriteString(s string) (int, error)"}},
		{"w.Flush", -1, 0, []string{"Flush writes any buffered data"}},
		{"helper", -1, 0, []string{"func helper(a int, b string) (int, error)", "helper returns a and no error.", "cell [1]"}},
		{"p.Scale", -1, 0, []string{"func (p *Pt) Scale(k int)", "Scale multiplies"}},
		{"Pt", -1, 0, []string{"type Pt struct"}},
		{"p", -1, 0, []string{"p: Pt = {1 2 a}"}},
		{"number", -1, 0, []string{"number: int = 42"}},
		{"p.X", -1, 0, []string{"field p.X int"}},
		{"len", -1, 0, []string{"func len(v Type) int"}},
		{"display.NewDisplay", -1, 0, []string{"func display.NewDisplay() *Display"}},
	}
	for _, tt := range tests {
		cur := tt.cursor
		if cur < 0 {
			cur = len(tt.code)
		}
		m, ok := s.Inspect(tt.code, cur, tt.detail)
		if !ok {
			t.Errorf("Inspect(%q, %d): not found", tt.code, cur)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(m["text/plain"], w) {
				t.Errorf("Inspect(%q, %d) = %q lacks %q", tt.code, cur, m["text/plain"], w)
			}
		}
	}
	for _, code := range []string{"", "   ", "nosuchname", "1 + 2", "strings.NoSuch"} {
		if m, ok := s.Inspect(code, len(code), 0); ok {
			t.Errorf("Inspect(%q) found %v", code, m)
		}
	}
}

func TestIsComplete(t *testing.T) {
	tests := []struct {
		code, status, indent string
	}{
		{"", "complete", ""},
		{"x := 1", "complete", ""},
		{"fmt.Println(1)", "complete", ""},
		{"func f() {", "incomplete", "\t"},
		{"func f() {\n\tif x {", "incomplete", "\t\t"},
		{"func f() {\n}", "complete", ""},
		{"fmt.Println(1,", "incomplete", "\t"},
		{"x := []int{\n\t1,", "incomplete", "\t"},
		{"s := `raw", "incomplete", ""},
		{"/* comment", "incomplete", ""},
		{"x := 1 +", "incomplete", "\t"},
		{"for i := 0; i < 3; i++ {", "incomplete", "\t"},
		{"if x", "incomplete", ""},
		{"x := \"unterminated", "invalid", ""},
		{"x := )", "invalid", ""},
		{"}", "invalid", ""},
		{"x := 1 1", "invalid", ""},
		{"%time", "complete", ""},
		{"%env A=1", "complete", ""},
		{"!ls", "complete", ""},
		{"%time\nfor {", "incomplete", "\t"},
		{" %x", "invalid", ""},
		{"\n!x", "complete", ""},
		{"x := 1\n%env A=1\ny := (", "incomplete", "\t"},
		{"package main\n\nfunc main() {\n\tfmt.Println(1)\n}", "complete", ""},
	}
	s := &Session{}
	for _, tt := range tests {
		st, ind := s.IsComplete(tt.code)
		if st != tt.status || ind != tt.indent {
			t.Errorf("IsComplete(%q) = %q %q, want %q %q", tt.code, st, ind, tt.status, tt.indent)
		}
	}
}
