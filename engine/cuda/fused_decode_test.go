//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// TestFusedDecodeOps checks the fused decode ops (NormMatMulMany, MatMulAdd, SwiGLUMatMulAdd)
// against the CPU's compositions of the ops they name: on the resident GEMV (NVFP4 weights,
// 1..8 rows, one and several K slices), on their fallbacks (more rows than the GEMV takes, an
// f32 weight, another GEMV forced) and twice in a row (arrival counters back at zero).
func TestFusedDecodeOps(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const bound = 2e-5
	const eps = 1e-6
	for i, s := range []struct {
		T, K, N int
		kind    string
		fused   bool
	}{
		{1, 2560, 1030, kindNVFP4, true}, {3, 2560, 4096, kindNVFP4, true}, {8, 2560, 300, kindNVFP4, true},
		{1, 9728, 2560, kindNVFP4, true}, {5, 1024, 130, kindNVFP4, true}, {12, 2560, 200, kindNVFP4, true},
		{2, 2560, 96, kindF32, true}, {4, 2560, 512, kindNVFP4, false},
	} {
		name := fmt.Sprintf("T=%d K=%d N=%d %s fused=%v", s.T, s.K, s.N, s.kind, s.fused)
		g.do(func() error { // not fused: another GEMV forced, the ops fall back
			g.gemv = gemvAuto
			if !s.fused {
				g.gemv = gemvV2Name
			}
			return nil
		})
		cw, gw := weights(t, c, g, hostWeight(t, s.kind, s.N, s.K, uint64(90+i)))
		cx, gx := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(900+i), 1))
		cu, gu := pair(t, c, g, s.T, s.K, randn(s.T*s.K, uint64(950+i), 1))
		cn, gn := pair(t, c, g, 1, s.K, randn(s.K, uint64(980+i), 0.3))
		res := randn(s.T*s.N, uint64(990+i), 1)

		// NormMatMulMany: RMSNorm then the product.
		ch, _ := pair(t, c, g, s.T, s.K, nil)
		co, _ := pair(t, c, g, s.T, s.N, nil)
		if err := firstErr(c.RMSNorm(ch, cx, cn, eps), c.MatMul(co, ch, cw)); err != nil {
			t.Fatal(err)
		}
		for rep := 0; rep < 2; rep++ {
			_, gO := pair(t, c, g, s.T, s.N, nil)
			if err := g.NormMatMulMany([]backend.Tensor{gO}, gx, gn, eps, []backend.Weight{gw}); err != nil {
				t.Fatalf("%s: norm+matmul: %v", name, err)
			}
			compare(t, name+" norm+matmul", c, g, co, gO, bound)
		}

		// MatMulAdd: x += a·wᵀ.
		cr, _ := pair(t, c, g, s.T, s.N, res)
		if err := firstErr(c.MatMul(co, cx, cw), c.Add(cr, co)); err != nil {
			t.Fatal(err)
		}
		for rep := 0; rep < 2; rep++ {
			_, gr := pair(t, c, g, s.T, s.N, res)
			if err := g.MatMulAdd(gr, gx, gw); err != nil {
				t.Fatalf("%s: matmul+add: %v", name, err)
			}
			compare(t, name+" matmul+add", c, g, cr, gr, bound)
		}

		// SwiGLUMatMulAdd: x += SwiGLU(gate, up)·wᵀ.
		cr2, _ := pair(t, c, g, s.T, s.N, res)
		if err := firstErr(c.SwiGLU(ch, cx, cu), c.MatMul(co, ch, cw), c.Add(cr2, co)); err != nil {
			t.Fatal(err)
		}
		for rep := 0; rep < 2; rep++ {
			_, gr := pair(t, c, g, s.T, s.N, res)
			if err := g.SwiGLUMatMulAdd(gr, gx, gu, gw); err != nil {
				t.Fatalf("%s: swiglu+matmul+add: %v", name, err)
			}
			compare(t, name+" swiglu+matmul+add", c, g, cr2, gr, bound)
		}
	}
	g.do(func() error { g.gemv = gemvFromEnv(); return nil })

	// Mismatched shapes are errors naming the op.
	_, gx := pair(t, c, g, 2, 2560, nil)
	_, gu := pair(t, c, g, 3, 2560, nil)
	_, gn := pair(t, c, g, 1, 256, nil)
	_, gw := weights(t, c, g, hostWeight(t, kindNVFP4, 64, 2560, 1))
	_, gO := pair(t, c, g, 2, 64, nil)
	for _, e := range []struct {
		op  string
		err error
	}{
		{"norm+matmul many", g.NormMatMulMany([]backend.Tensor{gO}, gx, gn, eps, []backend.Weight{gw})},
		{"swiglu+matmul+add", g.SwiGLUMatMulAdd(gO, gx, gu, gw)},
		{"matmul+add", g.MatMulAdd(gO, gO, gw)},
	} {
		if e.err == nil || !strings.Contains(e.err.Error(), "cuda: "+e.op+":") {
			t.Errorf("a mismatched %s: %v, want an error naming the op", e.op, e.err)
		}
	}
}

