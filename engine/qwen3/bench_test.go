package qwen3

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/cpu"
)

// qwen06B has the shapes of Qwen3-0.6B.
func qwen06B() *Config {
	return &Config{HiddenSize: 1024, IntermediateSize: 3072, NumLayers: 28, NumHeads: 16, NumKVHeads: 8, HeadDim: 128,
		VocabSize: 151936, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true, MaxPositions: 40960,
		BOSTokenID: 151643, EOSTokenIDs: []int{151645}}
}

var benchModels struct {
	sync.Mutex
	m map[string]*Model
}

// benchModel builds (once per process) a random model of the named size and precision.
func benchModel(b *testing.B, size, prec string) *Model {
	if size == "0.6B" && testing.Short() {
		b.Skip("0.6B-shaped model skipped under -short")
	}
	benchModels.Lock()
	defer benchModels.Unlock()
	key := size + "/" + prec
	if m := benchModels.m[key]; m != nil {
		return m
	}
	cfg := tinyConfig(true)
	if size == "0.6B" {
		cfg = qwen06B()
	}
	start := time.Now()
	m, err := NewRandom(cfg, cpu.New(), RandomOptions{Seed: 1, Precision: prec})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%s: built in %v", m, time.Since(start).Round(time.Millisecond))
	if benchModels.m == nil {
		benchModels.m = map[string]*Model{}
	}
	benchModels.m[key] = m
	return m
}

var benchCases = []struct{ size, prec string }{{"tiny", BF16}, {"tiny", NVFP4}, {"0.6B", BF16}, {"0.6B", NVFP4}}

// BenchmarkPrefill measures a prompt's forward pass into an empty cache (last-token logits).
func BenchmarkPrefill(b *testing.B) {
	for _, c := range benchCases {
		T := 128
		if c.size == "0.6B" {
			T = 64
		}
		b.Run(c.size+"/"+c.prec, func(b *testing.B) {
			m := benchModel(b, c.size, c.prec)
			ids := randIDs(1, T, m.Config.VocabSize)
			cache := newCache(b, m, T)
			defer cache.Free()
			start := time.Now()
			n := 0
			for b.Loop() {
				cache.Reset()
				forward(b, m, ids, cache, LogitsLast)
				n++
			}
			b.ReportMetric(float64(n*T)/time.Since(start).Seconds(), "tok/s")
		})
	}
}

// BenchmarkDecode measures one-token steps after a 32-token prompt (context 32..63).
func BenchmarkDecode(b *testing.B) {
	const prompt, maxCtx = 32, 64
	for _, c := range benchCases {
		b.Run(c.size+"/"+c.prec, func(b *testing.B) {
			m := benchModel(b, c.size, c.prec)
			cache := newCache(b, m, maxCtx)
			defer cache.Free()
			forward(b, m, randIDs(2, prompt, m.Config.VocabSize), cache, LogitsNone)
			next := []int{1}
			ctx := context.Background()
			start := time.Now()
			n := 0
			for b.Loop() {
				if cache.Len() == maxCtx {
					cache.Truncate(prompt)
				}
				lg, err := m.Forward(ctx, next, cache, LogitsLast)
				if err != nil {
					b.Fatal(err)
				}
				next[0] = argmax(lg.Row(0))
				n++
			}
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "tok/s")
		})
	}
}

// BenchmarkDecodeBatch measures batched decoding against the same number of sequences decoded
// one Forward each, side by side: B sequences after a 32-token prompt each (context 32..63),
// greedy picks; tok/s counts every sequence's token.
func BenchmarkDecodeBatch(b *testing.B) {
	const prompt, maxCtx, B = 32, 64, 8
	for _, c := range benchCases {
		for _, batched := range []bool{false, true} {
			name := c.size + "/" + c.prec + "/one-forward-each"
			if batched {
				name = c.size + "/" + c.prec + "/DecodeBatch"
			}
			b.Run(name, func(b *testing.B) {
				m := benchModel(b, c.size, c.prec)
				caches := make([]*KVCache, B)
				next := make([]int, B)
				for r := range caches {
					caches[r] = newCache(b, m, maxCtx)
					defer caches[r].Free()
					forward(b, m, randIDs(uint64(10+r), prompt, m.Config.VocabSize), caches[r], LogitsNone)
				}
				ctx := context.Background()
				start := time.Now()
				n := 0
				for b.Loop() {
					if caches[0].Len() == maxCtx {
						for _, c := range caches {
							c.Truncate(prompt)
						}
					}
					if batched {
						lg, err := m.DecodeBatch(ctx, next, caches, LogitsGreedy)
						if err != nil {
							b.Fatal(err)
						}
						copy(next, lg.Greedy)
					} else {
						for r, c := range caches {
							lg, err := m.Forward(ctx, next[r:r+1], c, LogitsGreedy)
							if err != nil {
								b.Fatal(err)
							}
							next[r] = lg.Greedy
						}
					}
					n += B
				}
				b.ReportMetric(float64(n)/time.Since(start).Seconds(), "tok/s")
			})
		}
	}
}

// BenchmarkNewRandom builds two Qwen3-4B-shaped NVFP4 layers (~200M parameters, a 512-token
// vocabulary) on the CPU backend: the random model every decode figure test builds 36 of
// (randomSource generates tensors ahead of the loader on other cores; NOTES: session 18).
func BenchmarkNewRandom(b *testing.B) {
	cfg := &Config{VocabSize: 512, HiddenSize: 2560, IntermediateSize: 9728, NumLayers: 2, NumHeads: 32,
		NumKVHeads: 8, HeadDim: 128, RMSNormEps: 1e-6, RopeTheta: 1e6, TieEmbeddings: true, MaxPositions: 4096, BOSTokenID: -1}
	for b.Loop() {
		m, err := NewRandom(cfg, cpu.New(), RandomOptions{Seed: 5, Precision: NVFP4})
		if err != nil {
			b.Fatal(err)
		}
		m.Free()
	}
}
