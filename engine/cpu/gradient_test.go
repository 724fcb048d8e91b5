package cpu

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/tensor"
)

func roundBF16(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = tensor.BF16ToF32(tensor.F32ToBF16(x))
	}
	return out
}

func allocGrad(t *testing.T, b *Backend, rows, cols int, dt tensor.DType, v []float32) backend.Tensor {
	t.Helper()
	g, err := backend.AllocGradient(b, rows, cols, dt)
	if err != nil {
		t.Fatal(err)
	}
	if v != nil {
		if err := b.Upload(g, v); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

// TestGradientBF16Storage: a bf16 gradient is accounted at 2 bytes an element, reports BF16,
// rounds what is uploaded to nearest even and downloads it exactly; F32 is an ordinary
// gradient; other element types are refused.
func TestGradientBF16Storage(t *testing.T) {
	b := New()
	v := []float32{1, 1.00390625, 1.01171875, -3.3333333, 1e-30, float32(math.Inf(1))}
	for _, c := range []struct {
		dt    tensor.DType
		bytes int64
		want  []float32
	}{{tensor.F32, 4 * 6, v}, {tensor.BF16, 2 * 6, roundBF16(v)}} {
		g := allocGrad(t, b, 2, 3, c.dt, v)
		if got := b.Memory().InUse[backend.Gradients]; got != c.bytes {
			t.Errorf("%s: %d bytes in use, want %d", c.dt, got, c.bytes)
		}
		if g.DType() != c.dt {
			t.Errorf("DType %s, want %s", g.DType(), c.dt)
		}
		got := download(t, b, g)
		for i := range got {
			if math.Float32bits(got[i]) != math.Float32bits(c.want[i]) {
				t.Errorf("%s: element %d = %v, want %v", c.dt, i, got[i], c.want[i])
			}
		}
		b.Free(g)
		if got := b.Memory().InUse[backend.Gradients]; got != 0 {
			t.Errorf("%s: %d bytes in use after Free", c.dt, got)
		}
	}
	if _, err := b.AllocGradient(2, 3, tensor.F16); err == nil || !strings.Contains(err.Error(), "F32 or BF16") {
		t.Errorf("an F16 gradient: %v", err)
	}
}

// TestGradientBF16Ops: MatMulBackward's dw and EmbeddingBackward's dtable on a bf16 gradient
// are the float32 op's result rounded once a call (two calls: rounded after each); SumSquares
// and AdamW read the values as they are; every other op refuses it by name.
func TestGradientBF16Ops(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(5, 6))
	const T, K, N = 7, 48, 33
	w := uploadWeight(t, b, "bf16", randVec(r, N*K, 1), N, K)
	init := randVec(r, N*K, 1)
	g16 := allocGrad(t, b, N, K, tensor.BF16, init)
	g32 := allocGrad(t, b, N, K, tensor.F32, roundBF16(init))
	for call := 0; call < 2; call++ {
		x, dout := upload(t, b, T, K, randVec(r, T*K, 1)), upload(t, b, T, N, randVec(r, T*N, 1))
		for _, g := range []backend.Tensor{g16, g32} {
			if err := b.MatMulBackward(nil, g, dout, x, w, false); err != nil {
				t.Fatal(err)
			}
		}
		want := roundBF16(download(t, b, g32))
		if got := download(t, b, g16); maxDiff(got, want) != 0 {
			t.Fatalf("matmul backward call %d: bf16 dw differs from the rounded f32 dw by %g", call, maxDiff(got, want))
		}
		if err := b.Upload(g32, want); err != nil { // the f32 twin continues from the rounded values
			t.Fatal(err)
		}
	}
	ids := []int{3, 0, 3, 9, 3}
	dout := upload(t, b, len(ids), K, randVec(r, len(ids)*K, 1))
	e16 := allocGrad(t, b, 10, K, tensor.BF16, nil)
	e32 := allocGrad(t, b, 10, K, tensor.F32, nil)
	for _, g := range []backend.Tensor{e16, e32} {
		if err := b.EmbeddingBackward(g, dout, ids); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := download(t, b, e16), roundBF16(download(t, b, e32)); maxDiff(got, want) != 0 {
		t.Errorf("embedding backward: bf16 table differs from the rounded f32 table by %g", maxDiff(got, want))
	}
	s16, err := b.SumSquares(g16)
	if err != nil {
		t.Fatal(err)
	}
	if s32, _ := b.SumSquares(g32); s16 != s32 {
		t.Errorf("sum of squares %v, f32 twin %v", s16, s32)
	}
	for _, f := range []string{"fp32", "int8", "4bit"} {
		var ws [2][]float32
		for i, g := range []backend.Tensor{g16, g32} {
			wt := uploadWeight(t, b, "bf16", init, N, K)
			st, err := b.NewAdamWState(f, N, K)
			if err != nil {
				t.Fatal(err)
			}
			h := backend.AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: 1, GradScale: 0.5, StochasticRound: true, Seed: 3}
			if err := b.AdamW(wt, g, st, h); err != nil {
				t.Fatal(f, err)
			}
			hw, err := b.DownloadWeight(wt)
			if err != nil {
				t.Fatal(err)
			}
			ws[i], _ = hw.Dense.Float32s(nil)
		}
		if maxDiff(ws[0], ws[1]) != 0 {
			t.Errorf("adamw %s: bf16 gradient and its f32 twin update differently", f)
		}
	}
	x := upload(t, b, N, K, nil)
	for _, c := range []struct {
		name string
		err  error
	}{
		{"add", b.Add(x, g16)},
		{"scale", b.Scale(g16, 2)},
		{"rmsnorm backward dw", b.RMSNormBackward(x, allocGrad(t, b, 1, K, tensor.BF16, nil), x, x, upload(t, b, 1, K, randVec(r, K, 1)), 1e-6, false)},
		{"matmul backward dx", b.MatMulBackward(g16, nil, upload(t, b, N, N, nil), nil, w, false)},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), "bf16 gradient") {
			t.Errorf("%s on a bf16 gradient: %v", c.name, c.err)
		}
	}
	if _, err := b.RowView(g16, 0, 1); err == nil {
		t.Error("a row view of a bf16 gradient was allowed")
	}
}
