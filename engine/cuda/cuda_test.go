//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/tensor"
)

var gpu struct {
	once sync.Once
	b    *Backend
	err  error
}

// openGPU returns the shared test backend, or skips the test where there is no usable GPU.
func openGPU(t testing.TB) *Backend {
	t.Helper()
	gpu.once.Do(func() { gpu.b, gpu.err = Open() })
	if gpu.err != nil {
		t.Skipf("no CUDA GPU: %v", gpu.err)
	}
	return gpu.b
}

func TestMain(m *testing.M) {
	code := m.Run()
	if gpu.b != nil {
		if err := gpu.b.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "close:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func randn(n int, seed uint64, std float64) []float32 {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * std)
	}
	return v
}

// uploaded allocates a [rows, cols] GPU tensor (freed at the test's end) holding v.
func uploaded(t *testing.T, g *Backend, rows, cols int, v []float32) *Tensor {
	t.Helper()
	x, err := g.Alloc(backend.Gradients, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Free(x) })
	if err := g.Upload(x, v); err != nil {
		t.Fatal(err)
	}
	return x.(*Tensor)
}

// pair uploads the same values to a CPU and a GPU tensor.
func pair(t *testing.T, c *cpu.Backend, g *Backend, rows, cols int, data []float32) (backend.Tensor, backend.Tensor) {
	t.Helper()
	return pairOf(t, c, g, backend.Activations, rows, cols, data)
}

// pairOf is pair for tensors of category cat.
func pairOf(t *testing.T, c *cpu.Backend, g *Backend, cat backend.Category, rows, cols int, data []float32) (backend.Tensor, backend.Tensor) {
	t.Helper()
	ct, err := c.Alloc(cat, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	gt, err := g.Alloc(cat, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Free(gt) })
	if data != nil {
		if err := c.Upload(ct, data); err != nil {
			t.Fatal(err)
		}
		if err := g.Upload(gt, data); err != nil {
			t.Fatal(err)
		}
	}
	return ct, gt
}

// compare downloads both tensors and checks max|got-want| <= bound * max|want| (bound 0: exact).
func compare(t *testing.T, name string, c *cpu.Backend, g *Backend, ct, gt backend.Tensor, bound float64) {
	t.Helper()
	want, err := c.Download(ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := g.Download(gt, nil)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	compareSlices(t, name, got, want, bound)
}

// bf16Bits are the upper 16 bits of each value: its bf16 code when the value is a bf16.
func bf16Bits(v []float32) []uint16 {
	o := make([]uint16, len(v))
	for j, x := range v {
		o[j] = uint16(math.Float32bits(x) >> 16)
	}
	return o
}

func compareSlices(t *testing.T, name string, got, want []float32, bound float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", name, len(got), len(want))
	}
	var maxDiff, maxRef float64
	worst := 0
	for i := range want {
		if math.IsNaN(float64(got[i])) != math.IsNaN(float64(want[i])) {
			t.Fatalf("%s: element %d is %v, want %v", name, i, got[i], want[i])
		}
		d := math.Abs(float64(got[i]) - float64(want[i]))
		if d > maxDiff {
			maxDiff, worst = d, i
		}
		maxRef = max(maxRef, math.Abs(float64(want[i])))
	}
	rel := maxDiff / max(maxRef, 1e-30)
	t.Logf("parity %-44s max|Δ| %.3g  max|ref| %.3g  rel %.3g (bound %.0e)", name, maxDiff, maxRef, rel, bound)
	if rel > bound {
		t.Errorf("%s: element %d is %v, want %v: max|Δ|/max|ref| = %.3g > %.0e", name, worst, got[worst], want[worst], rel, bound)
	}
}

