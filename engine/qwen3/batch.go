package qwen3

import (
	"context"
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/kvcache"
)

// BatchKVCache is the KV cache of B sequences decoded together by ForwardBatch: per layer one
// [B·capacity, kv width] tensor of keys and one of values, and a length per sequence (see
// engine/kvcache.Batch). Seq(r) is sequence r as an ordinary KVCache over its rows: fill it
// with Forward (the prompt's prefill), reset or truncate it independently of the others.
type BatchKVCache = kvcache.Batch

// NewBatchKVCache preallocates a cache of batch sequences of maxSeq tokens each on the model's
// backend (accounted under backend.KVCache). The backend must provide row views
// (backend.Training: engine/cpu and engine/cuda do).
func (m *Model) NewBatchKVCache(batch, maxSeq int) (*BatchKVCache, error) {
	c := m.Config
	if c.MaxPositions > 0 && maxSeq > c.MaxPositions {
		return nil, fmt.Errorf("batch kv cache: %d tokens exceed max_position_embeddings %d", maxSeq, c.MaxPositions)
	}
	return kvcache.NewBatchOf(m.B, m.KVDType, c.NumLayers, c.KVDim(), batch, maxSeq)
}

// ForwardBatch advances every sequence of cache by one token: ids[r] is fed to sequence r at
// its own position (its length), and its key and value go to its rows of the cache. It returns
// one row of logits per sequence (mode LogitsLast), or each sequence's greedy pick
// (LogitsGreedy), or nothing (LogitsNone).
//
// The whole step is one pass over the weights for all B tokens, and on a backend.Batched
// backend every op of a layer is one call for all sequences (RoPE at each sequence's position,
// the cache write and attention over each sequence's own rows included), so a step costs the
// launches of a one-token forward whatever B. A backend without batched ops runs the
// per-sequence part one sequence at a time (DecodeBatch on the sequences' caches). The results
// equal decoding each sequence alone with Forward: bit for bit on the CPU, within float32
// rounding on a GPU. A failed or cancelled call leaves every sequence's length as it was.
func (m *Model) ForwardBatch(ctx context.Context, ids []int, cache *BatchKVCache, mode LogitsMode) (lg *BatchLogits, err error) {
	if m.B == nil {
		return nil, fmt.Errorf("forward batch: the model has no backend")
	}
	err = backend.RunOn(m.B, func() error {
		var ferr error
		lg, ferr = m.forwardBatch(ctx, ids, cache, mode)
		return ferr
	})
	return lg, err
}

