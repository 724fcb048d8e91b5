package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/tensor"
	"github.com/qwengo/qwengo/engine/train"
)

// fdCheck compares an analytic gradient with central finite differences of the scalar loss
// (a random projection Σ r ⊙ f(x) summed in float64 over the float32 forward op) at a sample
// of coordinates. The error is relative to max |grad|: below 1e-4 in practice (float32
// forward, h = 1e-2), bounded at 1e-3.
func fdCheck(t *testing.T, name string, x []float32, grad []float32, loss func() float64) {
	t.Helper()
	r := rand.New(rand.NewPCG(7, uint64(len(x))))
	var worst float64
	scaleRef := 0.0
	for _, g := range grad {
		scaleRef = math.Max(scaleRef, math.Abs(float64(g)))
	}
	if scaleRef == 0 {
		t.Errorf("%s: the gradient is zero everywhere", name)
		return
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
		num := (lp - lm) / (float64(old+h) - float64(old-h))
		worst = math.Max(worst, math.Abs(num-float64(grad[i]))/scaleRef)
	}
	if worst > 1e-3 {
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

func sub(a, b []float32) []float32 {
	d := make([]float32, len(a))
	for i := range a {
		d[i] = a[i] - b[i]
	}
	return d
}

func mustHost(t *testing.T, shape []int, v []float32) *tensor.Host {
	t.Helper()
	h, err := tensor.FromFloat32s("w", tensor.F32, shape, v)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func uploadWeight(t *testing.T, b *Backend, kind string, v []float32, rows, cols int) backend.Weight {
	t.Helper()
	hw := backend.HostWeight{Name: "w"}
	switch kind {
	case "f32", "bf16":
		hw.Dense = mustHost(t, []int{rows, cols}, v)
		hw.Keep = kind
	case "nvfp4":
		q, err := nvfp4.QuantizeModelOpt(v, rows, cols)
		if err != nil {
			t.Fatal(err)
		}
		hw.NVFP4 = q
	}
	w, err := b.UploadWeight(hw)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestMatMulBackward checks dx and dw against a float64 product with the decoded weight
// (f32, bf16, NVFP4), with accumulate false and true, nil dx or dw; and, for f32 weights,
// against finite differences of MatMul.
func TestMatMulBackward(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(1, 2))
	for _, kind := range []string{"f32", "bf16", "nvfp4"} {
		for _, s := range []struct{ T, K, N int }{{1, 32, 7}, {5, 64, 70}, {9, 160, 130}} {
			wv := randVec(r, s.N*s.K, 1)
			w := uploadWeight(t, b, kind, wv, s.N, s.K)
			dec := w.(*Weight).decodeRows(make([]float32, s.N*s.K), 0, s.N)
			x, dout := randVec(r, s.T*s.K, 1), randVec(r, s.T*s.N, 1)
			for _, c := range []struct{ acc, noDX, noDW bool }{{false, false, false}, {true, false, false}, {false, true, false}, {true, false, true}} {
				name := fmt.Sprintf("%s T=%d K=%d N=%d %+v", kind, s.T, s.K, s.N, c)
				initX, initW := randVec(r, s.T*s.K, 1), randVec(r, s.N*s.K, 1)
				dx, dw := upload(t, b, s.T, s.K, initX), upload(t, b, s.N, s.K, initW)
				var dxArg, dwArg backend.Tensor = dx, dw
				if c.noDX {
					dxArg = nil
				}
				if c.noDW {
					dwArg = nil
				}
				if err := b.MatMulBackward(dxArg, dwArg, upload(t, b, s.T, s.N, dout), upload(t, b, s.T, s.K, x), w, c.acc); err != nil {
					t.Fatal(name, err)
				}
				wantDX, wantDW := make([]float32, s.T*s.K), make([]float32, s.N*s.K)
				for i := 0; i < s.T; i++ {
					for k := 0; k < s.K; k++ {
						var v float64
						for n := 0; n < s.N; n++ {
							v += float64(dout[i*s.N+n]) * float64(dec[n*s.K+k])
						}
						if c.acc {
							v += float64(initX[i*s.K+k])
						}
						wantDX[i*s.K+k] = float32(v)
					}
				}
				for n := 0; n < s.N; n++ {
					for k := 0; k < s.K; k++ {
						v := float64(initW[n*s.K+k])
						for i := 0; i < s.T; i++ {
							v += float64(dout[i*s.N+n]) * float64(x[i*s.K+k])
						}
						wantDW[n*s.K+k] = float32(v)
					}
				}
				if c.noDX {
					wantDX = initX
				}
				if c.noDW {
					wantDW = initW
				}
				if d := maxDiff(download(t, b, dx), wantDX); d > 1e-5 {
					t.Errorf("%s: dx off by %.3g", name, d)
				}
				if d := maxDiff(download(t, b, dw), wantDW); d > 1e-5 {
					t.Errorf("%s: dw off by %.3g", name, d)
				}
			}
			if kind != "f32" {
				continue
			}
			rr := randVec(r, s.T*s.N, 1)
			dx, dw := upload(t, b, s.T, s.K, nil), upload(t, b, s.N, s.K, nil)
			if err := b.MatMulBackward(dx, dw, upload(t, b, s.T, s.N, rr), upload(t, b, s.T, s.K, x), w, false); err != nil {
				t.Fatal(err)
			}
			wcur := slices.Clone(wv)
			loss := func() float64 {
				ww := uploadWeight(t, b, "f32", wcur, s.N, s.K)
				defer b.FreeWeight(ww)
				out := upload(t, b, s.T, s.N, nil)
				if err := b.MatMul(out, upload(t, b, s.T, s.K, x), ww); err != nil {
					t.Fatal(err)
				}
				return dot64(download(t, b, out), rr)
			}
			fdCheck(t, fmt.Sprintf("matmul dx %v", s), x, download(t, b, dx), loss)
			fdCheck(t, fmt.Sprintf("matmul dw %v", s), wcur, download(t, b, dw), loss)
		}
	}
}

// TestRMSNormBackward: whole rows and per head (weight of head_dim), accumulate false and
// true (dx and dw start non-zero), dw nil, dx = dout in place.
func TestRMSNormBackward(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(3, 4))
	for _, s := range []struct {
		T, W, N int
		acc     bool
	}{{3, 48, 48, false}, {3, 48, 48, true}, {4, 64, 16, false}, {4, 64, 16, true}, {1, 256, 128, false}} {
		name := fmt.Sprintf("rmsnorm T=%d width %d weight %d acc=%v", s.T, s.W, s.N, s.acc)
		x, wv, rr := randVec(r, s.T*s.W, 2), randVec(r, s.N, 1), randVec(r, s.T*s.W, 1)
		initX, initW := randVec(r, s.T*s.W, 1), randVec(r, s.N, 1)
		if !s.acc {
			initX = make([]float32, s.T*s.W)
		}
		xt, wt := upload(t, b, s.T, s.W, x), upload(t, b, 1, s.N, wv)
		dx, dw := upload(t, b, s.T, s.W, initX), upload(t, b, 1, s.N, initW)
		if err := b.RMSNormBackward(dx, dw, upload(t, b, s.T, s.W, rr), xt, wt, 1e-6, s.acc); err != nil {
			t.Fatal(name, err)
		}
		loss := func() float64 {
			out := upload(t, b, s.T, s.W, nil)
			if err := b.RMSNorm(out, upload(t, b, s.T, s.W, x), upload(t, b, 1, s.N, wv), 1e-6); err != nil {
				t.Fatal(err)
			}
			return dot64(download(t, b, out), rr)
		}
		gx := sub(download(t, b, dx), initX)
		fdCheck(t, name+" dx", x, gx, loss)
		fdCheck(t, name+" dw", wv, sub(download(t, b, dw), initW), loss)
		if s.acc {
			continue
		}
		// In place (dx = dout) and without dw: the same dx, bit for bit.
		d := upload(t, b, s.T, s.W, rr)
		if err := b.RMSNormBackward(d, nil, d, xt, wt, 1e-6, false); err != nil {
			t.Fatal(name, err)
		}
		if got := download(t, b, d); !slices.Equal(got, download(t, b, dx)) {
			t.Errorf("%s: in-place dx differs", name)
		}
	}
}

// TestRoPEBackward: finite differences (positions from pos0), the adjoint and the inverse of
// the forward, and dx = dout in place.
func TestRoPEBackward(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(5, 6))
	for _, s := range []struct {
		T, W, hd, pos0 int
		theta          float64
	}{{5, 64, 16, 37, 1e6}, {3, 32, 32, 0, 1e4}, {2, 256, 128, 4000, 1e6}} {
		name := fmt.Sprintf("rope %+v", s)
		x, y := randVec(r, s.T*s.W, 1), randVec(r, s.T*s.W, 1)
		by := upload(t, b, s.T, s.W, nil)
		if err := b.RoPEBackward(by, upload(t, b, s.T, s.W, y), s.hd, s.pos0, s.theta); err != nil {
			t.Fatal(name, err)
		}
		fwd := func(v []float32) []float32 {
			out := upload(t, b, s.T, s.W, nil)
			if err := b.RoPE(out, upload(t, b, s.T, s.W, v), s.hd, s.pos0, s.theta); err != nil {
				t.Fatal(err)
			}
			return download(t, b, out)
		}
		grad := download(t, b, by)
		fdCheck(t, name, x, grad, func() float64 { return dot64(fwd(x), y) })
		fx := fwd(x)
		if l, rr := dot64(fx, y), dot64(x, grad); math.Abs(l-rr) > 1e-5*(math.Abs(l)+1) {
			t.Errorf("%s: not the adjoint: %g vs %g", name, l, rr)
		}
		back := upload(t, b, s.T, s.W, fx)
		if err := b.RoPEBackward(back, back, s.hd, s.pos0, s.theta); err != nil {
			t.Fatal(err)
		}
		if d := maxDiff(download(t, b, back), x); d > 1e-6 {
			t.Errorf("%s: in place, does not invert the forward: %.3g", name, d)
		}
	}
}

func TestSwiGLUBackward(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(7, 8))
	for _, s := range []struct{ T, W int }{{1, 40}, {3, 96}, {2, 5000}} {
		n := s.T * s.W
		g, u, rr := randVec(r, n, 4), randVec(r, n, 2), randVec(r, n, 1)
		dg, du := upload(t, b, s.T, s.W, nil), upload(t, b, s.T, s.W, nil)
		if err := b.SwiGLUBackward(dg, du, upload(t, b, s.T, s.W, rr), upload(t, b, s.T, s.W, g), upload(t, b, s.T, s.W, u)); err != nil {
			t.Fatal(err)
		}
		loss := func() float64 {
			out := upload(t, b, s.T, s.W, nil)
			if err := b.SwiGLU(out, upload(t, b, s.T, s.W, g), upload(t, b, s.T, s.W, u)); err != nil {
				t.Fatal(err)
			}
			return dot64(download(t, b, out), rr)
		}
		fdCheck(t, fmt.Sprintf("swiglu %v dgate", s), g, download(t, b, dg), loss)
		fdCheck(t, fmt.Sprintf("swiglu %v dup", s), u, download(t, b, du), loss)
	}
}

