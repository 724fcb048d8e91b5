package qwen3

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

// noBatched is the CPU backend without backend.Batched (and without Fused): ForwardBatch then
// runs the per-sequence part one sequence at a time.
type noBatched struct{ backend.Training }

// batchBackends are the ways ForwardBatch can run on the CPU: the batched ops with the plain
// block, with the fused block (composedFused adds backend.Fused; the batched ops are the CPU's),
// with the fused decode ops (composedDecode: backend.FusedDecode for up to 8 rows) and the
// fallback without batched ops.
var batchBackends = []struct {
	name string
	wrap func(*cpu.Backend) backend.Backend
}{
	{"batched", func(b *cpu.Backend) backend.Backend { return b }},
	{"batched fused", func(b *cpu.Backend) backend.Backend { return composedFused{b} }},
	{"batched fused decode", func(b *cpu.Backend) backend.Backend { return composedDecode{composedFused{b}, 8} }},
	{"per sequence", func(b *cpu.Backend) backend.Backend { return noBatched{b} }},
}

// TestForwardBatch: three sequences of different prompt lengths, prefilled through their
// Seq caches and advanced together, give at every step the logits (and greedy picks) of
// decoding each alone with Forward, bit for bit on the CPU; a sequence reset and refilled in
// the middle does too, and the batch cache's rows end up equal to the lone caches'.
func TestForwardBatch(t *testing.T) {
	for _, bk := range batchBackends {
		t.Run(bk.name, func(t *testing.T) {
			m := newTiny(t, true, BF16)
			m.B = bk.wrap(m.B.(*cpu.Backend))
			_, batched := backend.UseBatched(m.B)
			if batched == (bk.name == "per sequence") {
				t.Fatalf("backend %T: batched ops %v", m.B, batched)
			}
			ctx := context.Background()
			prompts := [][]int{randIDs(21, 5, 1000), randIDs(22, 1, 1000), randIDs(23, 9, 1000)}
			const capacity = 24
			B := len(prompts)
			bc, err := m.NewBatchKVCache(B, capacity)
			if err != nil {
				t.Fatal(err)
			}
			defer bc.Free()
			alone := make([]*KVCache, B)
			next := make([]int, B)
			prefill := func(r int, p []int) {
				t.Helper()
				if alone[r] != nil {
					alone[r].Free()
				}
				alone[r] = newCache(t, m, capacity)
				bc.Seq(r).Reset()
				got := forward(t, m, p, bc.Seq(r), LogitsLast)
				want := forward(t, m, p, alone[r], LogitsLast)
				if e := relErr(got.Data, want.Data); e != 0 {
					t.Fatalf("prefill of sequence %d through the batch cache: logits differ by %.3g", r, e)
				}
				next[r] = backend.ArgMax(want.Row(0))
			}
			for r, p := range prompts {
				prefill(r, p)
			}
			defer func() {
				for _, c := range alone {
					c.Free()
				}
			}()
			for step := 0; step < 8; step++ {
				if step == 4 {
					prefill(1, randIDs(24, 3, 1000)) // sequence 1 starts over with a new prompt
				}
				mode := LogitsLast
				if step%2 == 1 {
					mode = LogitsGreedy
				}
				got, err := m.ForwardBatch(ctx, next, bc, mode)
				if err != nil {
					t.Fatal(err)
				}
				for r := range prompts {
					want := forward(t, m, []int{next[r]}, alone[r], LogitsLast)
					if got.Pos[r] != want.Pos0 || bc.Len(r) != alone[r].Len() {
						t.Fatalf("step %d sequence %d: position %d, length %d; alone %d, %d", step, r, got.Pos[r], bc.Len(r), want.Pos0, alone[r].Len())
					}
					pick := backend.ArgMax(want.Row(0))
					if mode == LogitsLast {
						if e := relErr(got.Row(r), want.Row(0)); e != 0 {
							t.Fatalf("step %d sequence %d: logits differ from decoding alone by %.3g", step, r, e)
						}
					} else if got.Data != nil || got.Greedy[r] != pick {
						t.Fatalf("step %d sequence %d: greedy %v, want %d", step, r, got.Greedy, pick)
					}
					next[r] = pick
				}
			}
			for r := range prompts {
				n := alone[r].Len()
				for l := 0; l < m.Config.NumLayers; l++ {
					for _, kv := range [][2]backend.Tensor{{bc.K(l), alone[r].K(l)}, {bc.V(l), alone[r].V(l)}} {
						a, _ := m.B.Download(kv[0], nil)
						b, _ := m.B.Download(kv[1], nil)
						w := bc.Width()
						if e := relErr(a[r*capacity*w:(r*capacity+n)*w], b[:n*w]); e != 0 {
							t.Fatalf("sequence %d layer %d: cached rows differ by %.3g", r, l, e)
						}
					}
				}
			}
		})
	}
}

