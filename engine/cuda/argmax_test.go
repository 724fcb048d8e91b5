//go:build cuda

package cuda

import (
	"math"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
)

// TestArgMaxRows checks the device argmax against backend.ArgMax on rows of Qwen3's vocabulary
// size and odd sizes, with ties (the first index wins, also across the blocks a long row is
// split into), NaNs (ignored), an all-NaN row (0) and an all -inf row (0); the row counts change
// between calls and the list runs twice, so the arrival counters must be left at zero.
func TestArgMaxRows(t *testing.T) {
	g := openGPU(t)
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	shapes := []struct{ rows, n int }{{5, 1}, {5, 33}, {5, 1025}, {5, 151936}, {7, 151936}, {6, 20000}, {5, 16385}}
	for _, sh := range append(shapes, shapes...) {
		rows, n := max(sh.rows, 5), sh.n
		data := randn(rows*n, uint64(n+rows), 1)
		row := func(r int) []float32 { return data[r*n : (r+1)*n] }
		if n > 2 {
			row(1)[n-1], row(1)[n/2] = 9, 9 // a tie: the first index wins
			if P := min(argmaxMaxParts, (n+argmaxChunk-1)/argmaxChunk); P > 1 {
				c := (n + P - 1) / P
				row(0)[c-1], row(0)[c] = 11, 11 // a tie across the first two blocks of the row
			}
			row(2)[0], row(2)[n/3] = nan, nan
		}
		for i := range row(3) {
			row(3)[i] = nan
		}
		for i := range row(4) {
			row(4)[i] = -inf
		}
		x, err := g.Alloc(backend.Activations, rows, n)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Upload(x, data); err != nil {
			t.Fatal(err)
		}
		ids, err := g.ArgMaxRows(x)
		if err != nil {
			t.Fatal(err)
		}
		for r := 0; r < rows; r++ {
			if want := backend.ArgMax(row(r)); ids[r] != want {
				t.Errorf("n=%d row %d: argmax %d, want %d", n, r, ids[r], want)
			}
		}
		g.Free(x)
	}
}