// TestAttentionBackward: GQA (4 query heads over 2 KV heads, over 1), one KV head per query
// head, a single row; dq, dk and dv against finite differences of Attention.
func TestAttentionBackward(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(9, 10))
	for _, s := range []struct{ T, nH, nKV, hd int }{{6, 4, 2, 8}, {5, 2, 2, 16}, {1, 2, 1, 8}, {7, 4, 1, 4}, {12, 4, 2, 8}} {
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
		// Outputs start as garbage: they are written, not accumulated.
		dq, dk, dv := upload(t, b, s.T, qd, randVec(r, s.T*qd, 9)), upload(t, b, s.T, kd, randVec(r, s.T*kd, 9)), upload(t, b, s.T, kd, randVec(r, s.T*kd, 9))
		if err := b.AttentionBackward(dq, dk, dv, upload(t, b, s.T, qd, rr), upload(t, b, s.T, qd, q), upload(t, b, s.T, kd, k),
			upload(t, b, s.T, kd, v), out, s.nH, s.nKV, s.hd); err != nil {
			t.Fatal(err)
		}
		loss := func() float64 { return dot64(download(t, b, fwd()), rr) }
		name := fmt.Sprintf("attention T=%d heads %d/%d hd %d", s.T, s.nH, s.nKV, s.hd)
		if s.T > 1 { // one row: the output is v whatever q and k are (dq = dk = 0)
			fdCheck(t, name+" dq", q, download(t, b, dq), loss)
			fdCheck(t, name+" dk", k, download(t, b, dk), loss)
		}
		fdCheck(t, name+" dv", v, download(t, b, dv), loss)
	}
}

