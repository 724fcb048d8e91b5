//go:build cuda

package cuda

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/train"
)

// Parity of the training ops with engine/cpu's implementation of backend.Training (and, for
// AdamW and cross-entropy, with engine/optim and engine/train directly). Run on a GPU with
//
//	cuda.test -test.run Training -test.v -test.short
//
// Bounds are max|gpu − cpu| / max|cpu| per tensor, as in cuda_test.go:
//
//	Scale, Zero, RoPE backward, SwiGLU backward, embedding backward   1e-6 (element-wise, expected exact or 1 ulp)
//	SumSquares                                                         1e-12 (double partial sums)
//	RMSNorm backward (dx, dw)                                          1e-5 (dw summed in another order)
//	MatMul backward (dx, dw; f32/bf16/NVFP4)                           2e-5 (as the forward MatMul: float32 sums of K or T terms)
//	Attention backward (dq, dk, dv)                                    2e-5 (float32 sums over T keys/queries)
//	CrossEntropy dlogits 1e-5; loss sum 1e-6 relative (vs engine/train: 1e-6 and 1e-9)
//	AdamW f32 weights and fp32 moments 1e-6; bf16 weights and int8 codes: at most 0.5% of the
//	elements differ, each by one bf16 ulp / one code step (rounding ties after a last-bit
//	difference); int8 block scales 1e-6.

// trainPair opens the GPU (or skips) and returns the CPU reference backend and its Training ops.
func trainPair(t *testing.T) (*Backend, *cpu.Backend, backend.Training) {
	t.Helper()
	g := openGPU(t)
	c := cpu.New()
	ct, err := backend.AsTraining(c)
	if err != nil {
		t.Fatalf("the CPU reference: %v (engine/cpu's training.go is needed for these parity tests)", err)
	}
	return g, c, ct
}

