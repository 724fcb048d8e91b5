//go:build cuda

package cuda

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

// batchPositions returns B positions below capacity, spread from 0 to capacity-1.
func batchPositions(B, capacity int) []int {
	pos := make([]int, B)
	for r := range pos {
		pos[r] = (r*7919 + r*r*13) % capacity
	}
	pos[0], pos[B-1] = capacity-1, 0 // a full sequence and an empty history
	return pos
}

// TestBatchedOps compares every backend.Batched op with the CPU reference (itself the
// composition of the single-sequence ops, engine/cpu's TestBatched), on the grouped decode
// kernel (head_dim 128) and on the split/combine kernels, with batches of one launch and of
// several (more than batchMax rows).
func TestBatchedOps(t *testing.T) {
	for _, dt := range kvTypes {
		t.Run(dt.String(), func(t *testing.T) { testBatchedOps(t, dt) })
	}
}

// testBatchedOps runs TestBatchedOps' cases with KV caches of type dt (the CPU's holding the
// same values).
func testBatchedOps(t *testing.T, dt tensor.DType) {
	g := openGPU(t)
	c := withKV(t, g, dt)
	const theta, eps = 1e6, 1e-6
	for i, s := range []struct{ B, capacity, heads, kv, hd int }{
		{8, 1025, 32, 8, 128}, // the benchmark's shape: Qwen3-4B heads at context 1024
		{3, 9, 4, 2, 32},      // the tiny checkpoint's heads
		{1, 1, 2, 2, 16},
		{40, 70, 16, 8, 128}, // two launches per op
		{5, 3000, 8, 1, 64},  // split over keys, GQA 8:1
		{33, 300, 6, 3, 256}, // head_dim 256, two launches
	} {
		name := fmt.Sprintf("B=%d cap=%d heads=%d/%d hd=%d", s.B, s.capacity, s.heads, s.kv, s.hd)
		pos := batchPositions(s.B, s.capacity)
		qw, kw, rows := s.heads*s.hd, s.kv*s.hd, s.B*s.capacity
		seed := uint64(10 * i)

		cx, gx := pair(t, c, g, s.B, qw, randn(s.B*qw, seed, 1))
		co, gO := pair(t, c, g, s.B, qw, nil)
		if err := errors.Join(c.RoPEAt(co, cx, s.hd, pos, theta), g.RoPEAt(gO, gx, s.hd, pos, theta)); err != nil {
			t.Fatal(err)
		}
		compare(t, name+" rope at", c, g, co, gO, 1e-6)
		if err := g.RoPEAt(gx, gx, s.hd, pos, theta); err != nil {
			t.Fatal(err)
		}
		compare(t, name+" rope at in place", c, g, co, gx, 1e-6)

		cache := randn(rows*kw, seed+1, 1)
		ksrc := randn(s.B*kw, seed+2, 1)
		cs, gs := pair(t, c, g, s.B, kw, ksrc)
		ckc, gkc := pairKV(t, c, g, rows, kw, cache)
		cacheRows := backend.CacheRows(s.capacity, pos)
		if err := errors.Join(c.ScatterRows(ckc, cacheRows, cs), g.ScatterRows(gkc, cacheRows, gs)); err != nil {
			t.Fatal(err)
		}
		compare(t, name+" scatter rows", c, g, ckc, gkc, 0)

		// q/k norm, RoPE and the cache write, fused.
		cq, gq := pair(t, c, g, s.B, qw, randn(s.B*qw, seed+3, 2))
		ck, gk := pair(t, c, g, s.B, kw, randn(s.B*kw, seed+4, 2))
		cv, gv := pair(t, c, g, s.B, kw, randn(s.B*kw, seed+5, 2))
		cqn, gqn := pair(t, c, g, 1, s.hd, randn(s.hd, seed+6, 1))
		ckn, gkn := pair(t, c, g, 1, s.hd, randn(s.hd, seed+7, 1))
		cqr, gqr := pair(t, c, g, s.B, qw, nil)
		ckr, gkr := pair(t, c, g, s.B, kw, nil)
		ck2, gk2 := pairKV(t, c, g, rows, kw, randn(rows*kw, seed+8, 1))
		cv2, gv2 := pairKV(t, c, g, rows, kw, randn(rows*kw, seed+9, 1))
		if err := errors.Join(
			c.QKNormRoPECacheBatch(cqr, ckr, cq, ck, cv, cqn, ckn, ck2, cv2, s.hd, s.capacity, pos, theta, eps),
			g.QKNormRoPECacheBatch(gqr, gkr, gq, gk, gv, gqn, gkn, gk2, gv2, s.hd, s.capacity, pos, theta, eps),
		); err != nil {
			t.Fatal(err)
		}
		compare(t, name+" qk norm+rope+cache: qr", c, g, cqr, gqr, 1e-6)
		compare(t, name+" qk norm+rope+cache: kr", c, g, ckr, gkr, 1e-6)
		kBound := 1e-6
		if dt == tensor.BF16 {
			// Keys ~1e-7 apart on the two backends can round to neighbouring bf16 values.
			kBound = 1.0 / 256
		}
		compare(t, name+" qk norm+rope+cache: k cache", c, g, ck2, gk2, kBound)
		compare(t, name+" qk norm+rope+cache: v cache", c, g, cv2, gv2, 0)
		if dt == tensor.BF16 {
			// The attention below compares kernels, not roundings: the CPU takes the GPU's keys.
			keys, err := g.Download(gk2, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Upload(ck2, keys); err != nil {
				t.Fatal(err)
			}
		}

		// Attention over the caches just written, on each kernel that takes the shape.
		ca, ga := pair(t, c, g, s.B, qw, nil)
		if err := c.AttentionBatch(ca, cqr, ck2, cv2, s.capacity, pos, s.heads, s.kv, s.hd); err != nil {
			t.Fatal(err)
		}
		if err := g.AttentionBatch(ga, gqr, gk2, gv2, s.capacity, pos, s.heads, s.kv, s.hd); err != nil {
			t.Fatal(err)
		}
		compare(t, name+" attention batch", c, g, ca, ga, 1e-5)
		if s.hd == attDecodeDim && batchDecodeAttnRegs[s.heads/s.kv] != "" {
			// The default above took the register walk; the shared-memory tile kernel too.
			g.decodeAttnTiles = true
			err := g.AttentionBatch(ga, gqr, gk2, gv2, s.capacity, pos, s.heads, s.kv, s.hd)
			g.decodeAttnTiles = false
			if err != nil {
				t.Fatal(err)
			}
			compare(t, name+" attention batch (tiles)", c, g, ca, ga, 1e-5)
		}
		if s.hd == attDecodeDim {
			err := g.Run(func() error {
				ts, err := g.tens("test", []backend.Tensor{ga, gqr}, "out", "q")
				if err != nil {
					return err
				}
				kt, vt, _, err := g.kvPair("test", gk2, gv2, "k", "v")
				if err != nil {
					return err
				}
				return g.attentionBatch(ts[0], ts[1], kt, vt, s.capacity, pos, s.heads, s.kv, s.hd, false)
			})
			if err != nil {
				t.Fatal(err)
			}
			compare(t, name+" attention batch (split/combine)", c, g, ca, ga, 1e-5)
		}
	}
}

// TestBatchedErrors: the GPU refuses what the CPU refuses, with the same words, before
// launching anything.
func TestBatchedErrors(t *testing.T) {
	g := openGPU(t)
	c := cpu.New()
	const B, capacity, nH, nKV, hd = 2, 4, 4, 2, 8
	qw, kw := nH*hd, nKV*hd
	cq, gq := pair(t, c, g, B, qw, randn(B*qw, 1, 1))
	ck, gk := pair(t, c, g, B, kw, randn(B*kw, 2, 1))
	co, gO := pair(t, c, g, B, qw, nil)
	ckc, gkc := pair(t, c, g, B*capacity, kw, nil)
	cvc, gvc := pair(t, c, g, B*capacity, kw, nil)
	for _, tc := range []struct {
		name string
		call func(bt backend.Batched, q, k, out, kc, vc backend.Tensor) error
	}{
		{"rope positions", func(bt backend.Batched, q, _, _, _, _ backend.Tensor) error {
			return bt.RoPEAt(q, q, hd, []int{1}, 1e4)
		}},
		{"scatter duplicate", func(bt backend.Batched, _, k, _, kc, _ backend.Tensor) error {
			return bt.ScatterRows(kc, []int{3, 3}, k)
		}},
		{"attention past capacity", func(bt backend.Batched, q, _, out, kc, vc backend.Tensor) error {
			return bt.AttentionBatch(out, q, kc, vc, capacity, []int{0, capacity}, nH, nKV, hd)
		}},
		{"attention heads", func(bt backend.Batched, q, _, out, kc, vc backend.Tensor) error {
			return bt.AttentionBatch(out, q, kc, vc, capacity, []int{0, 1}, nH, 3, hd)
		}},
	} {
		want := tc.call(c, cq, ck, co, ckc, cvc)
		got := tc.call(g, gq, gk, gO, gkc, gvc)
		if want == nil || got == nil || strings.TrimPrefix(got.Error(), "cuda: ") != strings.TrimPrefix(want.Error(), "cpu: ") {
			t.Errorf("%s: cuda says %v, cpu %v", tc.name, got, want)
		}
	}
	if err := g.ScatterRows(gkc, []int{0, 1}, gkc); err == nil {
		t.Error("scatter onto its own source accepted")
	}
	if err := g.AttentionBatch(gO, gq, gkc, nil, capacity, []int{0, 1}, nH, nKV, hd); err == nil || !strings.Contains(err.Error(), "v is <nil>") {
		t.Errorf("nil v: %v", err)
	}
}

// TestForwardBatchGPU runs qwen3.ForwardBatch on the GPU and checks, step after step, the
// logits against the CPU's and against decoding each sequence alone on the GPU, on the tiny
// checkpoint (head_dim 32: split/combine attention) and on a random 2-layer model with
// Qwen3-4B layer shapes and NVFP4 linears (head_dim 128: the grouped decode kernel), fused and
// unfused.
func TestForwardBatchGPU(t *testing.T) {
	t.Setenv("QWENGO_CUDA_BATCHED", "1") // the kernels under test, whatever the environment says
	g := openGPU(t)
	ctx := context.Background()
	big := &qwen3.Config{VocabSize: 512, HiddenSize: 2560, IntermediateSize: 9728, NumLayers: 2, NumHeads: 32, NumKVHeads: 8,
		HeadDim: 128, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true, MaxPositions: 4096, BOSTokenID: -1}
	for _, mc := range []struct {
		name string
		// bound on max|Δ|/max|logit|: float32 sums in other orders (TestModelParity's 1e-4); the
		// 4B-shaped products also differ between one row (alone: tensor-core GEMV, x split in
		// two f16 halves) and three (batched: the multi-row GEMV) over up to 9728 inputs.
		bound float64
		open  func(b backend.Backend) (*qwen3.Model, error)
	}{
		{"tiny-tied", 1e-4, func(b backend.Backend) (*qwen3.Model, error) { return qwen3.Open(tinyTied, b, qwen3.LoadOptions{}) }},
		{"4B layers nvfp4", 1e-3, func(b backend.Backend) (*qwen3.Model, error) {
			return qwen3.NewRandom(big, b, qwen3.RandomOptions{Seed: 3, NormJitter: 0.2, Precision: qwen3.NVFP4})
		}},
	} {
		cm, err := mc.open(withKV(t, g, g.KVCacheDType())) // the CPU's caches hold what the GPU's do
		if err != nil {
			t.Fatal(err)
		}
		gm, err := mc.open(g)
		if err != nil {
			t.Fatal(err)
		}
		for _, unfused := range []bool{false, true} {
			name := fmt.Sprintf("%s unfused=%v", mc.name, unfused)
			t.Run(name, func(t *testing.T) {
				gm.Unfused = unfused
				// six sequences: batched steps run the GEMV's two-pass forms (five to eight rows)
				prompts := [][]int{{1, 17, 300, 42, 42}, {7}, {51, 90, 3, 250, 128, 64, 9, 11, 400}, {2, 3}, {99, 98, 97}, {5, 500, 50}}
				const capacity, steps = 24, 6
				B := len(prompts)
				cb, err := cm.NewBatchKVCache(B, capacity)
				if err != nil {
					t.Fatal(err)
				}
				gb, err := gm.NewBatchKVCache(B, capacity)
				if err != nil {
					t.Fatal(err)
				}
				defer gb.Free()
				alone := make([]*qwen3.KVCache, B)
				next := make([]int, B)
				for r, p := range prompts {
					if alone[r], err = gm.NewKVCache(capacity); err != nil {
						t.Fatal(err)
					}
					defer alone[r].Free()
					for _, run := range []struct {
						m *qwen3.Model
						c *qwen3.KVCache
					}{{cm, cb.Seq(r)}, {gm, gb.Seq(r)}, {gm, alone[r]}} {
						lg, err := run.m.Forward(ctx, p, run.c, qwen3.LogitsLast)
						if err != nil {
							t.Fatal(err)
						}
						next[r] = backend.ArgMax(lg.Row(0))
					}
				}
				for step := 0; step < steps; step++ {
					want, err := cm.ForwardBatch(ctx, next, cb, qwen3.LogitsLast)
					if err != nil {
						t.Fatal(err)
					}
					got, err := gm.ForwardBatch(ctx, next, gb, qwen3.LogitsLast)
					if err != nil {
						t.Fatal(err)
					}
					for r := range prompts {
						one, err := gm.Forward(ctx, []int{next[r]}, alone[r], qwen3.LogitsLast)
						if err != nil {
							t.Fatal(err)
						}
						if got.Pos[r] != want.Pos[r] || got.Pos[r] != one.Pos0 {
							t.Fatalf("step %d sequence %d: position %d, cpu %d, alone %d", step, r, got.Pos[r], want.Pos[r], one.Pos0)
						}
						label := fmt.Sprintf("%s step %d sequence %d", name, step, r)
						compareSlices(t, label+" vs cpu", got.Row(r), want.Row(r), mc.bound)
						compareSlices(t, label+" vs alone", got.Row(r), one.Row(0), mc.bound)
						next[r] = backend.ArgMax(want.Row(r))
					}
				}
				greedy, err := gm.ForwardBatch(ctx, next, gb, qwen3.LogitsGreedy)
				if err != nil {
					t.Fatal(err)
				}
				if len(greedy.Greedy) != B || greedy.Data != nil {
					t.Errorf("greedy step: %d picks, data %v", len(greedy.Greedy), greedy.Data != nil)
				}
			})
		}
		gm.Free()
	}
}
