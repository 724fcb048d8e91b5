package qwen3

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

// composedFused is the CPU backend with backend.Fused implemented as the compositions its doc
// names, so the fused decoder block (blockFused, and DecodeBatch's fused branch) runs on the CPU.
type composedFused struct{ *cpu.Backend }

func (f composedFused) MatMulMany(outs []backend.Tensor, x backend.Tensor, ws []backend.Weight) error {
	for i, w := range ws {
		if err := f.MatMul(outs[i], x, w); err != nil {
			return err
		}
	}
	return nil
}

func (f composedFused) AddRMSNorm(out, x, delta, w backend.Tensor, eps float32) error {
	if err := f.Add(x, delta); err != nil {
		return err
	}
	return f.RMSNorm(out, x, w, eps)
}

func (f composedFused) QKNormRoPECache(qr, kr, q, k, v, qn, kn, kCache, vCache backend.Tensor, headDim, pos0 int, theta float64, eps float32) error {
	T := q.Rows()
	return errors.Join(
		f.RMSNorm(qr, q, qn, eps), f.RMSNorm(kr, k, kn, eps),
		f.RoPE(qr, qr, headDim, pos0, theta), f.RoPE(kr, kr, headDim, pos0, theta),
		f.CopyRows(kCache, pos0, kr, 0, T), f.CopyRows(vCache, pos0, v, 0, T))
}

