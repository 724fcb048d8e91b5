package qwen3

import (
	"context"
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
)

// KVCache holds keys (after RoPE) and values for every layer, preallocated for Cap tokens.
// Appending never copies what is already cached (the seed grew its cache by concatenation).
type KVCache struct {
	K, V []backend.Tensor // per layer [Cap, KVDim]
	n    int
	b    backend.Backend
}

// NewKVCache preallocates a cache for maxSeq tokens.
func (m *Model) NewKVCache(maxSeq int) (*KVCache, error) {
	if maxSeq <= 0 {
		return nil, fmt.Errorf("kv cache: capacity %d must be positive", maxSeq)
	}
	c := &KVCache{b: m.B}
	for i := 0; i < m.Config.NumLayers; i++ {
		k, err := m.B.Alloc(backend.KVCache, maxSeq, m.Config.KVDim())
		if err != nil {
			c.Free()
			return nil, fmt.Errorf("kv cache for %d tokens: %w", maxSeq, err)
		}
		v, err := m.B.Alloc(backend.KVCache, maxSeq, m.Config.KVDim())
		if err != nil {
			m.B.Free(k)
			c.Free()
			return nil, fmt.Errorf("kv cache for %d tokens: %w", maxSeq, err)
		}
		c.K, c.V = append(c.K, k), append(c.V, v)
	}
	return c, nil
}

// Len is the number of cached positions.
func (c *KVCache) Len() int { return c.n }

// Cap is the capacity in tokens.
func (c *KVCache) Cap() int {
	if len(c.K) == 0 {
		return 0
	}
	return c.K[0].Rows()
}

// Truncate drops positions >= pos.
func (c *KVCache) Truncate(pos int) error {
	if pos < 0 || pos > c.n {
		return fmt.Errorf("kv cache: cannot truncate to %d (holds %d)", pos, c.n)
	}
	c.n = pos
	return nil
}

// Reset empties the cache (keeping its memory).
func (c *KVCache) Reset() { c.n = 0 }

// Free releases the cache's memory.
func (c *KVCache) Free() {
	for i := range c.K {
		c.b.Free(c.K[i])
		c.b.Free(c.V[i])
	}
	c.K, c.V, c.n = nil, nil, 0
}

// LogitsMode selects which positions' logits Forward returns.
type LogitsMode int

// Logits modes.
const (
	LogitsLast LogitsMode = iota
	LogitsAll
	LogitsNone
)

// Logits are host float32 logits, Rows × Vocab.
type Logits struct {
	Rows, Vocab int
	Data        []float32
}

// Row returns row r.
func (l *Logits) Row(r int) []float32 { return l.Data[r*l.Vocab : (r+1)*l.Vocab] }

// ForwardOptions are optional hooks.
type ForwardOptions struct {
	// OnHidden receives the residual stream [T, hidden] after embedding (layer -1), after each
	// block (0..NumLayers-1) and after the final norm (NumLayers), for layer-wise comparisons.
	OnHidden func(layer int, hidden []float32)
}

// Forward runs ids through the model at the cache's current position and appends their keys
// and values. With a nil cache it runs over ids alone (the no-cache, recompute path). The
// context is checked between layers.
func (m *Model) Forward(ctx context.Context, ids []int, cache *KVCache, mode LogitsMode, opt *ForwardOptions) (_ *Logits, err error) {
	c, b := m.Config, m.B
	T := len(ids)
	if T == 0 {
		return nil, fmt.Errorf("forward: no tokens")
	}
	if cache == nil {
		if cache, err = m.NewKVCache(T); err != nil {
			return nil, err
		}
		defer cache.Free()
	}
	pos0 := cache.n
	if pos0+T > cache.Cap() {
		return nil, fmt.Errorf("KV cache full: %d cached + %d new tokens exceed its capacity of %d", pos0, T, cache.Cap())
	}
	var allocs []backend.Tensor
	defer func() {
		for _, t := range allocs {
			b.Free(t)
		}
	}()
	alloc := func(rows, cols int) backend.Tensor {
		if err != nil {
			return nil
		}
		var t backend.Tensor
		t, err = b.Alloc(backend.Activations, rows, cols)
		allocs = append(allocs, t)
		return t
	}
	x := alloc(T, c.HiddenSize)
	a := alloc(T, c.HiddenSize)
	q := alloc(T, c.QDim())
	k := alloc(T, c.KVDim())
	v := alloc(T, c.KVDim())
	att := alloc(T, c.QDim())
	g := alloc(T, c.IntermediateSize)
	u := alloc(T, c.IntermediateSize)
	if err != nil {
		return nil, err
	}
	hook := func(layer int, t backend.Tensor) {
		if opt != nil && opt.OnHidden != nil {
			opt.OnHidden(layer, b.Download(t, nil))
		}
	}
	eps := float32(c.RMSNormEps)
	do := func(errs ...error) error {
		for _, e := range errs {
			if e != nil {
				return e
			}
		}
		return nil
	}
	if err := b.Embedding(x, m.Embed, ids); err != nil {
		return nil, err
	}
	hook(-1, x)
	for i := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l := &m.Layers[i]
		kc := b.RowSlice(cache.K[i], pos0, pos0+T)
		vc := b.RowSlice(cache.V[i], pos0, pos0+T)
		err := do(
			b.RMSNorm(a, x, l.InputNorm, eps),
			b.MatMul(q, a, l.Q),
			b.MatMul(k, a, l.K),
			b.MatMul(v, a, l.V),
		)
		if err == nil {
			err = do(
				b.RMSNorm(b.Reshape(q, T*c.NumHeads, c.HeadDim), b.Reshape(q, T*c.NumHeads, c.HeadDim), l.QNorm, eps),
				b.RMSNorm(b.Reshape(k, T*c.NumKVHeads, c.HeadDim), b.Reshape(k, T*c.NumKVHeads, c.HeadDim), l.KNorm, eps),
				b.RoPE(q, c.HeadDim, pos0, c.RopeTheta),
				b.RoPE(k, c.HeadDim, pos0, c.RopeTheta),
				b.Copy(kc, k),
				b.Copy(vc, v),
			)
		}
		if err == nil {
			err = do(
				b.Attention(att, q, b.RowSlice(cache.K[i], 0, pos0+T), b.RowSlice(cache.V[i], 0, pos0+T), pos0, c.NumHeads, c.NumKVHeads, c.HeadDim),
				b.MatMul(a, att, l.O),
				b.Add(x, a),
				b.RMSNorm(a, x, l.PostNorm, eps),
				b.MatMul(g, a, l.Gate),
				b.MatMul(u, a, l.Up),
				b.SwiGLU(g, g, u),
				b.MatMul(a, g, l.Down),
				b.Add(x, a),
			)
		}
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		hook(i, x)
	}
	cache.n = pos0 + T
	if mode == LogitsNone {
		return nil, nil
	}
	rows := x
	if mode == LogitsLast {
		rows = b.RowSlice(x, T-1, T)
	}
	n := rows.Rows()
	normed := alloc(n, c.HiddenSize)
	logits := alloc(n, m.LMHead.Out())
	if err != nil {
		return nil, err
	}
	if err := b.RMSNorm(normed, rows, m.Norm, eps); err != nil {
		return nil, err
	}
	hook(c.NumLayers, normed)
	if err := b.MatMul(logits, normed, m.LMHead); err != nil {
		return nil, err
	}
	return &Logits{Rows: n, Vocab: m.LMHead.Out(), Data: b.Download(logits, nil)}, nil
}