func TestEmbeddingBackward(t *testing.T) {
	b := New()
	d := upload(t, b, 3, 4, []float32{1, 2, 3, 4, 10, 20, 30, 40, 100, 200, 300, 400})
	tab := upload(t, b, 5, 4, nil)
	clear(tab.(*Tensor).Row(4))
	for i := range tab.(*Tensor).Row(4) {
		tab.(*Tensor).Row(4)[i] = 7
	}
	if err := b.EmbeddingBackward(tab, d, []int{2, 0, 2}); err != nil {
		t.Fatal(err)
	}
	want := []float32{10, 20, 30, 40, 0, 0, 0, 0, 101, 202, 303, 404, 0, 0, 0, 0, 7, 7, 7, 7}
	if got := download(t, b, tab); !slices.Equal(got, want) {
		t.Errorf("embedding backward %v", got)
	}
	for _, ids := range [][]int{{2, 5, 0}, {-1, 0, 0}, {0, 1}} {
		if err := b.EmbeddingBackward(tab, d, ids); err == nil {
			t.Errorf("ids %v accepted", ids)
		}
	}
	if got := download(t, b, tab); !slices.Equal(got, want) {
		t.Errorf("a failed embedding backward wrote: %v", got)
	}
}

func TestZeroScaleSumSquares(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	v := randVec(r, 3*sumBlock+123, 3)
	var want float64
	for _, x := range v {
		want += float64(x) * float64(x)
	}
	var first float64
	for i, workers := range []int{1, 3, 8} {
		b := New()
		b.SetWorkers(workers)
		x := upload(t, b, 1, len(v), v)
		s, err := b.SumSquares(x)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(s-want) > 1e-12*want {
			t.Errorf("sum of squares %v, want %v", s, want)
		}
		if i == 0 {
			first = s
		} else if s != first {
			t.Errorf("%d workers: sum of squares %v, with 1 worker %v", workers, s, first)
		}
		if err := b.Scale(x, -0.5); err != nil {
			t.Fatal(err)
		}
		got := download(t, b, x)
		for j := range v {
			if got[j] != v[j]*-0.5 {
				t.Fatalf("scale: element %d is %v, want %v", j, got[j], v[j]*-0.5)
			}
		}
		if err := b.Zero(x); err != nil {
			t.Fatal(err)
		}
		if s, _ := b.SumSquares(x); s != 0 {
			t.Errorf("zero left %v", s)
		}
	}
}