// hostWeight makes a weight of the given kind from random values.
func hostWeight(t *testing.T, kind string, out, in int, seed uint64) backend.HostWeight {
	t.Helper()
	v := randn(out*in, seed, 0.5)
	if kind == kindNVFP4 {
		m, err := nvfp4.QuantizeModelOpt(v, out, in)
		if err != nil {
			t.Fatal(err)
		}
		return backend.HostWeight{Name: fmt.Sprintf("w%dx%d", out, in), NVFP4: m}
	}
	h, err := tensor.FromFloat32s(fmt.Sprintf("w%dx%d", out, in), tensor.F32, []int{out, in}, v)
	if err != nil {
		t.Fatal(err)
	}
	return backend.HostWeight{Name: h.Name, Dense: h, Keep: kind}
}

func weights(t *testing.T, c *cpu.Backend, g *Backend, hw backend.HostWeight) (backend.Weight, backend.Weight) {
	t.Helper()
	cw, err := c.UploadWeight(hw)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := g.UploadWeight(hw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.FreeWeight(gw) })
	return cw, gw
}

func TestOpenAndName(t *testing.T) {
	g := openGPU(t)
	free, total, err := g.DeviceMemory()
	if err != nil {
		t.Fatal(err)
	}
	if total <= 0 || free <= 0 || free > total || total != g.TotalMemory() {
		t.Errorf("device memory: %d free of %d (TotalMemory %d)", free, total, g.TotalMemory())
	}
	if !strings.Contains(g.Name(), g.DeviceName()) || !strings.Contains(g.Name(), "iB") {
		t.Errorf("Name() = %q does not name the device %q and its memory", g.Name(), g.DeviceName())
	}
	t.Logf("%s; %s free", g.Name(), backend.Human(free))
	// The kernels come from the embedded cubins on compute capability 9.0 unless QWENGO_CUDA_JIT=1.
	wantCubins := g.cc == [2]int{9, 0} && !jitFromEnv()
	if code := g.KernelCode(); strings.HasPrefix(code, "sm_90 cubins") != wantCubins || !strings.Contains(g.Name(), code) {
		t.Errorf("KernelCode() = %q on compute capability %d.%d (QWENGO_CUDA_JIT=%q); Name() = %q",
			code, g.cc[0], g.cc[1], os.Getenv("QWENGO_CUDA_JIT"), g.Name())
	}
	b, err := backend.Open("cuda")
	if err != nil {
		t.Fatalf("backend.Open(\"cuda\"): %v", err)
	}
	if err := b.(*Backend).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Alloc(backend.Activations, 1, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("alloc after Close: %v, want ErrClosed", err)
	}
}

func TestEmbedding(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	ids := []int{3, 0, 36, 3, 17, 5, 36}
	for _, kind := range []string{kindF32, kindBF16, kindNVFP4} {
		cw, gw := weights(t, c, g, hostWeight(t, kind, 37, 64, 1))
		co, gotT := pair(t, c, g, len(ids), 64, nil)
		if err := c.Embedding(co, cw, ids); err != nil {
			t.Fatal(err)
		}
		if err := g.Embedding(gotT, gw, ids); err != nil {
			t.Fatal(err)
		}
		compare(t, "embedding "+kind, c, g, co, gotT, 0)
		if err := g.Embedding(gotT, gw, []int{0, 1, 2, 3, 4, 5, 37}); err == nil || !strings.Contains(err.Error(), "position 6") {
			t.Errorf("out-of-vocabulary id: %v", err)
		}
	}
}