// TestFusedDecodeSameBits checks the fused decode ops on the resident GEMV bit for bit against
// the GPU's own compositions of the ops they name (RMSNorm then MatMulMany; MatMul then Add;
// SwiGLU, MatMul, Add): the fused forms stage the same floats into the same products, so batched
// decode may take them for any row count without changing a logit. Qwen3-4B's shapes, one to
// eight rows (one and two passes of the GEMV).
func TestFusedDecodeSameBits(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const eps = 1e-6
	for i, s := range []struct{ T, K, N, jobs int }{
		{1, 2560, 4096, 3}, {3, 2560, 1024, 2}, {5, 2560, 4096, 3}, {8, 2560, 4096, 3}, {8, 2560, 9728, 2},
		{1, 4096, 2560, 1}, {8, 4096, 2560, 1}, {1, 9728, 2560, 1}, {6, 9728, 2560, 1}, {8, 9728, 2560, 1},
	} {
		name := fmt.Sprintf("T=%d K=%d N=%d", s.T, s.K, s.N)
		ws, x, u, nw, res := tcpInputs(t, c, g, s.T, s.K, s.N, s.jobs, 40, i)
		outs := func() []backend.Tensor { return tcpOutputs(t, c, g, s.T, s.N, len(ws)) }
		same := func(op string, want, got []backend.Tensor) {
			t.Helper()
			for j := range want {
				w, gt := download(t, g, want[j]), download(t, g, got[j])
				for e := range w {
					if math.Float32bits(w[e]) != math.Float32bits(gt[e]) {
						t.Errorf("%s %s: output %d element %d (row %d): fused %v, composed %v", name, op, j, e, e/(len(w)/s.T), gt[e], w[e])
						return
					}
				}
			}
		}
		_, h := pair(t, c, g, s.T, s.K, nil)
		composed, fused := outs(), outs()
		if err := firstErr(g.RMSNorm(h, x, nw, eps), g.MatMulMany(composed, h, ws),
			g.NormMatMulMany(fused, x, nw, eps, ws)); err != nil {
			t.Fatalf("%s: norm+matmul: %v", name, err)
		}
		same("norm+matmul", composed, fused)
		if s.jobs > 1 {
			continue
		}
		_, o := pair(t, c, g, s.T, s.N, nil)
		_, r1 := pair(t, c, g, s.T, s.N, res)
		_, r2 := pair(t, c, g, s.T, s.N, res)
		if err := firstErr(g.MatMul(o, x, ws[0]), g.Add(r1, o), g.MatMulAdd(r2, x, ws[0])); err != nil {
			t.Fatalf("%s: matmul+add: %v", name, err)
		}
		same("matmul+add", []backend.Tensor{r1}, []backend.Tensor{r2})
		_, r3 := pair(t, c, g, s.T, s.N, res)
		_, r4 := pair(t, c, g, s.T, s.N, res)
		if err := firstErr(g.SwiGLU(h, x, u), g.MatMul(o, h, ws[0]), g.Add(r3, o), g.SwiGLUMatMulAdd(r4, x, u, ws[0])); err != nil {
			t.Fatalf("%s: swiglu+matmul+add: %v", name, err)
		}
		same("swiglu+matmul+add", []backend.Tensor{r3}, []backend.Tensor{r4})
	}
}