func TestViews(t *testing.T) {
	b := New()
	d := upload(t, b, 3, 4, []float32{1, 2, 3, 4, 10, 20, 30, 40, 100, 200, 300, 400})
	before := b.Memory()
	v, err := b.RowView(d, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	vv, err := b.RowView(v, 1, 1) // a view of a view
	if err != nil {
		t.Fatal(err)
	}
	if v.Rows() != 2 || v.Cols() != 4 || vv.Rows() != 1 {
		t.Errorf("view shapes %v %v", v.Shape(), vv.Shape())
	}
	if err := b.Scale(v, 2); err != nil {
		t.Fatal(err)
	}
	if err := b.Scale(vv, 2); err != nil {
		t.Fatal(err)
	}
	b.Free(vv)
	b.Free(v)
	if after := b.Memory(); after.Used() != before.Used() || after.Live != before.Live {
		t.Errorf("views changed the accounting: %s → %s", before, after)
	}
	if got := download(t, b, d); !slices.Equal(got, []float32{1, 2, 3, 4, 20, 40, 60, 80, 400, 800, 1200, 1600}) {
		t.Errorf("views do not share storage: %v", got)
	}
	if got := download(t, b, v); len(got) != 8 || got[0] != 20 {
		t.Errorf("a freed view is unusable: %v", got)
	}
	for _, c := range [][2]int{{2, 2}, {-1, 1}, {0, 0}, {3, 1}} {
		if _, err := b.RowView(d, c[0], c[1]); err == nil {
			t.Errorf("view of rows [%d, +%d) of 3 accepted", c[0], c[1])
		}
	}
	if _, err := b.RowView(&Tensor{}, 0, 1); err == nil {
		t.Error("view of a foreign tensor accepted")
	}

	// WeightTensor: f32 shares the weight's storage; bf16 and NVFP4 are refused.
	wv := []float32{1, 2, 3, 4, 5, 6}
	w := uploadWeight(t, b, "f32", wv, 2, 3)
	wt, err := b.WeightTensor(w)
	if err != nil {
		t.Fatal(err)
	}
	if wt.Rows() != 2 || wt.Cols() != 3 {
		t.Errorf("weight tensor %v", wt.Shape())
	}
	mem := b.Memory()
	if err := b.Scale(wt, 10); err != nil {
		t.Fatal(err)
	}
	b.Free(wt)
	if after := b.Memory(); after.Used() != mem.Used() {
		t.Errorf("freeing a weight tensor changed the accounting: %s → %s", mem, after)
	}
	hw, err := b.DownloadWeight(w)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := hw.Dense.Float32s(nil); !slices.Equal(got, []float32{10, 20, 30, 40, 50, 60}) {
		t.Errorf("weight tensor does not share the weight: %v", got)
	}
	for _, kind := range []string{"bf16", "nvfp4"} {
		w := uploadWeight(t, b, kind, randVec(rand.New(rand.NewPCG(1, 1)), 2*32, 1), 2, 32)
		if _, err := b.WeightTensor(w); err == nil {
			t.Errorf("weight tensor of a %s weight accepted", kind)
		}
	}
}

// TestViewsInEveryOp runs each op once on plain tensors and once on row views inside larger
// buffers (with rows before and after): the results are identical and nothing outside the
// views is written.
func TestViewsInEveryOp(t *testing.T) {
	const T, H, nH, nKV, hd, F = 5, 32, 4, 2, 8, 24
	r := rand.New(rand.NewPCG(13, 14))
	b := New()
	w := uploadWeight(t, b, "bf16", randVec(r, F*H, 1), F, H)
	emb := uploadWeight(t, b, "f32", randVec(r, 11*H, 1), 11, H)
	ids := []int{3, 1, 4, 1, 5}
	vals := map[string][]float32{}
	scenario := func(mk func(name string, rows, cols int) backend.Tensor) map[string][]float32 {
		res := map[string][]float32{}
		ten := func(name string, rows, cols int) backend.Tensor {
			if _, ok := vals[name]; !ok {
				vals[name] = randVec(r, rows*cols, 1)
			}
			x := mk(name, rows, cols)
			if err := b.Upload(x, vals[name]); err != nil {
				t.Fatal(err)
			}
			return x
		}
		x, g := ten("x", T, H), ten("g", 1, H)
		q, k, v := ten("q", T, nH*hd), ten("k", T, nKV*hd), ten("v", T, nKV*hd)
		dout, dff := ten("dout", T, nH*hd), ten("dff", T, F)
		gate, up := ten("gate", T, F), ten("up", T, F)
		outs := map[string]backend.Tensor{
			"norm": ten("o1", T, H), "rope": ten("o2", T, nH*hd), "attn": ten("o3", T, nH*hd), "swiglu": ten("o4", T, F),
			"mm": ten("o5", T, F), "emb": ten("o6", T, H), "dx": ten("o7", T, H), "dg": ten("o8", 1, H),
			"dq": ten("o9", T, nH*hd), "dk": ten("o10", T, nKV*hd), "dv": ten("o11", T, nKV*hd), "dgate": ten("o12", T, F),
			"dup": ten("o13", T, F), "mmdx": ten("o14", T, H), "ropeb": ten("o15", T, nH*hd), "demb": ten("o16", 11, H),
			"ce": ten("o17", T, F), "add": ten("o18", T, H),
		}
		check := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		check(b.RMSNorm(outs["norm"], x, g, 1e-6))
		check(b.RoPE(outs["rope"], q, hd, 3, 1e6))
		check(b.Attention(outs["attn"], q, k, v, 0, nH, nKV, hd))
		check(b.SwiGLU(outs["swiglu"], gate, up))
		check(b.MatMul(outs["mm"], x, w))
		check(b.Embedding(outs["emb"], emb, ids))
		check(b.Add(outs["add"], x))
		check(b.CopyRows(outs["add"], 1, x, 3, 2))
		check(b.RMSNormBackward(outs["dx"], outs["dg"], x, x, g, 1e-6, true))
		check(b.AttentionBackward(outs["dq"], outs["dk"], outs["dv"], dout, q, k, v, outs["attn"], nH, nKV, hd))
		check(b.SwiGLUBackward(outs["dgate"], outs["dup"], dff, gate, up))
		check(b.MatMulBackward(outs["mmdx"], nil, dff, x, w, true))
		check(b.RoPEBackward(outs["ropeb"], dout, hd, 3, 1e6))
		check(b.EmbeddingBackward(outs["demb"], x, ids))
		_, _, err := b.CrossEntropy(outs["ce"], gate, []int{1, -1, 3, 0, 23}, 0.1, 0.5)
		check(err)
		check(b.Scale(outs["demb"], 0.5))
		for name, o := range outs {
			res[name] = download(t, b, o)
		}
		return res
	}
	plain := scenario(func(_ string, rows, cols int) backend.Tensor { return upload(t, b, rows, cols, nil) })
	var bufs []backend.Tensor
	var pads [][]float32
	viewed := scenario(func(_ string, rows, cols int) backend.Tensor {
		pad := randVec(r, (rows+3)*cols, 5)
		buf := upload(t, b, rows+3, cols, pad)
		bufs, pads = append(bufs, buf), append(pads, pad)
		v, err := b.RowView(buf, 2, rows)
		if err != nil {
			t.Fatal(err)
		}
		return v
	})
	for name, want := range plain {
		if !slices.Equal(viewed[name], want) {
			t.Errorf("%s: on views, the result differs", name)
		}
	}
	for i, buf := range bufs {
		got := download(t, b, buf)
		cols := buf.Cols()
		rows := buf.Rows()
		if !slices.Equal(got[:2*cols], pads[i][:2*cols]) || !slices.Equal(got[(rows-1)*cols:], pads[i][(rows-1)*cols:]) {
			t.Errorf("buffer %d: an op wrote outside its view", i)
		}
	}
}

// TestDeterministic: every backward op gives the same bits with 1 and 7 workers.
func TestDeterministic(t *testing.T) {
	const T, H, nH, nKV, hd, F, V = 9, 64, 4, 2, 16, 96, 300
	run := func(workers int) [][]float32 {
		b := New()
		b.SetWorkers(workers)
		r := rand.New(rand.NewPCG(15, 16))
		ten := func(rows, cols int) backend.Tensor { return upload(t, b, rows, cols, randVec(r, rows*cols, 1)) }
		w := uploadWeight(t, b, "nvfp4", randVec(r, F*H, 1), F, H)
		x, g, dff := ten(T, H), ten(1, H), ten(T, F)
		q, k, v, dout := ten(T, nH*hd), ten(T, nKV*hd), ten(T, nKV*hd), ten(T, nH*hd)
		att := upload(t, b, T, nH*hd, nil)
		outs := []backend.Tensor{ten(T, H), ten(1, H), ten(T, nH*hd), ten(T, nKV*hd), ten(T, nKV*hd), ten(T, F), ten(T, F),
			ten(T, H), ten(F, H), ten(T, nH*hd), ten(V, H), ten(T, V)}
		errs := []error{
			b.Attention(att, q, k, v, 0, nH, nKV, hd),
			b.RMSNormBackward(outs[0], outs[1], x, x, g, 1e-6, true),
			b.AttentionBackward(outs[2], outs[3], outs[4], dout, q, k, v, att, nH, nKV, hd),
			b.SwiGLUBackward(outs[5], outs[6], dff, dff, dff),
			b.MatMulBackward(outs[7], outs[8], dff, x, w, true),
			b.RoPEBackward(outs[9], dout, hd, 5, 1e6),
			b.EmbeddingBackward(outs[10], x, []int{5, 1, 5, 299, 0, 5, 7, 1, 5}),
		}
		logits := ten(T, V)
		_, _, err := b.CrossEntropy(outs[11], logits, []int{1, 2, -1, 4, 5, 299, 0, -1, 8}, 0.1, 0.25)
		if err := firstErr(append(errs, err)...); err != nil {
			t.Fatal(err)
		}
		var res [][]float32
		for _, o := range outs {
			res = append(res, download(t, b, o))
		}
		return res
	}
	one, many := run(1), run(7)
	for i := range one {
		if !slices.Equal(one[i], many[i]) {
			t.Errorf("output %d differs between 1 and 7 workers", i)
		}
	}
}

// TestShapeErrorsWriteNothing: each op refuses wrong shapes (and forbidden aliasing) with an
// error and leaves every output as it was.
func TestShapeErrorsWriteNothing(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(17, 18))
	ten := func(rows, cols int) backend.Tensor { return upload(t, b, rows, cols, randVec(r, rows*cols, 1)) }
	w := uploadWeight(t, b, "f32", randVec(r, 8*16, 1), 8, 16)
	st, err := b.NewAdamWState("int8", 8, 16)
	if err != nil {
		t.Fatal(err)
	}
	x, x2, g, g3 := ten(4, 16), ten(4, 16), ten(1, 16), ten(1, 3)
	q, k, v, o := ten(4, 32), ten(4, 16), ten(4, 16), ten(4, 32)
	dq, dk, dv, dout := ten(4, 32), ten(4, 16), ten(4, 16), ten(4, 32)
	d8, dw := ten(4, 8), ten(8, 16)
	inf := ten(8, 16)
	if err := b.Scale(inf, float32(math.Inf(1))); err != nil {
		t.Fatal(err)
	}
	all := []backend.Tensor{x, x2, g, g3, q, k, v, o, dq, dk, dv, dout, d8, dw, inf}
	hyper := backend.AdamWHyper{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 1, GradScale: 1}
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"matmul dout width", func() error { return b.MatMulBackward(x2, dw, x, x, w, false) }},
		{"matmul dw shape", func() error { return b.MatMulBackward(x2, x, d8, x, w, false) }},
		{"matmul dx shape", func() error { return b.MatMulBackward(d8, dw, d8, x, w, false) }},
		{"matmul dw without x", func() error { return b.MatMulBackward(x2, dw, d8, nil, w, false) }},
		{"matmul dx = dout", func() error {
			sq := uploadWeight(t, b, "f32", randVec(r, 16*16, 1), 16, 16)
			return b.MatMulBackward(x, nil, x, x2, sq, false)
		}},
		{"rmsnorm weight", func() error { return b.RMSNormBackward(x2, g3, x, x, g3, 1e-6, false) }},
		{"rmsnorm dw", func() error { return b.RMSNormBackward(x2, g3, x, x, g, 1e-6, false) }},
		{"rmsnorm dx rows", func() error { return b.RMSNormBackward(d8, g, x, x, g, 1e-6, false) }},
		{"rmsnorm accumulate in place", func() error { return b.RMSNormBackward(x2, g, x2, x, g, 1e-6, true) }},
		{"rope head dim", func() error { return b.RoPEBackward(x2, x, 6, 0, 1e6) }},
		{"rope odd head dim", func() error { return b.RoPEBackward(x2, x, 5, 0, 1e6) }},
		{"rope shapes", func() error { return b.RoPEBackward(d8, x, 8, 0, 1e6) }},
		{"rope position", func() error { return b.RoPEBackward(x2, x, 8, -1, 1e6) }},
		{"attention heads", func() error { return b.AttentionBackward(dq, dk, dv, dout, q, k, v, o, 3, 2, 8) }},
		{"attention group", func() error { return b.AttentionBackward(dq, dk, dv, dout, q, k, v, o, 4, 3, 8) }},
		{"attention dk", func() error { return b.AttentionBackward(dq, dq, dv, dout, q, k, v, o, 4, 2, 8) }},
		{"attention dq = q", func() error { return b.AttentionBackward(q, dk, dv, dout, q, k, v, o, 4, 2, 8) }},
		{"attention dk = dv", func() error { return b.AttentionBackward(dq, dk, dk, dout, q, k, v, o, 4, 2, 8) }},
		{"swiglu", func() error { return b.SwiGLUBackward(x2, d8, x, x, x) }},
		{"embedding width", func() error { return b.EmbeddingBackward(dw, d8, []int{0, 1, 2, 3}) }},
		{"embedding ids", func() error { return b.EmbeddingBackward(dw, x, []int{0, 1, 2}) }},
		{"embedding id range", func() error { return b.EmbeddingBackward(dw, x, []int{0, 1, 2, 8}) }},
		{"cross-entropy shapes", func() error { _, _, err := b.CrossEntropy(d8, x, []int{0, 1, 2, 3}, 0, 1); return err }},
		{"cross-entropy targets", func() error { _, _, err := b.CrossEntropy(x2, x, []int{0, 1, 2}, 0, 1); return err }},
		{"cross-entropy target range", func() error { _, _, err := b.CrossEntropy(x2, x, []int{0, 16, 2, -1}, 0, 1); return err }},
		{"cross-entropy target −2", func() error { _, _, err := b.CrossEntropy(x2, x, []int{0, -2, 2, -1}, 0, 1); return err }},
		{"adamw gradient shape", func() error { return b.AdamW(w, x, st, hyper) }},
		{"adamw non-finite gradient", func() error { return b.AdamW(w, inf, st, hyper) }},
		{"adamw step 0", func() error { h := hyper; h.Step = 0; return b.AdamW(w, dw, st, h) }},
		{"adamw beta", func() error { h := hyper; h.Beta2 = 1; return b.AdamW(w, dw, st, h) }},
		{"adamw state shape", func() error {
			s2, err := b.NewAdamWState("fp32", 16, 8)
			if err != nil {
				return nil
			}
			return b.AdamW(w, dw, s2, hyper)
		}},
		{"adamw nvfp4", func() error {
			nw := uploadWeight(t, b, "nvfp4", randVec(r, 8*16, 1), 8, 16)
			return b.AdamW(nw, dw, st, hyper)
		}},
	} {
		snap := make([][]float32, len(all))
		for i, x := range all {
			snap[i] = download(t, b, x)
		}
		whw, _ := b.DownloadWeight(w)
		wbefore, _ := whw.Dense.Float32s(nil)
		s8 := slices.Clone(st.(*adamState).m8)
		if err := c.call(); err == nil {
			t.Errorf("%s: accepted", c.name)
		} else if testing.Verbose() {
			t.Logf("%s: %v", c.name, err)
		}
		for i, x := range all {
			if !slices.Equal(download(t, b, x), snap[i]) {
				t.Errorf("%s: tensor %d was written", c.name, i)
			}
		}
		whw, _ = b.DownloadWeight(w)
		if wafter, _ := whw.Dense.Float32s(nil); !slices.Equal(wafter, wbefore) || !slices.Equal(s8, st.(*adamState).m8) {
			t.Errorf("%s: the weight or its state was written", c.name)
		}
	}
}

