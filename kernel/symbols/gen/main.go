// Command gen regenerates the interpreter's symbol tables and documentation table in
// kernel/symbols. `go generate ./kernel/symbols` runs it in that directory.
//
// It lists every importable package under the module's engine/ directory (plus kernel/display and kernel/plot)
// with `go list`, runs yaegi's extractor on each (writing extract_<path>.go, gofmt'ed, each file
// replaced atomically), deletes extract_*.go files of packages that are gone, and writes
// docs.json.gz: doc comments and declarations of the standard library packages yaegi
// provides, the engine packages and display, read from their sources with go/doc.
//
// A package that fails to type-check stops the generator with its error and leaves the
// existing files untouched; -k skips such packages instead (their old files are kept).
//
// Usage (from kernel/symbols):
//
//	go run ./gen [-k] [-v]
package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/doc"
	"go/format"
	"go/parser"
	"go/printer"
	"go/token"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/traefik/yaegi/extract"
	"github.com/traefik/yaegi/stdlib"
)

const (
	module  = "github.com/qwengo/qwengo"
	prefix  = "extract_"
	docFile = "docs.json.gz"
	maxDecl = 4000 // longer declarations (big const groups) are cut
)

// extraPackages are extracted besides the engine packages.
var extraPackages = []string{module + "/kernel/display", module + "/kernel/plot"}

type listed struct {
	ImportPath string
	Name       string
	Dir        string
	GoFiles    []string
	Error      *struct{ Err string }
}

func main() {
	keepGoing := flag.Bool("k", false, "skip packages that fail to type-check (keep their old files) instead of failing")
	verbose := flag.Bool("v", false, "print each package")
	flag.Parse()
	if err := run(*keepGoing, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "symbols/gen:", err)
		os.Exit(1)
	}
}

func run(keepGoing, verbose bool) error {
	pkgs, err := goList(append([]string{module + "/engine/..."}, extraPackages...))
	if err != nil {
		return err
	}
	var targets []listed
	for _, p := range pkgs {
		switch {
		case p.Name == "main", len(p.GoFiles) == 0,
			strings.Contains(p.ImportPath+"/", "/internal/"), strings.Contains(p.ImportPath+"/", "/testdata/"):
			continue
		}
		targets = append(targets, p)
	}

	// Extract every package first; write only when all succeeded (or -k).
	out := map[string][]byte{}
	keep := map[string]bool{}
	var failed []string
	ext := extract.Extractor{Dest: "symbols"}
	for _, p := range targets {
		name := fileName(p.ImportPath)
		if p.Error != nil {
			failed = append(failed, fmt.Sprintf("%s: %s", p.ImportPath, p.Error.Err))
			keep[name] = true
			continue
		}
		var buf bytes.Buffer
		if _, err := ext.Extract(p.ImportPath, "", &buf); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", p.ImportPath, err))
			keep[name] = true
			continue
		}
		src, err := format.Source(buf.Bytes())
		if err != nil {
			return fmt.Errorf("gofmt of extracted %s: %w", p.ImportPath, err)
		}
		out[name] = src
		if verbose {
			fmt.Fprintf(os.Stderr, "extracted %s (%d bytes)\n", p.ImportPath, len(src))
		}
	}
	if len(failed) > 0 {
		msg := "cannot extract:\n\t" + strings.Join(failed, "\n\t")
		if !keepGoing {
			return fmt.Errorf("%s\n(run with -k to skip these packages)", msg)
		}
		fmt.Fprintln(os.Stderr, "symbols/gen: skipped (old files kept):\n\t"+strings.Join(failed, "\n\t"))
	}

	for name, src := range out {
		if err := writeAtomic(name, src); err != nil {
			return err
		}
	}
	old, _ := filepath.Glob(prefix + "*.go")
	for _, f := range old {
		if out[f] == nil && !keep[f] {
			if err := os.Remove(f); err != nil {
				return err
			}
			fmt.Fprintln(os.Stderr, "removed", f)
		}
	}

	// Documentation: stdlib packages yaegi provides, plus the extracted packages.
	docPaths := []string{"builtin"}
	for k := range stdlib.Symbols {
		if ip := path.Dir(k); ip != "." && !strings.HasPrefix(ip, "github.com/") {
			docPaths = append(docPaths, ip)
		}
	}
	for _, p := range targets {
		if p.Error == nil {
			docPaths = append(docPaths, p.ImportPath)
		}
	}
	sort.Strings(docPaths)
	table, err := buildDocs(docPaths)
	if err != nil {
		return err
	}
	js, err := json.Marshal(table)
	if err != nil {
		return err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression) // level is valid
	if _, err := zw.Write(js); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if verbose {
		fmt.Fprintf(os.Stderr, "docs: %d packages, %d bytes JSON, %d gzipped\n", len(table), len(js), gz.Len())
	}
	return writeAtomic(docFile, gz.Bytes())
}