// TestDecodeBatch: B sequences of different lengths advanced together give, step after step,
// the logits (and greedy picks) of decoding each alone, bit for bit on the CPU, with the
// unfused and the fused block; the caches end up equal.
func TestDecodeBatch(t *testing.T) {
	for _, variant := range []string{"unfused", "fused", "fused decode"} {
		t.Run(variant, func(t *testing.T) {
			m := newTiny(t, true, BF16)
			switch variant {
			case "fused":
				m.B = composedFused{m.B.(*cpu.Backend)}
			case "fused decode":
				m.B = composedDecode{composedFused{m.B.(*cpu.Backend)}, 8}
			}
			prompts := [][]int{randIDs(11, 5, 1000), randIDs(12, 1, 1000), randIDs(13, 9, 1000)}
			B := len(prompts)
			batch, alone := make([]*KVCache, B), make([]*KVCache, B)
			next := make([]int, B)
			for r, p := range prompts {
				batch[r], alone[r] = newCache(t, m, 32), newCache(t, m, 32)
				forward(t, m, p, batch[r], LogitsNone)
				next[r] = forward(t, m, p, alone[r], LogitsGreedy).Greedy
			}
			for step := 0; step < 6; step++ {
				mode := LogitsLast
				if step%2 == 1 {
					mode = LogitsGreedy
				}
				got, err := m.DecodeBatch(context.Background(), next, batch, mode)
				if err != nil {
					t.Fatal(err)
				}
				for r := range prompts {
					want := forward(t, m, []int{next[r]}, alone[r], LogitsLast)
					if got.Pos[r] != want.Pos0 || batch[r].Len() != alone[r].Len() {
						t.Fatalf("step %d sequence %d: position %d, cache %d; alone %d, %d", step, r, got.Pos[r], batch[r].Len(), want.Pos0, alone[r].Len())
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
				for l := 0; l < m.Config.NumLayers; l++ {
					for _, kv := range [][2]backend.Tensor{{batch[r].K(l), alone[r].K(l)}, {batch[r].V(l), alone[r].V(l)}} {
						a, _ := m.B.Download(kv[0], nil)
						b, _ := m.B.Download(kv[1], nil)
						if e := relErr(a, b); e != 0 && !math.IsNaN(e) {
							t.Fatalf("sequence %d layer %d: caches differ by %.3g", r, l, e)
						}
					}
				}
			}
		})
	}
}

// TestDecodeBatchErrors: bad calls name what is wrong and leave every cache as it was.
func TestDecodeBatchErrors(t *testing.T) {
	m := newTiny(t, true, BF16)
	a, b, full := newCache(t, m, 8), newCache(t, m, 8), newCache(t, m, 2)
	forward(t, m, []int{1, 2}, a, LogitsNone)
	forward(t, m, []int{3, 4}, full, LogitsNone)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		name   string
		ctx    context.Context
		ids    []int
		caches []*KVCache
		mode   LogitsMode
		want   string
	}{
		{"count", context.Background(), []int{1, 2}, []*KVCache{a}, LogitsLast, "2 tokens for 1 caches"},
		{"none", context.Background(), nil, nil, LogitsLast, "no sequences"},
		{"shared", context.Background(), []int{1, 2}, []*KVCache{a, a}, LogitsLast, "sequences 0 and 1 share one cache"},
		{"nil", context.Background(), []int{1}, []*KVCache{nil}, LogitsLast, "cache 0 is nil"},
		{"full", context.Background(), []int{1, 2}, []*KVCache{a, full}, LogitsLast, "sequence 1: "},
		{"mode", context.Background(), []int{1}, []*KVCache{a}, LogitsAll, "logits mode all"},
		{"vocab", context.Background(), []int{1, 5000}, []*KVCache{a, b}, LogitsLast, "5000"},
		{"cancelled", cancelled, []int{1, 2}, []*KVCache{a, b}, LogitsLast, "context canceled"},
	} {
		_, err := m.DecodeBatch(c.ctx, c.ids, c.caches, c.mode)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
		if a.Len() != 2 || b.Len() != 0 || full.Len() != 2 {
			t.Fatalf("%s: caches moved to %d, %d, %d", c.name, a.Len(), b.Len(), full.Len())
		}
	}
}

// composedDecode adds backend.FusedDecode to composedFused as the compositions its doc names,
// taken for chunks of up to rows rows, so the fused decode block (blockTailDecode and the
// NormMatMulMany openings of every decode path) runs on the CPU.
type composedDecode struct {
	composedFused
	rows int
}

// scratch runs f with a temporary [rows, cols] tensor.
func (f composedDecode) scratch(rows, cols int, run func(backend.Tensor) error) error {
	t, err := f.Alloc(backend.Workspace, rows, cols)
	if err != nil {
		return err
	}
	defer f.Free(t)
	return run(t)
}

func (f composedDecode) NormMatMulMany(outs []backend.Tensor, x, w backend.Tensor, eps float32, ws []backend.Weight) error {
	return f.scratch(x.Rows(), x.Cols(), func(n backend.Tensor) error {
		return errors.Join(f.RMSNorm(n, x, w, eps), f.MatMulMany(outs, n, ws))
	})
}

func (f composedDecode) MatMulAdd(x, a backend.Tensor, w backend.Weight) error {
	return f.scratch(x.Rows(), x.Cols(), func(p backend.Tensor) error {
		return errors.Join(f.MatMul(p, a, w), f.Add(x, p))
	})
}

func (f composedDecode) SwiGLUMatMulAdd(x, gate, up backend.Tensor, w backend.Weight) error {
	return f.scratch(gate.Rows(), gate.Cols(), func(h backend.Tensor) error {
		return f.scratch(x.Rows(), x.Cols(), func(p backend.Tensor) error {
			return errors.Join(f.SwiGLU(h, gate, up), f.MatMul(p, h, w), f.Add(x, p))
		})
	})
}

func (f composedDecode) FusedDecodeRows() int { return f.rows }

// TestFusedDecodeMatchesUnfused: the decode path through backend.FusedDecode (every block
// normalising its own input, residual adds in the products) gives the unfused block's logits
// bit for bit on the CPU — a 5-token prompt (fused when the backend takes 8 rows) and decode
// steps (one row) — and a backend that takes no rows leaves the Fused path in charge.
func TestFusedDecodeMatchesUnfused(t *testing.T) {
	m := newTiny(t, true, BF16)
	cb := m.B.(*cpu.Backend)
	run := func(b backend.Backend) [][]float32 {
		m.B = b
		defer func() { m.B = cb }()
		cache := newCache(t, m, 32)
		defer cache.Free()
		var out [][]float32
		lg := forward(t, m, randIDs(31, 5, 1000), cache, LogitsLast)
		out = append(out, lg.Data)
		for step := 0; step < 6; step++ {
			next := backend.ArgMax(lg.Row(0))
			lg = forward(t, m, []int{next}, cache, LogitsLast)
			out = append(out, lg.Data)
		}
		return out
	}
	want := run(cb)
	for _, rows := range []int{0, 1, 8} {
		got := run(composedDecode{composedFused{cb}, rows})
		for i := range want {
			if e := relErr(got[i], want[i]); e != 0 {
				t.Fatalf("fused decode for up to %d rows, step %d: logits differ from the unfused block by %.3g", rows, i, e)
			}
		}
	}
}
