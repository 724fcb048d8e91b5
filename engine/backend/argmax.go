package backend

import "math"

// ArgMaxer is implemented by backends that pick the largest element of each row on the device,
// so a greedy decoding step downloads one index per row instead of a row of logits (600 KB for
// Qwen3's 151,936-token vocabulary, plus a host scan: together ~5 % of a GPU decode step).
type ArgMaxer interface {
	// ArgMaxRows returns, for every row of x, ArgMax of that row.
	ArgMaxRows(x Tensor) ([]int, error)
}

// ArgMax returns the index of the first largest value of xs, NaN ignored; 0 when xs is empty
// or all NaN. It is the reference ArgMaxRows implementations follow.
func ArgMax(xs []float32) int {
	best := -1
	for i, x := range xs {
		if math.IsNaN(float64(x)) {
			continue
		}
		if best < 0 || x > xs[best] {
			best = i
		}
	}
	return max(best, 0)
}