// TestCrossEntropyMatchesTrain: loss and dlogits equal engine/train.CrossEntropy's (same
// logits, targets shifted as train's mask), with and without label smoothing, scaled, in place.
func TestCrossEntropyMatchesTrain(t *testing.T) {
	b := New()
	r := rand.New(rand.NewPCG(19, 20))
	for _, c := range []struct {
		T, V  int
		ls    float32 // float32-exact values: train takes ls as float64
		scale float32
	}{{6, 50, 0, 1}, {6, 50, 0.125, 1}, {9, 1000, 0.25, 0.375}, {4, 3, 0, 2}, {3, 20000, 0.0625, 1.0 / 3}} {
		name := fmt.Sprintf("%+v", c)
		logits := randVec(r, c.T*c.V, 8)
		ids := make([]int, c.T)
		mask := make([]bool, c.T)
		for i := range ids {
			ids[i] = r.IntN(c.V)
			mask[i] = i > 0 && r.IntN(4) != 0
		}
		mask[c.T-1] = true
		want := make([]float32, c.T*c.V)
		wsum, wn := train.CrossEntropy{LabelSmoothing: float64(c.ls)}.Value(logits, c.T, c.V, ids, mask, want)
		targets := make([]int, c.T)
		for i := range targets {
			targets[i] = -1
			if i+1 < c.T && mask[i+1] {
				targets[i] = ids[i+1]
			}
		}
		for i := range want {
			want[i] *= c.scale
		}
		for _, inPlace := range []bool{false, true} {
			l := upload(t, b, c.T, c.V, logits)
			d := l
			if !inPlace {
				d = upload(t, b, c.T, c.V, randVec(r, c.T*c.V, 1))
			}
			sum, n, err := b.CrossEntropy(d, l, targets, c.ls, c.scale)
			if err != nil {
				t.Fatal(name, err)
			}
			if n != wn || sum != wsum {
				t.Errorf("%s: loss %v over %d, want %v over %d", name, sum, n, wsum, wn)
			}
			if got := download(t, b, d); !slices.Equal(got, want) {
				t.Errorf("%s in place %v: dlogits differ by %.3g", name, inPlace, maxDiff(got, want))
			}
		}
	}
}