func TestMatMul(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	// Bound: float32 sums in another order than the CPU's (relative error ~1e-7·sqrt(K)).
	const bound = 2e-5
	type shape struct{ T, K, N int }
	shapes := []shape{
		{1, 64, 96}, {2, 2560, 40}, {3, 48, 33}, {4, 160, 64}, {1, 9728, 24}, {3, 4096, 300}, {4, 12800, 20}, {1, 16400, 8}, {1, 2560, 777}, {2, 80, 50}, {4, 208, 30}, // GEMV
		{8, 2560, 300}, {6, 1024, 33}, {12, 1024, 70}, // dense GEMV of 5-8 rows, or in chunks; NVFP4 on the multi-row tensor-core GEMV
		{5, 64, 70}, {37, 160, 97}, {130, 272, 130}, // tiled (NVFP4; dense 5 rows: GEMV)
	}
	for _, kind := range []string{kindF32, kindBF16, kindNVFP4} {
		for i, s := range shapes {
			path := "tiled"
			if gemvShape(kind, s.T, s.K) {
				path = "gemv"
			}
			name := fmt.Sprintf("matmul %s %s T=%d K=%d N=%d", kind, path, s.T, s.K, s.N)
			t.Run(name, func(t *testing.T) {
				cw, gw := weights(t, c, g, hostWeight(t, kind, s.N, s.K, uint64(10+i)))
				cx, gx := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(100+i), 1))
				co, gO := pair(t, c, g, s.T, s.N, nil)
				if err := c.MatMul(co, cx, cw); err != nil {
					t.Fatal(err)
				}
				if err := g.MatMul(gO, gx, gw); err != nil {
					t.Fatal(err)
				}
				compare(t, name, c, g, co, gO, bound)
			})
		}
	}
	// Dense K that is not a multiple of 8 (or of the 32-wide tile) goes through the tiled kernel.
	for _, kind := range []string{kindF32, kindBF16} {
		for _, s := range []shape{{1, 50, 33}, {3, 7, 5}, {9, 45, 66}} {
			name := fmt.Sprintf("matmul %s odd T=%d K=%d N=%d", kind, s.T, s.K, s.N)
			cw, gw := weights(t, c, g, hostWeight(t, kind, s.N, s.K, 7))
			cx, gx := pair(t, c, g, s.T, s.K, randn(s.T*s.K, 8, 1))
			co, gO := pair(t, c, g, s.T, s.N, nil)
			if err := c.MatMul(co, cx, cw); err != nil {
				t.Fatal(err)
			}
			if err := g.MatMul(gO, gx, gw); err != nil {
				t.Fatal(err)
			}
			compare(t, name, c, g, co, gO, bound)
		}
	}
}

func TestRMSNorm(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	// Statistics in double on both sides; products rounded separately: a bit or two apart.
	const bound = 1e-6
	for _, s := range []struct{ T, W, N int }{{5, 300, 300}, {3, 2560, 2560}, {4, 128, 32}, {2, 4096, 128}} {
		name := fmt.Sprintf("rmsnorm T=%d width=%d n=%d", s.T, s.W, s.N)
		cx, gx := pair(t, c, g, s.T, s.W, randn(s.T*s.W, 1, 2))
		w := randn(s.N, 2, 1)
		cw, gw := pair(t, c, g, 1, s.N, w)
		co, gO := pair(t, c, g, s.T, s.W, nil)
		if err := c.RMSNorm(co, cx, cw, 1e-6); err != nil {
			t.Fatal(err)
		}
		if err := g.RMSNorm(gO, gx, gw, 1e-6); err != nil {
			t.Fatal(err)
		}
		compare(t, name, c, g, co, gO, bound)
		// In place.
		if err := g.RMSNorm(gx, gx, gw, 1e-6); err != nil {
			t.Fatal(err)
		}
		compare(t, name+" in place", c, g, co, gx, bound)
	}
}

func TestRoPE(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const bound = 1e-6
	for _, s := range []struct {
		T, heads, hd, pos0 int
		theta              float64
	}{{7, 4, 32, 0, 5e6}, {3, 8, 128, 1000, 1e6}, {1, 2, 64, 40000, 1e6}} {
		name := fmt.Sprintf("rope T=%d heads=%d hd=%d pos0=%d", s.T, s.heads, s.hd, s.pos0)
		cx, gx := pair(t, c, g, s.T, s.heads*s.hd, randn(s.T*s.heads*s.hd, 3, 1))
		co, gO := pair(t, c, g, s.T, s.heads*s.hd, nil)
		if err := c.RoPE(co, cx, s.hd, s.pos0, s.theta); err != nil {
			t.Fatal(err)
		}
		if err := g.RoPE(gO, gx, s.hd, s.pos0, s.theta); err != nil {
			t.Fatal(err)
		}
		compare(t, name, c, g, co, gO, bound)
		if err := g.RoPE(gx, gx, s.hd, s.pos0, s.theta); err != nil {
			t.Fatal(err)
		}
		compare(t, name+" in place", c, g, co, gx, bound)
	}
}

