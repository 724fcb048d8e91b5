//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

// The cuBLASLt path (gemm.go). TestGEMMPlan needs no GPU: it executes the planned column-major
// products in Go, as cuBLAS defines them, and checks them against the row-major definitions.
// The others need a GPU and cuBLASLt and skip without them.

// ltExec runs one planned call on host buffers with cuBLAS's column-major semantics:
// D[i + j·ldd] = alpha·Σ_p op(A)[i,p]·op(B)[p,j] + beta·D, op(A)[i,p] = A[p + i·lda] when
// transA else A[i + p·lda], op(B)[p,j] = B[j + p·ldb] when transB else B[p + j·ldb].
func ltExec(c ltCall, alpha float64, A, B, D []float64) {
	s := c.shape
	A, B, D = A[c.aOff:], B[c.bOff:], D[c.dOff:]
	for j := 0; j < s.n; j++ {
		for i := 0; i < s.m; i++ {
			var sum float64
			for p := 0; p < s.k; p++ {
				var a, b float64
				if s.transA {
					a = A[p+i*s.lda]
				} else {
					a = A[i+p*s.lda]
				}
				if s.transB {
					b = B[j+p*s.ldb]
				} else {
					b = B[p+j*s.ldb]
				}
				sum += a * b
			}
			D[i+j*s.ldd] = alpha*sum + float64(c.beta)*D[i+j*s.ldd]
		}
	}
}

func randF64(n int, r *rand.Rand) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = r.NormFloat64()
	}
	return v
}

// operandOf returns the host buffer a call reads for op: weight rows from w0 for opWeight.
func operandOf(op ltOperand, c ltCall, W []float64, in int, act, act2 []float64) []float64 {
	switch op {
	case opWeight:
		return W[c.w0*in:]
	case opAct:
		return act
	}
	return act2
}

func TestGEMMPlan(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const eps = 1e-9
	check := func(name string, got, want []float64) {
		t.Helper()
		for i := range want {
			if math.Abs(got[i]-want[i]) > eps*(1+math.Abs(want[i])) {
				t.Fatalf("%s: element %d = %v, want %v", name, i, got[i], want[i])
			}
		}
	}
	for _, s := range []struct{ T, In, Out, chunk int }{{1, 1, 1, 1}, {3, 5, 7, 7}, {4, 6, 9, 4}, {5, 8, 16, 3}, {2, 3, 11, 5}} {
		T, In, Out := s.T, s.In, s.Out
		W := randF64(Out*In, r) // row-major [Out, In]
		x := randF64(T*In, r)   // row-major [T, In]
		dout := randF64(T*Out, r)
		// Forward: out[T, Out] = x·Wᵀ.
		out := make([]float64, T*Out)
		calls := planForward(T, In, Out, s.chunk)
		if want := (Out + s.chunk - 1) / s.chunk; len(calls) != want {
			t.Fatalf("forward %v: %d calls, want %d", s, len(calls), want)
		}
		for _, c := range calls {
			ltExec(c, 0.5, operandOf(c.a, c, W, In, x, nil), operandOf(c.b, c, W, In, x, nil), out)
		}
		want := make([]float64, T*Out)
		for i := 0; i < T; i++ {
			for o := 0; o < Out; o++ {
				for k := 0; k < In; k++ {
					want[i*Out+o] += 0.5 * x[i*In+k] * W[o*In+k]
				}
			}
		}
		check(fmt.Sprintf("forward %v", s), out, want)
		// dx[T, In] = dout·W, written then accumulated.
		for _, acc := range []bool{false, true} {
			dx := randF64(T*In, r)
			want := make([]float64, T*In)
			if acc {
				copy(want, dx)
			}
			for i := 0; i < T; i++ {
				for k := 0; k < In; k++ {
					for o := 0; o < Out; o++ {
						want[i*In+k] += 2 * dout[i*Out+o] * W[o*In+k]
					}
				}
			}
			for _, c := range planDX(T, In, Out, s.chunk, acc) {
				ltExec(c, 2, operandOf(c.a, c, W, In, dout, nil), operandOf(c.b, c, W, In, dout, nil), dx)
			}
			check(fmt.Sprintf("dx %v accumulate=%v", s, acc), dx, want)
		}
		// dw[Out, In] += doutᵀ·x.
		dw := randF64(Out*In, r)
		wantDW := append([]float64(nil), dw...)
		for o := 0; o < Out; o++ {
			for k := 0; k < In; k++ {
				for i := 0; i < T; i++ {
					wantDW[o*In+k] += dout[i*Out+o] * x[i*In+k]
				}
			}
		}
		for _, c := range planDW(T, In, Out, false) {
			ltExec(c, 1, operandOf(c.a, c, W, In, dout, x), operandOf(c.b, c, W, In, dout, x), dw)
		}
		check(fmt.Sprintf("dw %v", s), dw, wantDW)
	}
}