func download(t *testing.T, b backend.Backend, x backend.Tensor) []float32 {
	t.Helper()
	v, err := b.Download(x, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestTrainingViews(t *testing.T) {
	g := openGPU(t)
	x, err := g.Alloc(backend.Activations, 6, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(x)
	vals := make([]float32, 30)
	for i := range vals {
		vals[i] = float32(i)
	}
	if err := g.Upload(x, vals); err != nil {
		t.Fatal(err)
	}
	live := g.Memory().Live
	v, err := g.RowView(x, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if v.Rows() != 3 || v.Cols() != 5 {
		t.Fatalf("view shape %v", v.Shape())
	}
	compareSlices(t, "row view content", download(t, g, v), vals[10:25], 0)
	if err := g.Scale(v, 2); err != nil {
		t.Fatal(err)
	}
	g.Free(v) // does nothing
	if l := g.Memory().Live; l != live {
		t.Errorf("live allocations %d after a view and its Free, want %d", l, live)
	}
	want := append([]float32(nil), vals...)
	for i := 10; i < 25; i++ {
		want[i] *= 2
	}
	compareSlices(t, "scale through a view", download(t, g, x), want, 0)
	for _, r := range [][2]int{{-1, 2}, {0, 0}, {5, 2}, {6, 1}} {
		if _, err := g.RowView(x, r[0], r[1]); err == nil {
			t.Errorf("RowView(%d, %d) of 6 rows: no error", r[0], r[1])
		}
	}

	// WeightTensor shares the weight's memory.
	hw := hostWeight(t, kindF32, 1, 48, 9)
	w, err := g.UploadWeight(hw)
	if err != nil {
		t.Fatal(err)
	}
	defer g.FreeWeight(w)
	wt, err := g.WeightTensor(w)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := hw.Dense.Float32s(nil)
	compareSlices(t, "weight tensor", download(t, g, wt), host, 0)
	if err := g.Scale(wt, -1); err != nil {
		t.Fatal(err)
	}
	g.Free(wt)
	back, err := g.DownloadWeight(w)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := back.Dense.Float32s(nil)
	for i := range host {
		host[i] = -host[i]
	}
	compareSlices(t, "weight changed through its tensor", got, host, 0)
	for _, kind := range []string{kindBF16, kindNVFP4} {
		wk, err := g.UploadWeight(hostWeight(t, kind, 2, 32, 3))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.WeightTensor(wk); err == nil || !strings.Contains(err.Error(), kind) {
			t.Errorf("WeightTensor of a %s weight: %v", kind, err)
		}
		g.FreeWeight(wk)
	}
}

func TestTrainingZeroScaleSumSquares(t *testing.T) {
	g, c, ct := trainPair(t)
	for _, sh := range [][2]int{{1, 1}, {37, 129}, {300, 1000}} {
		data := randn(sh[0]*sh[1], uint64(sh[0]), 1.5)
		cx, gx := pair(t, c, g, sh[0], sh[1], data)
		var host float64
		for _, v := range data {
			host += float64(v) * float64(v)
		}
		gs, err := g.SumSquares(gx)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := ct.SumSquares(cx)
		if err != nil {
			t.Fatal(err)
		}
		gs2, _ := g.SumSquares(gx)
		if gs != gs2 {
			t.Errorf("sum of squares %v: %v then %v (not deterministic)", sh, gs, gs2)
		}
		if math.Abs(gs-cs) > 1e-12*cs || math.Abs(gs-host) > 1e-12*host {
			t.Errorf("sum of squares %v: gpu %v, cpu %v, host %v (bound 1e-12)", sh, gs, cs, host)
		}
		if err := g.Scale(gx, -0.37); err != nil {
			t.Fatal(err)
		}
		if err := ct.Scale(cx, -0.37); err != nil {
			t.Fatal(err)
		}
		compare(t, fmt.Sprintf("scale %v", sh), c, g, cx, gx, 1e-6)
		if err := g.Zero(gx); err != nil {
			t.Fatal(err)
		}
		for i, v := range download(t, g, gx) {
			if v != 0 {
				t.Fatalf("zero %v: element %d is %v", sh, i, v)
			}
		}
		if s, _ := g.SumSquares(gx); s != 0 {
			t.Errorf("sum of squares after zero: %v", s)
		}
	}
}

func TestTrainingMatMulBackward(t *testing.T) {
	g, _, _ := trainPair(t)
	// fp32 SIMT kernels: float32 sums in another order than the CPU's.
	g.do(func() error { g.trainSIMT = true; return nil })
	t.Run("simt", func(t *testing.T) { testMatMulBackward(t, 2e-5) })
	g.do(func() error { g.trainSIMT = false; return nil })
	// Rows ≥ 16 go to cuBLASLt when it loaded: bf16 operands (relative rounding 2^-9 per factor).
	t.Run("default", func(t *testing.T) { testMatMulBackward(t, 1e-2) })
}

func testMatMulBackward(t *testing.T, bound float64) {
	g, c, ct := trainPair(t)
	type tc struct {
		T, K, N    int
		acc        bool
		noDX, noDW bool
	}
	cases := []tc{{1, 64, 33, false, false, false}, {5, 96, 70, true, false, false}, {67, 160, 130, false, false, false},
		{130, 256, 64, true, false, false}, {9, 48, 40, false, true, false}, {9, 48, 40, true, false, true}}
	if !testing.Short() {
		cases = append(cases, tc{300, 512, 384, true, false, false})
	}
	for _, kind := range []string{kindF32, kindBF16, kindNVFP4} {
		for i, cs := range cases {
			name := fmt.Sprintf("matmul backward %s T%d K%d N%d acc=%v", kind, cs.T, cs.K, cs.N, cs.acc)
			cw, gw := weights(t, c, g, hostWeight(t, kind, cs.N, cs.K, uint64(10+i)))
			cd, gd := pair(t, c, g, cs.T, cs.N, randn(cs.T*cs.N, uint64(20+i), 1))
			cx, gx := pair(t, c, g, cs.T, cs.K, randn(cs.T*cs.K, uint64(30+i), 1))
			var cdx, gdx, cdw, gdw backend.Tensor
			if !cs.noDX {
				cdx, gdx = pair(t, c, g, cs.T, cs.K, randn(cs.T*cs.K, uint64(40+i), 1))
			}
			if !cs.noDW {
				cdw, gdw = pair(t, c, g, cs.N, cs.K, randn(cs.N*cs.K, uint64(50+i), 1))
			}
			if err := ct.MatMulBackward(cdx, cdw, cd, cx, cw, cs.acc); err != nil {
				t.Fatalf("%s: cpu: %v", name, err)
			}
			if err := g.MatMulBackward(gdx, gdw, gd, gx, gw, cs.acc); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if !cs.noDX {
				compare(t, name+" dx", c, g, cdx, gdx, bound)
			}
			if !cs.noDW {
				compare(t, name+" dw", c, g, cdw, gdw, bound)
			}
		}
	}
}

func TestTrainingRMSNormBackward(t *testing.T) {
	g, c, ct := trainPair(t)
	const bound = 1e-5
	type tc struct {
		rows, width, n int
		acc, alias     bool
		noDW           bool
	}
	cases := []tc{{7, 96, 96, false, false, false}, {5, 128, 32, true, false, false}, {300, 64, 64, false, true, false},
		{40, 2048, 128, true, false, false}, {3, 40, 40, false, false, true}}
	for i, cs := range cases {
		name := fmt.Sprintf("rmsnorm backward [%d, %d]/%d acc=%v alias=%v", cs.rows, cs.width, cs.n, cs.acc, cs.alias)
		wv := randn(cs.n, uint64(60+i), 0.3)
		for j := range wv {
			wv[j] += 1
		}
		cwt, gwt := pair(t, c, g, 1, cs.n, wv)
		cx, gx := pair(t, c, g, cs.rows, cs.width, randn(cs.rows*cs.width, uint64(70+i), 2))
		cd, gd := pair(t, c, g, cs.rows, cs.width, randn(cs.rows*cs.width, uint64(80+i), 1))
		cdx, gdx := pair(t, c, g, cs.rows, cs.width, randn(cs.rows*cs.width, uint64(90+i), 1))
		if cs.alias {
			cdx, gdx = cd, gd
		}
		var cdw, gdw backend.Tensor
		if !cs.noDW {
			cdw, gdw = pair(t, c, g, 1, cs.n, randn(cs.n, uint64(100+i), 1))
		}
		if err := ct.RMSNormBackward(cdx, cdw, cd, cx, cwt, 1e-6, cs.acc); err != nil {
			t.Fatalf("%s: cpu: %v", name, err)
		}
		if err := g.RMSNormBackward(gdx, gdw, gd, gx, gwt, 1e-6, cs.acc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		compare(t, name+" dx", c, g, cdx, gdx, bound)
		if !cs.noDW {
			compare(t, name+" dw", c, g, cdw, gdw, bound)
		}
	}
	// dx may be dout only without accumulate.
	_, gd := pair(t, c, g, 2, 8, randn(16, 1, 1))
	_, gx := pair(t, c, g, 2, 8, randn(16, 2, 1))
	_, gw := pair(t, c, g, 1, 8, randn(8, 3, 1))
	if err := g.RMSNormBackward(gd, nil, gd, gx, gw, 1e-6, true); err == nil {
		t.Error("rmsnorm backward with dx = dout and accumulate: no error")
	}
}

func TestTrainingRoPEBackward(t *testing.T) {
	g, c, ct := trainPair(t)
	for _, cs := range []struct {
		rows, heads, hd, pos0 int
		theta                 float64
	}{{9, 4, 64, 0, 1e6}, {5, 2, 128, 1000, 10000}, {3, 3, 16, 40000, 1e6}} {
		name := fmt.Sprintf("rope backward [%d, %d×%d] pos %d theta %g", cs.rows, cs.heads, cs.hd, cs.pos0, cs.theta)
		w := cs.heads * cs.hd
		data := randn(cs.rows*w, uint64(cs.rows), 1)
		cd, gd := pair(t, c, g, cs.rows, w, data)
		cdx, gdx := pair(t, c, g, cs.rows, w, nil)
		if err := ct.RoPEBackward(cdx, cd, cs.hd, cs.pos0, cs.theta); err != nil {
			t.Fatalf("%s: cpu: %v", name, err)
		}
		if err := g.RoPEBackward(gdx, gd, cs.hd, cs.pos0, cs.theta); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		compare(t, name, c, g, cdx, gdx, 1e-6)
		// In place, and the exact inverse of the forward: RoPEBackward(RoPE(x)) = x.
		if err := g.RoPE(gd, gd, cs.hd, cs.pos0, cs.theta); err != nil {
			t.Fatal(err)
		}
		if err := g.RoPEBackward(gd, gd, cs.hd, cs.pos0, cs.theta); err != nil {
			t.Fatal(err)
		}
		compareSlices(t, name+" inverts RoPE", download(t, g, gd), data, 1e-6)
	}
}

func TestTrainingSwiGLUBackward(t *testing.T) {
	g, c, ct := trainPair(t)
	const rows, cols = 13, 257
	cg, gg := pair(t, c, g, rows, cols, randn(rows*cols, 1, 3))
	cu, gu := pair(t, c, g, rows, cols, randn(rows*cols, 2, 1))
	cd, gd := pair(t, c, g, rows, cols, randn(rows*cols, 3, 1))
	cdg, gdg := pair(t, c, g, rows, cols, nil)
	cdu, gdu := pair(t, c, g, rows, cols, nil)
	if err := ct.SwiGLUBackward(cdg, cdu, cd, cg, cu); err != nil {
		t.Fatal(err)
	}
	if err := g.SwiGLUBackward(gdg, gdu, gd, gg, gu); err != nil {
		t.Fatal(err)
	}
	compare(t, "swiglu backward dgate", c, g, cdg, gdg, 1e-6)
	compare(t, "swiglu backward dup", c, g, cdu, gdu, 1e-6)
	// In place over gate and up (each element read before it is written).
	if err := g.SwiGLUBackward(gg, gu, gd, gg, gu); err != nil {
		t.Fatal(err)
	}
	compare(t, "swiglu backward in place dgate", c, g, cdg, gg, 1e-6)
	compare(t, "swiglu backward in place dup", c, g, cdu, gu, 1e-6)
	if err := g.SwiGLUBackward(gdg, gdg, gd, gg, gu); err == nil {
		t.Error("swiglu backward with dgate = dup: no error")
	}
}

func TestTrainingEmbeddingBackward(t *testing.T) {
	g, c, ct := trainPair(t)
	const V, H = 50, 300
	ids := []int{3, 0, 49, 3, 17, 5, 49, 3, 3, 22, 0, 3, 8, 8, 49, 1, 2, 3, 4, 5}
	ctb, gtb := pair(t, c, g, V, H, randn(V*H, 1, 1))
	cd, gd := pair(t, c, g, len(ids), H, randn(len(ids)*H, 2, 1))
	if err := ct.EmbeddingBackward(ctb, cd, ids); err != nil {
		t.Fatal(err)
	}
	if err := g.EmbeddingBackward(gtb, gd, ids); err != nil {
		t.Fatal(err)
	}
	compare(t, "embedding backward", c, g, ctb, gtb, 1e-6)
	bad := append([]int(nil), ids...)
	bad[7] = V
	before := download(t, g, gtb)
	if err := g.EmbeddingBackward(gtb, gd, bad); err == nil || !strings.Contains(err.Error(), "position 7") {
		t.Errorf("out-of-range id: %v", err)
	}
	compareSlices(t, "embedding backward after a refused call", download(t, g, gtb), before, 0)
}

// attentionInputs uploads q, k, v, dout and the forward's output (computed on the CPU) to both.
func attentionInputs(t *testing.T, c *cpu.Backend, g *Backend, T, nH, nKV, hd int, seed uint64) (cs, gs [5]backend.Tensor) {
	t.Helper()
	qw, kw := nH*hd, nKV*hd
	cs[0], gs[0] = pair(t, c, g, T, qw, randn(T*qw, seed, 1))
	cs[1], gs[1] = pair(t, c, g, T, kw, randn(T*kw, seed+1, 1))
	cs[2], gs[2] = pair(t, c, g, T, kw, randn(T*kw, seed+2, 1))
	cs[3], gs[3] = pair(t, c, g, T, qw, randn(T*qw, seed+3, 1))
	cout, err := c.Alloc(backend.Activations, T, qw)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Attention(cout, cs[0], cs[1], cs[2], 0, nH, nKV, hd); err != nil {
		t.Fatal(err)
	}
	cs[4], gs[4] = pair(t, c, g, T, qw, download(t, c, cout))
	return
}

func TestTrainingAttentionBackward(t *testing.T) {
	g, c, ct := trainPair(t)
	// The fp32 kernels (the flash kernels, bf16 products, have their own test in flash_test.go).
	g.do(func() error { g.attnSIMT = true; return nil })
	defer g.do(func() error { g.attnSIMT = false; return nil })
	const bound = 2e-5
	type tc struct{ T, nH, nKV, hd int }
	cases := []tc{{1, 2, 1, 16}, {7, 4, 2, 32}, {130, 4, 1, 64}, {200, 2, 2, 128}}
	if !testing.Short() {
		cases = append(cases, tc{600, 8, 2, 128})
	}
	for i, cs := range cases {
		name := fmt.Sprintf("attention backward T%d heads %d/%d hd %d", cs.T, cs.nH, cs.nKV, cs.hd)
		ci, gi := attentionInputs(t, c, g, cs.T, cs.nH, cs.nKV, cs.hd, uint64(100*i))
		qw, kw := cs.nH*cs.hd, cs.nKV*cs.hd
		cdq, gdq := pair(t, c, g, cs.T, qw, nil)
		cdk, gdk := pair(t, c, g, cs.T, kw, nil)
		cdv, gdv := pair(t, c, g, cs.T, kw, nil)
		if err := ct.AttentionBackward(cdq, cdk, cdv, ci[3], ci[0], ci[1], ci[2], ci[4], cs.nH, cs.nKV, cs.hd); err != nil {
			t.Fatalf("%s: cpu: %v", name, err)
		}
		if err := g.AttentionBackward(gdq, gdk, gdv, gi[3], gi[0], gi[1], gi[2], gi[4], cs.nH, cs.nKV, cs.hd); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cs.T == 1 {
			// One key: the softmax is constant, dq and dk are zero in exact arithmetic (the CPU
			// gets exactly 0); here only rounding may remain, relative to dv's scale.
			dv := download(t, g, gdv)
			scale := 0.0
			for _, x := range dv {
				scale = math.Max(scale, math.Abs(float64(x)))
			}
			for _, x := range [][]float32{download(t, g, gdq), download(t, g, gdk)} {
				for _, v := range x {
					if math.Abs(float64(v)) > 1e-6*scale {
						t.Errorf("%s: dq/dk element %g, want 0 (within 1e-6 of %g)", name, v, scale)
						break
					}
				}
			}
		} else {
			compare(t, name+" dq", c, g, cdq, gdq, bound)
			compare(t, name+" dk", c, g, cdk, gdk, bound)
		}
		compare(t, name+" dv", c, g, cdv, gdv, bound)
	}
	// k with more rows than q (a cache) is refused, as are gradients aliasing inputs.
	_, gi := attentionInputs(t, c, g, 4, 2, 1, 16, 7)
	_, gk := pair(t, c, g, 5, 16, randn(80, 1, 1))
	_, gdq := pair(t, c, g, 4, 32, nil)
	_, gdk := pair(t, c, g, 4, 16, nil)
	_, gdv := pair(t, c, g, 4, 16, nil)
	if err := g.AttentionBackward(gdq, gdk, gdv, gi[3], gi[0], gk, gi[2], gi[4], 2, 1, 16); err == nil {
		t.Error("attention backward with 5 key rows for 4 query rows: no error")
	}
	if err := g.AttentionBackward(gi[0], gdk, gdv, gi[3], gi[0], gi[1], gi[2], gi[4], 2, 1, 16); err == nil {
		t.Error("attention backward with dq = q: no error")
	}
}

func TestTrainingCrossEntropy(t *testing.T) {
	g, c, ct := trainPair(t)
	type tc struct {
		V       int
		targets []int
		ls      float32
		extreme bool // rows 0..3 get extreme logits (see below)
	}
	// The kernel reads rows with float4 loads when V is a multiple of 4 (else scalar loads), in
	// iterations of 16 logits a thread (crossEntropyThreads·16 a block) and then one float4 or
	// one logit at a time: vs and ss are V just past one full iteration, vector and scalar.
	vs, ss := 16*crossEntropyThreads+4, 16*crossEntropyThreads+3
	tg := []int{3, -1, 999, 0, 500, -1}
	cases := []tc{{1000, tg, 0, false}, {1000, tg, 0.1, false}, {151936, []int{151935, 7, -1}, 0.05, false},
		{1001, tg, 0, false}, {1001, tg, 0.1, true}, {vs, tg, 0, true}, {vs, tg, 0.1, false}, {ss, tg, 0.05, true},
		{151936, []int{5, -1, 151935, 77777, 0}, 0, true}, {151937, []int{5, 151936, -1, 2, 0}, 0.1, true}}
	const scale = 0.25
	for i, cs := range cases {
		R := len(cs.targets)
		name := fmt.Sprintf("cross-entropy [%d, %d] ls %g", R, cs.V, cs.ls)
		logits := randn(R*cs.V, uint64(i+1), 3)
		if cs.extreme {
			// Row 0: the target's logit is +80 (softmax ≈ one-hot there), a few others −80.
			// Row 1: every logit shifted by −80, one of them −∞ (a masked token) where that
			// keeps the loss finite. Row 2: +80 away from the target (whose probability is then
			// ≈ e^-80). Row 3: logits alternating ±80.
			name += " extreme"
			row := func(r int) []float32 { return logits[r*cs.V : (r+1)*cs.V] }
			if t := cs.targets[0]; t >= 0 {
				row(0)[t] = 80
			}
			for j := 1; j < cs.V; j += 97 {
				if j != cs.targets[0] {
					row(0)[j] = -80
				}
			}
			for j := range row(1) {
				row(1)[j] -= 80
			}
			if cs.targets[1] < 0 || cs.ls == 0 { // else the row's loss is +∞ (ls·mean)
				row(1)[cs.V/2+1] = float32(math.Inf(-1))
			}
			row(2)[(cs.targets[2]+cs.V/3)%cs.V] = 80
			for j := range row(3) {
				row(3)[j] = float32(80 * (1 - 2*(j&1)))
			}
		}
		cl, gl := pair(t, c, g, R, cs.V, logits)
		cdl, gdl := pair(t, c, g, R, cs.V, nil)
		csum, cn, err := ct.CrossEntropy(cdl, cl, cs.targets, cs.ls, scale)
		if err != nil {
			t.Fatalf("%s: cpu: %v", name, err)
		}
		gsum, gn, err := g.CrossEntropy(gdl, gl, cs.targets, cs.ls, scale)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if gn != cn || math.Abs(gsum-csum) > 1e-6*math.Abs(csum) {
			t.Errorf("%s: loss %v over %d rows, cpu %v over %d (bound 1e-6)", name, gsum, gn, csum, cn)
		}
		compare(t, name+" dlogits", c, g, cdl, gdl, 1e-5)

		// engine/train's CrossEntropy on the host: row r predicts ids[r+1].
		ids, mask := make([]int, R+1), make([]bool, R+1)
		for r, tg := range cs.targets {
			ids[r+1], mask[r+1] = max(tg, 0), tg >= 0
		}
		ref := make([]float32, (R+1)*cs.V)
		rsum, rn := train.CrossEntropy{LabelSmoothing: float64(cs.ls)}.Value(append(logits, make([]float32, cs.V)...), R+1, cs.V, ids, mask, ref)
		if rn != gn || math.Abs(gsum-rsum) > 1e-9*math.Abs(rsum) {
			t.Errorf("%s: loss %v over %d rows, engine/train %v over %d (bound 1e-9)", name, gsum, gn, rsum, rn)
		}
		for j := range ref[:R*cs.V] {
			ref[j] *= scale
		}
		gotD := download(t, g, gdl)
		compareSlices(t, name+" dlogits vs engine/train", gotD, ref[:R*cs.V], 1e-6)

		// In place (dlogits = logits) gives the same bits.
		isum, _, err := g.CrossEntropy(gl, gl, cs.targets, cs.ls, scale)
		if err != nil {
			t.Fatal(err)
		}
		if isum != gsum {
			t.Errorf("%s in place: loss %v, out of place %v", name, isum, gsum)
		}
		compareSlices(t, name+" in place", download(t, g, gl), gotD, 0)
	}
	_, gl := pair(t, c, g, 2, 10, randn(20, 1, 1))
	if _, _, err := g.CrossEntropy(gl, gl, []int{3, 10}, 0, 1); err == nil || !strings.Contains(err.Error(), "row 1") {
		t.Errorf("target outside the vocabulary: %v", err)
	}
}

// optimState mirrors the fields of engine/optim's saved state that the AdamW test reads (gob
// matches fields by name).
type optimState struct {
	Params []*struct {
		W32, M32, V32, MSc, VSc []float32
		W16                     []uint16
		M8                      []int8
		V8                      []uint8
	}
	Step int
}

// adamDownload copies a GPU AdamW state back: fp32 m and v, or int8 codes and scales.
func adamDownload(t *testing.T, g *Backend, st backend.AdamWState) (m32, v32, ms, vs []float32, m8 []int8, v8 []uint8) {
	t.Helper()
	s := st.(*AdamState)
	n := s.rows * s.cols
	err := g.do(func() error {
		cp := func(dst unsafe.Pointer, src devPtr, bytes int) error { return memcpyDtoH(dst, src, int64(bytes)) }
		if s.format == "fp32" {
			m32, v32 = make([]float32, n), make([]float32, n)
			if err := cp(unsafe.Pointer(&m32[0]), s.m, 4*n); err != nil {
				return err
			}
			return cp(unsafe.Pointer(&v32[0]), s.v, 4*n)
		}
		nb := (n + adamBlock - 1) / adamBlock
		m8, v8, ms, vs = make([]int8, n), make([]uint8, n), make([]float32, nb), make([]float32, nb)
		for _, c := range []struct {
			dst   unsafe.Pointer
			src   devPtr
			bytes int
		}{{unsafe.Pointer(&m8[0]), s.m, n}, {unsafe.Pointer(&v8[0]), s.v, n}, {unsafe.Pointer(&ms[0]), s.ms, 4 * nb}, {unsafe.Pointer(&vs[0]), s.vs, 4 * nb}} {
			if err := cp(c.dst, c.src, c.bytes); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return
}

// compareCodes checks that at most 0.5% of the codes differ, each by at most one step.
func compareCodes[T int8 | uint8 | uint16 | uint32](t *testing.T, name string, got, want []T) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d codes, want %d", name, len(got), len(want))
	}
	diff := 0
	for i := range want {
		if got[i] != want[i] {
			diff++
			if d := int(got[i]) - int(want[i]); d > 1 || d < -1 {
				t.Errorf("%s: element %d is %d, want %d", name, i, got[i], want[i])
				return
			}
		}
	}
	t.Logf("parity %-44s %d of %d codes differ by one (bound 0.5%%)", name, diff, len(want))
	if diff*200 > len(want) {
		t.Errorf("%s: %d of %d codes differ", name, diff, len(want))
	}
}

// adamRangeRows shapes a gradient's rows by row mod 5 so that the AdamW kernels' lanes meet
// each of their paths (train.cu adamw_update8g): zero rows (m and v all zero: whole lanes with
// 512 columns), every third element zero (lanes with some zeros), values of 1e-22 (v below
// 2^-100, subnormal), values of 1e16 (v above 2^80), and plain rows (the fast path).
func adamRangeRows(g []float32, rows, cols int) {
	for r := 0; r < rows; r++ {
		row := g[r*cols : (r+1)*cols]
		for j := range row {
			switch r % 5 {
			case 0:
				row[j] = 0
			case 1:
				if j%3 == 0 {
					row[j] = 0
				}
			case 2:
				row[j] *= 1e-22
			case 3:
				row[j] *= 1e16
			}
		}
	}
}

func TestTrainingAdamW(t *testing.T) {
	g, c, ct := trainPair(t)
	type tc struct {
		format, kind string
		sr, noDecay  bool
		rows, cols   int
		ranges       bool // rows of gradients that steer lanes off the kernels' fast path
	}
	var cases []tc
	for _, f := range []string{"fp32", "int8"} {
		cases = append(cases, tc{f, kindF32, false, false, 7, 50, false}, tc{f, kindF32, false, true, 64, 130, false},
			tc{f, kindBF16, false, false, 7, 50, false}, tc{f, kindBF16, true, false, 64, 130, false},
			tc{f, kindBF16, true, false, 40, 512, true}, tc{f, kindF32, false, false, 40, 130, true})
	}
	// A parameter of 8.4 M elements: every warp of the resident grid (one wave, ~3,200 warps of
	// 512 elements with int8 moments) walks several items, as in a real model's matrices.
	cases = append(cases, tc{"int8", kindBF16, true, false, 2048, 4096, false})
	const steps = 3
	for i, cs := range cases {
		name := fmt.Sprintf("adamw %s %s sr=%v nodecay=%v [%d, %d] ranges=%v", cs.format, cs.kind, cs.sr, cs.noDecay, cs.rows, cs.cols, cs.ranges)
		n := cs.rows * cs.cols
		init := randn(n, uint64(200+i), 0.5)
		h, err := tensor.FromFloat32s("w", tensor.F32, []int{cs.rows, cs.cols}, init)
		if err != nil {
			t.Fatal(err)
		}
		hw := backend.HostWeight{Name: "w", Dense: h, Keep: cs.kind}
		cw, gw := weights(t, c, g, hw)
		cst, err := ct.NewAdamWState(cs.format, cs.rows, cs.cols)
		if err != nil {
			t.Fatalf("%s: cpu: %v", name, err)
		}
		gst, err := g.NewAdamWState(cs.format, cs.rows, cs.cols)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if gst.Format() != cs.format || gst.Bytes() <= 0 {
			t.Errorf("%s: state %q of %d bytes", name, gst.Format(), gst.Bytes())
		}
		// engine/optim with the same parameter at index 1 (a dummy at 0), no clipping: the
		// gradient handed to it is grad·GradScale rounded as the kernel rounds it.
		master := optim.MasterFP32
		if cs.kind == kindBF16 {
			master = optim.MasterBF16
		}
		state := optim.FP32
		if cs.format == "int8" {
			state = optim.Int8
		}
		hy := backend.AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, GradScale: 0.5,
			NoDecay: cs.noDecay, StochasticRound: cs.sr, Seed: 42, Param: 1}
		opt, err := optim.NewAdamW(optim.Config{LR: hy.LR, Beta1: hy.Beta1, Beta2: hy.Beta2, Eps: hy.Eps, WeightDecay: hy.WeightDecay,
			State: state, Master: master, StochasticRounding: cs.sr, Seed: hy.Seed},
			[]optim.ParamSpec{{Name: "dummy", Rows: 1, Cols: 1, Init: []float32{0}}, {Name: "w", Rows: cs.rows, Cols: cs.cols, Init: init, NoDecay: cs.noDecay}})
		if err != nil {
			t.Fatal(err)
		}
		for s := 1; s <= steps; s++ {
			gv := randn(n, uint64(300+10*i+s), 0.05*float64(s))
			if cs.ranges {
				adamRangeRows(gv, cs.rows, cs.cols)
			}
			cg, gg := pair(t, c, g, cs.rows, cs.cols, gv)
			hy.Step = s
			if err := ct.AdamW(cw, cg, cst, hy); err != nil {
				t.Fatalf("%s step %d: cpu: %v", name, s, err)
			}
			if err := g.AdamW(gw, gg, gst, hy); err != nil {
				t.Fatalf("%s step %d: %v", name, s, err)
			}
			scaled := make([]float32, n)
			for j, v := range gv {
				scaled[j] = v * hy.GradScale
			}
			if _, err := opt.Step([][]float32{{0}, scaled}, hy.LR); err != nil {
				t.Fatal(err)
			}
		}
		gotHW, err := g.DownloadWeight(gw)
		if err != nil {
			t.Fatal(err)
		}
		cpuHW, err := c.DownloadWeight(cw)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := gotHW.Dense.Float32s(nil)
		fromCPU, _ := cpuHW.Dense.Float32s(nil)
		fromOpt := opt.Weights(1, nil)
		if cs.kind == kindF32 {
			compareSlices(t, name+" weights vs cpu", got, fromCPU, 1e-6)
			compareSlices(t, name+" weights vs optim", got, fromOpt, 1e-6)
		} else {
			compareCodes(t, name+" bf16 weights vs cpu", bf16Bits(got), bf16Bits(fromCPU))
			compareCodes(t, name+" bf16 weights vs optim", bf16Bits(got), bf16Bits(fromOpt))
		}
		raw, err := opt.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var saved optimState
		if err := gob.NewDecoder(bytes.NewReader(raw)).Decode(&saved); err != nil {
			t.Fatal(err)
		}
		p := saved.Params[1]
		m32, v32, ms, vs, m8, v8 := adamDownload(t, g, gst)
		if cs.format == "fp32" {
			compareSlices(t, name+" m vs optim", m32, p.M32, 1e-6)
			compareSlices(t, name+" v vs optim", v32, p.V32, 1e-6)
		} else {
			compareCodes(t, name+" m codes vs optim", m8, p.M8)
			compareCodes(t, name+" √v codes vs optim", v8, p.V8)
			compareSlices(t, name+" m scales vs optim", ms, p.MSc, 1e-6)
			compareSlices(t, name+" √v scales vs optim", vs, p.VSc, 1e-6)
		}
		g.FreeAdamWState(gst)
		ct.FreeAdamWState(cst)
	}

	// Refusals: an NVFP4 weight, a state of another shape, an unknown format.
	_, gw := weights(t, c, g, hostWeight(t, kindNVFP4, 4, 32, 1))
	_, gg := pair(t, c, g, 4, 32, randn(128, 1, 1))
	st, err := g.NewAdamWState("fp32", 4, 32)
	if err != nil {
		t.Fatal(err)
	}
	defer g.FreeAdamWState(st)
	hy := backend.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 1, GradScale: 1}
	if err := g.AdamW(gw, gg, st, hy); err == nil || !strings.Contains(err.Error(), "nvfp4") {
		t.Errorf("adamw on an NVFP4 weight: %v", err)
	}
	if _, err := g.NewAdamWState("2bit", 4, 32); err == nil {
		t.Error("adamw state format 2bit: no error")
	}
	hy.Step = 0
	_, gf := weights(t, c, g, hostWeight(t, kindF32, 4, 32, 1))
	if err := g.AdamW(gf, gg, st, hy); err == nil {
		t.Error("adamw step 0: no error")
	}
}

// TestTrainingDeterministic runs the ops with cross-thread reductions twice on the same inputs
// and wants the same bits.
func TestTrainingDeterministic(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	run := func() [][]float32 {
		var res [][]float32
		// Attention backward.
		_, gi := attentionInputs(t, c, g, 150, 4, 2, 64, 5)
		_, gdq := pair(t, c, g, 150, 256, nil)
		_, gdk := pair(t, c, g, 150, 128, nil)
		_, gdv := pair(t, c, g, 150, 128, nil)
		if err := g.AttentionBackward(gdq, gdk, gdv, gi[3], gi[0], gi[1], gi[2], gi[4], 4, 2, 64); err != nil {
			t.Fatal(err)
		}
		res = append(res, download(t, g, gdq), download(t, g, gdk), download(t, g, gdv))
		// RMSNorm dw over many groups, matmul dw over many rows, embedding with repeats.
		_, gx := pair(t, c, g, 500, 256, randn(500*256, 1, 1))
		_, gd := pair(t, c, g, 500, 256, randn(500*256, 2, 1))
		_, gw := pair(t, c, g, 1, 64, randn(64, 3, 1))
		_, gdw := pair(t, c, g, 1, 64, nil)
		if err := g.RMSNormBackward(nil, gdw, gd, gx, gw, 1e-6, false); err != nil {
			t.Fatal(err)
		}
		res = append(res, download(t, g, gdw))
		_, gmw := pair(t, c, g, 256, 256, nil)
		wt, err := g.UploadWeight(hostWeight(t, kindBF16, 256, 256, 4))
		if err != nil {
			t.Fatal(err)
		}
		defer g.FreeWeight(wt)
		if err := g.MatMulBackward(nil, gmw, gd, gx, wt, false); err != nil {
			t.Fatal(err)
		}
		res = append(res, download(t, g, gmw))
		ids := make([]int, 500)
		for i := range ids {
			ids[i] = (i * 7) % 13
		}
		_, gtb := pair(t, c, g, 13, 256, nil)
		if err := g.EmbeddingBackward(gtb, gd, ids); err != nil {
			t.Fatal(err)
		}
		res = append(res, download(t, g, gtb))
		return res
	}
	a, b := run(), run()
	for i := range a {
		for j := range a[i] {
			if math.Float32bits(a[i][j]) != math.Float32bits(b[i][j]) {
				t.Fatalf("result %d element %d: %v then %v", i, j, a[i][j], b[i][j])
			}
		}
	}
}

func TestTrainingErrors(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	_, gw := weights(t, c, g, hostWeight(t, kindF32, 8, 16, 1))
	_, gd := pair(t, c, g, 3, 8, randn(24, 1, 1))
	_, gx := pair(t, c, g, 3, 16, randn(48, 2, 1))
	_, gdx := pair(t, c, g, 3, 16, randn(48, 3, 1))
	_, gdw := pair(t, c, g, 8, 16, nil)
	_, bad := pair(t, c, g, 3, 9, nil)
	before := download(t, g, gdx)
	if err := g.MatMulBackward(gdx, gdw, bad, gx, gw, false); err == nil {
		t.Error("matmul backward with dout [3, 9] for a weight [8, 16]: no error")
	}
	if err := g.MatMulBackward(gdx, gdw, gd, nil, gw, false); err == nil || !strings.Contains(err.Error(), "needs x") {
		t.Errorf("matmul backward dw without x: %v", err)
	}
	compareSlices(t, "dx after refused calls", download(t, g, gdx), before, 0)
	if err := g.MatMulBackward(gdx, nil, gd, nil, gw, false); err != nil {
		t.Errorf("matmul backward dx only: %v", err)
	}
	if err := g.RoPEBackward(gx, gx, 5, 0, 1e6); err == nil {
		t.Error("rope backward with an odd head_dim: no error")
	}
}

// TestDivPos checks the AdamW kernels' division (adamw.cuh div_pos, the fast path of div.rn
// without its range test and slow-path call) against __fdiv_rn bit for bit on 2^32 pairs spread
// over its whole input range, zeros and binade edges included (train.cu div_pos_check).
func TestDivPos(t *testing.T) {
	g := openGPU(t)
	out, err := g.Alloc(backend.Workspace, 1, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(out)
	if err := g.Upload(out, make([]float32, 4)); err != nil {
		t.Fatal(err)
	}
	n := uint64(1) << 32
	if testing.Short() {
		n = 1 << 28
	}
	err = g.do(func() error {
		return launch(g.fns["div_pos_check"], [3]int{8 * g.sms, 1, 1}, [3]int{256, 1, 1}, 0,
			arg(uint32(0x5eed)), arg(n), ptrArg(out.(*Tensor).ptr))
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := g.Download(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if bad := math.Float32bits(res[0]); bad != 0 {
		a, b := res[1], res[2]
		t.Fatalf("div_pos differs from __fdiv_rn on %d of %d pairs, e.g. %g / %g (bits %#x / %#x)", bad, n, a, b, math.Float32bits(a), math.Float32bits(b))
	}
}

// adamFigureParam uploads the figures' large bf16 parameter [rows, cols] (values randn seed 7,
// σ 0.02) and gives it a fresh int8 AdamW state; both are freed when the test ends.
func adamFigureParam(t *testing.T, g *Backend, rows, cols int) (backend.Weight, backend.AdamWState) {
	t.Helper()
	h, err := tensor.FromFloat32s("w", tensor.F32, []int{rows, cols}, randn(rows*cols, 7, 0.02))
	if err != nil {
		t.Fatal(err)
	}
	bw, err := g.UploadWeight(backend.HostWeight{Name: "w", Dense: h, Keep: kindBF16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.FreeWeight(bw) })
	st, err := g.NewAdamWState("int8", rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.FreeAdamWState(st) })
	return bw, st
}

// adamFigureGradBF16 is the figures' bf16 gradient of that parameter (freed when t ends).
func adamFigureGradBF16(t *testing.T, g *Backend, rows, cols int) backend.Tensor {
	t.Helper()
	gradB, err := g.AllocGradient(rows, cols, tensor.BF16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Free(gradB) })
	if err := g.Upload(gradB, randn(rows*cols, 8, 1e-3)); err != nil {
		t.Fatal(err)
	}
	return gradB
}

// TestFiguresAdamW times the int8 AdamW step on one large bf16 parameter beside adamw_probe,
// its memory traffic without the arithmetic: how far the kernel is from what its access pattern
// allows (QWENGO_CUDA_BENCH=1). Then the same with a bf16 gradient (adamw_bf16_int8_gb and
// adamw_probe_gb, 10.25 B an element instead of 12.25), and four layers one call each against
// batched, with float32 and with bf16 gradients.
func TestFiguresAdamW(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	const rows, cols = 38912, 2560 // 99.6 M elements, 1.2 GB moved a step
	n := rows * cols
	bw, st := adamFigureParam(t, g, rows, cols)
	grad, err := g.Alloc(backend.Activations, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(grad)
	if err := g.Upload(grad, randn(n, 8, 1e-3)); err != nil {
		t.Fatal(err)
	}
	bytes := float64(n) * 12.25
	step := 0
	ms, err := timeOnDevice(g, 20, func() error {
		step++
		return g.AdamW(bw, grad, st, backend.AdamWHyper{LR: 1e-5, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01,
			Step: step, GradScale: 0.5, StochasticRound: true, Seed: 1, Param: 3})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(figure{"adamw_bf16_int8 99.6M elements", bytes, 0, ms})
	s, w, gt := st.(*AdamState), bw.(*Weight), grad.(*Tensor)
	var grid int
	if err := g.do(func() (err error) { grid, err = g.adamGrid("adamw_probe", int64(n/adamChunk)); return err }); err != nil {
		t.Fatal(err)
	}
	ms, err = timeOnDevice(g, 20, func() error {
		return launch(g.fns["adamw_probe"], [3]int{grid, 1, 1}, [3]int{256, 1, 1}, 0, ptrArg(w.ptr), ptrArg(gt.ptr),
			ptrArg(s.m), ptrArg(s.v), ptrArg(s.ms), ptrArg(s.vs), sizeArg(int64(n)))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(figure{"adamw_probe (traffic only) 99.6M elements", bytes, 0, ms})

	// The same parameter and state with a bf16 gradient of the same values (rounded).
	gradB := adamFigureGradBF16(t, g, rows, cols)
	bytesB := float64(n) * 10.25
	ms, err = timeOnDevice(g, 20, func() error {
		step++
		return g.AdamW(bw, gradB, st, backend.AdamWHyper{LR: 1e-5, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01,
			Step: step, GradScale: 0.5, StochasticRound: true, Seed: 1, Param: 3})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(figure{"adamw_bf16_int8_gb (bf16 gradient) 99.6M elements", bytesB, 0, ms})
	// The plain and the staged kernel (b.adamStaged) on the same data, in turn, twice each: the
	// two processes' figures above move a few per cent between runs of the same kernel.
	defer g.do(func() error { g.adamStaged = adamStagedFromEnv(); return nil })
	for _, on := range []bool{false, true, false, true} {
		g.do(func() error { g.adamStaged = on; return nil })
		ms, err = timeOnDevice(g, 20, func() error {
			step++
			return g.AdamW(bw, gradB, st, backend.AdamWHyper{LR: 1e-5, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01,
				Step: step, GradScale: 0.5, StochasticRound: true, Seed: 1, Param: 3})
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Log(figure{fmt.Sprintf("adamw_bf16_int8_gb, staged %v, 99.6M elements", on), bytesB, 0, ms})
	}
	gbt := gradB.(*Tensor)
	ms, err = timeOnDevice(g, 20, func() error {
		return launch(g.fns["adamw_probe_gb"], [3]int{grid, 1, 1}, [3]int{256, 1, 1}, 0, ptrArg(w.ptr), ptrArg(gbt.ptr),
			ptrArg(s.m), ptrArg(s.v), ptrArg(s.ms), ptrArg(s.vs), sizeArg(int64(n)))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(figure{"adamw_probe_gb (traffic only, bf16 gradient) 99.6M elements", bytesB, 0, ms})
	// The same parameter as a batch of one (adamw_many's code on adamw's data).
	ms, err = timeOnDevice(g, 20, func() error {
		step++
		return g.AdamWMany([]backend.AdamWJob{{W: bw, Grad: gradB, State: st, Hyper: backend.AdamWHyper{LR: 1e-5, Beta1: 0.9,
			Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, Step: step, GradScale: 0.5, StochasticRound: true, Seed: 1, Param: 3}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(figure{"adamw_many_bf16_int8_gb, one job of 99.6M elements", bytesB, 0, ms})

	// Four layers of Qwen3-4B's parameters (7 matrices and 4 norms each, f32 norms): one AdamW
	// call each against one AdamWMany batch; then the same with bf16 gradients (bjobs).
	shapes := [][2]int{{4096, 2560}, {1024, 2560}, {1024, 2560}, {2560, 4096}, {9728, 2560}, {9728, 2560}, {2560, 9728},
		{1, 128}, {1, 128}, {1, 2560}, {1, 2560}}
	var jobs, bjobs []backend.AdamWJob
	var layerBytes, layerBytesB float64
	for l := range 4 {
		for i, sh := range shapes {
			kind := kindBF16
			if sh[0] == 1 {
				kind = kindF32
			}
			w, err := g.UploadWeight(hostWeight(t, kind, sh[0], sh[1], uint64(10*l+i)))
			if err != nil {
				t.Fatal(err)
			}
			defer g.FreeWeight(w)
			gr, err := g.Alloc(backend.Activations, sh[0], sh[1])
			if err != nil {
				t.Fatal(err)
			}
			defer g.Free(gr)
			st, err := g.NewAdamWState("int8", sh[0], sh[1])
			if err != nil {
				t.Fatal(err)
			}
			defer g.FreeAdamWState(st)
			jobs = append(jobs, backend.AdamWJob{W: w, Grad: gr, State: st, Hyper: backend.AdamWHyper{LR: 1e-5, Beta1: 0.9,
				Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, GradScale: 0.5, StochasticRound: kind == kindBF16, Seed: 1,
				Param: uint64(len(jobs))}})
			layerBytes += float64(sh[0]*sh[1]) * 12.25
			grb, err := g.AllocGradient(sh[0], sh[1], tensor.BF16)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Free(grb)
			bj := jobs[len(jobs)-1]
			bj.Grad = grb
			bjobs = append(bjobs, bj)
			layerBytesB += float64(sh[0]*sh[1]) * 10.25
		}
	}
	for _, run := range []struct {
		batched, bf16 bool
	}{{false, false}, {true, false}, {false, true}, {true, true}, {false, false}, {true, false}, {false, true}, {true, true}} {
		batched, js, by, what := run.batched, jobs, layerBytes, "float32"
		if run.bf16 {
			js, by, what = bjobs, layerBytesB, "bf16"
		}
		step := 0
		ms, err := timeOnDevice(g, 10, func() error {
			step++
			for i := range js {
				js[i].Hyper.Step = step
			}
			if batched {
				return g.AdamWMany(js)
			}
			for _, j := range js {
				if err := g.AdamW(j.W, j.Grad, j.State, j.Hyper); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Log(figure{fmt.Sprintf("adamw 4 layers, %d tensors, %s gradients, batched %v", len(js), what, batched), by, 0, ms})
	}
}

// TestFiguresAdamWTraffic times the int8 step's traffic (a bf16 master and gradient, int8 codes
// and per-64 scales, 10.25 B an element) in the access-pattern variants of train.cu's
// adamw_traffic, each at 3 resident blocks of 8 warps an SM (adamw_many_bf16_int8_gb's
// occupancy) and at 6, beside a plain copy and an in-place change of 16-byte vectors: what the
// optimizer step can reach with each pattern before the kernel takes one (QWENGO_CUDA_BENCH=1).
func TestFiguresAdamWTraffic(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	const rows, cols = 38912, 2560
	n := rows * cols
	bw, st := adamFigureParam(t, g, rows, cols)
	gradB := adamFigureGradBF16(t, g, rows, cols)
	s, w, gt := st.(*AdamState), bw.(*Weight), gradB.(*Tensor)
	items := n / 512
	for _, bps := range []int{3, 6} {
		grid := min(g.sms*bps, items/8)
		for v := range 6 {
			name := fmt.Sprintf("adamw_traffic%d", v)
			ms, err := timeOnDevice(g, 20, func() error {
				return launch(g.fns[name], [3]int{grid, 1, 1}, [3]int{256, 1, 1}, 0, ptrArg(w.ptr), ptrArg(gt.ptr),
					ptrArg(s.m), ptrArg(s.v), ptrArg(s.ms), ptrArg(s.vs), sizeArg(int64(n)))
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Log(figure{fmt.Sprintf("%s %d blocks an SM", name, bps), float64(n) * 10.25, 0, ms})
		}
	}
	a, err := g.Alloc(backend.Activations, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(a)
	b, err := g.Alloc(backend.Activations, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(b)
	vecs := int64(n) / 4
	for _, bps := range []int{4, 8} {
		grid := g.sms * bps
		at, bt := a.(*Tensor), b.(*Tensor)
		ms, err := timeOnDevice(g, 20, func() error {
			return launch(g.fns["copy_u4"], [3]int{grid, 1, 1}, [3]int{256, 1, 1}, 0, ptrArg(bt.ptr), ptrArg(at.ptr), sizeArg(vecs))
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Log(figure{fmt.Sprintf("copy_u4 %d blocks an SM", bps), float64(n) * 8, 0, ms})
		ms, err = timeOnDevice(g, 20, func() error {
			return launch(g.fns["rmw_u4"], [3]int{grid, 1, 1}, [3]int{256, 1, 1}, 0, ptrArg(at.ptr), sizeArg(vecs))
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Log(figure{fmt.Sprintf("rmw_u4 %d blocks an SM", bps), float64(n) * 8, 0, ms})
	}
}

// TestAdamWMany checks the batched AdamW (AdamWMany: adamw_many launches of up to 36
// parameters) against one AdamW call each, bit for bit over two steps: weights and moments, for
// every kind and state format, shapes with and without partial chunks, norms of 128 elements,
// more parameters than one launch takes. Then its refusals: jobs that share a weight or
// state, an invalid job (nothing updated).
func TestAdamWMany(t *testing.T) {
	g := openGPU(t)
	type param struct {
		kind, format string
		rows, cols   int
	}
	var ps []param
	for i := range 40 {
		kind, format := []string{kindBF16, kindF32}[i%2], []string{"int8", "fp32", "int8", "4bit"}[i%4]
		shape := [][2]int{{1, 128}, {7, 50}, {64, 130}, {1, 2560}, {3, 1000}, {2, 2560}, {33, 256}, {5, 77}}[i%8]
		ps = append(ps, param{kind, format, shape[0], shape[1]})
	}
	mk := func() *adamSide {
		return newAdamSide(t, g, len(ps), func(i int) (string, string, int, int) {
			return ps[i].kind, ps[i].format, ps[i].rows, ps[i].cols
		})
	}
	one, many := mk(), mk()
	for step := 1; step <= 2; step++ {
		var jobs []backend.AdamWJob
		for i, p := range ps {
			h := backend.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, Step: step, GradScale: 0.5,
				NoDecay: p.rows == 1, StochasticRound: p.kind == kindBF16 && i%3 != 0, Seed: 5, Param: uint64(i)}
			if err := g.AdamW(one.ws[i], one.gs[i], one.sts[i], h); err != nil {
				t.Fatal(err)
			}
			jobs = append(jobs, backend.AdamWJob{W: many.ws[i], Grad: many.gs[i], State: many.sts[i], Hyper: h})
		}
		if err := backend.AdamWMany(g, jobs); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range ps {
		name := fmt.Sprintf("param %d %s %s [%d, %d]", i, p.kind, p.format, p.rows, p.cols)
		compareAdamParam(t, g, name, many.ws[i], many.sts[i], one.ws[i], one.sts[i])
	}
	h := backend.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 3, GradScale: 1}
	// ps[1] and ps[9] are both f32 [7, 50] with fp32 states: the second job updates ws[1] again.
	dup := []backend.AdamWJob{{W: many.ws[1], Grad: many.gs[1], State: many.sts[1], Hyper: h}, {W: many.ws[1], Grad: many.gs[9], State: many.sts[9], Hyper: h}}
	if err := g.AdamWMany(dup); err == nil || !strings.Contains(err.Error(), "share memory") {
		t.Errorf("two jobs on one weight: %v", err)
	}
	before, _ := g.DownloadWeight(many.ws[1])
	bad := []backend.AdamWJob{{W: many.ws[1], Grad: many.gs[1], State: many.sts[1], Hyper: h}, {W: many.ws[2], Grad: many.gs[1], State: many.sts[2], Hyper: h}}
	if err := g.AdamWMany(bad); err == nil || !strings.Contains(err.Error(), "job 1") {
		t.Errorf("a job with a gradient of another shape: %v", err)
	}
	after, _ := g.DownloadWeight(many.ws[1])
	bv, _ := before.Dense.Float32s(nil)
	av, _ := after.Dense.Float32s(nil)
	compareCodes(t, "weights after a refused batch", f32Bits(av), f32Bits(bv))
}

// TestAdamWStaged checks the staged int8 AdamW kernels (adamw_bf16_int8{,_gb}_st: each warp's
// next item copied into shared memory while it computes the current one) against the plain ones
// bit for bit: weights and moments after three steps with stochastic rounding, float32 and bf16
// gradients, on parameters where every warp of the resident grid walks many items (the stages'
// steady state), with rows of gradients that steer lanes onto the rare paths, and with a length
// that leaves a partial item (adamw_blocks' tail). The staged kernel must have run: the plain
// kernel would pass this test by itself.
func TestAdamWStaged(t *testing.T) {
	g := openGPU(t)
	defer g.do(func() error { g.adamStaged = adamStagedFromEnv(); return nil })
	for _, cs := range []struct {
		rows, cols int
		bf16Grad   bool
	}{{8192, 2560, true}, {8192, 2560, false}, {1201, 1000, true}} {
		name := fmt.Sprintf("[%d, %d] bf16 gradient %v", cs.rows, cs.cols, cs.bf16Grad)
		n := cs.rows * cs.cols
		type side struct {
			w  backend.Weight
			st backend.AdamWState
		}
		mk := func() side {
			h, err := tensor.FromFloat32s("w", tensor.F32, []int{cs.rows, cs.cols}, randn(n, 11, 0.3))
			if err != nil {
				t.Fatal(err)
			}
			w, err := g.UploadWeight(backend.HostWeight{Name: "w", Dense: h, Keep: kindBF16})
			if err != nil {
				t.Fatal(err)
			}
			st, err := g.NewAdamWState("int8", cs.rows, cs.cols)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.FreeWeight(w); g.FreeAdamWState(st) })
			return side{w, st}
		}
		plain, staged := mk(), mk()
		var grad backend.Tensor
		var err error
		if cs.bf16Grad {
			grad, err = g.AllocGradient(cs.rows, cs.cols, tensor.BF16)
		} else {
			grad, err = g.Alloc(backend.Activations, cs.rows, cs.cols)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Free(grad) })
		for step := 1; step <= 3; step++ {
			gv := randn(n, uint64(40+step), 0.05*float64(step))
			adamRangeRows(gv, cs.rows, cs.cols)
			if err := g.Upload(grad, gv); err != nil {
				t.Fatal(err)
			}
			h := backend.AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, Step: step, GradScale: 0.5,
				StochasticRound: true, Seed: 3, Param: 7}
			for _, sd := range []struct {
				side
				on bool
			}{{plain, false}, {staged, true}} {
				g.do(func() error { g.adamStaged = sd.on; return nil })
				if err := g.AdamW(sd.w, grad, sd.st, h); err != nil {
					t.Fatalf("%s step %d (staged %v): %v", name, step, sd.on, err)
				}
			}
		}
		compareAdamParam(t, g, name+", staged", staged.w, staged.st, plain.w, plain.st)
	}
	if !g.adamStagedReady["adamw_bf16_int8_gb_st"] || !g.adamStagedReady["adamw_bf16_int8_st"] {
		t.Errorf("the staged kernels did not run (ready: %v)", g.adamStagedReady)
	}
}

// TestAdamWManyChain checks the chained launches (b.adamChain: each launch after an AdamWMany
// call's first may start while the one before drains, and ends after it): one large parameter
// first (a launch of its own, b.adamSingle), so that it outlasts the three batch launches chained
// behind it, then its weight and moments downloaded at once — a chain whose last launch could
// end before the first would hand the download a half-updated parameter. Bit for bit against one
// AdamW call each.
func TestAdamWManyChain(t *testing.T) {
	g := openGPU(t)
	if !g.adamChain {
		t.Skip("AdamW batch launches are not chained (QWENGO_CUDA_ADAMW_PDL=0 or no cuLaunchKernelEx)")
	}
	shape := func(i int) (int, int) {
		if i == 0 {
			return 8192, 2560
		}
		return 64, 2560
	}
	const params = 2*adamManyJobs + 8 // three batch launches after the large one
	mk := func() *adamSide {
		return newAdamSide(t, g, params, func(i int) (string, string, int, int) {
			rows, cols := shape(i)
			return kindBF16, "int8", rows, cols
		})
	}
	one, many := mk(), mk()
	var jobs []backend.AdamWJob
	for i := range params {
		h := backend.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, Step: 1, GradScale: 1,
			StochasticRound: true, Seed: 9, Param: uint64(i)}
		if err := g.AdamW(one.ws[i], one.gs[i], one.sts[i], h); err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, backend.AdamWJob{W: many.ws[i], Grad: many.gs[i], State: many.sts[i], Hyper: h})
	}
	if err := g.AdamWMany(jobs); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, params - 1} {
		compareAdamParam(t, g, fmt.Sprintf("param %d", i), many.ws[i], many.sts[i], one.ws[i], one.sts[i])
	}
}

// adamSide is one copy of an AdamW batch's parameters: weights, float32 gradients and states.
type adamSide struct {
	ws  []backend.Weight
	gs  []backend.Tensor
	sts []backend.AdamWState
}

// newAdamSide uploads n parameters, param(i) giving each one's weight kind, state format and
// shape; weight i and its gradient are seeded by i, so two sides hold the same values. Freed
// when t ends.
func newAdamSide(t *testing.T, g *Backend, n int, param func(i int) (kind, format string, rows, cols int)) *adamSide {
	t.Helper()
	s := &adamSide{}
	t.Cleanup(func() {
		for i := range s.ws {
			g.FreeWeight(s.ws[i])
		}
		for i := range s.gs {
			g.Free(s.gs[i])
		}
		for i := range s.sts {
			g.FreeAdamWState(s.sts[i])
		}
	})
	for i := range n {
		kind, format, rows, cols := param(i)
		w, err := g.UploadWeight(hostWeight(t, kind, rows, cols, uint64(i+1)))
		if err != nil {
			t.Fatal(err)
		}
		s.ws = append(s.ws, w)
		gr, err := g.Alloc(backend.Activations, rows, cols)
		if err != nil {
			t.Fatal(err)
		}
		s.gs = append(s.gs, gr)
		if err := g.Upload(gr, randn(rows*cols, uint64(100+i), 0.01)); err != nil {
			t.Fatal(err)
		}
		st, err := g.NewAdamWState(format, rows, cols)
		if err != nil {
			t.Fatal(err)
		}
		s.sts = append(s.sts, st)
	}
	return s
}

// compareAdamParam checks a parameter's weight and moments (got: downloaded first, in that
// order) against want's, bit for bit.
func compareAdamParam(t *testing.T, g *Backend, name string, got backend.Weight, gotSt backend.AdamWState, want backend.Weight, wantSt backend.AdamWState) {
	t.Helper()
	b, err := g.DownloadWeight(got)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := g.ReadAdamWState(gotSt)
	if err != nil {
		t.Fatal(err)
	}
	a, err := g.DownloadWeight(want)
	if err != nil {
		t.Fatal(err)
	}
	ma, err := g.ReadAdamWState(wantSt)
	if err != nil {
		t.Fatal(err)
	}
	av, _ := a.Dense.Float32s(nil)
	bv, _ := b.Dense.Float32s(nil)
	compareCodes(t, name+" weights", f32Bits(bv), f32Bits(av))
	if !reflect.DeepEqual(ma, mb) {
		t.Errorf("%s: the moments differ", name)
	}
}

func f32Bits(v []float32) []uint32 {
	out := make([]uint32, len(v))
	for i, x := range v {
		out[i] = math.Float32bits(x)
	}
	return out
}

// TestSumSquaresMany checks the batched sums of squares against SumSquares bit for bit (one
// element to a million, zeros, a view) and that a freed tensor is named.
func TestSumSquaresMany(t *testing.T) {
	g := openGPU(t)
	var xs []backend.Tensor
	for i, n := range []int{1, 128, 2560, 1 << 20, 3000, 7} {
		x, err := g.Alloc(backend.Gradients, 1, n)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Free(x)
		if i != 5 {
			if err := g.Upload(x, randn(n, uint64(i+1), 1)); err != nil {
				t.Fatal(err)
			}
		}
		xs = append(xs, x)
	}
	view, err := g.RowView(xs[3], 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	xs = append(xs, view)
	got, err := g.SumSquaresMany(xs)
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range xs {
		want, err := g.SumSquares(x)
		if err != nil {
			t.Fatal(err)
		}
		if math.Float64bits(got[i]) != math.Float64bits(want) {
			t.Errorf("tensor %d: %v batched, %v alone", i, got[i], want)
		}
	}
	// A view at a 516-byte offset takes the kernels' element-by-element path (no 16-byte loads).
	whole, err := g.Alloc(backend.Gradients, 3, 129)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(whole)
	vals := randn(3*129, 99, 1)
	if err := g.Upload(whole, vals); err != nil {
		t.Fatal(err)
	}
	tail, err := g.RowView(whole, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	var host float64
	for _, v := range vals[129:] {
		host += float64(v) * float64(v)
	}
	if s, err := g.SumSquares(tail); err != nil || math.Abs(s-host) > 1e-12*host {
		t.Errorf("misaligned view: %v, host %v (%v)", s, host, err)
	}
	dead, err := g.Alloc(backend.Gradients, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	g.Free(dead)
	if _, err := g.SumSquaresMany([]backend.Tensor{xs[0], xs[1], dead}); err == nil || !strings.Contains(err.Error(), "tensor 2") {
		t.Errorf("a freed tensor: %v", err)
	}
}