// TestForwardBatchErrors: bad calls name what is wrong and leave every sequence's length as it
// was.
func TestForwardBatchErrors(t *testing.T) {
	m := newTiny(t, true, BF16)
	other := newTiny(t, false, BF16)
	other.Config.NumLayers = 1
	other.Layers = other.Layers[:1]
	bc, err := m.NewBatchKVCache(2, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Free()
	forward(t, m, []int{1, 2}, bc.Seq(0), LogitsNone)
	forward(t, m, []int{3, 4, 5, 6}, bc.Seq(1), LogitsNone) // full
	roomy, err := m.NewBatchKVCache(2, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer roomy.Free()
	foreign, err := other.NewBatchKVCache(2, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Free()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	bg := context.Background()
	for _, c := range []struct {
		name  string
		ctx   context.Context
		ids   []int
		cache *BatchKVCache
		mode  LogitsMode
		want  string
	}{
		{"count", bg, []int{1}, bc, LogitsLast, "1 tokens for a cache of 2 sequences"},
		{"nil cache", bg, []int{1, 2}, nil, LogitsLast, "no cache"},
		{"full", bg, []int{1, 2}, bc, LogitsLast, "sequence 1: KV cache full"},
		{"mode", bg, []int{1, 2}, roomy, LogitsAll, "logits mode all"},
		{"foreign cache", bg, []int{1, 2}, foreign, LogitsLast, "was not made for this model"},
		{"vocab", bg, []int{1, 5000}, roomy, LogitsLast, "5000"},
		{"cancelled", cancelled, []int{1, 2}, roomy, LogitsLast, "context canceled"},
	} {
		_, err := m.ForwardBatch(c.ctx, c.ids, c.cache, c.mode)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
		if got := bc.Lens(); got[0] != 2 || got[1] != 4 {
			t.Fatalf("%s: lengths moved to %v", c.name, got)
		}
		if got := roomy.Lens(); got[0] != 0 || got[1] != 0 {
			t.Fatalf("%s: lengths moved to %v", c.name, got)
		}
	}
	if _, err := m.NewBatchKVCache(2, 513); err == nil || !strings.Contains(err.Error(), "max_position_embeddings") {
		t.Errorf("cache past max_position_embeddings: %v", err)
	}
}

// BenchmarkForwardBatch is BenchmarkDecodeBatch's workload through a batch KV cache and
// ForwardBatch (the CPU's batched ops): 8 sequences, context 32..63.
func BenchmarkForwardBatch(b *testing.B) {
	const prompt, maxCtx, B = 32, 64, 8
	for _, c := range benchCases {
		b.Run(c.size+"/"+c.prec, func(b *testing.B) {
			m := benchModel(b, c.size, c.prec)
			cache, err := m.NewBatchKVCache(B, maxCtx)
			if err != nil {
				b.Fatal(err)
			}
			defer cache.Free()
			for r := 0; r < B; r++ {
				forward(b, m, randIDs(uint64(10+r), prompt, m.Config.VocabSize), cache.Seq(r), LogitsNone)
			}
			next := make([]int, B)
			ctx := context.Background()
			start := time.Now()
			n := 0
			for b.Loop() {
				if cache.Len(0) == maxCtx {
					for r := 0; r < B; r++ {
						cache.Seq(r).Truncate(prompt)
					}
				}
				lg, err := m.ForwardBatch(ctx, next, cache, LogitsGreedy)
				if err != nil {
					b.Fatal(err)
				}
				copy(next, lg.Greedy)
				n += B
			}
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "tok/s")
		})
	}
}
