package cpu

import (
	"math"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// TestBF16Store: rounding into rows of a bf16 buffer is engine/tensor's (ties to even, NaN,
// infinities, subnormals), widening is exact, rows land where asked, the bytes are accounted
// (2 an element) and bad calls are refused before anything is written.
func TestBF16Store(t *testing.T) {
	b := New()
	vals := []float32{0, -0, 1, -1.5, 3.14159265, 1 + 1.0/256, 1 + 3.0/256, 1e-40, -1e-39, 3.39e38,
		float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), 65504, -2.5e-8, 7}
	const rows, cols = 4, 4
	src, _ := b.Alloc(backend.Activations, 2, cols)
	if err := b.Upload(src, vals[8:]); err != nil {
		t.Fatal(err)
	}
	buf, err := b.AllocBF16(backend.Activations, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Memory().InUse[backend.Activations]; got != 2*cols*4+2*rows*cols {
		t.Fatalf("accounted %d bytes, want %d", got, 2*cols*4+2*rows*cols)
	}
	first, _ := b.Alloc(backend.Activations, 2, cols)
	b.Upload(first, vals[:8])
	if err := b.ToBF16(buf, 0, first); err != nil {
		t.Fatal(err)
	}
	if err := b.ToBF16(buf, 2, src); err != nil {
		t.Fatal(err)
	}
	out, _ := b.Alloc(backend.Activations, 3, cols)
	if err := b.FromBF16(out, buf, 1); err != nil {
		t.Fatal(err)
	}
	got, _ := b.Download(out, nil)
	for i, g := range got {
		want := tensor.BF16ToF32(tensor.F32ToBF16(vals[cols+i]))
		if math.Float32bits(g) != math.Float32bits(want) && !(math.IsNaN(float64(g)) && math.IsNaN(float64(want))) {
			t.Errorf("element %d (%v): got %v, want %v", cols+i, vals[cols+i], g, want)
		}
	}
	if got[1] != 1 || got[2] != 1+4.0/256 { // 1+1/256 ties to even (down), 1+3/256 to even (up)
		t.Errorf("ties: %v %v", got[1], got[2])
	}
	short, _ := b.Alloc(backend.Activations, 1, cols-1)
	other, _ := New().AllocBF16(backend.Activations, rows, cols)
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"past the end", b.ToBF16(buf, 3, src), "rows [3, 5)"},
		{"negative row", b.FromBF16(out, buf, -1), "rows [-1, 2)"},
		{"wrong width", b.FromBF16(short, buf, 0), "[1, 3] tensor"},
		{"foreign buffer", b.ToBF16(other, 0, src), "another backend"},
		{"not a buffer", b.ToBF16(nil, 0, src), "not a CPU bf16 buffer"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %q", c.name, c.err, c.want)
		}
	}
	if _, err := b.AllocBF16(backend.Activations, 0, 4); err == nil {
		t.Error("AllocBF16 of 0 rows accepted")
	}
	b.FreeBF16(buf)
	b.FreeBF16(buf)
	if err := b.FromBF16(out, buf, 0); err == nil || !strings.Contains(err.Error(), "freed") {
		t.Errorf("use after free: %v", err)
	}
	for _, x := range []backend.Tensor{src, first, out, short} {
		b.Free(x)
	}
	if u := b.Memory().Used(); u != 0 {
		t.Errorf("%d bytes left", u)
	}
}
