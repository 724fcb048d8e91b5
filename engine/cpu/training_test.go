package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/train"
)

// fdCheck compares an analytic gradient with central finite differences of the scalar loss
// L(x) = Σ r ⊙ f(x) at a sample of coordinates (float32 forward: relative bound 2e-2).
func fdCheck(t *testing.T, name string, x []float32, grad []float32, loss func() float64) {
	t.Helper()
	r := rand.New(rand.NewPCG(7, uint64(len(x))))
	var worst float64
	scaleRef := 0.0
	for _, g := range grad {
		scaleRef = math.Max(scaleRef, math.Abs(float64(g)))
	}
	for k := 0; k < min(24, len(x)); k++ {
		i := r.IntN(len(x))
		old := x[i]
		h := float32(1e-2) * max(1, float32(math.Abs(float64(old))))
		x[i] = old + h
		lp := loss()
		x[i] = old - h
		lm := loss()
		x[i] = old
		num := (lp - lm) / float64(2*h)
		worst = math.Max(worst, math.Abs(num-float64(grad[i]))/math.Max(scaleRef, 1e-6))
	}
	if worst > 2e-2 {
		t.Errorf("%s: finite differences differ by %.3g of max|grad|", name, worst)
	}
}

func dot64(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func TestMatMulBackwardExact(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(1, 2))
	for _, kind := range []string{"f32", "bf16", "nvfp4"} {
		for _, s := range []struct{ T, K, N int }{{1, 32, 7}, {5, 64, 70}, {9, 160, 130}} {
			name := fmt.Sprintf("%s T=%d K=%d N=%d", kind, s.T, s.K, s.N)
			wv := randVec(r, s.N*s.K, 1)
			hw := backend.HostWeight{Name: "w"}
			switch kind {
			case "f32":
				hw.Dense = mustHost(t, []int{s.N, s.K}, wv)
			case "bf16":
				hw.Dense = mustHost(t, []int{s.N, s.K}, wv)
				hw.Keep = "bf16"
			case "nvfp4":
				q, err := nvfp4.QuantizeModelOpt(wv, s.N, s.K)
				if err != nil {
					t.Fatal(err)
				}
				hw.NVFP4 = q
			}
			w, err := b.UploadWeight(hw)
			if err != nil {
				t.Fatal(err)
			}
			dec := make([]float32, s.N*s.K)
			dec = w.(*Weight).decodeRows(dec, 0, s.N)
			x, dout := randVec(r, s.T*s.K, 1), randVec(r, s.T*s.N, 1)
			for _, acc := range []bool{false, true} {
				init := randVec(r, s.T*s.K, 1)
				dx, dw := upload(t, b, s.T, s.K, init), upload(t, b, s.N, s.K, nil)
				if err := b.MatMulBackward(dx, dw, upload(t, b, s.T, s.N, dout), upload(t, b, s.T, s.K, x), w, acc); err != nil {
					t.Fatal(err)
				}
				wantDX, wantDW := make([]float32, s.T*s.K), make([]float32, s.N*s.K)
				for i := 0; i < s.T; i++ {
					for k := 0; k < s.K; k++ {
						var v float64
						for n := 0; n < s.N; n++ {
							v += float64(dout[i*s.N+n]) * float64(dec[n*s.K+k])
						}
						if acc {
							v += float64(init[i*s.K+k])
						}
						wantDX[i*s.K+k] = float32(v)
					}
				}
				for n := 0; n < s.N; n++ {
					for k := 0; k < s.K; k++ {
						var v float64
						for i := 0; i < s.T; i++ {
							v += float64(dout[i*s.N+n]) * float64(x[i*s.K+k])
						}
						wantDW[n*s.K+k] = float32(v)
					}
				}
				if d := maxDiff(download(t, b, dx), wantDX); d > 1e-5 {
					t.Errorf("%s acc=%v: dx off by %.3g", name, acc, d)
				}
				if d := maxDiff(download(t, b, dw), wantDW); d > 1e-5 {
					t.Errorf("%s: dw off by %.3g", name, d)
				}
			}
		}
	}
}