// fileName maps an import path to its generated file name.
func fileName(importPath string) string {
	r := strings.NewReplacer("/", "-", ".", "_", "~", "_")
	return prefix + r.Replace(importPath) + ".go"
}

func goList(patterns []string) ([]listed, error) {
	args := append([]string{"list", "-e", "-json=ImportPath,Name,Dir,GoFiles,Error"}, patterns...)
	cmd := exec.Command("go", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s: %v: %s", strings.Join(patterns, " "), err, stderr.String())
	}
	var pkgs []listed
	dec := json.NewDecoder(bytes.NewReader(b))
	for dec.More() {
		var p listed
		if err := dec.Decode(&p); err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
}

func writeAtomic(name string, data []byte) error {
	if old, err := os.ReadFile(name); err == nil && bytes.Equal(old, data) {
		return nil
	}
	f, err := os.CreateTemp(".", "."+name+".tmp*")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return err
	}
	return os.Rename(f.Name(), name)
}

// Doc, PackageDoc mirror the symbols package's table (kept separate so the generator builds
// even when the generated files are broken).
type Doc struct {
	Kind string `json:"k"`
	Decl string `json:"d,omitempty"`
	Text string `json:"t,omitempty"`
}

// PackageDoc is one package of the table.
type PackageDoc struct {
	Name    string         `json:"n"`
	Text    string         `json:"t,omitempty"`
	Members map[string]Doc `json:"m"`
}

func buildDocs(importPaths []string) (map[string]*PackageDoc, error) {
	pkgs, err := goList(importPaths)
	if err != nil {
		return nil, err
	}
	table := map[string]*PackageDoc{}
	for _, p := range pkgs {
		if p.Error != nil || len(p.GoFiles) == 0 {
			continue
		}
		fset := token.NewFileSet()
		var files []*ast.File
		for _, g := range p.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, g), nil, parser.ParseComments)
			if err != nil {
				return nil, fmt.Errorf("docs: %w", err)
			}
			files = append(files, f)
		}
		mode := doc.Mode(0)
		if p.ImportPath == "builtin" {
			mode = doc.AllDecls
		}
		d, err := doc.NewFromFiles(fset, files, p.ImportPath, mode)
		if err != nil {
			return nil, fmt.Errorf("docs of %s: %w", p.ImportPath, err)
		}
		table[p.ImportPath] = packageDoc(fset, d)
	}
	return table, nil
}

func packageDoc(fset *token.FileSet, d *doc.Package) *PackageDoc {
	pd := &PackageDoc{Name: d.Name, Text: strings.TrimSpace(d.Doc), Members: map[string]Doc{}}
	addValues := func(vs []*doc.Value, kind string) {
		for _, v := range vs {
			decl := printNode(fset, v.Decl)
			for _, n := range v.Names {
				pd.Members[n] = Doc{Kind: kind, Decl: decl, Text: strings.TrimSpace(v.Doc)}
			}
		}
	}
	addFunc := func(f *doc.Func, key, kind string) {
		fd := *f.Decl
		fd.Body = nil
		fd.Doc = nil
		pd.Members[key] = Doc{Kind: kind, Decl: printNode(fset, &fd), Text: strings.TrimSpace(f.Doc)}
	}
	addValues(d.Consts, "const")
	addValues(d.Vars, "var")
	for _, f := range d.Funcs {
		addFunc(f, f.Name, "func")
	}
	for _, t := range d.Types {
		decl := *t.Decl
		decl.Doc = nil
		pd.Members[t.Name] = Doc{Kind: "type", Decl: printNode(fset, &decl), Text: strings.TrimSpace(t.Doc)}
		addValues(t.Consts, "const")
		addValues(t.Vars, "var")
		for _, f := range t.Funcs {
			addFunc(f, f.Name, "func")
		}
		for _, m := range t.Methods {
			addFunc(m, t.Name+"."+m.Name, "method")
		}
	}
	return pd
}

func printNode(fset *token.FileSet, n any) string {
	var b bytes.Buffer
	cfg := printer.Config{Mode: printer.UseSpaces | printer.TabIndent, Tabwidth: 8}
	if err := cfg.Fprint(&b, fset, n); err != nil {
		return ""
	}
	s := b.String()
	if len(s) > maxDecl {
		s = s[:maxDecl] + "\n\t// … (cut)"
	}
	return s
}
