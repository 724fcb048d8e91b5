package symbols

import (
	"bytes"
	"compress/gzip"
	_ "embed" // docs.json.gz
	"encoding/json"
	"io"
	"sort"
	"strings"
	"sync"
)

// Doc is the documentation of one package member, or of the package itself.
type Doc struct {
	Kind string `json:"k"`           // "package", "func", "method", "type", "var" or "const"
	Decl string `json:"d,omitempty"` // the declaration: a signature, a type or a var/const group
	Text string `json:"t,omitempty"` // the doc comment
}

// PackageDoc is the documentation of one package.
type PackageDoc struct {
	Name    string         `json:"n"`           // package name
	Text    string         `json:"t,omitempty"` // package doc comment
	Members map[string]Doc `json:"m"`           // by name; methods as "Type.Method"
}

// DocTable is the generated documentation: import path → package.
type DocTable map[string]*PackageDoc

//go:embed docs.json.gz
var docsGz []byte

var (
	docsOnce sync.Once
	docs     DocTable
	docsErr  error
)

// Docs returns the documentation table, decoded on first use. A decoding failure (a corrupt
// generated file) gives an empty table and the error.
func Docs() (DocTable, error) {
	docsOnce.Do(func() {
		docs, docsErr = DecodeDocs(docsGz)
		if docs == nil {
			docs = DocTable{}
		}
	})
	return docs, docsErr
}

// DecodeDocs decodes a gzipped JSON documentation table.
func DecodeDocs(gz []byte) (DocTable, error) {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, err
	}
	var t DocTable
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, err
	}
	return t, nil
}

// Lookup returns the documentation of member (a name, or "Type.Method") of the package with
// the given import path; member "" gives the package's own documentation.
func Lookup(importPath, member string) (Doc, bool) {
	t, _ := Docs()
	p := t[importPath]
	if p == nil {
		return Doc{}, false
	}
	if member == "" {
		return Doc{Kind: "package", Decl: "package " + p.Name + ` // import "` + importPath + `"`, Text: p.Text}, true
	}
	d, ok := p.Members[member]
	return d, ok
}

// Methods returns the documented methods of a named type, sorted ("Split" for "T.Split").
func Methods(importPath, typeName string) []string {
	t, _ := Docs()
	p := t[importPath]
	if p == nil {
		return nil
	}
	var out []string
	prefix := typeName + "."
	for k := range p.Members {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k[len(prefix):])
		}
	}
	sort.Strings(out)
	return out
}
