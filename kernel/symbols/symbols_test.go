package symbols

import (
	"os/exec"
	"path"
	"strings"
	"testing"
)

// Every importable engine package has a symbol table: `go generate ./kernel/symbols` was run
// after the engine last gained a package.
func TestEveryEnginePackageExtracted(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{.Name}} {{len .GoFiles}}", "github.com/qwengo/qwengo/engine/...").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[1] == "main" || f[2] == "0" || strings.Contains(f[0]+"/", "/internal/") {
			continue
		}
		if _, ok := Symbols[f[0]+"/"+f[1]]; !ok {
			t.Errorf("no symbols for %s: run go generate ./kernel/symbols", f[0])
		}
	}
	if _, ok := Symbols["github.com/qwengo/qwengo/kernel/display/display"]; !ok {
		t.Error("no symbols for kernel/display")
	}
}

func TestDocs(t *testing.T) {
	d, err := Docs()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"fmt", "strings", "builtin", "github.com/qwengo/qwengo/kernel/display"} {
		if d[p] == nil {
			t.Errorf("no docs for %s", p)
		}
	}
	for k := range Symbols {
		if p := path.Dir(k); d[p] == nil {
			t.Errorf("extracted package %s has no docs", p)
		}
	}
	tests := []struct{ pkg, member, kind, decl, text string }{
		{"strings", "Split", "func", "func Split(s, sep string) []string", "Split slices s"},
		{"strings", "Builder.WriteString", "method", "func (b *Builder) WriteString(s string) (int, error)", "appends"},
		{"strings", "Builder", "type", "type Builder struct", "Builder is used"},
		{"math", "Pi", "const", "Pi", ""},
		{"builtin", "append", "func", "func append(slice []Type, elems ...Type) []Type", "append built-in"},
		{"fmt", "", "package", "package fmt", "formatted I/O"},
		{"github.com/qwengo/qwengo/kernel/display", "NewDisplay", "func", "func NewDisplay() *Display", "fresh random ID"},
	}
	for _, tt := range tests {
		doc, ok := Lookup(tt.pkg, tt.member)
		if !ok {
			t.Errorf("Lookup(%s, %s) not found", tt.pkg, tt.member)
			continue
		}
		if doc.Kind != tt.kind || !strings.Contains(doc.Decl, tt.decl) || !strings.Contains(doc.Text, tt.text) {
			t.Errorf("Lookup(%s, %s) = %+v", tt.pkg, tt.member, doc)
		}
	}
	if _, ok := Lookup("strings", "nosuch"); ok {
		t.Error("found strings.nosuch")
	}
	if ms := Methods("strings", "Builder"); len(ms) < 5 || ms[0] != "Cap" {
		t.Errorf("Methods(strings, Builder) = %v", ms)
	}
	if _, err := DecodeDocs([]byte("not gzip")); err == nil {
		t.Error("DecodeDocs accepted garbage")
	}
}