// TestQKNormRoPEAttention checks the folded q/k norm + RoPE + cache write + decode attention
// (attention_decode_nr{G}) against the two ops it stands for on the GPU — out, qr, kr and both
// caches bit for bit — and against the CPU's composition within float tolerance: f32 and bf16
// caches, G = 1, 2, 4 query heads a KV head (G = 3 takes the fallback), the new key in the first
// split, at a split's first and last row and deep in the cache, each twice (arrival counters
// back at zero); then arguments the two ops refuse.
func TestQKNormRoPEAttention(t *testing.T) {
	for _, dt := range kvTypes {
		t.Run(dt.String(), func(t *testing.T) { testQKNormRoPEAttention(t, dt) })
	}
}

func testQKNormRoPEAttention(t *testing.T, dt tensor.DType) {
	g := openGPU(t)
	c := withKV(t, g, dt)
	g.do(func() error { g.decodeNormRoPE = true; return nil }) // the folded kernel, whatever the environment says
	t.Cleanup(func() { g.do(func() error { g.decodeNormRoPE = decodeNormRoPEFromEnv(); return nil }) })
	const hd, eps, theta = 128, 1e-6, 1e6
	for i, s := range []struct{ G, nKV, pos int }{
		{4, 8, 0}, {4, 8, 1}, {4, 8, 31}, {4, 8, 32}, {4, 8, 511}, {4, 8, 1500}, {4, 8, 8191},
		{1, 8, 77}, {2, 4, 300}, {2, 8, 4095}, {3, 2, 40}, {4, 2, 1000},
	} {
		nH, kvw := s.G*s.nKV, s.nKV*hd
		name := fmt.Sprintf("%s G=%d kv=%d pos=%d", dt, s.G, s.nKV, s.pos)
		rows := s.pos + 2 // the caches are longer than what is attended to
		q, k, v := randn(nH*hd, uint64(10+i), 1), randn(kvw, uint64(20+i), 1), randn(kvw, uint64(30+i), 1)
		qn, kn := randn(hd, uint64(40+i), 0.5), randn(hd, uint64(50+i), 0.5)
		cache0, vcache0 := randn(rows*kvw, uint64(60+i), 1), randn(rows*kvw, uint64(70+i), 1)
		cq, gq := pair(t, c, g, 1, nH*hd, q)
		ck, gk := pair(t, c, g, 1, kvw, k)
		cv, gv := pair(t, c, g, 1, kvw, v)
		cqn, gqn := pair(t, c, g, 1, hd, qn)
		ckn, gkn := pair(t, c, g, 1, hd, kn)

		// The CPU's composition, and the GPU's two ops on their own caches.
		cqr, _ := pair(t, c, g, 1, nH*hd, nil)
		ckr, _ := pair(t, c, g, 1, kvw, nil)
		co, _ := pair(t, c, g, 1, nH*hd, nil)
		cK, _ := pairKV(t, c, g, rows, kvw, cache0)
		cV, _ := pairKV(t, c, g, rows, kvw, vcache0)
		if err := firstErr(c.RMSNorm(cqr, cq, cqn, eps), c.RMSNorm(ckr, ck, ckn, eps), c.RoPE(cqr, cqr, hd, s.pos, theta),
			c.RoPE(ckr, ckr, hd, s.pos, theta), c.CopyRows(cK, s.pos, ckr, 0, 1), c.CopyRows(cV, s.pos, cv, 0, 1),
			c.Attention(co, cqr, cK, cV, s.pos, nH, s.nKV, hd)); err != nil {
			t.Fatal(err)
		}
		_, rqr := pair(t, c, g, 1, nH*hd, nil)
		_, rkr := pair(t, c, g, 1, kvw, nil)
		_, ro := pair(t, c, g, 1, nH*hd, nil)
		_, rK := pairKV(t, c, g, rows, kvw, cache0)
		_, rV := pairKV(t, c, g, rows, kvw, vcache0)
		if err := firstErr(g.QKNormRoPECache(rqr, rkr, gq, gk, gv, gqn, gkn, rK, rV, hd, s.pos, theta, eps),
			g.Attention(ro, rqr, rK, rV, s.pos, nH, s.nKV, hd)); err != nil {
			t.Fatal(err)
		}
		for rep := 0; rep < 2; rep++ {
			_, gqr := pair(t, c, g, 1, nH*hd, nil)
			_, gkr := pair(t, c, g, 1, kvw, nil)
			_, gO := pair(t, c, g, 1, nH*hd, nil)
			_, gK := pairKV(t, c, g, rows, kvw, cache0)
			_, gV := pairKV(t, c, g, rows, kvw, vcache0)
			if err := g.QKNormRoPEAttention(gO, gqr, gkr, gq, gk, gv, gqn, gkn, gK, gV, nH, s.nKV, hd, s.pos, theta, eps); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, p := range []struct {
				what     string
				got, two backend.Tensor
			}{{"out", gO, ro}, {"qr", gqr, rqr}, {"kr", gkr, rkr}, {"k cache", gK, rK}, {"v cache", gV, rV}} {
				got, err := g.Download(p.got, nil)
				if err != nil {
					t.Fatal(err)
				}
				two, err := g.Download(p.two, nil)
				if err != nil {
					t.Fatal(err)
				}
				for j := range two {
					if math.Float32bits(got[j]) != math.Float32bits(two[j]) {
						t.Fatalf("%s rep %d: %s[%d] = %v, the two ops give %v", name, rep, p.what, j, got[j], two[j])
					}
				}
			}
			compare(t, name+" out vs cpu", c, g, co, gO, 1e-5)
			compare(t, name+" k cache vs cpu", c, g, cK, gK, 1e-6)
		}
	}

	// What the two ops refuse, this refuses: out of the wrong width, a position past the cache.
	_, gq := pair(t, c, g, 1, 32*hd, nil)
	_, gk := pair(t, c, g, 1, 8*hd, nil)
	_, gn := pair(t, c, g, 1, hd, nil)
	_, gqr := pair(t, c, g, 1, 32*hd, nil)
	_, gkr := pair(t, c, g, 1, 8*hd, nil)
	_, bad := pair(t, c, g, 1, 31*hd, nil)
	_, gK := pairKV(t, c, g, 16, 8*hd, nil)
	_, gV := pairKV(t, c, g, 16, 8*hd, nil)
	for _, e := range []struct {
		name string
		err  error
	}{
		{"narrow out", g.QKNormRoPEAttention(bad, gqr, gkr, gq, gk, gk, gn, gn, gK, gV, 32, 8, hd, 3, theta, eps)},
		{"position past the cache", g.QKNormRoPEAttention(gqr, gqr, gkr, gq, gk, gk, gn, gn, gK, gV, 32, 8, hd, 16, theta, eps)},
	} {
		if e.err == nil {
			t.Errorf("%s: no error", e.name)
		}
	}
}

