//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/nvfp4"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// The kernel figures for NOTES.md: run with QWENGO_CUDA_BENCH=1 go test -tags cuda -run
// Figures -v. Each timing is the mean over repetitions between two CUDA events, with the
// launches queued on the owner goroutine (no channel round trip per launch), rotating over
// enough weight copies that the weights do not sit in the 60 MB L2.

const hbmBytesPerSec = 4.3e12 // measured device-copy rate of the H200 (shared/reference/anchors.md)

func benchEnabled(t *testing.T) {
	if os.Getenv("QWENGO_CUDA_BENCH") == "" {
		t.Skip("set QWENGO_CUDA_BENCH=1 for the kernel figures")
	}
}

// timeOnDevice runs launch once to warm up, then reps times between two events, all on the
// owner goroutine, and returns the mean milliseconds per repetition.
func timeOnDevice(g *Backend, reps int, launch func() error) (float64, error) {
	var ms float64
	err := g.do(func() error {
		e0, err := eventCreate()
		if err != nil {
			return err
		}
		defer eventDestroy(e0)
		e1, err := eventCreate()
		if err != nil {
			return err
		}
		defer eventDestroy(e1)
		if err := launch(); err != nil {
			return err
		}
		if err := eventRecord(e0); err != nil {
			return err
		}
		for r := 0; r < reps; r++ {
			if err := launch(); err != nil {
				return err
			}
		}
		if err := eventRecord(e1); err != nil {
			return err
		}
		if err := eventSynchronize(e1); err != nil {
			return err
		}
		total, err := eventElapsed(e0, e1)
		ms = total / float64(reps)
		return err
	})
	return ms, err
}

// randTensor allocates a [rows, cols] activation tensor of N(0, 1) values on g (seeded by its
// shape), freed when the test ends.
func randTensor(t *testing.T, g *Backend, rows, cols int) *Tensor {
	t.Helper()
	x, err := g.Alloc(backend.Activations, rows, cols)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Free(x) })
	if err := g.Upload(x, randn(rows*cols, uint64(rows+cols), 1)); err != nil {
		t.Fatal(err)
	}
	return x.(*Tensor)
}

// randomNVFP4 builds an NVFP4 matrix from random codes and scales (no quantisation: fast).
func randomNVFP4(rows, cols int, seed uint64) *nvfp4.Matrix {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	m := &nvfp4.Matrix{Rows: rows, Cols: cols, Packed: make([]byte, rows*cols/2), Scales: make([]byte, rows*cols/16), Global: 1.0 / 2688}
	r.Read(m.Packed)
	r.Read(m.Scales)
	for i, s := range m.Scales {
		m.Scales[i] = 0x30 | s&0x0f // finite, positive, 0.5..1.9
	}
	return m
}

// randomBF16 builds a bf16 matrix of random finite values in (-2, 2).
func randomBF16(rows, cols int, seed uint64) *tensor.Host {
	r := rand.NewChaCha8([32]byte{byte(seed), 1})
	data := make([]byte, 2*rows*cols)
	r.Read(data)
	for i := 1; i < len(data); i += 2 {
		data[i] &= 0xbf // clear the top exponent bit: |x| < 2, no Inf/NaN
	}
	return &tensor.Host{Name: "bench", DType: tensor.BF16, Shape: []int{rows, cols}, Data: data}
}

type figure struct {
	name         string
	bytes, flops float64
	ms           float64
}

func (f figure) String() string {
	s := fmt.Sprintf("figure %-46s %9.3f us  %8.2f MB  %9.3f GFLOP  %7.0f GB/s (%4.1f%% of 4.3 TB/s)",
		f.name, f.ms*1e3, f.bytes/1e6, f.flops/1e9, f.bytes/(f.ms*1e-3)/1e9, 100*f.bytes/(f.ms*1e-3)/hbmBytesPerSec)
	if f.flops > 0 {
		s += fmt.Sprintf("  %6.2f TFLOP/s", f.flops/(f.ms*1e-3)/1e12)
	}
	return s
}