func TestGEMMHelpers(t *testing.T) {
	for _, c := range []struct{ rows, in, want int }{
		{9728, 2560, 9728}, {2560, 9728, 2560}, {151936, 2560, 13056}, {151936, 9728, 3328}, {100, 1 << 20, 100}, {1000, 1 << 20, 128},
	} {
		if got := gemmChunkRows(c.rows, c.in); got != c.want {
			t.Errorf("gemmChunkRows(%d, %d) = %d, want %d", c.rows, c.in, got, c.want)
		}
	}
	for _, c := range []struct {
		p    devPtr
		want int
	}{{0, 256}, {512, 256}, {256 + 128, 128}, {4, 4}, {6, 2}, {7, 1}, {1 << 20, 256}} {
		if got := ptrAlign(c.p); got != c.want {
			t.Errorf("ptrAlign(%d) = %d, want %d", c.p, got, c.want)
		}
	}
	for _, c := range []struct {
		in, out int
		want    bool
	}{{2560, 9728, true}, {8, 8, true}, {12, 8, false}, {8, 130, false}, {0, 8, false}} {
		if got := gemmShapeOK(c.in, c.out); got != c.want {
			t.Errorf("gemmShapeOK(%d, %d) = %v", c.in, c.out, got)
		}
	}
}

// openGEMM returns the test backend, skipping where cuBLASLt is not usable.
func openGEMM(t *testing.T) *Backend {
	t.Helper()
	g := openGPU(t)
	st := g.gemmStatus()
	t.Log(st)
	if !g.gemm.on {
		t.Skipf("no cuBLASLt: %s", st)
	}
	return g
}

// storedValues are a host weight's values as the backends hold them (bf16 rounded, NVFP4
// decoded with its tensor scale).
func storedValues(t *testing.T, hw backend.HostWeight) []float32 {
	t.Helper()
	if hw.NVFP4 != nil {
		return hw.NVFP4.Dequantize()
	}
	v, err := hw.Dense.Float32s(nil)
	if err != nil {
		t.Fatal(err)
	}
	if hw.Keep == kindBF16 {
		for i, x := range v {
			v[i] = tensor.BF16ToF32(tensor.F32ToBF16(x))
		}
	}
	return v
}