// TestAdamWMatchesOptim: 5 steps (a learning rate per step) of the backend's AdamW on a weight
// kept in f32 or bf16 equal engine/optim.AdamW on the same parameter bit for bit, for fp32
// int8 and 4bit moments, with stochastic rounding of bf16 on and off, weight decay on and off,
// as parameter 0 of a one-parameter optimizer or parameter 2 of a three-parameter one. The
// 4bit cases include a one-row parameter (v normalised per block) and a matrix whose blocks of
// 128 straddle rows, with an odd element count (a half-used last byte).
func TestAdamWMatchesOptim(t *testing.T) {
	type cfg struct {
		format, keep string
		sr, noDecay  bool
		param        int
		rows, cols   int
	}
	var cases []cfg
	for _, format := range []string{"fp32", "int8", "4bit"} {
		for _, keep := range []string{"f32", "bf16"} {
			cases = append(cases, cfg{format, keep, keep == "bf16", false, 0, 6, 100}, cfg{format, keep, false, true, 2, 3, 64})
		}
	}
	cases = append(cases, cfg{"int8", "bf16", true, false, 1, 1, 7}, cfg{"int8", "f32", false, false, 0, 129, 65},
		cfg{"4bit", "bf16", true, false, 1, 1, 300}, cfg{"4bit", "f32", false, false, 0, 129, 65}, cfg{"4bit", "f32", false, true, 1, 200, 1})
	for _, c := range cases {
		name := fmt.Sprintf("%+v", c)
		b := New()
		b.SetWorkers(3)
		r := rand.New(rand.NewPCG(21, uint64(c.param)))
		n := c.rows * c.cols
		init := randVec(r, n, 1)
		w := uploadWeight(t, b, c.keep, init, c.rows, c.cols)
		st, err := b.NewAdamWState(c.format, c.rows, c.cols)
		if err != nil {
			t.Fatal(err)
		}
		sf, err := optim.ParseStateFormat(c.format)
		if err != nil {
			t.Fatal(err)
		}
		master := optim.MasterFP32
		ref := init
		if c.keep == "bf16" {
			master = optim.MasterBF16
			ref = make([]float32, n)
			for i, v := range init {
				ref[i] = tensor.BF16ToF32(tensor.F32ToBF16(v))
			}
		}
		specs := make([]optim.ParamSpec, c.param+1)
		for i := range specs {
			specs[i] = optim.ParamSpec{Name: fmt.Sprint(i), Rows: c.rows, Cols: c.cols, Init: make([]float32, n)}
		}
		specs[c.param].Init, specs[c.param].NoDecay = ref, c.noDecay
		const seed = 77
		o, err := optim.NewAdamW(optim.Config{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, State: sf, Master: master,
			StochasticRounding: c.sr, Seed: seed, ChunkElems: n}, specs)
		if err != nil {
			t.Fatal(err)
		}
		const gs = 0.25
		for step := 1; step <= 5; step++ {
			lr := 1e-2 / float64(step)
			g := randVec(r, n, 0.5)
			if step == 2 {
				for i := 0; i < n; i += 3 {
					g[i] = 0 // zero gradients: int8's zero-free √v
				}
			}
			grads := make([][]float32, len(specs))
			for i := range grads {
				grads[i] = make([]float32, n)
			}
			for i, v := range g {
				grads[c.param][i] = v * gs
			}
			if _, err := o.Step(grads, lr); err != nil {
				t.Fatal(err)
			}
			h := backend.AdamWHyper{LR: lr, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: step, GradScale: gs,
				NoDecay: c.noDecay, StochasticRound: c.sr, Seed: seed, Param: uint64(c.param)}
			if err := b.AdamW(w, upload(t, b, c.rows, c.cols, g), st, h); err != nil {
				t.Fatal(name, err)
			}
			hw, err := b.DownloadWeight(w)
			if err != nil {
				t.Fatal(err)
			}
			got, err := hw.Dense.Float32s(nil)
			if err != nil {
				t.Fatal(err)
			}
			want := o.Weights(c.param, nil)
			if !slices.Equal(got, want) {
				t.Fatalf("%s step %d: weights differ from engine/optim by %.3g", name, step, maxDiff(got, want))
			}
			if slices.Equal(got, ref) {
				t.Fatalf("%s step %d: nothing changed", name, step)
			}
		}
	}
}