func TestAttention(t *testing.T) {
	for _, dt := range kvTypes {
		t.Run(dt.String(), func(t *testing.T) { testAttention(t, dt) })
	}
}

// testAttention runs TestAttention's cases over keys and values in KV caches of type dt (the
// CPU's holding the same values).
func testAttention(t *testing.T, dt tensor.DType) {
	g := openGPU(t)
	c := withKV(t, g, dt)
	// Online softmax (per 128-key chunk) and float32 sums in another order than the CPU.
	const bound = 1e-5
	for _, s := range []struct{ T, pos0, heads, kv, hd int }{
		{1, 0, 4, 2, 32}, {5, 0, 4, 2, 32}, {3, 200, 4, 2, 32}, {9, 300, 8, 2, 128}, {1, 1000, 4, 4, 64}, {2, 5, 6, 1, 256},
		{70, 10, 4, 2, 32}, {2, 3000, 2, 1, 128}, {2, 127, 4, 2, 32}, {1, 5000, 32, 8, 128},
		// attention_decode_f32: G·T ≤ 16 query vectors per KV head, head_dim 128
		{1, 0, 32, 8, 128}, {1, 511, 32, 8, 128}, {4, 4092, 32, 8, 128}, {3, 40, 8, 8, 128}, {1, 8191, 32, 8, 128}, {2, 33, 16, 2, 128},
		// one query a KV head (32 threads: a tile in four batches) over two tiles a block
		{1, 4000, 8, 8, 128},
		// the register walk (dr_attend): Q = 2 (G = 2, and T = 2 with G = 1), Q = 4 over two
		// rows (each row its own last key), key counts that end inside an 8-key group
		{1, 300, 16, 8, 128}, {2, 700, 8, 8, 128}, {2, 1001, 16, 8, 128}, {4, 77, 8, 8, 128}, {1, 2, 32, 8, 128},
	} {
		splits, _ := attentionSplit(g.sms, s.T, s.heads, s.pos0+s.T)
		name := fmt.Sprintf("attention T=%d pos0=%d heads=%d/%d hd=%d splits=%d", s.T, s.pos0, s.heads, s.kv, s.hd, splits)
		n := s.pos0 + s.T + 3 // the cache may be longer than what is attended to
		cq, gq := pair(t, c, g, s.T, s.heads*s.hd, randn(s.T*s.heads*s.hd, 4, 1))
		ck, gk := pairKV(t, c, g, n, s.kv*s.hd, randn(n*s.kv*s.hd, 5, 1))
		cv, gv := pairKV(t, c, g, n, s.kv*s.hd, randn(n*s.kv*s.hd, 6, 1))
		co, gO := pair(t, c, g, s.T, s.heads*s.hd, nil)
		if err := c.Attention(co, cq, ck, cv, s.pos0, s.heads, s.kv, s.hd); err != nil {
			t.Fatal(err)
		}
		// Decode-shaped cases run both decode kernels: the register walk where Q has one, and
		// the shared-memory tiles (QWENGO_CUDA_DECODE_ATTN=tiles).
		kernels := []bool{false}
		if Q := s.T * s.heads / s.kv; s.hd == attDecodeDim && Q <= attDecodeMaxQ && decodeAttnRegs[Q] != "" {
			kernels = append(kernels, true)
		}
		for _, tiles := range kernels {
			g.decodeAttnTiles = tiles
			err := g.Attention(gO, gq, gk, gv, s.pos0, s.heads, s.kv, s.hd)
			g.decodeAttnTiles = false
			if err != nil {
				t.Fatal(err)
			}
			suffix := ""
			if tiles {
				suffix = " (tiles)"
			}
			compare(t, name+suffix, c, g, co, gO, bound)
		}
	}
}

