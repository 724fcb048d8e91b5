//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
)

func TestLtOperandBytes(t *testing.T) {
	for _, c := range []struct {
		s    ltShape
		a, b int64
	}{
		// forward out[T,N] = x·Wᵀ: A = W (k×m stored, lda K), B = x (k×n, ldb K)
		{ltShape{transA: true, m: 96, n: 16, k: 64, lda: 64, ldb: 64, ldd: 96}, 2 * 64 * 96, 2 * 64 * 16},
		// dx: A = W (m×k, lda In), B = dout columns (k×n, ldb Out)
		{ltShape{m: 64, n: 16, k: 96, lda: 64, ldb: 96, ldd: 64}, 2 * 64 * 96, 2 * 96 * 16},
		// dw: A = x (m×k, lda In), B = dout stored n×k (ldb Out)
		{ltShape{transB: true, m: 64, n: 96, k: 16, lda: 64, ldb: 96, ldd: 64}, 2 * 64 * 16, 2 * 96 * 16},
	} {
		a, b := c.s.operandBytes()
		if a != c.a || b != c.b {
			t.Errorf("%v: operand bytes %d, %d; want %d, %d", c.s, a, b, c.a, c.b)
		}
	}
}

// TestGEMMTune runs products past gemmTuneAtUse: the accumulating dw (tuned with zero operands:
// its accumulator must come through unchanged) and the forward (tuned on its real operands)
// must give the reference result at every launch, and the tuning must be recorded.
func TestGEMMTune(t *testing.T) {
	g := openGEMM(t)
	const bound = 1e-2
	if !g.gemm.tune {
		t.Skip("QWENGO_CUDA_GEMM_TUNE=0")
	}
	// Shapes no other test uses, so that these plans start unused.
	const T, In, Out = 200, 264, 136
	hw := hostWeight(t, kindBF16, Out, In, 5)
	W := storedValues(t, hw)
	gw, err := g.UploadWeight(hw)
	if err != nil {
		t.Fatal(err)
	}
	defer g.FreeWeight(gw)
	upload := func(rows, cols int, v []float32) *Tensor { return uploaded(t, g, rows, cols, v) }
	dout, x := randn(T*Out, 11, 1), randn(T*In, 12, 1)
	dw := randn(Out*In, 13, 0.1)
	gd, gx, gdw := upload(T, Out, dout), upload(T, In, x), upload(Out, In, dw)
	out := upload(T, Out, make([]float32, T*Out))
	before := len(g.gemm.tuned)
	for i := 1; i <= gemmTuneAtUse+2; i++ {
		if err := g.do(func() error { return g.gemmDW(gdw, gd, gx) }); err != nil {
			t.Fatal(err)
		}
		dw = refDW(dout, x, dw, T, In, Out)
		compareSlices(t, fmt.Sprintf("dw after %d accumulations", i), download(t, g, gdw), dw, bound)
		if err := g.MatMul(out, gx, gw); err != nil {
			t.Fatal(err)
		}
		compareSlices(t, fmt.Sprintf("forward, launch %d", i), download(t, g, out), refForward(x, W, T, In, Out), bound)
	}
	var labels []string
	for _, r := range g.gemm.tuned[before:] {
		labels = append(labels, r.String())
	}
	t.Logf("tuned: %v; %s", labels, g.gemmStatus())
	want := map[string]bool{
		ltShape{transB: true, m: In, n: Out, k: T}.label(): true, // dw
		ltShape{transA: true, m: Out, n: T, k: In}.label(): true, // forward
	}
	for _, r := range g.gemm.tuned[before:] {
		delete(want, r.shape.label())
	}
	for l := range want {
		// A plan with a single candidate is not tuned: say so rather than fail.
		for s, p := range g.gemm.plans {
			if s.label() == l && p.candidates() > 1 {
				t.Errorf("%s (%d candidates) was not tuned", l, p.candidates())
			}
		}
	}
}

// refForward is x·Wᵀ in float64 (x [T, In], W [Out, In]).
func refForward(x, W []float32, T, In, Out int) []float32 {
	out := make([]float32, T*Out)
	for r := range T {
		for o := range Out {
			var s float64
			for k := range In {
				s += float64(x[r*In+k]) * float64(W[o*In+k])
			}
			out[r*Out+o] = float32(s)
		}
	}
	return out
}

// TestReleaseCacheScratch: ReleaseCache gives back the grown scratch (here cuBLASLt's bf16
// operand copies), and the next product allocates it again and gives the same result.
func TestReleaseCacheScratch(t *testing.T) {
	g := openGEMM(t)
	const T, In, Out = 512, 1024, 256
	hw := hostWeight(t, kindBF16, Out, In, 9)
	gw, err := g.UploadWeight(hw)
	if err != nil {
		t.Fatal(err)
	}
	defer g.FreeWeight(gw)
	x, out := randTensor(t, g, T, In), randTensor(t, g, T, Out)
	if err := g.MatMul(out, x, gw); err != nil {
		t.Fatal(err)
	}
	first := download(t, g, out)
	if g.gemm.act.ptr == 0 {
		t.Fatal("no bf16 operand scratch after a cuBLASLt product")
	}
	before := g.Memory().InUse[backend.Workspace]
	if err := g.ReleaseCache(); err != nil {
		t.Fatal(err)
	}
	after := g.Memory().InUse[backend.Workspace]
	if g.gemm.act.ptr != 0 || after > before-2*T*In {
		t.Errorf("workspace %d → %d bytes after ReleaseCache; the %d-byte operand copy should be gone", before, after, 2*T*In)
	}
	if err := g.MatMul(out, x, gw); err != nil {
		t.Fatal(err)
	}
	sameBits(t, "product after ReleaseCache", download(t, g, out), first)
}

// TestGEMMMany: MatMulMany on enough rows for cuBLASLt (x rounded to bf16 once for all the
// products) gives MatMul's results bit for bit, for every weight kind and with a product the
// GEMM path does not take (a width that is not a multiple of 8) among them.
func TestGEMMMany(t *testing.T) {
	g := openGEMM(t)
	const T, K = 96, 512
	var ws []backend.Weight
	for i, c := range []struct {
		kind string
		out  int
	}{{kindBF16, 256}, {kindNVFP4, 128}, {kindF32, 20}} {
		w, err := g.UploadWeight(hostWeight(t, c.kind, c.out, K, uint64(30+i)))
		if err != nil {
			t.Fatal(err)
		}
		defer g.FreeWeight(w)
		ws = append(ws, w)
	}
	x := randTensor(t, g, T, K)
	var many, each []backend.Tensor
	for _, w := range ws {
		many = append(many, randTensor(t, g, T, w.(*Weight).out))
		each = append(each, randTensor(t, g, T, w.(*Weight).out))
	}
	calls := g.gemm.calls
	if err := g.MatMulMany(many, x, ws); err != nil {
		t.Fatal(err)
	}
	if g.gemm.calls == calls {
		t.Fatal("MatMulMany ran no cuBLASLt product")
	}
	for i, w := range ws {
		if err := g.MatMul(each[i], x, w); err != nil {
			t.Fatal(err)
		}
		sameBits(t, fmt.Sprintf("product %d (%s)", i, w.(*Weight).kind), download(t, g, many[i].(*Tensor)), download(t, g, each[i].(*Tensor)))
	}
}