func TestNormRoPESwiGLUAttentionBackwardFD(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(3, 4))
	// RMSNorm, whole rows and per head.
	for _, s := range []struct{ T, W, N int }{{3, 48, 48}, {4, 64, 16}} {
		x, wv, rr := randVec(r, s.T*s.W, 1), randVec(r, s.N, 1), randVec(r, s.T*s.W, 1)
		xt, wt := upload(t, b, s.T, s.W, x), upload(t, b, 1, s.N, wv)
		dx, dw := upload(t, b, s.T, s.W, nil), upload(t, b, 1, s.N, nil)
		if err := b.RMSNormBackward(dx, dw, upload(t, b, s.T, s.W, rr), xt, wt, 1e-6, false); err != nil {
			t.Fatal(err)
		}
		loss := func() float64 {
			out := upload(t, b, s.T, s.W, nil)
			if err := b.RMSNorm(out, upload(t, b, s.T, s.W, x), upload(t, b, 1, s.N, wv), 1e-6); err != nil {
				t.Fatal(err)
			}
			return dot64(download(t, b, out), rr)
		}
		fdCheck(t, fmt.Sprintf("rmsnorm dx %v", s), x, download(t, b, dx), loss)
		fdCheck(t, fmt.Sprintf("rmsnorm dw %v", s), wv, download(t, b, dw), loss)
	}
	// RoPE: the backward is the adjoint (and the inverse) of the forward.
	{
		T, W, hd, pos0 := 5, 64, 16, 37
		x, y := randVec(r, T*W, 1), randVec(r, T*W, 1)
		fx, by := upload(t, b, T, W, nil), upload(t, b, T, W, nil)
		if err := b.RoPE(fx, upload(t, b, T, W, x), hd, pos0, 1e6); err != nil {
			t.Fatal(err)
		}
		if err := b.RoPEBackward(by, upload(t, b, T, W, y), hd, pos0, 1e6); err != nil {
			t.Fatal(err)
		}
		if l, rr := dot64(download(t, b, fx), y), dot64(x, download(t, b, by)); math.Abs(l-rr) > 1e-4*math.Abs(l)+1e-4 {
			t.Errorf("rope backward is not the adjoint: %g vs %g", l, rr)
		}
		back := upload(t, b, T, W, nil)
		if err := b.RoPEBackward(back, fx, hd, pos0, 1e6); err != nil {
			t.Fatal(err)
		}
		if d := maxDiff(download(t, b, back), x); d > 1e-6 {
			t.Errorf("rope backward does not invert the forward: %.3g", d)
		}
	}
	// SwiGLU.
	{
		n := 40
		g, u, rr := randVec(r, n, 3), randVec(r, n, 2), randVec(r, n, 1)
		dg, du := upload(t, b, 1, n, nil), upload(t, b, 1, n, nil)
		if err := b.SwiGLUBackward(dg, du, upload(t, b, 1, n, rr), upload(t, b, 1, n, g), upload(t, b, 1, n, u)); err != nil {
			t.Fatal(err)
		}
		loss := func() float64 {
			out := upload(t, b, 1, n, nil)
			if err := b.SwiGLU(out, upload(t, b, 1, n, g), upload(t, b, 1, n, u)); err != nil {
				t.Fatal(err)
			}
			return dot64(download(t, b, out), rr)
		}
		fdCheck(t, "swiglu dgate", g, download(t, b, dg), loss)
		fdCheck(t, "swiglu dup", u, download(t, b, du), loss)
	}
	// Attention with GQA (4 query heads over 2 KV heads) and with one KV head per query head.
	for _, s := range []struct{ T, nH, nKV, hd int }{{6, 4, 2, 8}, {5, 2, 2, 16}, {1, 2, 1, 8}} {
		qd, kd := s.nH*s.hd, s.nKV*s.hd
		q, k, v, rr := randVec(r, s.T*qd, 1), randVec(r, s.T*kd, 1), randVec(r, s.T*kd, 1), randVec(r, s.T*qd, 1)
		fwd := func() backend.Tensor {
			out := upload(t, b, s.T, qd, nil)
			if err := b.Attention(out, upload(t, b, s.T, qd, q), upload(t, b, s.T, kd, k), upload(t, b, s.T, kd, v), 0, s.nH, s.nKV, s.hd); err != nil {
				t.Fatal(err)
			}
			return out
		}
		out := fwd()
		dq, dk, dv := upload(t, b, s.T, qd, nil), upload(t, b, s.T, kd, nil), upload(t, b, s.T, kd, nil)
		if err := b.AttentionBackward(dq, dk, dv, upload(t, b, s.T, qd, rr), upload(t, b, s.T, qd, q), upload(t, b, s.T, kd, k),
			upload(t, b, s.T, kd, v), out, s.nH, s.nKV, s.hd); err != nil {
			t.Fatal(err)
		}
		loss := func() float64 { return dot64(download(t, b, fwd()), rr) }
		name := fmt.Sprintf("attention T=%d heads %d/%d", s.T, s.nH, s.nKV)
		fdCheck(t, name+" dq", q, download(t, b, dq), loss)
		fdCheck(t, name+" dk", k, download(t, b, dk), loss)
		fdCheck(t, name+" dv", v, download(t, b, dv), loss)
	}
}

