// Package testmodel loads the tiny Qwen3 checkpoints of engine/qwen3/testdata ("tiny-tied",
// "tiny-untied") for the tests of the packages that train them, so that each does not carry
// its own copy of the loader.
package testmodel

import (
	"path/filepath"
	"testing"

	"github.com/qwengo/qwengo/engine/format"
	"github.com/qwengo/qwengo/engine/qwen3"
)

// Dir is the directory of the tiny checkpoint name, relative to the directory of a package
// directly under engine/ (where `go test` runs that package's tests).
func Dir(name string) string { return filepath.Join("..", "qwen3", "testdata", name) }

// Load reads checkpoint name's config.json and model.safetensors and builds a model from them
// with load, failing t on any error. load is a parameter (grad.Load in practice) rather than
// called here so that engine/grad's own tests can use this package without an import cycle.
func Load[M any](t testing.TB, name string, load func(*qwen3.Config, format.Source) (M, error)) M {
	t.Helper()
	dir := Dir(name)
	cfg, err := qwen3.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := format.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	m, err := load(cfg, src)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