// downloadScratch copies n bf16 values from a device address (owner goroutine).
func downloadScratch(t *testing.T, g *Backend, p func() devPtr, n int) []uint16 {
	t.Helper()
	out := make([]uint16, n)
	if err := g.do(func() error { return memcpyDtoH(unsafe.Pointer(&out[0]), p(), int64(2*n)) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestGEMMConvert(t *testing.T) {
	g := openGEMM(t)
	// f32 → bf16: bit-identical to tensor.F32ToBF16, ties, NaN, Inf, subnormals, and a tail of
	// n % 8 elements.
	special := []float32{0, float32(math.Copysign(0, -1)), 1, -1, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.Float32frombits(0x3f80ffff),
		math.Float32frombits(0x00000001), math.Float32frombits(0x7f7fffff), math.Float32frombits(0xff800001)}
	for _, n := range []int{len(special), 4096 + 3, 8192 + 7, 8} {
		src := randn(n, uint64(n), 3)
		copy(src, special)
		x, err := g.Alloc(backend.Activations, 1, n)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Free(x)
		if err := g.Upload(x, src); err != nil {
			t.Fatal(err)
		}
		if err := g.do(func() error {
			if err := g.gemmScratch(int64(n), 0, 0); err != nil {
				return err
			}
			return g.toBF16(g.gemm.act.ptr, x.(*Tensor).ptr, int64(n))
		}); err != nil {
			t.Fatal(err)
		}
		got := downloadScratch(t, g, func() devPtr { return g.gemm.act.ptr }, n)
		for i, v := range src {
			if want := tensor.F32ToBF16(v); got[i] != want {
				t.Fatalf("f32_to_bf16 n=%d: element %d (%#08x) = %#04x, want %#04x", n, i, math.Float32bits(v), got[i], want)
			}
		}
	}
	// NVFP4 → bf16 of e2m1·e4m3 (no tensor scale): exact, every code and many scales, on a
	// block of rows starting past row 0.
	const rows, cols, r0, r1 = 40, 96, 8, 40
	m := randomNVFP4(rows, cols, 3)
	for i := range m.Scales { // include subnormal and large scales
		m.Scales[i] = byte(i*37) & 0x7e
	}
	w, err := g.UploadWeight(backend.HostWeight{Name: "convert", NVFP4: m})
	if err != nil {
		t.Fatal(err)
	}
	defer g.FreeWeight(w)
	if err := g.do(func() error {
		if err := g.gemmScratch(0, 0, int64((r1-r0)*cols)); err != nil {
			return err
		}
		return g.expandWeight(w.(*Weight), r0, r1)
	}); err != nil {
		t.Fatal(err)
	}
	got := downloadScratch(t, g, func() devPtr { return g.gemm.wbuf.ptr }, (r1-r0)*cols)
	for r := r0; r < r1; r++ {
		for c := 0; c < cols; c++ {
			v := nvfp4.DecodeE2M1(m.Code(r, c)) * nvfp4.DecodeE4M3(m.Scales[r*cols/16+c/16])
			h := got[(r-r0)*cols+c]
			if tensor.BF16ToF32(h) != v {
				t.Fatalf("nvfp4_to_bf16: row %d col %d = %v (%#04x), want %v exactly", r, c, tensor.BF16ToF32(h), h, v)
			}
		}
	}
}

// gemmCalls reads the count of cuBLASLt products run.
func gemmCalls(g *Backend) int64 {
	var n int64
	g.do(func() error { n = g.gemm.calls; return nil })
	return n
}

// withChunk runs f with gemmChunkElems set to n (blocks of weight rows).
func withChunk(g *Backend, n int, f func()) {
	g.do(func() error { gemmChunkElems = n; return nil })
	defer g.do(func() error { gemmChunkElems = 32 << 20; return nil })
	f()
}

func TestGEMMMatMul(t *testing.T) {
	g := openGEMM(t)
	c := cpu.New()
	// Bound 1e-2 of max|out|: x (and an f32 weight) rounded to bf16 (relative 2^-9 per element)
	// in sums of K random terms; observed well below (the errors are random, not aligned).
	const bound = 1e-2
	type shape struct{ T, K, N, chunk int }
	shapes := []shape{{16, 64, 64, 0}, {37, 256, 200, 0}, {128, 2560, 512, 0}, {300, 512, 1000, 0},
		{19, 256, 400, 128 * 256}, {33, 128, 1000, 300 * 128}} // the last two in blocks of 128 and 256 rows
	for _, kind := range []string{kindF32, kindBF16, kindNVFP4} {
		for i, s := range shapes {
			name := fmt.Sprintf("cuBLASLt %s T=%d K=%d N=%d", kind, s.T, s.K, s.N)
			if s.chunk > 0 {
				name += fmt.Sprintf(" in blocks of %d rows", max(s.chunk/s.K/128*128, 128))
			}
			t.Run(name, func(t *testing.T) {
				hw := hostWeight(t, kind, s.N, s.K, uint64(20+i))
				cw, gw := weights(t, c, g, hw)
				cx, gx := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(200+i), 1))
				co, gO := pair(t, c, g, s.T, s.N, nil)
				if err := c.MatMul(co, cx, cw); err != nil {
					t.Fatal(err)
				}
				before := gemmCalls(g)
				run := func() {
					if err := g.MatMul(gO, gx, gw); err != nil {
						t.Fatal(err)
					}
				}
				if s.chunk > 0 {
					withChunk(g, s.chunk, run)
				} else {
					run()
				}
				want := int64(1)
				if rows := max(s.chunk/s.K/128*128, 128); s.chunk > 0 && kind != kindBF16 {
					want = int64((s.N + rows - 1) / rows)
				}
				if got := gemmCalls(g) - before; got != want {
					t.Errorf("%d cuBLASLt products, want %d (%s)", got, want, g.gemmStatus())
				}
				compare(t, name, c, g, co, gO, bound)
			})
		}
	}
}

// TestGEMMRouting: fewer than 16 rows, or dimensions not multiples of 8, stay on the SIMT and
// GEMV kernels (CUDA-core float32, bound 2e-5 as in TestMatMul); QWENGO_CUDA_GEMM=simt turns
// cuBLASLt off for a backend opened with it.
func TestGEMMRouting(t *testing.T) {
	g := openGEMM(t)
	c := cpu.New()
	for i, s := range []struct{ T, K, N int }{{15, 64, 64}, {4, 256, 256}, {64, 60, 64}, {64, 64, 60}, {40, 48, 130}} {
		cw, gw := weights(t, c, g, hostWeight(t, kindBF16, s.N, s.K, uint64(40+i)))
		cx, gx := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(50+i), 1))
		co, gO := pair(t, c, g, s.T, s.N, nil)
		before := gemmCalls(g)
		if err := c.MatMul(co, cx, cw); err != nil {
			t.Fatal(err)
		}
		if err := g.MatMul(gO, gx, gw); err != nil {
			t.Fatal(err)
		}
		if n := gemmCalls(g) - before; n != 0 {
			t.Errorf("T=%d K=%d N=%d went to cuBLASLt (%d products)", s.T, s.K, s.N, n)
		}
		compare(t, fmt.Sprintf("SIMT T=%d K=%d N=%d", s.T, s.K, s.N), c, g, co, gO, 2e-5)
	}
	t.Setenv("QWENGO_CUDA_GEMM", "simt")
	b2, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	cw, gw := weights(t, c, b2, hostWeight(t, kindNVFP4, 256, 256, 60))
	cx, gx := pair(t, c, b2, 64, 256, randn(64*256, 61, 1))
	co, gO := pair(t, c, b2, 64, 256, nil)
	if err := c.MatMul(co, cx, cw); err != nil {
		t.Fatal(err)
	}
	if err := b2.MatMul(gO, gx, gw); err != nil {
		t.Fatal(err)
	}
	if st := b2.gemmStatus(); b2.gemm.on || b2.gemm.calls != 0 {
		t.Errorf("QWENGO_CUDA_GEMM=simt: %s, %d cuBLASLt products", st, b2.gemm.calls)
	}
	compare(t, "QWENGO_CUDA_GEMM=simt T=64 nvfp4", c, b2, co, gO, 2e-5)
}