// TestAdamWStateBytesMatchOptim: the accounted bytes of every format equal what
// engine/optim.AdamW.StateBytes counts for the same parameter, and a Qwen3-4B MLP matrix's
// 4bit state is about 1.03 bytes per parameter.
func TestAdamWStateBytesMatchOptim(t *testing.T) {
	for _, f := range []string{"fp32", "int8", "4bit"} {
		for _, sh := range [][2]int{{1, 1}, {1, 129}, {3, 5}, {256, 512}, {129, 65}, {7, 1}} {
			got, ok := adamWStateBytes(f, sh[0], sh[1])
			sf, _ := optim.ParseStateFormat(f)
			o, err := optim.NewAdamW(optim.Config{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, State: sf},
				[]optim.ParamSpec{{Name: "w", Rows: sh[0], Cols: sh[1], Init: make([]float32, sh[0]*sh[1])}})
			if err != nil {
				t.Fatal(err)
			}
			_, want, _ := o.StateBytes()
			if !ok || got != want {
				t.Errorf("%s %v: %d bytes accounted, engine/optim counts %d", f, sh, got, want)
			}
		}
	}
	bytes, _ := adamWStateBytes("4bit", 9728, 2560)
	if per := float64(bytes) / (9728 * 2560); per < 1.03 || per > 1.035 {
		t.Errorf("4bit [9728, 2560]: %.4f bytes per parameter", per)
	}
}