func TestFiguresMatMul(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	type tcase struct {
		kind    string
		T, K, N int
		copies  int
		reps    int
	}
	for _, c := range []tcase{
		{kindNVFP4, 1, 2560, 9728, 16, 20}, {kindNVFP4, 1, 9728, 2560, 16, 20},
		{kindNVFP4, 4, 2560, 9728, 16, 20}, {kindNVFP4, 4, 9728, 2560, 16, 20},
		{kindNVFP4, 1, 2560, 4096, 16, 20}, {kindNVFP4, 1, 4096, 2560, 16, 20},
		{kindBF16, 1, 2560, 9728, 6, 20}, {kindBF16, 1, 2560, 151936, 1, 10},
		{kindNVFP4, 512, 2560, 9728, 2, 3}, {kindBF16, 512, 2560, 9728, 2, 3}, {kindNVFP4, 2048, 2560, 9728, 1, 2},
	} {
		var ws []*Weight
		for i := 0; i < c.copies; i++ {
			hw := backend.HostWeight{Name: fmt.Sprintf("bench%d", i)}
			if c.kind == kindNVFP4 {
				hw.NVFP4 = randomNVFP4(c.N, c.K, uint64(i))
			} else {
				hw.Dense = randomBF16(c.N, c.K, uint64(i))
			}
			w, err := g.UploadWeight(hw)
			if err != nil {
				t.Fatal(err)
			}
			ws = append(ws, w.(*Weight))
		}
		x, err := g.Alloc(backend.Activations, c.T, c.K)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Upload(x, randn(c.T*c.K, 1, 1)); err != nil {
			t.Fatal(err)
		}
		o, err := g.Alloc(backend.Activations, c.T, c.N)
		if err != nil {
			t.Fatal(err)
		}
		ms, err := timeOnDevice(g, c.reps, func() error {
			for _, w := range ws {
				if err := g.matmul(o.(*Tensor), x.(*Tensor), w); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		ms /= float64(len(ws))
		wb := float64(ws[0].Bytes())
		path := "tiled"
		if gemvShape(c.kind, c.T, c.K) {
			path = "gemv"
		}
		t.Log(figure{fmt.Sprintf("matmul %s %s T=%d %d→%d", path, c.kind, c.T, c.K, c.N),
			wb + float64(4*c.T*(c.K+c.N)), float64(2 * c.T * c.K * c.N), ms})
		g.Free(x)
		g.Free(o)
		for _, w := range ws {
			g.FreeWeight(w)
		}
	}
}

func TestFiguresOps(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	alloc := func(rows, cols int) *Tensor { return randTensor(t, g, rows, cols) }
	// Attention: Qwen3-4B heads (32 query, 8 KV, head_dim 128), through the op (split over
	// the keys for decode) but timed on the device.
	for _, s := range []struct{ T, pos0, reps int }{{1, 511, 50}, {1, 4095, 20}, {1, 8191, 10}, {4, 4092, 20}, {512, 0, 3}, {2048, 0, 1}} {
		n := s.pos0 + s.T
		q, k, v, o := alloc(s.T, 4096), alloc(n, 1024), alloc(n, 1024), alloc(s.T, 4096)
		ms, err := timeOnDevice(g, s.reps, func() error {
			return g.attention(o, q, k, v, s.pos0, 32, 8, 128)
		})
		if err != nil {
			t.Fatal(err)
		}
		// Keys attended: sum over rows of pos0+t+1; K and V read once per KV head ideally.
		var keys float64
		for t := 0; t < s.T; t++ {
			keys += float64(s.pos0 + t + 1)
		}
		splits, _ := attentionSplit(g.sms, s.T, 32, n)
		t.Log(figure{fmt.Sprintf("attention T=%d context %d, %d splits", s.T, n, splits),
			float64(2*n*1024*4 + 2*s.T*4096*4), keys * 32 * 128 * 4, ms})
	}
	// Host-side costs: a round trip to the owner goroutine, a small op, a pooled Alloc+Free.
	const calls = 20000
	start := time.Now()
	for i := 0; i < calls; i++ {
		g.do(func() error { return nil })
	}
	t.Logf("figure host: owner-goroutine round trip (empty call) %v", time.Since(start)/calls)
	x, w, out := alloc(1, 2560), alloc(1, 2560), alloc(1, 2560)
	start = time.Now()
	for i := 0; i < calls; i++ {
		if err := g.Add(x, w); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	t.Logf("figure host: Add of [1, 2560] through the API %v per op (launch + round trip)", time.Since(start)/calls)
	start = time.Now()
	for i := 0; i < calls/10; i++ {
		y, err := g.Alloc(backend.Activations, 1, 2560)
		if err != nil {
			t.Fatal(err)
		}
		g.Free(y)
	}
	t.Logf("figure host: Alloc+Free of [1, 2560] (pooled, zeroed) %v", time.Since(start)/(calls/10))
	ms, err := timeOnDevice(g, 100, func() error {
		return launch(g.fns["rmsnorm_f32"], [3]int{1, 1, 1}, [3]int{256, 1, 1}, 0, ptrArg(out.ptr), ptrArg(x.ptr), ptrArg(w.ptr), intArg(2560), f32Arg(1e-6))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(figure{"rmsnorm T=1 2560 (launch-bound)", 3 * 2560 * 4, 3 * 2560, ms})
	big, big2 := alloc(2048, 9728), alloc(2048, 9728)
	ms, err = timeOnDevice(g, 10, func() error {
		return launch(g.fns["swiglu_f32"], [3]int{g.blocks(2048 * 9728), 1, 1}, [3]int{256, 1, 1}, 0, ptrArg(big.ptr), ptrArg(big.ptr), ptrArg(big2.ptr), sizeArg(2048*9728))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(figure{"swiglu 2048x9728 (in place)", 3 * 2048 * 9728 * 4, 5 * 2048 * 9728, ms})
}

// TestFiguresDecode times whole-model decode through qwen3.Forward (every op a round trip to
// the owner goroutine, activations allocated per call) on a random model with Qwen3-4B layer
// shapes, NVFP4 linears and a small vocabulary; per-layer time scales to 36 layers.
// With QWENGO_CUDA_PROFILE=1 the timed steps are a profiler range (ncu/nsys from the range).
func TestFiguresDecode(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	cfg := &qwen3.Config{HiddenSize: 2560, IntermediateSize: 9728, NumLayers: 2, NumHeads: 32, NumKVHeads: 8, HeadDim: 128,
		VocabSize: 1024, RMSNormEps: 1e-6, RopeTheta: 5e6, TieEmbeddings: true, MaxPositions: 40960, BOSTokenID: -1}
	start := time.Now()
	m, err := qwen3.NewRandom(cfg, g, qwen3.RandomOptions{Seed: 1, Precision: qwen3.NVFP4})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Free()
	t.Logf("random 2-layer model (Qwen3-4B layer shapes, NVFP4 linears) built and uploaded in %v; %s", time.Since(start).Round(time.Millisecond), backend.Human(m.WeightBytes()))
	ctx := context.Background()
	cache, err := m.NewKVCache(600)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Free()
	prompt := make([]int, 512)
	for i := range prompt {
		prompt[i] = (i * 37) % cfg.VocabSize
	}
	start = time.Now()
	if _, err := m.Forward(ctx, prompt, cache, qwen3.LogitsLast); err != nil {
		t.Fatal(err)
	}
	prefill := time.Since(start)
	const steps = 64
	tok := 5
	step := func() {
		lg, err := m.Forward(ctx, []int{tok}, cache, qwen3.LogitsGreedy)
		if err != nil {
			t.Fatal(err)
		}
		tok = lg.Greedy
	}
	step() // warm-up: workspaces grown
	profile := os.Getenv("QWENGO_CUDA_PROFILE") == "1"
	if profile {
		if err := g.do(func() error { return profilerRange(true) }); err != nil {
			t.Logf("profiler: %v", err)
		}
	}
	start = time.Now()
	for i := 0; i < steps; i++ {
		step()
	}
	per := time.Since(start) / steps
	if profile {
		g.do(func() error { return profilerRange(false) })
	}
	t.Logf("figure decode 2 layers: %v per token (context 512..576); prefill 512 tokens: %v (%.0f tok/s for 2 layers)",
		per, prefill.Round(time.Microsecond), 512/prefill.Seconds())
	t.Logf("figure decode estimate for 36 layers: %.2f ms per token from the per-layer time, plus the 151936-row bf16 lm_head GEMV (see the matmul figures)",
		36*per.Seconds()*1e3/2)
	t.Log(g.Memory())
}

// TestFiguresDecodeBatch times batched decode (qwen3.ForwardBatch, greedy picks on the device)
// of 8 sequences at context ~1024 on a random 2-layer model with Qwen3-4B layer shapes and the
// full 151936-row bf16 lm_head: the per-layer time scales to 36 layers. With
// QWENGO_CUDA_PROFILE=1 the timed steps are a profiler range (ncu --profile-from-start off).
func TestFiguresDecodeBatch(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	layers := figLayers(2)
	cfg := &qwen3.Config{HiddenSize: 2560, IntermediateSize: 9728, NumLayers: layers, NumHeads: 32, NumKVHeads: 8, HeadDim: 128,
		VocabSize: 151936, RMSNormEps: 1e-6, RopeTheta: 5e6, TieEmbeddings: true, MaxPositions: 40960, BOSTokenID: -1}
	m, err := qwen3.NewRandom(cfg, g, qwen3.RandomOptions{Seed: 1, Precision: qwen3.NVFP4})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Free()
	ctx := context.Background()
	const B, ctxLen, steps = 8, 1024, 32
	cache := prefilledBatchCache(t, m, B, ctxLen, ctxLen+2*steps)
	defer cache.Free()
	next := make([]int, B)
	step := func() {
		lg, err := m.ForwardBatch(ctx, next, cache, qwen3.LogitsGreedy)
		if err != nil {
			t.Fatal(err)
		}
		copy(next, lg.Greedy)
	}
	for i := 0; i < steps/4; i++ { // warm-up: workspaces grown, kernels loaded
		step()
	}
	profile := os.Getenv("QWENGO_CUDA_PROFILE") == "1"
	if profile {
		if err := g.do(func() error { return profilerRange(true) }); err != nil {
			t.Logf("profiler: %v", err)
		}
	}
	// Rounds of steps from the same cache position (truncated back), so that every round
	// attends over the same keys; the median round is the figure. Variants interleave rounds in
	// the same process, for comparisons that process-to-process variation does not blur:
	// QWENGO_CUDA_FIG_MERGE0=1 adds the per-tile GEMV merge (gemv_tcp.cuh merge_per_tile),
	// QWENGO_CUDA_FIG_FUSED_ROWS=1,8 runs the fused decode forms' row limits listed (1: the
	// per-op fused path at eight rows; 8: the norm, residual and SwiGLU folded into the GEMVs).
	const rounds = 5
	variants := batchFigureVariants(t, g)
	pers := make([][]float64, len(variants))
	for range rounds {
		for v, vr := range variants {
			g.do(func() error { vr.set(g); return nil })
			for r := 0; r < B; r++ {
				if err := cache.Seq(r).Truncate(ctxLen); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			for i := 0; i < steps; i++ {
				step()
			}
			pers[v] = append(pers[v], time.Since(start).Seconds()/steps)
		}
	}
	if profile {
		g.do(func() error { return profilerRange(false) })
	}
	for v, vr := range variants {
		per := median(pers[v])
		t.Logf("figure decode batch %d, %d layers + lm_head%s: %.1f µs per step (%.0f tok/s; median of %d rounds of %d steps, min %.1f max %.1f)",
			B, layers, vr.name, per*1e6, B/per, rounds, steps, slices.Min(pers[v])*1e6, slices.Max(pers[v])*1e6)
	}
}

// batchFigureVariant is one backend setting TestFiguresDecodeBatch interleaves: name is printed
// after the figure's title, set runs on the owner goroutine before each of its rounds.
type batchFigureVariant struct {
	name string
	set  func(g *Backend)
}

// batchFigureVariants are the settings QWENGO_CUDA_FIG_MERGE0 and QWENGO_CUDA_FIG_FUSED_ROWS
// ask for (just the backend's own when neither is set); the backend's settings come back at the
// end of the test.
func batchFigureVariants(t *testing.T, g *Backend) []batchFigureVariant {
	var merge0 bool
	var fusedRows int
	g.do(func() error { merge0, fusedRows = g.gemvTCPMerge0, g.decodeFusedRows; return nil })
	t.Cleanup(func() { g.do(func() error { g.gemvTCPMerge0, g.decodeFusedRows = merge0, fusedRows; return nil }) })
	vs := []batchFigureVariant{{"", func(*Backend) {}}}
	if os.Getenv("QWENGO_CUDA_FIG_MERGE0") == "1" {
		vs = []batchFigureVariant{
			{" (batched merge)", func(g *Backend) { g.gemvTCPMerge0 = false }},
			{" (per-tile merge)", func(g *Backend) { g.gemvTCPMerge0 = true }},
		}
	}
	if list := os.Getenv("QWENGO_CUDA_FIG_FUSED_ROWS"); list != "" {
		var rows []batchFigureVariant
		for _, f := range strings.Split(list, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > 8 {
				t.Fatalf("QWENGO_CUDA_FIG_FUSED_ROWS: %q is not a row count from 1 to 8", f)
			}
			for _, v := range vs {
				rows = append(rows, batchFigureVariant{fmt.Sprintf("%s (fused decode rows %d)", v.name, n), func(g *Backend) { v.set(g); g.decodeFusedRows = n }})
			}
		}
		vs = rows
	}
	return vs
}

// prefilledBatchCache makes a batch cache of B sequences with room for capacity positions and
// prefills each with ctxLen tokens of its own (the batched decode figures' starting point).
func prefilledBatchCache(t *testing.T, m *qwen3.Model, B, ctxLen, capacity int) *qwen3.BatchKVCache {
	t.Helper()
	cache, err := m.NewBatchKVCache(B, capacity)
	if err != nil {
		t.Fatal(err)
	}
	for r := 0; r < B; r++ {
		prompt := make([]int, ctxLen)
		for i := range prompt {
			prompt[i] = (i*37 + r*101) % m.Config.VocabSize
		}
		if _, err := m.Forward(context.Background(), prompt, cache.Seq(r), qwen3.LogitsNone); err != nil {
			cache.Free()
			t.Fatal(err)
		}
	}
	return cache
}

// TestKernelTimes checks the kernel timer of ProfileRange (QWENGO_CUDA_KERNEL_TIMES=1): each
// launch in the range counted under its entry name (cuBLASLt matmuls under one name), positive
// times, nothing outside the range or without the variable; backend.Profile without it.
func TestKernelTimes(t *testing.T) {
	g := openGPU(t)
	x := randTensor(t, g, 64, 256)
	o := randTensor(t, g, 64, 256)
	run := func(n int) {
		for i := 0; i < n; i++ {
			if err := g.Add(o, x); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Setenv("QWENGO_CUDA_KERNEL_TIMES", "1")
	run(2) // outside the range
	if err := g.ProfileRange(true); err != nil {
		t.Fatal(err)
	}
	run(5)
	if err := g.ProfileRange(false); err != nil {
		t.Fatal(err)
	}
	run(3)
	times := g.KernelTimes()
	if len(times) != 1 || times[0].Name != "add_f32" || times[0].Count != 5 || times[0].Total <= 0 {
		t.Fatalf("kernel times %+v, want add_f32 5 times", times)
	}
	t.Setenv("QWENGO_CUDA_KERNEL_TIMES", "0")
	if err := g.ProfileRange(true); err != nil {
		t.Fatal(err)
	}
	run(1)
	if err := g.ProfileRange(false); err != nil {
		t.Fatal(err)
	}
	if times := g.KernelTimes(); times != nil {
		t.Fatalf("untimed range: kernel times %+v, want none", times)
	}
	// backend.Profile turns the timing on by itself (the variable is "0" here).
	times, err := backend.Profile(g, func() error { run(4); return nil })
	if err != nil || len(times) != 1 || times[0].Name != "add_f32" || times[0].Count != 4 {
		t.Fatalf("backend.Profile: %+v, %v; want add_f32 4 times", times, err)
	}
}