// refDX is dx = dout·W (+ dx0) in float64 on the host.
func refDX(dout, W, dx0 []float32, T, In, Out int) []float32 {
	out := make([]float32, T*In)
	for i := 0; i < T; i++ {
		for k := 0; k < In; k++ {
			var s float64
			if dx0 != nil {
				s = float64(dx0[i*In+k])
			}
			for o := 0; o < Out; o++ {
				s += float64(dout[i*Out+o]) * float64(W[o*In+k])
			}
			out[i*In+k] = float32(s)
		}
	}
	return out
}

// refDW is dw0 + doutᵀ·x in float64 on the host.
func refDW(dout, x, dw0 []float32, T, In, Out int) []float32 {
	out := make([]float32, Out*In)
	for o := 0; o < Out; o++ {
		for k := 0; k < In; k++ {
			s := float64(dw0[o*In+k])
			for i := 0; i < T; i++ {
				s += float64(dout[i*Out+o]) * float64(x[i*In+k])
			}
			out[o*In+k] = float32(s)
		}
	}
	return out
}

func TestGEMMBackward(t *testing.T) {
	g := openGEMM(t)
	// Bound 1e-2 of max|ref|, as for the forward: dout and x rounded to bf16.
	const bound = 1e-2
	upload := func(rows, cols int, v []float32) *Tensor { return uploaded(t, g, rows, cols, v) }
	for i, s := range []struct{ T, In, Out, chunk int }{{16, 64, 96, 0}, {77, 256, 320, 0}, {512, 512, 256, 0}, {24, 128, 1000, 256 * 128}, {5, 64, 64, 0}} {
		for _, kind := range []string{kindF32, kindBF16, kindNVFP4} {
			name := fmt.Sprintf("%s T=%d In=%d Out=%d", kind, s.T, s.In, s.Out)
			if s.chunk > 0 {
				name += " in blocks"
			}
			t.Run(name, func(t *testing.T) {
				hw := hostWeight(t, kind, s.Out, s.In, uint64(70+i))
				W := storedValues(t, hw)
				gw, err := g.UploadWeight(hw)
				if err != nil {
					t.Fatal(err)
				}
				defer g.FreeWeight(gw)
				w := gw.(*Weight)
				dout := randn(s.T*s.Out, uint64(80+i), 1)
				x := randn(s.T*s.In, uint64(90+i), 1)
				dx0 := randn(s.T*s.In, uint64(95+i), 1)
				dw0 := randn(s.Out*s.In, uint64(99+i), 0.1)
				gd, gx, gdx, gdw := upload(s.T, s.Out, dout), upload(s.T, s.In, x), upload(s.T, s.In, dx0), upload(s.Out, s.In, dw0)
				run := func(f func() error) {
					t.Helper()
					var err error
					if s.chunk > 0 {
						withChunk(g, s.chunk, func() { err = g.do(f) })
					} else {
						err = g.do(f)
					}
					if err != nil {
						t.Fatal(err)
					}
				}
				// dx written, then accumulated; dw accumulated twice (through both entry points).
				run(func() error { return g.gemmDX(gdx, gd, w, false) })
				compareSlices(t, name+" dx", download(t, g, gdx), refDX(dout, W, nil, s.T, s.In, s.Out), bound)
				if err := g.Upload(gdx, dx0); err != nil {
					t.Fatal(err)
				}
				run(func() error { return g.gemmDX(gdx, gd, w, true) })
				compareSlices(t, name+" dx accumulate", download(t, g, gdx), refDX(dout, W, dx0, s.T, s.In, s.Out), bound)
				run(func() error { return g.gemmDW(gdw, gd, gx) })
				once := refDW(dout, x, dw0, s.T, s.In, s.Out)
				compareSlices(t, name+" dw += doutᵀ·x", download(t, g, gdw), once, bound)
				run(func() error { return g.gemmBackward(gdx, gdw, gd, gx, w, false) })
				compareSlices(t, name+" dw (second +=, with dx)", download(t, g, gdw), refDW(dout, x, once, s.T, s.In, s.Out), bound)
				compareSlices(t, name+" dx (with dw)", download(t, g, gdx), refDX(dout, W, nil, s.T, s.In, s.Out), bound)
			})
		}
	}
	// Errors: shapes that do not match, and a weight dimension that is not a multiple of 8
	// (errGEMMUnsupported, nothing written).
	gw, err := g.UploadWeight(hostWeight(t, kindBF16, 12, 64, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer g.FreeWeight(gw)
	a, b := upload(16, 12, randn(16*12, 1, 1)), upload(16, 64, randn(16*64, 2, 1))
	err = g.do(func() error { return g.gemmDX(b, a, gw.(*Weight), false) })
	if err == nil || !errors.Is(err, errGEMMUnsupported) {
		t.Errorf("dx with a [12, 64] weight: %v, want errGEMMUnsupported", err)
	}
	err = g.do(func() error { return g.gemmDX(a, b, gw.(*Weight), false) })
	if err == nil || errors.Is(err, errGEMMUnsupported) {
		t.Errorf("dx of the wrong shape: %v, want a shape error", err)
	}
}

// TestFiguresGEMM times the cuBLASLt path on Qwen3-4B projection shapes for prefill and
// training sizes (QWENGO_CUDA_BENCH=1): rounding x to bf16, expanding the weight to bf16, the
// cuBLASLt GEMM alone, the whole MatMul, and the SIMT tiled kernel on the same operands.
func TestFiguresGEMM(t *testing.T) {
	benchEnabled(t)
	g := openGEMM(t)
	for _, kind := range []string{kindNVFP4, kindBF16} {
		for _, T := range []int{512, 2048, 8192} {
			for _, sh := range [][2]int{{2560, 9728}, {9728, 2560}, {2560, 4096}} {
				K, N := sh[0], sh[1]
				figuresGEMMCase(t, g, kind, T, K, N)
			}
		}
	}
}

func figuresGEMMCase(t *testing.T, g *Backend, kind string, T, K, N int) {
	t.Helper()
	hw := backend.HostWeight{Name: fmt.Sprintf("bench %s %dx%d", kind, N, K)}
	if kind == kindNVFP4 {
		hw.NVFP4 = randomNVFP4(N, K, uint64(T+K))
	} else {
		hw.Dense = randomBF16(N, K, uint64(T+K))
	}
	bw, err := g.UploadWeight(hw)
	if err != nil {
		t.Fatal(err)
	}
	defer g.FreeWeight(bw)
	w := bw.(*Weight)
	xt, err := g.Alloc(backend.Activations, T, K)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(xt)
	if err := g.Upload(xt, randn(T*K, 3, 1)); err != nil {
		t.Fatal(err)
	}
	ot, err := g.Alloc(backend.Activations, T, N)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(ot)
	x, o := xt.(*Tensor), ot.(*Tensor)
	var ls []gemmLaunch
	var buf gemmBuffers
	if err := g.do(func() error {
		var err error
		ls, buf, err = g.gemmForwardPrepare(o, x, w)
		return err
	}); err != nil {
		t.Fatalf("%s T=%d %d→%d: %v", kind, T, K, N, err)
	}
	flops := 2 * float64(T) * float64(K) * float64(N)
	reps := int(min(max(4e12/flops, 3), 50))
	tm := func(f func() error) float64 {
		ms, err := timeOnDevice(g, reps, f)
		if err != nil {
			t.Fatalf("%s T=%d %d→%d: %v", kind, T, K, N, err)
		}
		return ms
	}
	shape := fmt.Sprintf("%s T=%d %d→%d", kind, T, K, N)
	convX := tm(func() error { return g.toBF16(buf.act, x.ptr, int64(T)*int64(K)) })
	t.Log(figure{"gemm convert x f32→bf16 " + shape, float64(T) * float64(K) * 6, 0, convX})
	var expand float64
	if kind != kindBF16 {
		expand = tm(func() error { return g.expandWeight(w, 0, N) })
		t.Log(figure{"gemm expand W →bf16 " + shape, float64(w.Bytes()) + 2*float64(N)*float64(K), 0, expand})
	}
	gemmOnly := tm(func() error { return g.gemmRunLaunches(ls, buf, false) })
	ioBytes := 2*float64(T)*float64(K) + 2*float64(N)*float64(K) + 4*float64(T)*float64(N)
	t.Log(figure{"gemm cuBLASLt alone " + shape, ioBytes, flops, gemmOnly})
	total := tm(func() error { return g.matmul(o, x, w) })
	t.Log(figure{"gemm MatMul via cuBLASLt (all) " + shape, ioBytes, flops, total})
	simt := tm(func() error {
		on := g.gemm.on
		g.gemm.on = false
		defer func() { g.gemm.on = on }()
		return g.matmul(o, x, w)
	})
	t.Log(figure{"gemm MatMul SIMT tiled " + shape, float64(w.Bytes()) + 4*float64(T)*float64(K+N), flops, simt})
	t.Logf("figure gemm summary %s: convert x %.1f us + expand W %.1f us + GEMM %.1f us (sum %.1f) vs MatMul %.1f us; SIMT %.1f us: %.1fx",
		shape, convX*1e3, expand*1e3, gemmOnly*1e3, (convX+expand+gemmOnly)*1e3, total*1e3, simt*1e3, simt/total)
}

// TestFiguresGEMMAlgos times every algorithm the cuBLASLt heuristic offers (up to
// ltCandidates) for the products of a training step at S=2048 × 8 (16384 token rows, Qwen3-4B
// layer shapes, and a 441-row chunk of the lm_head), forward (TN), dx (NN) and dw (NT), and
// logs the heuristic's first choice against the fastest (QWENGO_CUDA_BENCH=1). It tells
// whether tuning the algorithm per shape is worth having. Also the products of a 4096-row layer
// span and logits chunks of 1024 and 2048 rows.
func TestFiguresGEMMAlgos(t *testing.T) {
	benchEnabled(t)
	g := openGEMM(t)
	const T = 16384
	type proj struct {
		name   string
		in     int
		out    int
		tokens int
	}
	projs := []proj{{"q", 2560, 4096, T}, {"k/v", 2560, 1024, T}, {"o", 4096, 2560, T}, {"gate/up", 2560, 9728, T},
		{"down", 9728, 2560, T}, {"lm_head chunk", 2560, 151936, 441}}
	split := 3 * len(projs) // the shapes before it are the 16384-row step's
	// The products of a 4096-row layer span (devtrain's LayerChunkRows in the bench) and larger
	// logits chunks.
	projs = append(projs, proj{"q 4096", 2560, 4096, 4096}, proj{"k/v 4096", 2560, 1024, 4096}, proj{"o 4096", 4096, 2560, 4096},
		proj{"gate/up 4096", 2560, 9728, 4096}, proj{"down 4096", 9728, 2560, 4096}, proj{"lm_head 1024", 2560, 151936, 1024},
		proj{"lm_head 2048", 2560, 151936, 2048})
	var maxA, maxB, maxD int64
	shapes := []struct {
		label string
		s     ltShape
	}{}
	for _, p := range projs {
		for _, s := range []ltShape{
			{transA: true, m: p.out, n: p.tokens, k: p.in, lda: p.in, ldb: p.in, ldd: p.out}, // forward
			{m: p.in, n: p.tokens, k: p.out, lda: p.in, ldb: p.out, ldd: p.in},               // dx
			{transB: true, m: p.in, n: p.out, k: p.tokens, lda: p.in, ldb: p.out, ldd: p.in}, // dw
		} {
			s.alignA, s.alignB, s.alignD = 256, 256, 256
			shapes = append(shapes, struct {
				label string
				s     ltShape
			}{p.name, s})
			maxA = max(maxA, int64(s.m)*int64(s.k))
			maxB = max(maxB, int64(s.n)*int64(s.k))
			maxD = max(maxD, int64(s.m)*int64(s.n))
		}
	}
	// Operands: random bf16 (rounded from a random f32 tensor) so that the timings see real
	// data; D starts at zero (beta = 0 and 1 both run).
	src, err := g.Alloc(backend.Activations, 1, int(max(maxA, maxB)))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Free(src)
	if err := g.Upload(src, randn(int(max(maxA, maxB)), 7, 1)); err != nil {
		t.Fatal(err)
	}
	var a, bb, d devPtr
	if err := g.do(func() error {
		var err error
		if a, err = g.alloc(backend.Workspace, 2*maxA, "algos A"); err != nil {
			return err
		}
		if bb, err = g.alloc(backend.Workspace, 2*maxB, "algos B"); err != nil {
			return err
		}
		if d, err = g.alloc(backend.Workspace, 4*maxD, "algos D"); err != nil {
			return err
		}
		sp := src.(*Tensor).ptr
		return errors.Join(g.toBF16(a, sp, maxA), g.toBF16(bb, sp, maxB), g.gemmScratch(0, 0, 0))
	}); err != nil {
		t.Fatal(err)
	}
	defer g.do(func() error { g.free(a); g.free(bb); g.free(d); return nil })
	var sumFirst, sumBest float64
	for i, sh := range shapes {
		if i == split {
			t.Logf("figure gemm algos: one layer's products (16384 rows) + one lm_head chunk: heuristic's first %.2f ms, best %.2f ms", sumFirst, sumBest)
			sumFirst, sumBest = 0, 0
		}
		s := sh.s
		var p *ltPlan
		if err := g.do(func() error {
			var err error
			p, err = newLtPlan(g.gemm.h, s, gemmWorkspaceBytes)
			return err
		}); err != nil {
			t.Fatalf("%s %v: %v", sh.label, s, err)
		}
		flops := 2 * float64(s.m) * float64(s.n) * float64(s.k)
		reps := int(min(max(20e12/flops, 3), 50))
		times := make([]float64, p.candidates())
		best := 0
		for i := range times {
			p.use(i)
			ms, err := timeOnDevice(g, reps, func() error {
				return p.run(g.gemm.h, 1, 0, a, bb, d, g.gemm.ws.ptr, gemmWorkspaceBytes)
			})
			if err != nil {
				t.Fatalf("%s %v algorithm %d: %v", sh.label, s, i, err)
			}
			times[i] = ms
			if ms < times[best] {
				best = i
			}
		}
		g.do(func() error { p.free(); return nil })
		tf := func(ms float64) float64 { return flops / (ms * 1e-3) / 1e12 }
		t.Logf("figure gemm algos %-13s %s: first %.3f ms (%.0f TFLOP/s), best #%d of %d %.3f ms (%.0f TFLOP/s), all %v",
			sh.label, s.label(), times[0], tf(times[0]), best, len(times), times[best], tf(times[best]), fmtMs(times))
		mult := 1.0
		if strings.HasPrefix(sh.label, "k/v") || strings.HasPrefix(sh.label, "gate/up") {
			mult = 2
		}
		sumFirst += mult * times[0]
		sumBest += mult * times[best]
	}
	t.Logf("figure gemm algos: one span's products (4096 rows) + lm_head chunks of 1024 and 2048 rows: heuristic's first %.2f ms, best %.2f ms", sumFirst, sumBest)
}

func fmtMs(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.3f", x)
	}
	return "[" + strings.Join(s, " ") + "]"
}
