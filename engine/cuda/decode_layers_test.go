//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"testing"
	"time"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// TestDecodeLayers compares one-token decode steps through the persistent whole-stack kernel
// (backend.LayerDecoder) with the same steps op by op (Model.OpDecode) and, for the short
// context, with engine/cpu: logits within float tolerance (the kernel sums in another order),
// greedy tokens equal. Shapes: Qwen3-4B layers (four query heads a KV head), and a narrow model
// with two query heads a KV head; contexts past several keys a warp per chunk.
func TestDecodeLayers(t *testing.T) {
	g := openGPU(t)
	withDecodeLayers(t, g)
	withKV(t, g, tensor.F32) // the whole-stack kernel reads float32 caches (it declines bf16 ones)
	ctx := context.Background()
	const bound = 2e-4 // relative to the largest logit
	cases := []struct {
		name    string
		cfg     *qwen3.Config
		prefill int // tokens before the decode steps
		steps   int
		cpu     bool
	}{
		{"4B layers", &qwen3.Config{VocabSize: 512, HiddenSize: 2560, IntermediateSize: 9728, NumLayers: 2, NumHeads: 32,
			NumKVHeads: 8, HeadDim: 128, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true, MaxPositions: 4096, BOSTokenID: -1},
			3, 12, true},
		{"4B layers, context 1500", &qwen3.Config{VocabSize: 512, HiddenSize: 2560, IntermediateSize: 9728, NumLayers: 2,
			NumHeads: 32, NumKVHeads: 8, HeadDim: 128, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true, MaxPositions: 4096,
			BOSTokenID: -1}, 1500, 4, false},
		{"narrow, 2 heads a KV head", &qwen3.Config{VocabSize: 300, HiddenSize: 256, IntermediateSize: 640, NumLayers: 3,
			NumHeads: 4, NumKVHeads: 2, HeadDim: 128, RMSNormEps: 1e-6, RopeTheta: 1e4, MaxPositions: 4096, BOSTokenID: -1},
			5, 40, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opt := qwen3.RandomOptions{Seed: 11, NormJitter: 0.2, Precision: qwen3.NVFP4}
			gm, err := qwen3.NewRandom(c.cfg, g, opt)
			if err != nil {
				t.Fatal(err)
			}
			defer gm.Free()
			var cm *qwen3.Model
			if c.cpu {
				if cm, err = qwen3.NewRandom(c.cfg, cpu.New(), opt); err != nil {
					t.Fatal(err)
				}
			}
			ids := make([]int, c.prefill+c.steps)
			for i := range ids {
				ids[i] = (i*7919 + 13) % c.cfg.VocabSize
			}
			// run returns the logits of each decode step.
			run := func(m *qwen3.Model, opDecode bool) [][]float32 {
				m.OpDecode = opDecode
				cache, err := m.NewKVCache(len(ids))
				if err != nil {
					t.Fatal(err)
				}
				defer cache.Free()
				if _, err := m.Forward(ctx, ids[:c.prefill], cache, qwen3.LogitsNone); err != nil {
					t.Fatal(err)
				}
				var out [][]float32
				for p := c.prefill; p < len(ids); p++ {
					lg, err := m.Forward(ctx, ids[p:p+1], cache, qwen3.LogitsLast)
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, append([]float32(nil), lg.Data...))
				}
				return out
			}
			before := g.dl.launches
			whole := run(gm, false)
			if n := g.dl.launches - before; n != c.steps {
				t.Fatalf("the whole-stack decoder ran %d times for %d decode steps", n, c.steps)
			}
			ops := run(gm, true)
			var ref [][]float32
			if cm != nil {
				ref = run(cm, true)
			}
			for i := range whole {
				compareSlices(t, fmt.Sprintf("%s: kernel vs ops, step %d", c.name, i), whole[i], ops[i], bound)
				if ref != nil {
					compareSlices(t, fmt.Sprintf("%s: kernel vs cpu, step %d", c.name, i), whole[i], ref[i], bound)
				}
				if a, b := backend.ArgMax(whole[i]), backend.ArgMax(ops[i]); a != b {
					t.Errorf("%s step %d: greedy token %d, op by op %d", c.name, i, a, b)
				}
			}
		})
	}
}

