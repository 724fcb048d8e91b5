package backend

import (
	"math"
	"testing"
)

func TestArgMax(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, c := range []struct {
		name string
		xs   []float32
		want int
	}{
		{"empty", nil, 0},
		{"one", []float32{3}, 0},
		{"last", []float32{1, 2, 3}, 2},
		{"first of ties", []float32{1, 5, 5, 2}, 1},
		{"NaN ignored", []float32{nan, 1, nan, 4, 2}, 3},
		{"all NaN", []float32{nan, nan}, 0},
		{"all -inf", []float32{-inf, -inf}, 0},
		{"NaN then -inf", []float32{nan, -inf, -inf}, 1},
		{"+inf", []float32{1, inf, 2, inf}, 1},
		{"negative", []float32{-3, -1, -2}, 1},
	} {
		if got := ArgMax(c.xs); got != c.want {
			t.Errorf("%s: ArgMax(%v) = %d, want %d", c.name, c.xs, got, c.want)
		}
	}
}
