package backend

import (
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/tensor"
)

// fakeTensor is a [rows, cols] tensor over elements [off, off+rows·cols) of one notional
// buffer, so that overlapping storage can be described without a backend.
type fakeTensor struct{ rows, cols, off int }

func (t *fakeTensor) Rows() int           { return t.rows }
func (t *fakeTensor) Cols() int           { return t.cols }
func (t *fakeTensor) Shape() []int        { return []int{t.rows, t.cols} }
func (t *fakeTensor) DType() tensor.DType { return tensor.F32 }

type fakeWeight struct{ out, in int }

func (w fakeWeight) Out() int     { return w.out }
func (w fakeWeight) In() int      { return w.in }
func (w fakeWeight) Kind() string { return "f32" }
func (w fakeWeight) Bytes() int64 { return int64(4 * w.out * w.in) }

func fakeOverlap(a, b *fakeTensor) bool {
	if a == nil || b == nil {
		return false
	}
	return a.off < b.off+b.rows*b.cols && b.off < a.off+a.rows*a.cols
}

func TestCheckMatMulBackward(t *testing.T) {
	// out = x·Wᵀ with T = 3, In = 16, Out = 8; each tensor in its own range unless a case
	// places it over another.
	w := fakeWeight{out: 8, in: 16}
	dout := &fakeTensor{3, 8, 0}
	x := &fakeTensor{3, 16, 100}
	dx := &fakeTensor{3, 16, 200}
	dw := &fakeTensor{8, 16, 300}
	for _, c := range []struct {
		name         string
		dx, dw, dout *fakeTensor
		x            *fakeTensor
		want         string // a substring of the error, "" for none
	}{
		{"all", dx, dw, dout, x, ""},
		{"dx only", dx, nil, dout, nil, ""},
		{"dw only", nil, dw, dout, x, ""},
		{"neither", nil, nil, dout, nil, ""},
		{"dx over x (allowed: dw is computed first)", &fakeTensor{3, 16, 100}, dw, dout, x, ""},
		{"dout width", dx, dw, &fakeTensor{3, 9, 0}, x, "cpu: matmul backward w: dout [3, 9] for a weight [8, 16]"},
		{"dx rows", &fakeTensor{4, 16, 200}, dw, dout, x, "dx [4, 16], want [3, 16]"},
		{"dx cols", &fakeTensor{3, 8, 200}, dw, dout, x, "dx [3, 8], want [3, 16]"},
		{"dx over dout", &fakeTensor{3, 16, 20}, nil, dout, nil, "dx and dout share memory"},
		{"x shape", dx, dw, dout, &fakeTensor{3, 15, 100}, "x [3, 15], want [3, 16]"},
		{"dw without x", dx, dw, dout, nil, "dw needs x"},
		{"dw shape", dx, &fakeTensor{16, 8, 300}, dout, x, "dw [16, 8], want [8, 16]"},
		{"dw over dout", nil, &fakeTensor{8, 16, 10}, dout, x, "dw shares memory with dout, x or dx"},
		{"dw over x", nil, &fakeTensor{8, 16, 140}, dout, x, "dw shares memory"},
		{"dw over dx", dx, &fakeTensor{8, 16, 240}, dout, x, "dw shares memory"},
		// Several faults: the first in the documented order is reported.
		{"dout width before dx shape", &fakeTensor{1, 1, 200}, dw, &fakeTensor{3, 9, 0}, x, "dout [3, 9]"},
		{"dx overlap before x shape", &fakeTensor{3, 16, 20}, nil, dout, &fakeTensor{3, 1, 100}, "dx and dout share"},
	} {
		err := CheckMatMulBackward("cpu", c.dx, c.dw, c.dout, c.x, w, "w", fakeOverlap)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}
