package session

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestSplitCell(t *testing.T) {
	type want struct {
		kind  unitKind
		text  string
		names []string
		line  int
		expr  bool
		main  bool
	}
	tests := []struct {
		name string
		src  string
		want []want
	}{
		{"empty", "", nil},
		{"comments only", "// nothing\n/* here */", nil},
		{"one statement", "x := 1", []want{{unitStmt, "x := 1", nil, 1, false, false}}},
		{"trailing expression", "x + 1", []want{{unitStmt, "x + 1", nil, 1, true, false}}},
		{"mixed", "import \"strings\"\nfunc f() int { return 1 }\ny := f()\ntype T struct{ A int }\nvar v = T{}\nconst K = 3\ny",
			[]want{
				{unitImport, `import "strings"`, nil, 1, false, false},
				{unitDecl, "func f() int { return 1 }", []string{"f"}, 2, false, false},
				{unitStmt, "y := f()", nil, 3, false, false},
				{unitDecl, "type T struct{ A int }", []string{"T"}, 4, false, false},
				{unitDecl, "var v = T{}", []string{"v"}, 5, false, false},
				{unitDecl, "const K = 3", []string{"K"}, 6, false, false},
				{unitStmt, "y", nil, 7, true, false},
			}},
		{"method", "func (p *P) Name() string { return \"\" }", []want{{unitDecl, "func (p *P) Name() string { return \"\" }", []string{"P.Name"}, 1, false, false}}},
		{"func literal call is a statement", "func() { fmt.Println(1) }()", []want{{unitStmt, "func() { fmt.Println(1) }()", nil, 1, true, false}}},
		{"func literal with result", "func(x int) int { return x }(3)", []want{{unitStmt, "func(x int) int { return x }(3)", nil, 1, true, false}}},
		{"for header semicolons", "for i := 0; i < 3; i++ {\n\tfmt.Println(i)\n}\nz := 2",
			[]want{{unitStmt, "for i := 0; i < 3; i++ {\n\tfmt.Println(i)\n}", nil, 1, false, false}, {unitStmt, "z := 2", nil, 4, false, false}}},
		{"if with init", "if v, ok := m[k]; ok { x = v }", []want{{unitStmt, "if v, ok := m[k]; ok { x = v }", nil, 1, false, false}}},
		{"semicolons on one line", "a := 1; b := 2", []want{{unitStmt, "a := 1", nil, 1, false, false}, {unitStmt, "b := 2", nil, 1, false, false}}},
		{"grouped declarations", "var (\n\ta = 1\n\tb, c = 2, 3\n)", []want{{unitDecl, "var (\n\ta = 1\n\tb, c = 2, 3\n)", []string{"a", "b", "c"}, 1, false, false}}},
		{"package clause and main", "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(1)\n}",
			[]want{{unitImport, `import "fmt"`, nil, 3, false, false}, {unitDecl, "func main() {\n\tfmt.Println(1)\n}", []string{"main"}, 5, false, true}}},
		{"raw string with newline", "s := `a\nb`\ns", []want{{unitStmt, "s := `a\nb`", nil, 1, false, false}, {unitStmt, "s", nil, 3, true, false}}},
		{"multi-line call", "fmt.Println(\n\t1,\n\t2,\n)", []want{{unitStmt, "fmt.Println(\n\t1,\n\t2,\n)", nil, 1, true, false}}},
		{"go statement", "go f(x)", []want{{unitStmt, "go f(x)", nil, 1, false, false}}},
		{"switch", "switch x := 3; x {\ncase 1:\n\tfmt.Println()\n}", []want{{unitStmt, "switch x := 3; x {\ncase 1:\n\tfmt.Println()\n}", nil, 1, false, false}}},
		{"unicode identifiers", "变量 := \"値\"\n变量", []want{{unitStmt, "变量 := \"値\"", nil, 1, false, false}, {unitStmt, "变量", nil, 2, true, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			units, err := splitCell(tt.src)
			if err != nil {
				t.Fatalf("splitCell: %v", err)
			}
			if err := unitsCover(tt.src, units); err != nil {
				t.Fatal(err)
			}
			if len(units) != len(tt.want) {
				t.Fatalf("got %d units %+v, want %d", len(units), units, len(tt.want))
			}
			for i, u := range units {
				w := tt.want[i]
				got := tt.src[u.start:u.end]
				if u.kind != w.kind || got != w.text || u.line != w.line || u.isExpr != w.expr || u.isMain != w.main {
					t.Errorf("unit %d: got %v %q line %d expr %v main %v, want %v %q line %d expr %v main %v",
						i, u.kind, got, u.line, u.isExpr, u.isMain, w.kind, w.text, w.line, w.expr, w.main)
				}
				if w.names != nil && !reflect.DeepEqual(u.names, w.names) {
					t.Errorf("unit %d names %v, want %v", i, u.names, w.names)
				}
			}
		})
	}
}

func TestSplitCellDocComment(t *testing.T) {
	src := "x := 1\n\n// Double doubles.\n// Twice.\nfunc Double(v int) int { return 2 * v }"
	units, err := splitCell(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(units) != 2 {
		t.Fatalf("units %+v", units)
	}
	if got := commentText(src[units[1].docStart:units[1].start]); got != "Double doubles.\nTwice." {
		t.Errorf("doc %q", got)
	}
	if units[0].docStart != units[0].start {
		t.Errorf("statement without comment has doc %q", src[units[0].docStart:units[0].start])
	}
}

func TestSplitCellErrors(t *testing.T) {
	tests := []struct {
		src     string
		wantPos string // "line:col" of the first error
	}{
		{"x := \"unterminated", "1:6"},
		{"a := 1\nb := (2 +\n}", "3:1"},
		{"func f( {", "1:9"},
		{"x := 1\nvar = 3", "2:5"},
		{"import (\"fmt\"", "1:14"},
	}
	for _, tt := range tests {
		_, err := splitCell(tt.src)
		var se *splitError
		if !errors.As(err, &se) {
			t.Errorf("%q: error %v is not a splitError", tt.src, err)
			continue
		}
		ec := errorContext{seq: 1, src: tt.src}
		ce := ec.compileError(err)
		if !strings.HasPrefix(ce.Value, tt.wantPos+":") {
			t.Errorf("%q: error %q does not start at %s", tt.src, ce.Value, tt.wantPos)
		}
	}
}

func TestPlanGroups(t *testing.T) {
	units, err := splitCell("x := 1\nimport \"os\"\nfunc f() {}\nfunc g() {}\ny := 2\nz := 3\nimport \"io\"\nvar v int")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, g := range planGroups(units) {
		got = append(got, g.kind.String()+":"+strings.Repeat("u", len(g.units)))
	}
	want := []string{"import:uu", "stmt:u", "decl:uu", "stmt:uu", "decl:u"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("groups %v, want %v", got, want)
	}
}

func FuzzSplitCell(f *testing.F) {
	for _, s := range []string{
		"x := 1", "func f() {}\nf()", "for i := 0; i < 3; i++ {}", "package main\nfunc main(){}",
		"type T struct{}; var t T; t", "s := `raw\r\nstring`", "a := []int{1,\n2}\na", "// c\nx /* c */ := 1",
		"func (T) M() {}", "if x := 1; x > 0 {\n} else {\n}", "go func(){}()", "}{)(", "\"\\",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		units, err := splitCell(src)
		if err != nil {
			var se *splitError
			if !errors.As(err, &se) || len(se.list) == 0 {
				t.Fatalf("error %T %v is not a located syntax error", err, err)
			}
			return
		}
		if err := unitsCover(src, units); err != nil {
			t.Fatal(err)
		}
		for _, g := range planGroups(units) {
			_ = groupSource(src, cellName(1), g)
		}
		st, _ := isComplete(src)
		if st != "complete" && st != "incomplete" && st != "invalid" {
			t.Fatalf("isComplete status %q", st)
		}
	})
}
