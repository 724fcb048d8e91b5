package qwen3

import (
	"context"
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
)

// BatchLogits are what DecodeBatch returns: one row per sequence.
type BatchLogits struct {
	Vocab int
	// Pos[r] is the position sequence r's token was fed at (its cache length before the call).
	Pos []int
	// Data holds [len(Pos), Vocab] logits (LogitsLast); nil in LogitsGreedy and LogitsNone.
	Data []float32
	// Greedy[r] is sequence r's most likely next token (LogitsGreedy only).
	Greedy []int
}

// Row returns sequence r's logits (LogitsLast).
func (l *BatchLogits) Row(r int) []float32 { return l.Data[r*l.Vocab : (r+1)*l.Vocab] }

// rowViewer is the part of backend.Training batched decoding needs: row views of one
// activation tensor, so the per-sequence ops (RoPE at each sequence's own position, the cache
// write, attention over that sequence's cache) run on one row of a [B, width] tensor.
type rowViewer interface {
	RowView(t backend.Tensor, row0, n int) (backend.Tensor, error)
}

// DecodeBatch advances B independent sequences by one token each: ids[r] is fed to caches[r]
// at that cache's own position, and each cache gets its key and value row. The projections and
// the MLP run once for all B rows (one pass over the weights for B tokens); the q/k norms,
// RoPE, the cache write and attention run per sequence on row views. The result equals B
// separate Forward calls (bit for bit on the CPU; within the GEMV/GEMM rounding difference of
// B rows against one on a GPU). mode is LogitsLast, LogitsGreedy or LogitsNone. The backend must
// provide row views (backend.Training: engine/cpu and engine/cuda do). A failed or cancelled
// call leaves every cache as it was.
func (m *Model) DecodeBatch(ctx context.Context, ids []int, caches []*KVCache, mode LogitsMode) (lg *BatchLogits, err error) {
	if m.B == nil {
		return nil, fmt.Errorf("decode batch: the model has no backend")
	}
	err = backend.RunOn(m.B, func() error {
		var ferr error
		lg, ferr = m.decodeBatch(ctx, ids, caches, mode)
		return ferr
	})
	return lg, err
}

