package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestCLISymbolsCurrent fails when kernel/cli's exported API and the
// generated symbols_cli.go disagree (run `go generate ./kernel/cmd/qwenrepl`).
func TestCLISymbolsCurrent(t *testing.T) {
	files, err := filepath.Glob("../../cli/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("kernel/cli sources: %v", err)
	}
	want := map[string]bool{}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil && d.Name.IsExported() {
					want[d.Name.Name] = true
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						if s.Name.IsExported() {
							want[s.Name.Name] = true
						}
					case *ast.ValueSpec:
						for _, n := range s.Names {
							if n.IsExported() {
								want[n.Name] = true
							}
						}
					}
				}
			}
		}
	}
	got := map[string]bool{}
	for name := range Symbols["github.com/qwengo/qwengo/kernel/cli/cli"] {
		if !strings.HasPrefix(name, "_") {
			got[name] = true
		}
	}
	var missing, extra []string
	for n := range want {
		if !got[n] {
			missing = append(missing, n)
		}
	}
	for n := range got {
		if !want[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing)+len(extra) > 0 {
		t.Errorf("symbols_cli.go is stale (go generate ./kernel/cmd/qwenrepl): missing %v, extra %v", missing, extra)
	}
}
