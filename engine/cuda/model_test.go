//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/qwen3"
	"github.com/qwengo/qwengo/engine/tensor"
)

const tinyTied = "../qwen3/testdata/tiny-tied"

// TestModelParity loads the tiny tied checkpoint on both backends (as stored, as bf16 and as
// NVFP4) and compares the logits of a whole-sequence forward and of a prefill followed by
// cached one-token decode steps.
func TestModelParity(t *testing.T) {
	g := openGPU(t)
	// Two layers of float32 ops with sums in another order: relative to the largest logit.
	const bound = 1e-4
	ids := []int{1, 17, 300, 42, 42, 7, 511, 90, 3, 250, 128, 64}
	for _, prec := range []string{qwen3.KeepStored, qwen3.BF16, qwen3.NVFP4} {
		for _, dt := range kvTypes {
			label := prec
			if label == "" {
				label = "stored"
			}
			label += "/kv " + dt.String()
			t.Run(label, func(t *testing.T) { modelParity(t, g, prec, dt, label, ids, bound) })
		}
	}
	if m := g.Memory(); m.InUse[backend.Weights] != 0 || m.InUse[backend.KVCache] != 0 || m.InUse[backend.Activations] != 0 {
		t.Errorf("models freed but memory still held: %s", m)
	}
}

// modelParity is one case of TestModelParity: weights at precision prec, KV caches of type dt on
// both backends.
func modelParity(t *testing.T, g *Backend, prec string, dt tensor.DType, label string, ids []int, bound float64) {
	ctx := context.Background()
	c := withKV(t, g, dt)
	cm, err := qwen3.Open(tinyTied, c, qwen3.LoadOptions{Precision: prec})
	if err != nil {
		t.Fatal(err)
	}
	gm, err := qwen3.Open(tinyTied, g, qwen3.LoadOptions{Precision: prec})
	if err != nil {
		t.Fatal(err)
	}
	defer gm.Free()
	want, err := cm.Forward(ctx, ids, nil, qwen3.LogitsAll)
	if err != nil {
		t.Fatal(err)
	}
	got, err := gm.Forward(ctx, ids, nil, qwen3.LogitsAll)
	if err != nil {
		t.Fatal(err)
	}
	compareSlices(t, fmt.Sprintf("model %s logits, %d tokens", label, len(ids)), got.Data, want.Data, bound)

	// Prefill 5 tokens, then decode the rest one at a time through the KV cache.
	cc, err := cm.NewKVCache(len(ids))
	if err != nil {
		t.Fatal(err)
	}
	gc, err := gm.NewKVCache(len(ids))
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Free()
	for p := 5; p <= len(ids); p++ {
		chunk := ids[:5]
		if p > 5 {
			chunk = ids[p-1 : p]
		}
		w, err := cm.Forward(ctx, chunk, cc, qwen3.LogitsLast)
		if err != nil {
			t.Fatal(err)
		}
		gl, err := gm.Forward(ctx, chunk, gc, qwen3.LogitsLast)
		if err != nil {
			t.Fatal(err)
		}
		if gl.Pos0 != w.Pos0 {
			t.Fatalf("logits position %d, want %d", gl.Pos0, w.Pos0)
		}
		compareSlices(t, fmt.Sprintf("model %s cached, position %d", label, w.Pos0), gl.Data, w.Data, bound)
		// The cached decode equals the full recompute's row.
		compareSlices(t, fmt.Sprintf("model %s cached vs full, position %d", label, w.Pos0), gl.Data, got.Row(w.Pos0), bound)
	}
	m := g.Memory()
	t.Logf("after %s: %s", label, m)
	if m.InUse[backend.Weights] < gm.WeightBytes() {
		t.Errorf("weights in use %d < the model's %d", m.InUse[backend.Weights], gm.WeightBytes())
	}
}

// TestFusedBlock runs the same prefill and cached decode steps with the fused block kernels
// (backend.Fused) and with the basic ops: the logits must be identical, bit for bit, on the
// tiny checkpoint (head_dim 32, fused norms and RoPE, per-weight products) and on a random
// 2-layer model with Qwen3-4B layer shapes and NVFP4 linears (q/k/v and gate/up in one
// persistent-GEMV launch each).
func TestFusedBlock(t *testing.T) {
	g := openGPU(t)
	ctx := context.Background()
	big := &qwen3.Config{VocabSize: 512, HiddenSize: 2560, IntermediateSize: 9728, NumLayers: 2, NumHeads: 32, NumKVHeads: 8,
		HeadDim: 128, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true, MaxPositions: 4096, BOSTokenID: -1}
	for _, c := range []struct {
		name string
		open func() (*qwen3.Model, error)
	}{
		{"tiny-tied", func() (*qwen3.Model, error) { return qwen3.Open(tinyTied, g, qwen3.LoadOptions{}) }},
		{"4B layers nvfp4", func() (*qwen3.Model, error) {
			return qwen3.NewRandom(big, g, qwen3.RandomOptions{Seed: 3, NormJitter: 0.2, Precision: qwen3.NVFP4})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := c.open()
			if err != nil {
				t.Fatal(err)
			}
			defer m.Free()
			ids := []int{1, 17, 300, 42, 42, 7, 51, 90, 3, 250}
			run := func(unfused bool) [][]float32 {
				m.Unfused = unfused
				m.OpDecode = true // the whole-stack decoder sums in another order (TestDecodeLayers)
				cache, err := m.NewKVCache(len(ids))
				if err != nil {
					t.Fatal(err)
				}
				defer cache.Free()
				var out [][]float32
				for p := 4; p <= len(ids); p++ {
					chunk := ids[:4]
					if p > 4 {
						chunk = ids[p-1 : p]
					}
					lg, err := m.Forward(ctx, chunk, cache, qwen3.LogitsLast)
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, append([]float32(nil), lg.Data...))
				}
				return out
			}
			fused, plain := run(false), run(true)
			for i := range plain {
				compareSlices(t, fmt.Sprintf("%s fused vs unfused, step %d", c.name, i), fused[i], plain[i], 0)
			}
		})
	}
}