func TestElementwise(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const T, W = 7, 333
	cg, gg := pair(t, c, g, T, W, randn(T*W, 7, 3))
	cu, gu := pair(t, c, g, T, W, randn(T*W, 8, 1))
	co, gO := pair(t, c, g, T, W, nil)
	if err := c.SwiGLU(co, cg, cu); err != nil {
		t.Fatal(err)
	}
	if err := g.SwiGLU(gO, gg, gu); err != nil {
		t.Fatal(err)
	}
	compare(t, "swiglu", c, g, co, gO, 1e-6) // exp in double on both sides
	if err := g.SwiGLU(gg, gg, gu); err != nil {
		t.Fatal(err)
	}
	compare(t, "swiglu in place", c, g, co, gg, 1e-6)
	// The float4 path (n % 4 == 0, aligned), in place too.
	for _, w := range []int{1024, 336} {
		cg4, gg4 := pair(t, c, g, 5, w, randn(5*w, 17, 3))
		cu4, gu4 := pair(t, c, g, 5, w, randn(5*w, 18, 1))
		co4, gO4 := pair(t, c, g, 5, w, nil)
		if err := firstErr(c.SwiGLU(co4, cg4, cu4), g.SwiGLU(gO4, gg4, gu4)); err != nil {
			t.Fatal(err)
		}
		compare(t, fmt.Sprintf("swiglu [5, %d]", w), c, g, co4, gO4, 1e-6)
		if err := g.SwiGLU(gu4, gg4, gu4); err != nil {
			t.Fatal(err)
		}
		compare(t, fmt.Sprintf("swiglu [5, %d] in place", w), c, g, co4, gu4, 1e-6)
	}

	if err := c.Add(cu, co); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(gu, gO); err != nil {
		t.Fatal(err)
	}
	compare(t, "add", c, g, cu, gu, 0)

	cd, gd := pair(t, c, g, 10, W, randn(10*W, 9, 1))
	if err := c.CopyRows(cd, 2, cu, 1, 5); err != nil {
		t.Fatal(err)
	}
	if err := g.CopyRows(gd, 2, gu, 1, 5); err != nil {
		t.Fatal(err)
	}
	compare(t, "copy rows", c, g, cd, gd, 0)
	if err := c.CopyRows(cd, 3, cd, 1, 6); err != nil { // overlapping, within one tensor
		t.Fatal(err)
	}
	if err := g.CopyRows(gd, 3, gd, 1, 6); err != nil {
		t.Fatal(err)
	}
	compare(t, "copy rows overlapping", c, g, cd, gd, 0)
}

