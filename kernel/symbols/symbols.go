// Package symbols holds what the interpreter needs to see compiled packages: yaegi symbol
// tables for every engine package and for kernel/display, and a documentation table (doc
// comments and signatures of the standard library, the engine and display) for completion
// and inspection.
//
// Everything here except this file and doc.go is generated. After adding or changing an engine
// package, run
//
//	go generate ./kernel/symbols     (or: make generate)
//
// The generator (./gen) lists the packages under engine/ with `go list`, runs yaegi's extractor
// (github.com/traefik/yaegi/extract, the version pinned in go.mod, the same code as
// `yaegi extract`) on each, writes one extract_*.go file per package, removes files of
// packages that no longer exist, and rebuilds docs.json.gz from the sources with go/doc.
// yaegi skips generic functions and types: the API cells see must be non-generic.
//
// The standard library's symbols come from github.com/traefik/yaegi/stdlib (Go 1.22 API); they
// are not duplicated here.
package symbols

import "reflect"

//go:generate go run ./gen

// Symbols maps "importpath/name" to the exported symbols of a compiled package, in the form
// interp.Interpreter.Use expects. The generated files fill it in init functions.
var Symbols = map[string]map[string]reflect.Value{}