// TestDecodeLayersDeclines checks that the decoder leaves what it does not take to the caller:
// dense weights, a head_dim other than 128, more rows than one.
func TestDecodeLayersDeclines(t *testing.T) {
	g := openGPU(t)
	withDecodeLayers(t, g)
	cfg := &qwen3.Config{VocabSize: 64, HiddenSize: 256, IntermediateSize: 384, NumLayers: 1, NumHeads: 4, NumKVHeads: 2,
		HeadDim: 128, RMSNormEps: 1e-6, RopeTheta: 1e4, MaxPositions: 64, BOSTokenID: -1}
	for _, c := range []struct {
		name string
		prec string
		rows int
		kv   tensor.DType
	}{{"bf16 weights", qwen3.BF16, 1, tensor.F32}, {"two rows", qwen3.NVFP4, 2, tensor.F32}, {"bf16 cache", qwen3.NVFP4, 1, tensor.BF16}} {
		t.Run(c.name, func(t *testing.T) {
			withKV(t, g, c.kv)
			m, err := qwen3.NewRandom(cfg, g, qwen3.RandomOptions{Seed: 1, Precision: c.prec})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Free()
			cache, err := m.NewKVCache(8)
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Free()
			x, err := g.Alloc(backend.Activations, c.rows, cfg.HiddenSize)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Free(x)
			l := m.Layers[0]
			ok, err := g.DecodeLayers(x, []backend.DecodeLayer{{InputNorm: l.InputNorm, PostNorm: l.PostNorm, QNorm: l.QNorm,
				KNorm: l.KNorm, Q: l.Q, K: l.K, V: l.V, O: l.O, Gate: l.Gate, Up: l.Up, Down: l.Down, KCache: cache.K(0),
				VCache: cache.V(0)}}, 0, backend.DecodeParams{NumHeads: 4, NumKVHeads: 2, HeadDim: 128, RopeTheta: 1e4, RMSNormEps: 1e-6})
			if ok || err != nil {
				t.Errorf("DecodeLayers = %v, %v; want false, nil", ok, err)
			}
		})
	}
}

func TestDLSplit(t *testing.T) {
	for _, c := range []struct{ tiles, steps, blocks, want int }{
		{160, 32, 132, 4},  // o_proj of Qwen3-4B on an H200: 640 items, at most 5 a block
		{160, 76, 132, 4},  // down_proj
		{384, 20, 132, 1},  // q|k|v: whole tiles are even enough
		{16, 2, 132, 2},    // tiny: as even as it gets
		{1216, 20, 132, 1}, // gate|up
	} {
		if got := dlSplit(c.tiles, c.steps, c.blocks); got != c.want {
			t.Errorf("dlSplit(%d, %d, %d) = %d, want %d", c.tiles, c.steps, c.blocks, got, c.want)
		}
	}
}

// withDecodeLayers turns the whole-stack decoder on for the test (it is off by default).
func withDecodeLayers(t *testing.T, g *Backend) {
	old := g.decodeLayers
	g.decodeLayers = true
	t.Cleanup(func() { g.decodeLayers = old })
}

// randomLayers4B is a random NVFP4 model of n Qwen3-4B-shaped layers with a 512-token vocabulary
// (so that a decode step is its layers), for the decode figures.
func randomLayers4B(t *testing.T, g backend.Backend, n int) (*qwen3.Config, *qwen3.Model) {
	t.Helper()
	cfg := &qwen3.Config{VocabSize: 512, HiddenSize: 2560, IntermediateSize: 9728, NumLayers: n, NumHeads: 32,
		NumKVHeads: 8, HeadDim: 128, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true, MaxPositions: 16384, BOSTokenID: -1}
	m, err := qwen3.NewRandom(cfg, g, qwen3.RandomOptions{Seed: 5, Precision: qwen3.NVFP4})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, m
}