func TestWeightRoundTrip(t *testing.T) {
	g := openGPU(t)
	for _, kind := range []string{kindF32, kindBF16, kindNVFP4} {
		hw := hostWeight(t, kind, 33, 48, 3)
		w, err := g.UploadWeight(hw)
		if err != nil {
			t.Fatal(err)
		}
		if w.Kind() != kind || w.Out() != 33 || w.In() != 48 || w.Bytes() <= 0 {
			t.Errorf("%s: kind %s, [%d, %d], %d bytes", kind, w.Kind(), w.Out(), w.In(), w.Bytes())
		}
		back, err := g.DownloadWeight(w)
		if err != nil {
			t.Fatal(err)
		}
		switch kind {
		case kindNVFP4:
			m, b := hw.NVFP4, back.NVFP4
			if b == nil || string(m.Packed) != string(b.Packed) || string(m.Scales) != string(b.Scales) || m.Global != b.Global {
				t.Errorf("nvfp4 weight changed in the round trip")
			}
		default:
			want, _ := hw.Dense.Float32s(nil)
			if kind == kindBF16 {
				for i, v := range want {
					want[i] = tensor.BF16ToF32(tensor.F32ToBF16(v))
				}
			}
			got, err := back.Dense.Float32s(nil)
			if err != nil {
				t.Fatal(err)
			}
			compareSlices(t, "weight round trip "+kind, got, want, 0)
		}
		g.FreeWeight(w)
		g.FreeWeight(w) // twice: nothing
		if _, err := g.DownloadWeight(w); err == nil || !strings.Contains(err.Error(), "freed") {
			t.Errorf("download of a freed weight: %v", err)
		}
	}
	if _, err := g.UploadWeight(backend.HostWeight{Name: "nothing"}); err == nil {
		t.Error("empty host weight accepted")
	}
	bad := &nvfp4.Matrix{Rows: 1, Cols: 16, Packed: make([]byte, 8), Scales: []byte{0x7f}, Global: 1}
	if _, err := g.UploadWeight(backend.HostWeight{Name: "nan", NVFP4: bad}); err == nil || !strings.Contains(err.Error(), "NaN") {
		t.Errorf("NaN block scale: %v", err)
	}
}