func TestEmbeddingBackwardAndViews(t *testing.T) {
	b := New()
	d := upload(t, b, 3, 4, []float32{1, 2, 3, 4, 10, 20, 30, 40, 100, 200, 300, 400})
	tab := upload(t, b, 5, 4, nil)
	if err := b.EmbeddingBackward(tab, d, []int{2, 0, 2}); err != nil {
		t.Fatal(err)
	}
	got := download(t, b, tab)
	want := []float32{10, 20, 30, 40, 0, 0, 0, 0, 101, 202, 303, 404, 0, 0, 0, 0, 0, 0, 0, 0}
	if maxDiff(got, want) != 0 {
		t.Errorf("embedding backward %v", got)
	}
	if err := b.EmbeddingBackward(tab, d, []int{2, 5, 0}); err == nil {
		t.Error("id 5 of a 5-row table accepted")
	}
	before := b.Memory()
	v, err := b.RowView(d, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Scale(v, 2); err != nil {
		t.Fatal(err)
	}
	b.Free(v)
	if after := b.Memory(); after.Used() != before.Used() || after.Live != before.Live {
		t.Errorf("a view changed the accounting: %s → %s", before, after)
	}
	if got := download(t, b, d); got[0] != 1 || got[4] != 20 || got[11] != 800 {
		t.Errorf("view does not share storage: %v", got)
	}
	if _, err := b.RowView(d, 2, 2); err == nil {
		t.Error("view past the end accepted")
	}
	if s, err := b.SumSquares(upload(t, b, 1, 3, []float32{1, 2, 3})); err != nil || s != 14 {
		t.Errorf("sum of squares %v %v", s, err)
	}
}

func TestCrossEntropyMatchesTrain(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(5, 6))
	const T, V = 6, 50
	logits := randVec(r, T*V, 4)
	ids := []int{3, 7, 11, 49, 0, 5}
	mask := []bool{false, true, false, true, true, true}
	for _, ls := range []float64{0, 0.125} { // float32-exact: the backend takes ls as float32
		want := make([]float32, T*V)
		wsum, wn := train.CrossEntropy{LabelSmoothing: ls}.Value(logits, T, V, ids, mask, want)
		targets := make([]int, T)
		for i := range targets {
			targets[i] = -1
			if i+1 < T && mask[i+1] {
				targets[i] = ids[i+1]
			}
		}
		d := upload(t, b, T, V, nil)
		sum, n, err := b.CrossEntropy(d, upload(t, b, T, V, logits), targets, float32(ls), 1)
		if err != nil {
			t.Fatal(err)
		}
		if n != wn || math.Abs(sum-wsum) > 1e-9*math.Abs(wsum) {
			t.Errorf("ls=%g: loss %g over %d, want %g over %d", ls, sum, n, wsum, wn)
		}
		if dd := maxDiff(download(t, b, d), want); dd != 0 {
			t.Errorf("ls=%g: dlogits differ by %.3g", ls, dd)
		}
	}
	if _, _, err := b.CrossEntropy(upload(t, b, 2, 3, nil), upload(t, b, 2, 3, nil), []int{0, 3}, 0, 1); err == nil {
		t.Error("target 3 of a 3-token vocabulary accepted")
	}
}

