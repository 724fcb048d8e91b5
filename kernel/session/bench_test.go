package session

import (
	"context"
	"testing"
)

// BenchmarkExecuteExpr measures a cell with a trailing expression (1+1): splitting, compiling,
// running and the MIME probes.
func BenchmarkExecuteExpr(b *testing.B) {
	s, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	f := &fakeIO{}
	for i := 0; i < b.N; i++ {
		if _, err := s.Execute(context.Background(), "1+1", f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecuteStmt measures a statement cell without a result.
func BenchmarkExecuteStmt(b *testing.B) {
	s, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	f := &fakeIO{}
	for i := 0; i < b.N; i++ {
		if _, err := s.Execute(context.Background(), "x := 1", f); err != nil {
			b.Fatal(err)
		}
	}
}
