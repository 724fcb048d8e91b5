package session

import (
	"strings"
	"testing"
)

// Bad input never panics the session: every failure is a CellError, queries answer.
func TestRobustness(t *testing.T) {
	s := newSession(t, Options{})
	cells := []string{
		"}}}", "{{{", "\x00", "\"\\", "`", "/*", "func", "func (", "type", "import", "import \"\"",
		"package", "package main\npackage main", "var", "go", "go 1", "defer f()", "return", "break",
		"x := <-", "chan", "%", "%%", "!", "% time", "\ufeffx := 1", "é := 1\né", strings.Repeat("(", 500),
		strings.Repeat("x := 1\n", 2000) + "x", "type T[K comparable] struct{ k K }", "func G[T any](t T) T { return t }\nG(1)",
		"goto L", "L:\nfor {\nbreak L\n}", "import \"runtime\"\nruntime.Goexit()", "select {\ndefault:\n}", "var _ = 1", "_ = 1", "import _ \"embed\"",
	}
	for _, code := range cells {
		f, res, ce := run(t, s, code)
		_ = f
		if res == nil {
			t.Errorf("%q: nil result", code)
		}
		if ce != nil && (ce.Name == "" || ce.Traceback == nil) {
			t.Errorf("%q: malformed error %+v", code, ce)
		}
	}
	// The session still works.
	_, res := mustRun(t, s, "1 + 1")
	if text(res) != "2" {
		t.Errorf("after bad input: %q", text(res))
	}
	for _, code := range []string{"", "é", "fmt.", "x.y.z.", "((", "\"str.", "`raw\n.", "日本語.Fo"} {
		for cur := -1; cur <= len(code)+1; cur++ {
			s.Complete(code, cur)
			s.Inspect(code, cur, 1)
		}
		s.IsComplete(code)
	}
}