func (m *Model) decodeBatch(ctx context.Context, ids []int, caches []*KVCache, mode LogitsMode) (*BatchLogits, error) {
	c, b := m.Config, m.B
	B := len(ids)
	switch {
	case m.Layers == nil:
		return nil, fmt.Errorf("decode batch: the model was freed")
	case B == 0:
		return nil, fmt.Errorf("decode batch: no sequences")
	case len(caches) != B:
		return nil, fmt.Errorf("decode batch: %d tokens for %d caches (one token per sequence)", B, len(caches))
	case mode != LogitsLast && mode != LogitsGreedy && mode != LogitsNone:
		return nil, fmt.Errorf("decode batch: logits mode %v (last, greedy or none)", mode)
	}
	rv, ok := b.(rowViewer)
	if !ok {
		return nil, fmt.Errorf("decode batch: backend %s has no row views (backend.Training)", b.Name())
	}
	pos := make([]int, B)
	seen := make(map[*KVCache]int, B)
	for r, cache := range caches {
		switch {
		case cache == nil:
			return nil, fmt.Errorf("decode batch: cache %d is nil", r)
		case cache.Backend() != b || cache.Layers() != c.NumLayers || cache.Width() != c.KVDim():
			return nil, fmt.Errorf("decode batch: cache %d (%d layers of width %d) was not made for this model (%d layers of width %d on %s)",
				r, cache.Layers(), cache.Width(), c.NumLayers, c.KVDim(), b.Name())
		}
		if q, dup := seen[cache]; dup {
			return nil, fmt.Errorf("decode batch: sequences %d and %d share one cache", q, r)
		}
		seen[cache] = r
		if err := cache.Check(1); err != nil {
			return nil, fmt.Errorf("decode batch: sequence %d: %w", r, err)
		}
		pos[r] = cache.Len()
		if c.MaxPositions > 0 && pos[r] >= c.MaxPositions {
			return nil, fmt.Errorf("decode batch: sequence %d: position %d exceeds max_position_embeddings %d", r, pos[r], c.MaxPositions)
		}
	}
	s, err := m.NewActivations(B)
	if err != nil {
		return nil, fmt.Errorf("decode batch: %w", err)
	}
	defer s.Free(b)
	// Row views of the per-sequence tensors, made once: QKNormRoPECache (or the separate ops)
	// and Attention run on row r of Q, K, V, QR, KR and Ctx.
	views := make([][6]backend.Tensor, B)
	for r := range views {
		for i, t := range []backend.Tensor{s.Q, s.K, s.V, s.QR, s.KR, s.Ctx} {
			if views[r][i], err = rv.RowView(t, r, 1); err != nil {
				return nil, fmt.Errorf("decode batch: %w", err)
			}
		}
	}
	if err := b.Embedding(s.X, m.Embed, ids); err != nil {
		return nil, fmt.Errorf("decode batch: embedding: %w", err)
	}
	for i := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := m.batchBlock(i, s, views, caches, pos); err != nil {
			return nil, fmt.Errorf("decode batch: layer %d: %w", i, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for r, cache := range caches {
		if err := cache.Commit(1); err != nil {
			return nil, fmt.Errorf("decode batch: sequence %d: %w", r, err)
		}
	}
	return m.batchLogits(s, pos, mode, "decode batch")
}

// batchLogits is the end of a batched step: what mode asks for, one row per sequence (every
// row of s.X is a sequence's last position). op prefixes an error.
func (m *Model) batchLogits(s *Activations, pos []int, mode LogitsMode, op string) (*BatchLogits, error) {
	out := &BatchLogits{Vocab: m.LMHead.Out(), Pos: pos}
	if mode == LogitsNone {
		return out, nil
	}
	var err error
	out.Data, out.Greedy, err = m.head(s.X, mode == LogitsGreedy, func(int, backend.Tensor) error { return nil })
	if err != nil {
		return nil, fmt.Errorf("%s: logits: %w", op, err)
	}
	return out, nil
}

// batchBlock is block (or blockFused) for B sequences of one token each: the per-sequence
// part on row views, the rest on all rows.
func (m *Model) batchBlock(i int, s *Activations, views [][6]backend.Tensor, caches []*KVCache, pos []int) error {
	b, c, l := m.B, m.Config, &m.Layers[i]
	eps := float32(c.RMSNormEps)
	f, fused := b.(backend.Fused)
	fused = fused && !m.Unfused
	perSeq := func() error {
		for r, v := range views {
			q, k, vv, qr, kr, cx := v[0], v[1], v[2], v[3], v[4], v[5]
			kc, vc := caches[r].K(i), caches[r].V(i)
			var err error
			if fused {
				err = f.QKNormRoPECache(qr, kr, q, k, vv, l.QNorm, l.KNorm, kc, vc, c.HeadDim, pos[r], c.RopeTheta, eps)
			} else {
				err = firstErr(
					b.RMSNorm(qr, q, l.QNorm, eps),
					b.RMSNorm(kr, k, l.KNorm, eps),
					b.RoPE(qr, qr, c.HeadDim, pos[r], c.RopeTheta),
					b.RoPE(kr, kr, c.HeadDim, pos[r], c.RopeTheta),
					b.CopyRows(kc, pos[r], kr, 0, 1),
					b.CopyRows(vc, pos[r], vv, 0, 1),
				)
			}
			if err == nil {
				err = b.Attention(cx, qr, kc, vc, pos[r], c.NumHeads, c.NumKVHeads, c.HeadDim)
			}
			if err != nil {
				return fmt.Errorf("sequence %d: %w", r, err)
			}
		}
		return nil
	}
	if !fused {
		return firstErr(
			b.RMSNorm(s.AttnIn, s.X, l.InputNorm, eps),
			b.MatMul(s.Q, s.AttnIn, l.Q),
			b.MatMul(s.K, s.AttnIn, l.K),
			b.MatMul(s.V, s.AttnIn, l.V),
			perSeq(),
			m.blockTail(i, s),
		)
	}
	if fd, ok := m.fusedDecode(s.T); ok {
		err := firstErr(
			fd.NormMatMulMany([]backend.Tensor{s.Q, s.K, s.V}, s.X, l.InputNorm, eps, []backend.Weight{l.Q, l.K, l.V}),
			perSeq(),
		)
		if err != nil {
			return err
		}
		return m.blockTailDecode(fd, i, s)
	}
	var first error
	if i == 0 {
		first = b.RMSNorm(s.AttnIn, s.X, l.InputNorm, eps)
	}
	err := firstErr(
		first,
		f.MatMulMany([]backend.Tensor{s.Q, s.K, s.V}, s.AttnIn, []backend.Weight{l.Q, l.K, l.V}),
		perSeq(),
	)
	if err != nil {
		return err
	}
	return m.blockTailFused(f, i, s)
}