// TestFiguresDecodeForms times a batch-1 decode step of a Qwen3-4B-shaped NVFP4 model (8
// layers, QWENGO_CUDA_FIG_LAYERS to change; vocabulary 512, so the step is its layers) in ten
// forms, interleaved in one process so that the machine's state is the same for all: the per-op
// path (nine kernels a layer), the fused decode ops (six), the fused ops with the q/k norms,
// RoPE and cache write folded into attention (five), the fused and per-op paths with gemv_tcp's
// block merge (/bm: K slices summed inside each block), and fused/bm with the per-tile global
// merge (/m0) or with the one-row GEMVs' half2-scaled forms (/h, gemv_tcp.go tcpOneRow), and
// fused/bm with decode attention's L2 prefetch off (/ap0), for every row (/ap) or 32 (/ap32). Each
// form runs without logits (the host runs ahead of the device: device-bound) and with greedy
// tokens (one download a step, as `qwenrepl bench` decodes); the host's part is the time until
// the last step's launches are issued. µs a layer, the median of the rounds; run with
// QWENGO_CUDA_BENCH=1.
func TestFiguresDecodeForms(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	layers := figLayers(8)
	const steps, rounds = 64, 7
	_, m := randomLayers4B(t, g, layers)
	defer m.Free()
	type form struct {
		name          string
		fused, nr, bm bool
		slice         int  // gemvSlice: 0 picks per shape
		long          int  // gemvLongSlice: 0 is gemvTCPLongSlice
		merge0        bool // gemvTCPMerge0: the per-tile GEMV merge
		half          bool // !gemvTCPCS: one-row GEMVs in their half2-scaled forms, not the column-scale ones
		attnPre       int  // decodeAttnPrefetch + 1: 0 the automatic choice, else 1 + rows a block asked of L2
	}
	forms := []form{
		{name: "per-op"}, {name: "fused", fused: true}, {name: "fused+nr", fused: true, nr: true},
		{name: "fused/bm", fused: true, bm: true}, {name: "per-op/bm", bm: true},
		{name: "fused/bm/m0", fused: true, bm: true, merge0: true}, {name: "fused/bm/h", fused: true, bm: true, half: true},
		{name: "fused/bm/ap0", fused: true, bm: true, attnPre: 1},
		{name: "fused/bm/ap", fused: true, bm: true, attnPre: 1 + 1<<20},
		{name: "fused/bm/ap32", fused: true, bm: true, attnPre: 1 + 32},
	}
	// QWENGO_CUDA_FIG_SLICE=5,8,… adds fused forms whose every gemv_tcp launch takes that K slice
	// (session 14, call 7: none faster than the per-shape slices).
	for _, w := range strings.Split(os.Getenv("QWENGO_CUDA_FIG_SLICE"), ",") {
		if n, err := strconv.Atoi(w); err == nil && n > 0 {
			forms = append(forms, form{name: fmt.Sprintf("fused/s%d", n), fused: true, slice: n})
		}
	}
	// QWENGO_CUDA_FIG_LONG=6,7,… adds fused/bm forms whose long products (down_proj) take that
	// K slice.
	for _, w := range strings.Split(os.Getenv("QWENGO_CUDA_FIG_LONG"), ",") {
		if n, err := strconv.Atoi(w); err == nil && n > 0 {
			forms = append(forms, form{name: fmt.Sprintf("fused/bm/L%d", n), fused: true, bm: true, long: n})
		}
	}
	// QWENGO_CUDA_FIG_FORMS=fused/bm,… keeps only the forms named.
	if only := os.Getenv("QWENGO_CUDA_FIG_FORMS"); only != "" {
		keep := strings.Split(only, ",")
		forms = slices.DeleteFunc(forms, func(f form) bool { return !slices.Contains(keep, f.name) })
		if len(forms) == 0 {
			t.Fatalf("QWENGO_CUDA_FIG_FORMS=%s names no form", only)
		}
	}
	modes := []qwen3.LogitsMode{qwen3.LogitsNone, qwen3.LogitsGreedy}
	defer g.do(func() error {
		g.decodeFusedModel, g.decodeNormRoPE, g.gemvSlice = decodeFusedFromEnv(), decodeNormRoPEFromEnv(), gemvSliceFromEnv()
		g.gemvTCPBlockMerge, g.gemvLongSlice = gemvTCPBlockMergeFromEnv(), gemvLongSliceFromEnv()
		g.gemvTCPMerge0, g.gemvTCPCS = gemvTCPMerge0FromEnv(), gemvTCPCSFromEnv()
		g.decodeAttnPrefetch = decodeAttnPrefetchFromEnv()
		return nil
	})
	names := map[qwen3.LogitsMode]string{qwen3.LogitsNone: "none", qwen3.LogitsGreedy: "greedy"}
	for _, ctxLen := range []int{512, 8192} {
		// Run i is form i / len(modes) in mode i % len(modes).
		total, host := timeDecodeRuns(t, g, m, layers, ctxLen, steps, rounds, len(forms)*len(modes), func(i int) qwen3.LogitsMode {
			f := forms[i/len(modes)]
			g.do(func() error {
				g.decodeFusedModel, g.decodeNormRoPE, g.gemvSlice, g.gemvTCPBlockMerge, g.gemvLongSlice = f.fused, f.nr, f.slice, f.bm, f.long
				g.gemvTCPMerge0, g.gemvTCPCS, g.decodeAttnPrefetch = f.merge0, !f.half, f.attnPre-1
				return nil
			})
			return modes[i%len(modes)]
		})
		for i := range total {
			f, mode := forms[i/len(modes)], modes[i%len(modes)]
			t.Logf("figure decode form %-15s %-6s context %5d, %d layers: %.2f µs a layer (host issued in %.2f; median of %d rounds of %d steps, min %.2f max %.2f)",
				f.name, names[mode], ctxLen, layers, median(total[i]), median(host[i]), len(total[i]), steps, slices.Min(total[i]), slices.Max(total[i]))
		}
	}
}

