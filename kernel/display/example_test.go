package display_test

import (
	"fmt"

	"github.com/qwengo/qwengo/kernel/display"
)

// In a cell, display calls publish rich output to the notebook. Outside a session (here)
// the text/plain part is printed.
func Example() {
	display.Markdown("**loss** 2.31")
	display.HTML("<table><tr><td>1</td></tr></table>")
	// Output:
	// **loss** 2.31
	// <HTML>
}

// A Display is updated in place: the way to show live progress from a training loop.
func ExampleNewDisplay() {
	d := display.NewDisplay()
	for step := 1; step <= 3; step++ {
		d.Text(fmt.Sprintf("step %d/3", step))
	}
	// Output:
	// step 1/3
	// step 2/3
	// step 3/3
}

// Loss is a value that shows as HTML when a cell ends with it.
type Loss []float64

// HTML implements display.HTMLer.
func (l Loss) HTML() string { return fmt.Sprintf("<b>%d steps</b>, last %.2f", len(l), l[len(l)-1]) }

// A cell ending with a value shows its bundle: text/plain plus what its methods offer.
func ExampleBundle() {
	b := display.Bundle(Loss{2.5, 2.25})
	fmt.Println(b["text/html"])
	fmt.Println(b["text/plain"])
	// Output:
	// <b>2 steps</b>, last 2.25
	// [2.5 2.25]
}
