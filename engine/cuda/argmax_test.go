//go:build cuda

package cuda

import (
	"math"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
)

// TestArgMaxRows checks the device argmax against backend.ArgMax on rows of Qwen3's vocabulary
// size and odd sizes, with ties (the first index wins), NaNs (ignored), an all-NaN row (0) and
// an all -inf row (0).
func TestArgMaxRows(t *testing.T) {
	g := openGPU(t)
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, n := range []int{1, 33, 1025, 151936} {
		const rows = 5
		data := randn(rows*n, uint64(n), 1)
		row := func(r int) []float32 { return data[r*n : (r+1)*n] }
		if n > 2 {
			row(1)[n-1], row(1)[n/2] = 9, 9 // a tie: the first index wins
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