func (m *Model) forwardBatch(ctx context.Context, ids []int, cache *BatchKVCache, mode LogitsMode) (*BatchLogits, error) {
	c, b := m.Config, m.B
	switch {
	case m.Layers == nil:
		return nil, fmt.Errorf("forward batch: the model was freed")
	case cache == nil:
		return nil, fmt.Errorf("forward batch: no cache")
	case len(ids) != cache.Size():
		return nil, fmt.Errorf("forward batch: %d tokens for a cache of %d sequences (one token per sequence)", len(ids), cache.Size())
	case mode != LogitsLast && mode != LogitsGreedy && mode != LogitsNone:
		return nil, fmt.Errorf("forward batch: logits mode %v (last, greedy or none)", mode)
	case cache.Backend() != b || cache.Layers() != c.NumLayers || cache.Width() != c.KVDim():
		return nil, fmt.Errorf("forward batch: the cache (%d layers of width %d) was not made for this model (%d layers of width %d on %s)",
			cache.Layers(), cache.Width(), c.NumLayers, c.KVDim(), b.Name())
	}
	bt, ok := backend.UseBatched(b)
	if !ok {
		lg, err := m.decodeBatch(ctx, ids, cache.Seqs(), mode)
		if err != nil {
			return nil, fmt.Errorf("forward batch: %w", err)
		}
		return lg, nil
	}
	if err := cache.Check(1); err != nil {
		return nil, fmt.Errorf("forward batch: %w", err)
	}
	pos := cache.Lens()
	for r, p := range pos {
		if c.MaxPositions > 0 && p >= c.MaxPositions {
			return nil, fmt.Errorf("forward batch: sequence %d: position %d exceeds max_position_embeddings %d", r, p, c.MaxPositions)
		}
	}
	s, err := m.NewActivations(len(ids))
	if err != nil {
		return nil, fmt.Errorf("forward batch: %w", err)
	}
	defer s.Free(b)
	if err := b.Embedding(s.X, m.Embed, ids); err != nil {
		return nil, fmt.Errorf("forward batch: embedding: %w", err)
	}
	rows := backend.CacheRows(cache.Cap(), pos)
	for i := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := m.batchedBlock(bt, i, s, cache, pos, rows); err != nil {
			return nil, fmt.Errorf("forward batch: layer %d: %w", i, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := cache.Commit(1); err != nil {
		return nil, fmt.Errorf("forward batch: %w", err)
	}
	return m.batchLogits(s, pos, mode, "forward batch")
}

// batchedBlock is block (or blockFused) for one token of each of B sequences: row r is at
// position pos[r] and its key and value go to row rows[r] = r·Cap+pos[r] of the layer's cache.
func (m *Model) batchedBlock(bt backend.Batched, i int, s *Activations, cache *BatchKVCache, pos, rows []int) error {
	b, c, l := m.B, m.Config, &m.Layers[i]
	eps := float32(c.RMSNormEps)
	kc, vc, capacity := cache.K(i), cache.V(i), cache.Cap()
	if f, ok := b.(backend.Fused); ok && !m.Unfused {
		fd, decode := m.fusedDecode(s.T)
		var qkv error
		switch {
		case decode: // the input norm folded into the product
			qkv = fd.NormMatMulMany([]backend.Tensor{s.Q, s.K, s.V}, s.X, l.InputNorm, eps, []backend.Weight{l.Q, l.K, l.V})
		case i == 0:
			qkv = firstErr(b.RMSNorm(s.AttnIn, s.X, l.InputNorm, eps),
				f.MatMulMany([]backend.Tensor{s.Q, s.K, s.V}, s.AttnIn, []backend.Weight{l.Q, l.K, l.V}))
		default: // s.AttnIn written by the previous layer's tail
			qkv = f.MatMulMany([]backend.Tensor{s.Q, s.K, s.V}, s.AttnIn, []backend.Weight{l.Q, l.K, l.V})
		}
		err := firstErr(
			qkv,
			bt.QKNormRoPECacheBatch(s.QR, s.KR, s.Q, s.K, s.V, l.QNorm, l.KNorm, kc, vc, c.HeadDim, capacity, pos, c.RopeTheta, eps),
			bt.AttentionBatch(s.Ctx, s.QR, kc, vc, capacity, pos, c.NumHeads, c.NumKVHeads, c.HeadDim),
		)
		if err != nil {
			return err
		}
		if decode {
			return m.blockTailDecode(fd, i, s)
		}
		return m.blockTailFused(f, i, s)
	}
	return firstErr(
		// x += attention(RMSNorm(x)), each row over its own sequence
		b.RMSNorm(s.AttnIn, s.X, l.InputNorm, eps),
		b.MatMul(s.Q, s.AttnIn, l.Q),
		b.MatMul(s.K, s.AttnIn, l.K),
		b.MatMul(s.V, s.AttnIn, l.V),
		b.RMSNorm(s.QR, s.Q, l.QNorm, eps),
		b.RMSNorm(s.KR, s.K, l.KNorm, eps),
		bt.RoPEAt(s.QR, s.QR, c.HeadDim, pos, c.RopeTheta),
		bt.RoPEAt(s.KR, s.KR, c.HeadDim, pos, c.RopeTheta),
		bt.ScatterRows(kc, rows, s.KR),
		bt.ScatterRows(vc, rows, s.V),
		bt.AttentionBatch(s.Ctx, s.QR, kc, vc, capacity, pos, c.NumHeads, c.NumKVHeads, c.HeadDim),
		m.blockTail(i, s),
	)
}
