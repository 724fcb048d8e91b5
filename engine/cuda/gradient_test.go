//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

// gradOf allocates a parameter gradient of element type dt (freed at the test's end) holding v.
func gradOf(t *testing.T, b backend.Backend, rows, cols int, dt tensor.DType, v []float32) backend.Tensor {
	t.Helper()
	x, err := backend.AllocGradient(b, rows, cols, dt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Free(x) })
	if v != nil {
		if err := b.Upload(x, v); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

// cpuTensor is a CPU tensor holding v.
func cpuTensor(t *testing.T, c backend.Backend, rows, cols int, v []float32) backend.Tensor {
	t.Helper()
	x, err := c.Alloc(backend.Activations, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Upload(x, v); err != nil {
		t.Fatal(err)
	}
	return x
}

// bf16Steps is the largest distance between a and b in bf16 steps of b's elements (a and b
// hold bf16 values).
func bf16Steps(a, b []float32) float64 {
	var worst float64
	for i := range a {
		if a[i] == b[i] {
			continue
		}
		step := math.Ldexp(1, math.Ilogb(float64(b[i]))-7) // one unit in the last place of b[i]
		worst = max(worst, math.Abs(float64(a[i]-b[i]))/step)
	}
	return worst
}

// TestGradientBF16GPU: bf16 parameter gradients on the GPU. Upload rounds and Download widens
// as engine/tensor does; SumSquares (alone and batched with f32 tensors) equals the f32 kernel's
// sum of the widened values bit for bit; EmbeddingBackward and the SIMT MatMulBackward's dw are
// the f32 op's result rounded once a call, bit for bit; cuBLASLt's bf16 dw is within one bf16
// step of its f32 dw rounded (the plans may differ in algorithm); both agree with the CPU
// backend's bf16 gradients; every other op refuses one by name.
func TestGradientBF16GPU(t *testing.T) {
	g, c, _ := trainPair(t)
	v := randn(96*130, 3, 1)
	v[0], v[1] = 1.00390625, 1.01171875 // ties: to even
	g16 := gradOf(t, g, 96, 130, tensor.BF16, v)
	if got := download(t, g, g16); bf16Steps(got, roundedBF16(v)) != 0 || g16.DType() != tensor.BF16 {
		t.Fatalf("upload/download of a bf16 gradient: %v, %v (want %v, %v)", got[:2], g16.DType(), roundedBF16(v)[:2], tensor.BF16)
	}
	g32 := gradOf(t, g, 96, 130, tensor.F32, roundedBF16(v))
	sums, err := g.SumSquaresMany([]backend.Tensor{g32, g16, g32})
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := g.SumSquares(g16); sums[0] != sums[1] || sums[1] != sums[2] || s != sums[0] {
		t.Errorf("sums of squares: f32 %v, bf16 %v (batched), bf16 %v (alone)", sums[0], sums[1], s)
	}
	if err := g.Zero(g16); err != nil {
		t.Fatal(err)
	}
	if s, _ := g.SumSquares(g16); s != 0 {
		t.Errorf("after Zero the sum of squares is %v", s)
	}

	// EmbeddingBackward: repeated ids summed in position order, then rounded once.
	ids := []int{5, 0, 5, 9, 5, 2}
	H := 70
	dout := randn(len(ids)*H, 4, 1)
	init := randn(10*H, 5, 0.1)
	e16, e32, ec := gradOf(t, g, 10, H, tensor.BF16, init), gradOf(t, g, 10, H, tensor.F32, roundedBF16(init)), gradOf(t, c, 10, H, tensor.BF16, init)
	for _, x := range []struct {
		b backend.Training
		t backend.Tensor
	}{{g, e16}, {g, e32}, {c, ec}} {
		d, err := x.b.Alloc(backend.Activations, len(ids), H)
		if err != nil {
			t.Fatal(err)
		}
		defer x.b.Free(d)
		if err := x.b.Upload(d, dout); err != nil {
			t.Fatal(err)
		}
		if err := x.b.EmbeddingBackward(x.t, d, ids); err != nil {
			t.Fatal(err)
		}
	}
	got := download(t, g, e16)
	if s := bf16Steps(got, roundedBF16(download(t, g, e32))); s != 0 {
		t.Errorf("embedding backward: bf16 table %g steps from the rounded f32 one", s)
	}
	if s := bf16Steps(got, download(t, c, ec)); s != 0 {
		t.Errorf("embedding backward: GPU bf16 table %g steps from the CPU's", s)
	}

	// MatMulBackward's dw: T = 5 runs the SIMT kernel, T = 64 cuBLASLt; two calls accumulate.
	const K, N = 96, 130
	for _, T := range []int{5, 64} {
		for _, kind := range []string{kindBF16, kindNVFP4} {
			name := fmt.Sprintf("T=%d %s", T, kind)
			cw, gw := weights(t, c, g, hostWeight(t, kind, N, K, 6))
			start := randn(N*K, 7, 0.01)
			d16, d32, dc := gradOf(t, g, N, K, tensor.BF16, start), gradOf(t, g, N, K, tensor.F32, roundedBF16(start)), gradOf(t, c, N, K, tensor.BF16, start)
			for call := 0; call < 2; call++ {
				x, dy := randn(T*K, uint64(10+call), 1), randn(T*N, uint64(20+call), 1)
				gx, gy := uploaded(t, g, T, K, x), uploaded(t, g, T, N, dy)
				for _, d := range []backend.Tensor{d16, d32} {
					if err := g.MatMulBackward(nil, d, gy, gx, gw, false); err != nil {
						t.Fatal(name, err)
					}
				}
				cx, cy := cpuTensor(t, c, T, K, x), cpuTensor(t, c, T, N, dy)
				if err := c.MatMulBackward(nil, dc, cy, cx, cw, false); err != nil {
					t.Fatal(name, err)
				}
				got, want := download(t, g, d16), roundedBF16(download(t, g, d32))
				if T < gemmMinRows {
					if steps := bf16Steps(got, want); steps != 0 {
						t.Errorf("%s call %d: bf16 dw %g bf16 steps from the rounded f32 dw", name, call, steps)
					}
				} else {
					// another algorithm may sum in another order: a bf16 step of the largest element
					compareSlices(t, fmt.Sprintf("%s call %d bf16 dw against the rounded f32 dw", name, call), got, want, 8e-3)
				}
				compareSlices(t, name+" bf16 dw against the CPU's", got, download(t, c, dc), 1e-2)
				if err := g.Upload(d32, got); err != nil { // the f32 twin goes on from the bf16 values
					t.Fatal(err)
				}
			}
		}
	}

	x := uploaded(t, g, 96, 130, v)
	for _, e := range []struct {
		name string
		err  error
	}{
		{"add", g.Add(x, g16)},
		{"scale", g.Scale(g16, 2)},
		{"swiglu", g.SwiGLU(x, g16, x)},
	} {
		if e.err == nil || !strings.Contains(e.err.Error(), "bf16 parameter gradient") {
			t.Errorf("%s on a bf16 gradient: %v", e.name, e.err)
		}
	}
	if _, err := g.RowView(g16, 0, 1); err == nil || !strings.Contains(err.Error(), "not a KV cache") {
		t.Errorf("a row view of a bf16 gradient: %v", err)
	}
	if _, err := g.AllocGradient(2, 2, tensor.F16); err == nil || !strings.Contains(err.Error(), "F32 or BF16") {
		t.Errorf("an F16 gradient: %v", err)
	}
}
