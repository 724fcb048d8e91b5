package session_test

import (
	"context"
	"fmt"

	"github.com/qwengo/qwengo/kernel/session"
)

// A session runs cells one after the other; state persists, and a cell ending with an
// expression returns its MIME bundle. With a nil IO, output goes to Options.Stdout.
func Example() {
	s, err := session.New(session.Options{})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for _, cell := range []string{
		"type Step struct{ N int; Loss float64 }",
		"func (s Step) Markdown() string { return fmt.Sprintf(\"**step %d** loss %.2f\", s.N, s.Loss) }",
		"last := Step{N: 10, Loss: 2.5}\nfmt.Println(\"logged\", last.N)",
		"last",
	} {
		res, err := s.Execute(ctx, cell, nil)
		if err != nil {
			fmt.Println(err)
			return
		}
		if res.Data != nil {
			fmt.Println(res.Data["text/markdown"])
		}
	}
	// Output:
	// logged 10
	// **step 10** loss 2.50
}

// Compile errors carry the cell's line and column.
func ExampleCellError() {
	s, _ := session.New(session.Options{})
	_, err := s.Execute(context.Background(), "x := 1\ny := x + \"s\"", nil)
	fmt.Println(err)
	// Output:
	// CompileError: 2:6: invalid operation: mismatched types int and untyped string
}