func TestAdamWState(t *testing.T) {
	b := New()
	for _, c := range []struct {
		format     string
		rows, cols int
		bytes      int64
	}{{"fp32", 3, 5, 15 * 8}, {"int8", 3, 5, 2*15 + 8}, {"int8", 2, 64, 2*128 + 2*8}, {"int8", 1, 65, 2*65 + 2*8},
		// 4bit: two nibble arrays, m's absmax per 128, then v's row and column maxima (a
		// matrix) or v's absmax per 128 (one row), as optim.AdamW.StateBytes counts them.
		{"4bit", 3, 5, 2*8 + 4 + 4*(3+5)}, {"4bit", 2, 128, 2*128 + 2*4 + 4*(2+128)}, {"4bit", 1, 129, 2*65 + 2*4 + 2*4},
		{"4bit", 2560, 9728, 2560*9728/2*2 + 2560*9728/128*4 + 4*(2560+9728)}} {
		st, err := b.NewAdamWState(c.format, c.rows, c.cols)
		if err != nil {
			t.Fatal(err)
		}
		if st.Format() != c.format || st.Bytes() != c.bytes {
			t.Errorf("%+v: state %s of %d bytes", c, st.Format(), st.Bytes())
		}
		if got := b.Memory().InUse[backend.OptimizerState]; got != c.bytes {
			t.Errorf("%+v: %d bytes accounted", c, got)
		}
		b.FreeAdamWState(st)
		b.FreeAdamWState(st) // twice: nothing more
		if got := b.Memory().InUse[backend.OptimizerState]; got != 0 {
			t.Errorf("%+v: %d bytes left after free", c, got)
		}
		w := uploadWeight(t, b, "f32", make([]float32, c.rows*c.cols), c.rows, c.cols)
		if err := b.AdamW(w, upload(t, b, c.rows, c.cols, nil), st, backend.AdamWHyper{LR: 1, Beta1: 0.9, Beta2: 0.9, Eps: 1, Step: 1}); err == nil {
			t.Errorf("%+v: a freed state accepted", c)
		}
	}
	for _, f := range []string{"int4", "", "bf16"} {
		if _, err := b.NewAdamWState(f, 2, 2); err == nil {
			t.Errorf("format %q accepted", f)
		}
	}
	if _, err := b.NewAdamWState("fp32", 0, 2); err == nil {
		t.Error("[0, 2] accepted")
	}
	b.SetBudget(100)
	if _, err := b.NewAdamWState("fp32", 4, 4); err == nil {
		t.Error("a state over the budget accepted")
	}
}

// BenchmarkMatMulBackward: dx and dw of a [256, 1024]·[3072, 1024]ᵀ product (bf16 weight),
// next to the forward (BenchmarkMatMulForwardRef).
func BenchmarkMatMulBackward(bm *testing.B) {
	const T, K, N = 256, 1024, 3072
	b := New()
	r := rand.New(rand.NewPCG(1, 1))
	w, err := b.UploadWeight(backend.HostWeight{Name: "w", Dense: mustHostB(bm, []int{N, K}, randVec(r, N*K, 1)), Keep: "bf16"})
	if err != nil {
		bm.Fatal(err)
	}
	x, _ := b.Alloc(backend.Activations, T, K)
	dx, _ := b.Alloc(backend.Activations, T, K)
	dw, _ := b.Alloc(backend.Gradients, N, K)
	dout, _ := b.Alloc(backend.Activations, T, N)
	_ = b.Upload(x, randVec(r, T*K, 1))
	_ = b.Upload(dout, randVec(r, T*N, 1))
	for _, c := range []struct {
		name string
		fn   func() error
	}{
		{"forward", func() error { return b.MatMul(dout, x, w) }},
		{"dx", func() error { return b.MatMulBackward(dx, nil, dout, x, w, false) }},
		{"dw", func() error { return b.MatMulBackward(nil, dw, dout, x, w, false) }},
	} {
		bm.Run(c.name, func(bm *testing.B) {
			for bm.Loop() {
				if err := c.fn(); err != nil {
					bm.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAttentionBackward: one sequence of 512 rows, 16 query heads over 8 KV heads of 128.
func BenchmarkAttentionBackward(bm *testing.B) {
	const T, nH, nKV, hd = 512, 16, 8, 128
	b := New()
	r := rand.New(rand.NewPCG(1, 1))
	ten := func(rows, cols int) backend.Tensor {
		x, _ := b.Alloc(backend.Activations, rows, cols)
		_ = b.Upload(x, randVec(r, rows*cols, 1))
		return x
	}
	q, k, v, o, do := ten(T, nH*hd), ten(T, nKV*hd), ten(T, nKV*hd), ten(T, nH*hd), ten(T, nH*hd)
	dq, dk, dv := ten(T, nH*hd), ten(T, nKV*hd), ten(T, nKV*hd)
	bm.Run("forward", func(bm *testing.B) {
		for bm.Loop() {
			if err := b.Attention(o, q, k, v, 0, nH, nKV, hd); err != nil {
				bm.Fatal(err)
			}
		}
	})
	bm.Run("backward", func(bm *testing.B) {
		for bm.Loop() {
			if err := b.AttentionBackward(dq, dk, dv, do, q, k, v, o, nH, nKV, hd); err != nil {
				bm.Fatal(err)
			}
		}
	})
}

func mustHostB(bm *testing.B, shape []int, v []float32) *tensor.Host {
	h, err := tensor.FromFloat32s("w", tensor.F32, shape, v)
	if err != nil {
		bm.Fatal(err)
	}
	return h
}

// TestAxpyRowsIsSequential: the four-row kernel rounds exactly as one axpy per row.
func TestAxpyRowsIsSequential(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	for n := 0; n <= 9; n++ {
		y := randVec(r, 37, 1)
		coef := randVec(r, n, 3)
		rows := make([][]float32, n)
		for i := range rows {
			rows[i] = randVec(r, 40, 2)
		}
		want := slices.Clone(y)
		for i := range coef {
			axpy(want, coef[i], rows[i])
		}
		axpyRows(y, coef, rows)
		if !slices.Equal(y, want) {
			t.Errorf("%d rows: differs from sequential axpy by %.3g", n, maxDiff(y, want))
		}
	}
}