// TestFiguresDecodeLayers times the whole-stack decoder's phases from the clock64 stamps every
// block leaves at each grid barrier (arrival, departure): per phase of a layer, the mean and
// slowest block's work between barriers and the barrier's own latency (the last arriver's
// wait). Qwen3-4B layer shapes, 4 layers, context 512.
func TestFiguresDecodeLayers(t *testing.T) {
	benchEnabled(t)
	g := openGPU(t)
	withDecodeLayers(t, g)
	ctx := context.Background()
	const layers = 4
	cfg, m := randomLayers4B(t, g, layers)
	defer m.Free()
	for _, ctxLen := range []int{512, 8192} {
		cache, err := m.NewKVCache(ctxLen + 8)
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]int, ctxLen)
		for i := range ids {
			ids[i] = i % cfg.VocabSize
		}
		if _, err := m.Forward(ctx, ids[:ctxLen-1], cache, qwen3.LogitsNone); err != nil {
			t.Fatal(err)
		}
		nb := dlBarriers(layers)
		if err := g.do(func() error {
			return g.grow(&g.dl.clocks, backend.Workspace, int64(16*nb*g.sms+8*16*layers*g.sms), "decode layers clocks")
		}); err != nil {
			t.Fatal(err)
		}
		g.dl.host = nil // re-upload the descriptor with the clocks pointer
		const reps = 5
		sum := make([][3]float64, nb) // per barrier: mean work, slowest block's work, barrier latency
		var gemv [4][4]float64        // per GEMV phase: prologue, items, waits for copies, producer's waits (mean)
		var wall float64
		for r := 0; r < reps; r++ {
			if err := cache.Truncate(ctxLen - 1); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if _, err := m.Forward(ctx, ids[ctxLen-1:], cache, qwen3.LogitsNone); err != nil {
				t.Fatal(err)
			}
			ck := make([]int64, 2*nb*g.sms+16*layers*g.sms)
			if err := g.do(func() error {
				return memcpyDtoH(unsafe.Pointer(&ck[0]), g.dl.clocks.ptr, int64(8*len(ck)))
			}); err != nil {
				t.Fatal(err)
			}
			wall += time.Since(start).Seconds() / reps
			for li := 0; li < layers; li++ {
				for ph := 0; ph < 4; ph++ {
					for bl := 0; bl < g.sms; bl++ {
						for j := 0; j < 4; j++ {
							gemv[ph][j] += float64(ck[2*nb*g.sms+((li*4+ph)*g.sms+bl)*4+j]) / float64(reps*layers*g.sms)
						}
					}
				}
			}
			for k := 0; k < nb; k++ {
				var mean, worst, lastArr, lastWait float64
				for bl := 0; bl < g.sms; bl++ {
					arr, dep := ck[(k*g.sms+bl)*2], ck[(k*g.sms+bl)*2+1]
					if k > 0 {
						w := float64(arr - ck[((k-1)*g.sms+bl)*2+1])
						mean += w / float64(g.sms)
						worst = max(worst, w)
					}
					if float64(arr) > lastArr || bl == 0 {
						lastArr, lastWait = float64(arr), float64(dep-arr)
					}
				}
				sum[k][0] += mean / reps
				sum[k][1] += worst / reps
				sum[k][2] += lastWait / reps
			}
		}
		if err := g.do(func() error { g.free(g.dl.clocks.ptr); g.dl.clocks, g.dl.host = devBuf{}, nil; return nil }); err != nil {
			t.Fatal(err)
		}
		// Phase names by the barrier that ends them; layer 0 has no entry barrier.
		names := []string{"A q|k|v", "B attention", "C o_proj", "D gate|up", "E down"}
		var tot [5][3]float64
		var cnt [5]int
		// Barrier k ends, in layer 0: A, B, C, D (k = 0..3); then per layer E, A, B, C, D; the
		// last ends the last E. Barrier 0 has no phase before it in this launch to time.
		for k := 1; k < nb; k++ {
			ph := k
			if k >= 4 {
				ph = []int{4, 0, 1, 2, 3}[(k-4)%5]
			}
			for j := 0; j < 3; j++ {
				tot[ph][j] += sum[k][j]
			}
			cnt[ph]++
		}
		const cuDevAttrClockRate = 13 // CU_DEVICE_ATTRIBUTE_CLOCK_RATE, kHz
		clockKHz, err := deviceAttribute(g.dev, cuDevAttrClockRate)
		if err != nil || clockKHz <= 0 {
			t.Fatalf("SM clock rate: %d kHz, %v", clockKHz, err)
		}
		us := func(cycles float64) float64 { return cycles / float64(clockKHz) * 1e3 }
		t.Logf("figure decode layers, context %d, %d layers (%.0f µs a call with the host): per layer, µs (SM clock %d MHz)", ctxLen, layers, wall*1e6, clockKHz/1000)
		var layer float64
		for ph := range names {
			n := float64(max(cnt[ph], 1))
			t.Logf("  %-12s work mean %6.2f  slowest block %6.2f  barrier %5.2f", names[ph], us(tot[ph][0]/n), us(tot[ph][1]/n), us(tot[ph][2]/n))
			layer += us(tot[ph][1]/n) + us(tot[ph][2]/n)
		}
		t.Logf("  one layer ≈ %.1f µs (slowest blocks + barriers)", layer)
		for ph, n := range []string{"A q|k|v", "C o_proj", "D gate|up", "E down"} {
			t.Logf("  %-12s prologue %6.2f  items %6.2f  (waiting for weights %6.2f; producer waiting for stages %6.2f)", n,
				us(gemv[ph][0]), us(gemv[ph][1]), us(gemv[ph][2]), us(gemv[ph][3]))
		}
		cache.Free()
	}
}