// TestAdamWIsOptim: the backend's AdamW equals engine/optim's update, bit for bit, for both
// state formats and master precisions (with stochastic rounding and a parameter index).
func TestAdamWIsOptim(t *testing.T) {
	for _, format := range []string{"fp32", "int8"} {
		for _, keep := range []string{"f32", "bf16"} {
			b := New()
			r := rand.New(rand.NewPCG(9, 10))
			const rows, cols = 6, 100
			init := randVec(r, rows*cols, 1)
			w, err := b.UploadWeight(backend.HostWeight{Name: "w", Dense: mustHost(t, []int{rows, cols}, init), Keep: keep})
			if err != nil {
				t.Fatal(err)
			}
			st, err := b.NewAdamWState(format, rows, cols)
			if err != nil {
				t.Fatal(err)
			}
			sf, _ := optim.ParseStateFormat(format)
			master := optim.MasterFP32
			ref := init
			if keep == "bf16" {
				master = optim.MasterBF16
				ref = make([]float32, len(init))
				for i, v := range init {
					ref[i] = tensor.BF16ToF32(tensor.F32ToBF16(v))
				}
			}
			const param = 3
			// The reference: parameter index 3 of a 4-parameter optimizer (others get zero gradients).
			specs := make([]optim.ParamSpec, 4)
			for i := range specs {
				specs[i] = optim.ParamSpec{Name: fmt.Sprint(i), Rows: rows, Cols: cols, Init: make([]float32, rows*cols)}
			}
			specs[param].Init = ref
			o, err := optim.NewAdamW(optim.Config{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, State: sf, Master: master,
				StochasticRounding: true, Seed: 77, ChunkElems: rows * cols}, specs)
			if err != nil {
				t.Fatal(err)
			}
			for step := 1; step <= 4; step++ {
				g := randVec(r, rows*cols, 0.5)
				grads := make([][]float32, 4)
				for i := range grads {
					grads[i] = make([]float32, rows*cols)
				}
				for i, v := range g {
					grads[param][i] = v * 0.25
				}
				if _, err := o.Step(grads, 1e-2); err != nil {
					t.Fatal(err)
				}
				h := backend.AdamWHyper{LR: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: step, GradScale: 0.25,
					StochasticRound: true, Seed: 77, Param: param}
				if err := b.AdamW(w, upload(t, b, rows, cols, g), st, h); err != nil {
					t.Fatal(err)
				}
			}
			hw, err := b.DownloadWeight(w)
			if err != nil {
				t.Fatal(err)
			}
			got, err := hw.Dense.Float32s(nil)
			if err != nil {
				t.Fatal(err)
			}
			if d := maxDiff(got, o.Weights(param, nil)); d != 0 {
				t.Errorf("%s state, %s master: weights differ from engine/optim by %.3g", format, keep, d)
			}
		}
	}
}

func mustHost(t *testing.T, shape []int, v []float32) *tensor.Host {
	t.Helper()
	h, err := tensor.FromFloat32s("w", tensor.F32, shape, v)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