// timeDecodeRuns prefills ctxLen tokens into a fresh cache of m, then rounds times decodes
// steps tokens once for each of n runs — set(i) switches to run i and returns its logits mode —
// from the same cache position (truncated back), and returns each run's µs a layer for every
// round but the first (which warms each run up): in total and as the host issued them.
// Interleaving the runs in one process is what makes them comparable (separate processes of one
// binary vary by ±5 %, NOTES.md session 14).
func timeDecodeRuns(t *testing.T, g *Backend, m *qwen3.Model, layers, ctxLen, steps, rounds, n int, set func(i int) qwen3.LogitsMode) (total, host [][]float64) {
	t.Helper()
	ctx := context.Background()
	cache, err := m.NewKVCache(ctxLen + steps + 8)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Free()
	ids := make([]int, ctxLen+steps)
	for i := range ids {
		ids[i] = i % m.Config.VocabSize
	}
	if _, err := m.Forward(ctx, ids[:ctxLen], cache, qwen3.LogitsNone); err != nil {
		t.Fatal(err)
	}
	total, host = make([][]float64, n), make([][]float64, n)
	per := float64(steps * layers)
	for r := 0; r < rounds; r++ {
		for i := 0; i < n; i++ {
			mode := set(i)
			if err := cache.Truncate(ctxLen); err != nil {
				t.Fatal(err)
			}
			if err := g.Sync(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			for s := 0; s < steps; s++ {
				if _, err := m.Forward(ctx, ids[ctxLen+s:ctxLen+s+1], cache, mode); err != nil {
					t.Fatal(err)
				}
			}
			issued := time.Since(start)
			if err := g.Sync(); err != nil {
				t.Fatal(err)
			}
			if r > 0 {
				total[i] = append(total[i], time.Since(start).Seconds()*1e6/per)
				host[i] = append(host[i], issued.Seconds()*1e6/per)
			}
		}
	}
	return total, host
}

// figLayers is the depth of the decode figure tests: QWENGO_CUDA_FIG_LAYERS, else def.
func figLayers(def int) int {
	if n, err := strconv.Atoi(os.Getenv("QWENGO_CUDA_FIG_LAYERS")); err == nil && n > 0 {
		return n
	}
	return def
}

// median is the middle value of v (the upper one of an even count).
func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// ablated is the backend with some of the decode ops of a layer skipped (their outputs keep
// whatever they held): TestFiguresDecodeAblation times what each op costs inside the
// launch chain, which its time alone does not tell (programmatic dependent launch overlaps
// each launch with the end of the one before). The values are garbage; only the times count.
type ablated struct {
	*Backend
	skip map[string]bool
	// oIn and downIn tell o_proj's and down_proj's MatMul apart (the per-op fused path of
	// batched decode launches both through MatMul): their weights' In.
	oIn, downIn int
}

// skipLabel names an ablation form in the figures: its skipped ops, or "(none)".
func skipLabel(ops string) string {
	if ops == "" {
		return "(none)"
	}
	return ops
}

// skipOnly makes ops (a comma-separated list of skip names, "" for none) the ops skipped.
func (a *ablated) skipOnly(ops string) {
	clear(a.skip)
	for _, op := range strings.Split(ops, ",") {
		if op != "" {
			a.skip[op] = true
		}
	}
}

func (a *ablated) MatMulMany(outs []backend.Tensor, x backend.Tensor, ws []backend.Weight) error {
	if (len(ws) == 3 && a.skip["qkv"]) || (len(ws) == 2 && a.skip["gateup"]) {
		return nil
	}
	return a.Backend.MatMulMany(outs, x, ws)
}

func (a *ablated) MatMul(out, x backend.Tensor, w backend.Weight) error {
	if (w.In() == a.oIn && a.skip["o"]) || (w.In() == a.downIn && a.skip["down"]) {
		return nil
	}
	return a.Backend.MatMul(out, x, w)
}

func (a *ablated) AddRMSNorm(out, x, delta, w backend.Tensor, eps float32) error {
	if a.skip["addnorm"] {
		return nil
	}
	return a.Backend.AddRMSNorm(out, x, delta, w, eps)
}

func (a *ablated) SwiGLU(out, gate, up backend.Tensor) error {
	if a.skip["swiglu"] {
		return nil
	}
	return a.Backend.SwiGLU(out, gate, up)
}

func (a *ablated) QKNormRoPECacheBatch(qr, kr, q, k, v, qn, kn, kCache, vCache backend.Tensor, headDim, capacity int, positions []int, theta float64, eps float32) error {
	if a.skip["qknorm"] {
		return nil
	}
	return a.Backend.QKNormRoPECacheBatch(qr, kr, q, k, v, qn, kn, kCache, vCache, headDim, capacity, positions, theta, eps)
}

func (a *ablated) AttentionBatch(out, q, k, v backend.Tensor, capacity int, positions []int, nHeads, nKV, headDim int) error {
	if a.skip["attn"] {
		return nil
	}
	return a.Backend.AttentionBatch(out, q, k, v, capacity, positions, nHeads, nKV, headDim)
}

func (a *ablated) NormMatMulMany(outs []backend.Tensor, x, w backend.Tensor, eps float32, ws []backend.Weight) error {
	if (len(ws) == 3 && a.skip["qkv"]) || (len(ws) == 2 && a.skip["gateup"]) {
		return nil
	}
	return a.Backend.NormMatMulMany(outs, x, w, eps, ws)
}

func (a *ablated) MatMulAdd(x, in backend.Tensor, w backend.Weight) error {
	if a.skip["o"] {
		return nil
	}
	return a.Backend.MatMulAdd(x, in, w)
}

func (a *ablated) SwiGLUMatMulAdd(x, gate, up backend.Tensor, w backend.Weight) error {
	if a.skip["down"] {
		return nil
	}
	return a.Backend.SwiGLUMatMulAdd(x, gate, up, w)
}

func (a *ablated) QKNormRoPEAttention(out, qr, kr, q, k, v, qn, kn, kCache, vCache backend.Tensor, nHeads, nKV, headDim, pos int, theta float64, eps float32) error {
	var errs []error
	if !a.skip["qknorm"] {
		errs = append(errs, a.Backend.QKNormRoPECache(qr, kr, q, k, v, qn, kn, kCache, vCache, headDim, pos, theta, eps))
	}
	if !a.skip["attn"] {
		errs = append(errs, a.Backend.Attention(out, qr, kCache, vCache, pos, nHeads, nKV, headDim))
	}
	return firstErr(errs...)
}

// TestFiguresDecodeAblation: batch-1 decode with the fused forms (the default), 36 Qwen3-4B
// layers (QWENGO_CUDA_FIG_LAYERS), each layer's ops skipped one or a few at a time; µs a layer,
// no logits, the forms interleaved in one process as in TestFiguresDecodeForms.
func TestFiguresDecodeAblation(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	layers := figLayers(36)
	const steps, rounds = 64, 7
	forms := []string{"", "qknorm", "attn", "qknorm,attn", "qkv", "o", "gateup", "down", "qkv,o,gateup,down", "qkv,qknorm,attn,o,gateup,down"}
	a := &ablated{Backend: g, skip: map[string]bool{}}
	_, m := randomLayers4B(t, a, layers)
	defer m.Free()
	if _, ok := m.B.(backend.NormRoPEAttention); !ok {
		t.Fatal("the ablated backend lost NormRoPEAttention")
	}
	defer g.do(func() error { g.decodeFusedModel = decodeFusedFromEnv(); return nil })
	g.do(func() error { g.decodeFusedModel = true; return nil })
	for _, ctxLen := range []int{512, 8192} {
		total, _ := timeDecodeRuns(t, g, m, layers, ctxLen, steps, rounds, len(forms), func(i int) qwen3.LogitsMode {
			a.skipOnly(forms[i])
			return qwen3.LogitsNone
		})
		clear(a.skip)
		full := median(total[0])
		for i, f := range forms {
			t.Logf("figure decode ablation skip %-30s context %5d, %d layers: %.2f µs a layer (saves %.2f; min %.2f max %.2f)",
				skipLabel(f), ctxLen, layers, median(total[i]), full-median(total[i]), slices.Min(total[i]), slices.Max(total[i]))
		}
	}
}

// TestFiguresDecodeBatchAblation: batched decode (qwen3.ForwardBatch) of 8 sequences at
// context 1024 over 36 Qwen3-4B layers (QWENGO_CUDA_FIG_LAYERS), no logits, each layer's ops
// skipped one or a few at a time as in TestFiguresDecodeAblation; µs a step, forms interleaved
// in one process. The default path at eight rows is the per-op fused one (MatMulMany, the q/k
// norm and attention, MatMul for o, AddRMSNorm, MatMulMany, SwiGLU, MatMul for down,
// AddRMSNorm); QWENGO_CUDA_DECODE_FUSED_ROWS=8 times the fused decode forms instead.
func TestFiguresDecodeBatchAblation(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	layers := figLayers(36)
	const B, ctxLen, steps, rounds = 8, 1024, 32, 5
	forms := []string{"", "qknorm", "attn", "qknorm,attn", "qkv", "o", "gateup", "down", "addnorm", "swiglu",
		"qkv,o,gateup,down", "qkv,qknorm,attn,o,gateup,down,addnorm,swiglu"}
	a := &ablated{Backend: g, skip: map[string]bool{}}
	cfg, m := randomLayers4B(t, a, layers)
	defer m.Free()
	a.oIn, a.downIn = cfg.NumHeads*cfg.HeadDim, cfg.IntermediateSize
	if _, ok := backend.UseBatched(m.B); !ok {
		t.Fatal("the ablated backend lost the batched ops")
	}
	ctx := context.Background()
	cache := prefilledBatchCache(t, m, B, ctxLen, ctxLen+steps+8)
	defer cache.Free()
	next := make([]int, B)
	times := make([][]float64, len(forms))
	for round := 0; round <= rounds; round++ { // round 0 warms up
		for i, f := range forms {
			a.skipOnly(f)
			for r := 0; r < B; r++ {
				if err := cache.Seq(r).Truncate(ctxLen); err != nil {
					t.Fatal(err)
				}
			}
			if err := g.Sync(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			for s := 0; s < steps; s++ {
				if _, err := m.ForwardBatch(ctx, next, cache, qwen3.LogitsNone); err != nil {
					t.Fatal(err)
				}
			}
			if err := g.Sync(); err != nil {
				t.Fatal(err)
			}
			if round > 0 {
				times[i] = append(times[i], time.Since(start).Seconds()*1e6/steps)
			}
		}
	}
	clear(a.skip)
	full := median(times[0])
	for i, f := range forms {
		t.Logf("figure batch ablation skip %-45s batch %d, context %d, %d layers: %.1f µs a step, %.2f a layer (saves %.2f a layer; min %.1f max %.1f a step)",
			skipLabel(f), B, ctxLen, layers, median(times[i]), median(times[i])/float64(layers), (full-median(times[i]))/float64(layers), slices.Min(times[i]), slices.Max(times[i]))
	}
}
