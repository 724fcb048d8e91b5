package cpu

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

func randVec(r *rand.Rand, n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = (2*r.Float32() - 1) * scale
	}
	return v
}

func upload(t *testing.T, b *Backend, rows, cols int, v []float32) backend.Tensor {
	t.Helper()
	x, err := b.Alloc(backend.Activations, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	if v != nil {
		if err := b.Upload(x, v); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

func download(t *testing.T, b *Backend, x backend.Tensor) []float32 {
	t.Helper()
	v, err := b.Download(x, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// maxDiff is max |a-b| / max(1e-30, max |b|).
func maxDiff(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		num = math.Max(num, math.Abs(float64(a[i])-float64(b[i])))
		den = math.Max(den, math.Abs(float64(b[i])))
	}
	return num / math.Max(den, 1e-30)
}

func naiveMatMul(x, w []float32, T, K, N int) []float32 {
	out := make([]float32, T*N)
	for t := 0; t < T; t++ {
		for n := 0; n < N; n++ {
			var s float64
			for k := 0; k < K; k++ {
				s += float64(x[t*K+k]) * float64(w[n*K+k])
			}
			out[t*N+n] = float32(s)
		}
	}
	return out
}

func TestMatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, workers := range []int{1, 3} {
		for _, c := range []struct{ T, K, N int }{{1, 16, 1}, {1, 48, 37}, {2, 32, 16}, {3, 64, 33}, {5, 16, 70}, {8, 96, 5}} {
			b := New()
			b.SetWorkers(workers)
			w := randVec(r, c.N*c.K, 1)
			x := randVec(r, c.T*c.K, 1)
			xt := upload(t, b, c.T, c.K, x)
			q, err := nvfp4.QuantizeModelOpt(w, c.N, c.K)
			if err != nil {
				t.Fatal(err)
			}
			deq := q.Dequantize()
			bfv := make([]float32, len(w)) // w rounded to bf16
			for i, v := range w {
				bfv[i] = tensor.BF16ToF32(tensor.F32ToBF16(v))
			}
			f32 := func(v []float32) *tensor.Host {
				h, _ := tensor.FromFloat32s("w", tensor.F32, []int{c.N, c.K}, v)
				return h
			}
			run := func(hw backend.HostWeight) []float32 {
				wt, err := b.UploadWeight(hw)
				if err != nil {
					t.Fatal(err)
				}
				out := upload(t, b, c.T, c.N, nil)
				if err := b.MatMul(out, xt, wt); err != nil {
					t.Fatal(err)
				}
				return download(t, b, out)
			}
			got := run(backend.HostWeight{Name: "w", Dense: f32(w)})
			if d := maxDiff(got, naiveMatMul(x, w, c.T, c.K, c.N)); d > 1e-5 {
				t.Errorf("%+v f32: differs from the naive product by %.3g", c, d)
			}
			// bf16 and NVFP4 weights must give exactly what f32 weights holding the same
			// values give: the tile decode is exact and the kernel is shared.
			want := run(backend.HostWeight{Name: "w", Dense: f32(bfv)})
			if got := run(backend.HostWeight{Name: "w", Dense: f32(w), Keep: "bf16"}); maxDiff(got, want) != 0 {
				t.Errorf("%+v bf16: differs from f32 weights rounded to bf16 by %.3g", c, maxDiff(got, want))
			}
			want = run(backend.HostWeight{Name: "w", Dense: f32(deq)})
			if got := run(backend.HostWeight{Name: "w", NVFP4: q}); maxDiff(got, want) != 0 {
				t.Errorf("%+v nvfp4: differs from the dequantised weight by %.3g", c, maxDiff(got, want))
			}
		}
	}
}

func TestRMSNorm(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	b := New()
	const rows, cols, eps = 3, 64, 1e-6
	x := randVec(r, rows*cols, 3)
	for _, n := range []int{64, 32, 16} { // whole row, and per head
		w := randVec(r, n, 1)
		xt, wt := upload(t, b, rows, cols, x), upload(t, b, 1, n, w)
		if err := b.RMSNorm(xt, xt, wt, eps); err != nil { // in place
			t.Fatal(err)
		}
		got := download(t, b, xt)
		for g := 0; g < rows*cols/n; g++ {
			var ss float64
			for _, v := range x[g*n : (g+1)*n] {
				ss += float64(v) * float64(v)
			}
			inv := 1 / math.Sqrt(ss/float64(n)+eps)
			for j := 0; j < n; j++ {
				want := float64(w[j]) * float64(x[g*n+j]) * inv
				if math.Abs(float64(got[g*n+j])-want) > 1e-5*math.Max(1, math.Abs(want)) {
					t.Fatalf("group size %d, element %d: %v, want %v", n, g*n+j, got[g*n+j], want)
				}
			}
		}
	}
	if err := b.RMSNorm(upload(t, b, 1, 64, nil), upload(t, b, 1, 64, nil), upload(t, b, 1, 24, nil), eps); err == nil {
		t.Fatal("a weight of 24 for width 64 was accepted")
	}
}

func TestRoPE(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	b := New()
	const T, hd, heads, theta = 5, 32, 2, 1e4
	x := randVec(r, T*heads*hd, 1)
	xt := upload(t, b, T, heads*hd, x)
	out := upload(t, b, T, heads*hd, nil)
	if err := b.RoPE(out, xt, hd, 7, theta); err != nil {
		t.Fatal(err)
	}
	got := download(t, b, out)
	for tt := 0; tt < T; tt++ {
		for h := 0; h < heads; h++ {
			for i := 0; i < hd/2; i++ {
				ang := float64(7+tt) * math.Pow(theta, -float64(2*i)/hd)
				o := tt*heads*hd + h*hd
				x1, x2 := float64(x[o+i]), float64(x[o+i+hd/2])
				w1, w2 := x1*math.Cos(ang)-x2*math.Sin(ang), x2*math.Cos(ang)+x1*math.Sin(ang)
				if math.Abs(float64(got[o+i])-w1) > 2e-5 || math.Abs(float64(got[o+i+hd/2])-w2) > 2e-5 {
					t.Fatalf("row %d head %d pair %d: (%v, %v), want (%v, %v)", tt, h, i, got[o+i], got[o+i+hd/2], w1, w2)
				}
			}
		}
	}
	// Scores depend on relative position only: <rope(q, p), rope(k, p')> with p-p' fixed.
	q, k := randVec(r, hd, 1), randVec(r, hd, 1)
	score := func(pq, pk int) float32 {
		qt, kt := upload(t, b, 1, hd, q), upload(t, b, 1, hd, k)
		if err := firstErr(b.RoPE(qt, qt, hd, pq, theta), b.RoPE(kt, kt, hd, pk, theta)); err != nil {
			t.Fatal(err)
		}
		return dot(download(t, b, qt), download(t, b, kt))
	}
	if a, c := score(3, 1), score(103, 101); math.Abs(float64(a-c)) > 1e-4 {
		t.Errorf("relative-position property: %v vs %v", a, c)
	}
	if err := b.RoPE(out, xt, 30, 0, theta); err == nil {
		t.Error("head_dim 30 for width 64 was accepted")
	}
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// naiveAttention computes causal GQA attention in float64 for queries at pos0..pos0+T-1.
func naiveAttention(q, k, v []float32, T, pos0, nH, nKV, hd int) []float32 {
	out := make([]float32, T*nH*hd)
	for t := 0; t < T; t++ {
		for h := 0; h < nH; h++ {
			kh := h / (nH / nKV)
			n := pos0 + t + 1
			s := make([]float64, n)
			mx := math.Inf(-1)
			for j := 0; j < n; j++ {
				for i := 0; i < hd; i++ {
					s[j] += float64(q[t*nH*hd+h*hd+i]) * float64(k[j*nKV*hd+kh*hd+i])
				}
				s[j] /= math.Sqrt(float64(hd))
				mx = math.Max(mx, s[j])
			}
			var sum float64
			for j := range s {
				s[j] = math.Exp(s[j] - mx)
				sum += s[j]
			}
			for i := 0; i < hd; i++ {
				var acc float64
				for j := range s {
					acc += s[j] / sum * float64(v[j*nKV*hd+kh*hd+i])
				}
				out[t*nH*hd+h*hd+i] = float32(acc)
			}
		}
	}
	return out
}

func TestAttention(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	for _, c := range []struct{ T, pos0, nH, nKV, hd, capacity int }{
		{1, 0, 4, 2, 8, 4}, {4, 0, 4, 4, 8, 8}, {3, 5, 4, 2, 16, 12}, {1, 9, 6, 2, 8, 10}, {7, 2, 2, 1, 8, 9},
	} {
		b := New()
		q := randVec(r, c.T*c.nH*c.hd, 2)
		k := randVec(r, c.capacity*c.nKV*c.hd, 2)
		v := randVec(r, c.capacity*c.nKV*c.hd, 1)
		// Rows past pos0+T hold garbage the mask must never read.
		for j := (c.pos0 + c.T) * c.nKV * c.hd; j < len(k); j++ {
			k[j], v[j] = float32(math.NaN()), float32(math.Inf(1))
		}
		out := upload(t, b, c.T, c.nH*c.hd, nil)
		err := b.Attention(out, upload(t, b, c.T, c.nH*c.hd, q), upload(t, b, c.capacity, c.nKV*c.hd, k),
			upload(t, b, c.capacity, c.nKV*c.hd, v), c.pos0, c.nH, c.nKV, c.hd)
		if err != nil {
			t.Fatal(err)
		}
		if d := maxDiff(download(t, b, out), naiveAttention(q, k, v, c.T, c.pos0, c.nH, c.nKV, c.hd)); !(d < 1e-5) {
			t.Errorf("%+v: differs from the naive attention by %.3g", c, d)
		}
	}
	b := New()
	q := upload(t, b, 3, 32, nil)
	if err := b.Attention(upload(t, b, 3, 32, nil), q, upload(t, b, 4, 16, nil), upload(t, b, 4, 16, nil), 2, 4, 2, 8); err == nil {
		t.Error("attention past the cache's rows was accepted")
	}
	if err := b.Attention(upload(t, b, 3, 32, nil), q, upload(t, b, 8, 16, nil), upload(t, b, 8, 16, nil), 0, 4, 3, 8); err == nil {
		t.Error("4 heads over 3 KV heads was accepted")
	}
}

func TestElementwise(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	b := New()
	g, u := randVec(r, 40000, 4), randVec(r, 40000, 1)
	gt, ut := upload(t, b, 200, 200, g), upload(t, b, 200, 200, u)
	if err := b.SwiGLU(gt, gt, ut); err != nil {
		t.Fatal(err)
	}
	got := download(t, b, gt)
	for i := range g {
		want := float64(g[i]) / (1 + math.Exp(-float64(g[i]))) * float64(u[i])
		if math.Abs(float64(got[i])-want) > 1e-5 {
			t.Fatalf("swiglu %d: %v, want %v", i, got[i], want)
		}
	}
	if err := b.Add(ut, gt); err != nil {
		t.Fatal(err)
	}
	sum := download(t, b, ut)
	for i := range sum {
		if sum[i] != u[i]+got[i] {
			t.Fatalf("add %d: %v, want %v", i, sum[i], u[i]+got[i])
		}
	}
	dst := upload(t, b, 4, 3, nil)
	src := upload(t, b, 2, 3, []float32{1, 2, 3, 4, 5, 6})
	if err := b.CopyRows(dst, 2, src, 1, 1); err != nil {
		t.Fatal(err)
	}
	if v := download(t, b, dst); v[6] != 4 || v[8] != 6 || v[5] != 0 || v[9] != 0 {
		t.Fatalf("copy rows: %v", v)
	}
	for _, c := range []struct{ dstRow, srcRow, n int }{{3, 0, 2}, {0, 1, 2}, {-1, 0, 1}, {0, 0, -1}} {
		if err := b.CopyRows(dst, c.dstRow, src, c.srcRow, c.n); err == nil {
			t.Errorf("copy rows %+v accepted", c)
		}
	}
	if err := b.Add(dst, src); err == nil {
		t.Error("add of different shapes accepted")
	}
}

func TestEmbedding(t *testing.T) {
	b := New()
	tab := []float32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	h, _ := tensor.FromFloat32s("emb", tensor.F32, []int{4, 3}, tab)
	for _, keep := range []string{"f32", "bf16"} {
		w, err := b.UploadWeight(backend.HostWeight{Name: "emb", Dense: h, Keep: keep})
		if err != nil {
			t.Fatal(err)
		}
		out := upload(t, b, 2, 3, nil)
		if err := b.Embedding(out, w, []int{3, 1}); err != nil {
			t.Fatal(err)
		}
		if v := download(t, b, out); v[0] != 9 || v[2] != 11 || v[3] != 3 {
			t.Fatalf("%s: %v", keep, v)
		}
		if err := b.Embedding(out, w, []int{0, 4}); err == nil || !strings.Contains(err.Error(), "token id 4 at position 1") {
			t.Fatalf("%s: out-of-range id: %v", keep, err)
		}
	}
}

func TestMemoryAccounting(t *testing.T) {
	b := New()
	x, _ := b.Alloc(backend.Activations, 10, 10)
	k, _ := b.Alloc(backend.KVCache, 5, 4)
	h, _ := tensor.FromFloat32s("w", tensor.F32, []int{2, 16}, make([]float32, 32))
	w, err := b.UploadWeight(backend.HostWeight{Name: "w", Dense: h, Keep: "bf16"})
	if err != nil {
		t.Fatal(err)
	}
	m := b.Memory()
	if m.InUse[backend.Activations] != 400 || m.InUse[backend.KVCache] != 80 || m.InUse[backend.Weights] != 64 || m.Peak != 544 || m.Live != 3 {
		t.Fatalf("after allocating: %+v", m)
	}
	b.Free(x)
	b.Free(x) // twice: no effect
	b.FreeWeight(w)
	if m := b.Memory(); m.Used() != 80 || m.Peak != 544 || m.Live != 1 {
		t.Fatalf("after freeing: %+v", m)
	}
	b.ResetPeak()
	if m := b.Memory(); m.Peak != 80 {
		t.Fatalf("after ResetPeak: %+v", m)
	}
	if _, err := b.Download(x, nil); err == nil || !strings.Contains(err.Error(), "freed") {
		t.Fatalf("download of a freed tensor: %v", err)
	}
	if err := b.MatMul(k, k, w); err == nil {
		t.Fatal("matmul with a freed weight accepted")
	}
	other := New()
	y, _ := other.Alloc(backend.Activations, 5, 4)
	if err := b.Add(k, y); err == nil || !strings.Contains(err.Error(), "another backend") {
		t.Fatalf("tensor of another backend: %v", err)
	}
	b.Free(y) // not ours: ignored
	if other.Memory().Used() != 80 {
		t.Fatal("freeing another backend's tensor changed its accounting")
	}

	b.SetBudget(1000)
	_, err = b.Alloc(backend.Activations, 100, 10)
	var ob *backend.OverBudget
	if !errors.As(err, &ob) || ob.Request != 4000 || ob.InUse != 80 || ob.Budget != 1000 {
		t.Fatalf("over budget: %v", err)
	}
	if b.Memory().Used() != 80 {
		t.Fatal("a refused allocation was accounted")
	}
	if _, err := b.UploadWeight(backend.HostWeight{Name: "big", Dense: h}); err != nil {
		t.Fatalf("128 bytes within the budget: %v", err)
	}
	if _, err := b.Alloc(backend.Activations, -1, 3); err == nil {
		t.Fatal("negative rows accepted")
	}
	t.Log(b.Memory())
}
