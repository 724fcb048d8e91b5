package qwen3_test

import (
	"context"
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
	"github.com/qwengo/qwengo/engine/qwen3"
)

// A model on the CPU backend, a KV cache, a prompt prefilled in one call and greedy decoding
// one token at a time. A real checkpoint loads with qwen3.Open(dir, b, qwen3.LoadOptions{}).
func Example() {
	cfg := &qwen3.Config{HiddenSize: 64, IntermediateSize: 160, NumLayers: 2, NumHeads: 4, NumKVHeads: 2,
		HeadDim: 32, VocabSize: 1000, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true}
	b := cpu.New()
	m, err := qwen3.NewRandom(cfg, b, qwen3.RandomOptions{Seed: 1, Std: 0.05, Precision: qwen3.F32})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Free()
	cache, err := m.NewKVCache(32)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cache.Free()

	ctx := context.Background()
	logits, err := m.Forward(ctx, []int{11, 22, 33, 44}, cache, qwen3.LogitsLast)
	var out []int
	for err == nil && len(out) < 5 {
		next := argmax(logits.Row(0))
		out = append(out, next)
		logits, err = m.Forward(ctx, []int{next}, cache, qwen3.LogitsLast)
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("generated:", len(out), "tokens; cache holds", cache.Len(), "of", cache.Cap())
	st := b.Memory()
	fmt.Println("weights:", backend.Human(st.InUse[backend.Weights]), "kv cache:", backend.Human(cache.Bytes()),
		"activations now:", st.InUse[backend.Activations])
	// Output:
	// generated: 5 tokens; cache holds 9 of 32
	// weights: 683.75 KiB kv cache: 32.00 KiB activations now: 0
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}