func TestErrors(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	a, _ := g.Alloc(backend.Activations, 2, 8)
	b3, _ := g.Alloc(backend.Activations, 3, 8)
	defer g.Free(b3)
	ct, _ := c.Alloc(backend.Activations, 2, 8)
	for name, err := range map[string]error{
		"add shapes":      g.Add(a, b3),
		"cpu tensor":      g.Add(a, ct),
		"nil tensor":      g.Add(a, nil),
		"rope odd dim":    g.RoPE(a, a, 3, 0, 1e6),
		"rmsnorm divides": g.RMSNorm(a, a, b3, 1e-6),
		"copy past end":   g.CopyRows(a, 1, b3, 0, 2),
		"upload size":     g.Upload(a, make([]float32, 3)),
		"attention heads": g.Attention(a, a, b3, b3, 0, 3, 2, 4),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	g.Free(a)
	g.Free(a) // twice: nothing
	g.Free(nil)
	if _, err := g.Download(a, nil); err == nil || !strings.Contains(err.Error(), "freed") {
		t.Errorf("download of a freed tensor: %v", err)
	}
	if _, err := g.Alloc(backend.Activations, 0, 4); err == nil {
		t.Error("empty tensor allocated")
	}
	if _, err := g.Alloc(backend.NumCategories, 1, 4); err == nil {
		t.Error("unknown category allocated")
	}
}

func TestMemoryAccounting(t *testing.T) {
	g := openGPU(t)
	before := g.Memory()
	x, err := g.Alloc(backend.KVCache, 100, 256)
	if err != nil {
		t.Fatal(err)
	}
	hw := hostWeight(t, kindNVFP4, 64, 64, 1)
	w, err := g.UploadWeight(hw)
	if err != nil {
		t.Fatal(err)
	}
	m := g.Memory()
	if d, want := m.InUse[backend.KVCache]-before.InUse[backend.KVCache], int64(100*256*x.DType().Size()); d != want {
		t.Errorf("kv cache (%s) grew by %d bytes, want %d", x.DType(), d, want)
	}
	if d := m.InUse[backend.Weights] - before.InUse[backend.Weights]; d != w.Bytes() || d < hw.NVFP4.Bytes()-4 {
		t.Errorf("weights grew by %d bytes; the weight has %d (matrix %d)", d, w.Bytes(), hw.NVFP4.Bytes())
	}
	if m.Live != before.Live+2 || m.Allocs != before.Allocs+2 || m.Peak < m.Used() || m.Total != g.TotalMemory() {
		t.Errorf("stats %+v after two allocations from %+v", m, before)
	}
	g.Free(x)
	g.FreeWeight(w)
	after := g.Memory()
	if after.Used() != before.Used() || after.Live != before.Live {
		t.Errorf("after freeing: %d bytes in %d allocations, want %d in %d", after.Used(), after.Live, before.Used(), before.Live)
	}
	if after.Peak < m.Used() {
		t.Errorf("peak %d below an earlier use of %d", after.Peak, m.Used())
	}
	g.ResetPeak()
	if p := g.Memory().Peak; p != after.Used() {
		t.Errorf("peak after reset %d, want %d", p, after.Used())
	}
	t.Log(g.Memory())
}

func TestBudget(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	if err := g.ReleaseCache(); err != nil {
		t.Fatal(err)
	}
	used := g.Memory().Used()
	g.SetBudget(used + 1<<20)
	defer g.SetBudget(0)
	_, err := g.Alloc(backend.Activations, 1024, 1024) // 4 MiB
	var ob *backend.OverBudget
	if !errors.As(err, &ob) {
		t.Fatalf("4 MiB under a 1 MiB headroom: %v, want *backend.OverBudget", err)
	}
	if ob.Request != 4<<20 || ob.InUse != used || ob.Budget != used+1<<20 || ob.Category != backend.Activations {
		t.Errorf("OverBudget %+v: want request %d, in use %d, budget %d", ob, 4<<20, used, used+1<<20)
	}
	if !strings.Contains(err.Error(), "in use:") {
		t.Errorf("error %q does not name the bytes in use per category", err)
	}
	t.Logf("refused: %v", err)
	if g.Memory().Used() != used {
		t.Errorf("a refused allocation changed the bytes in use")
	}
	// The backend still works under the budget.
	cx, gx := pair(t, c, g, 16, 1024, randn(16*1024, 1, 1))
	cy, gy := pair(t, c, g, 16, 1024, randn(16*1024, 2, 1))
	if err := c.Add(cx, cy); err != nil {
		t.Fatal(err)
	}
	if err := g.Add(gx, gy); err != nil {
		t.Fatal(err)
	}
	compare(t, "add after a refused allocation", c, g, cx, gx, 0)
	if _, err := g.UploadWeight(hostWeight(t, kindF32, 1024, 1024, 1)); !errors.As(err, &ob) {
		t.Errorf("4 MiB weight under the budget: %v", err)
	}
}

// TestPool checks that freed activations are kept (under Workspace) and handed out again
// zeroed, and that an allocation the budget allows only without them releases them.
func TestPool(t *testing.T) {
	g := openGPU(t)
	if err := g.ReleaseCache(); err != nil {
		t.Fatal(err)
	}
	before := g.Memory()
	x, err := g.Alloc(backend.Activations, 3, 1000)
	if err != nil {
		t.Fatal(err)
	}
	ones := make([]float32, 3000)
	for i := range ones {
		ones[i] = 1
	}
	if err := g.Upload(x, ones); err != nil {
		t.Fatal(err)
	}
	g.Free(x)
	m := g.Memory()
	if m.InUse[backend.Activations] != before.InUse[backend.Activations] || m.InUse[backend.Workspace] != before.InUse[backend.Workspace]+12000 || m.Live != before.Live {
		t.Errorf("after a free: %s; before: %s", m, before)
	}
	y, err := g.Alloc(backend.Activations, 3, 1000)
	if err != nil {
		t.Fatal(err)
	}
	got, err := g.Download(y, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if v != 0 {
			t.Fatalf("reused block not zeroed: element %d is %v", i, v)
		}
	}
	m = g.Memory()
	if m.InUse[backend.Workspace] != before.InUse[backend.Workspace] || m.InUse[backend.Activations] != before.InUse[backend.Activations]+12000 ||
		m.Allocs != before.Allocs+2 || m.Live != before.Live+1 {
		t.Errorf("after reuse: %s (allocs %d, live %d); before: %s (allocs %d, live %d)", m, m.Allocs, m.Live, before, before.Allocs, before.Live)
	}
	g.Free(y)
	g.SetBudget(before.Used() + 12000 + 4096) // fits 8000 more bytes only without the pooled 12000
	defer g.SetBudget(0)
	z, err := g.Alloc(backend.Activations, 2, 1000)
	if err != nil {
		t.Fatalf("allocation that fits once the pool is released: %v", err)
	}
	if m := g.Memory(); m.InUse[backend.Workspace] != before.InUse[backend.Workspace] {
		t.Errorf("the pool was not released: %s", m)
	}
	g.Free(z)
}

func TestConcurrentCallers(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			x := randn(64*64, uint64(i), 1)
			gx, err := g.Alloc(backend.Activations, 64, 64)
			if err != nil {
				errs <- err
				return
			}
			defer g.Free(gx)
			for r := 0; r < 20; r++ {
				if err := g.Upload(gx, x); err != nil {
					errs <- err
					return
				}
				if err := g.Add(gx, gx); err != nil {
					errs <- err
					return
				}
				got, err := g.Download(gx, nil)
				if err != nil {
					errs <- err
					return
				}
				for j := range x {
					if got[j] != 2*x[j] {
						errs <- fmt.Errorf("goroutine %d: element %d is %v, want %v", i, j, got[j], 2*x[j])
						return
					}
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	_ = c
}

// TestFiguresDecodeAttention times one layer's decode attention at Qwen3-4B's heads (32 query,
// 8 KV, head_dim 128) on both decode kernels — the register walk and the shared-memory tiles
// (QWENGO_CUDA_DECODE_ATTN=tiles) — for one sequence at several contexts and for eight
// sequences of 1,024 keys (the batched kernels), over float32 and bf16 caches: bytes are the
// keys and values read.
func TestFiguresDecodeAttention(t *testing.T) {
	benchEnabled(t)
	for _, dt := range kvTypes {
		t.Run(dt.String(), func(t *testing.T) { figuresDecodeAttention(t, dt) })
	}
}

func figuresDecodeAttention(t *testing.T, dt tensor.DType) {
	g := openGPU(t)
	withKV(t, g, dt)
	const heads, kv, hd = 32, 8, 128
	for _, s := range []struct{ B, keys int }{{1, 512}, {1, 8192}, {1, 32768}, {8, 1024}} {
		capacity := s.keys + 1
		q, _ := g.Alloc(backend.Activations, s.B, heads*hd)
		o, _ := g.Alloc(backend.Activations, s.B, heads*hd)
		k, _ := g.Alloc(backend.KVCache, s.B*capacity, kv*hd)
		v, _ := g.Alloc(backend.KVCache, s.B*capacity, kv*hd)
		if err := errors.Join(g.Upload(q, randn(s.B*heads*hd, 1, 1)), g.Upload(k, randn(s.B*capacity*kv*hd, 2, 1)),
			g.Upload(v, randn(s.B*capacity*kv*hd, 3, 1))); err != nil {
			t.Fatal(err)
		}
		pos := make([]int, s.B)
		for i := range pos {
			pos[i] = s.keys - 1
		}
		for _, tiles := range []bool{false, true} {
			g.decodeAttnTiles = tiles
			ms, err := timeOnDevice(g, 50, func() error {
				if s.B == 1 {
					return g.Attention(o, q, k, v, s.keys-1, heads, kv, hd)
				}
				return g.AttentionBatch(o, q, k, v, capacity, pos, heads, kv, hd)
			})
			g.decodeAttnTiles = false
			if err != nil {
				t.Fatal(err)
			}
			kernel := "registers"
			if tiles {
				kernel = "tiles"
			}
			t.Log(figure{fmt.Sprintf("decode attention %s %s B=%d keys=%d", dt, kernel, s.B, s.keys),
				float64(2 * dt.Size() * s.B * s.keys * kv * hd), float64(4 * s.B * s.keys * heads * hd), ms})
		}
		for _, x := range []backend.Tensor{q, o, k, v} {
			g.Free(x)
		}
	}
}
