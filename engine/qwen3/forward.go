package qwen3

import (
	"context"
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/kvcache"
)

// KVCache is a preallocated key/value cache for one sequence: keys after RoPE and raw values,
// per layer (see engine/kvcache). Create it with Model.NewKVCache.
type KVCache = kvcache.Cache

// NewKVCache preallocates a cache for maxSeq tokens on the model's backend (accounted under
// backend.KVCache). maxSeq may not exceed max_position_embeddings when the config sets it.
func (m *Model) NewKVCache(maxSeq int) (*KVCache, error) {
	c := m.Config
	if c.MaxPositions > 0 && maxSeq > c.MaxPositions {
		return nil, fmt.Errorf("kv cache: %d tokens exceed max_position_embeddings %d", maxSeq, c.MaxPositions)
	}
	return kvcache.NewOf(m.B, m.KVDType, c.NumLayers, c.KVDim(), maxSeq)
}

// LogitsMode selects which positions' logits Forward returns.
type LogitsMode int

// Logits modes.
const (
	LogitsLast LogitsMode = iota // the last position only (generation)
	LogitsAll                    // every position of the chunk (scoring, parity tests)
	LogitsNone                   // none: only fill the cache (prefill before a known continuation)
	// LogitsGreedy: only the last position's most likely next token (Logits.Greedy; Data is
	// nil), picked on the device when the backend can (backend.ArgMaxer), so a greedy decoding
	// step downloads one id instead of the vocabulary's logits.
	LogitsGreedy
)

// String names the mode.
func (m LogitsMode) String() string {
	switch m {
	case LogitsLast:
		return "last"
	case LogitsAll:
		return "all"
	case LogitsNone:
		return "none"
	case LogitsGreedy:
		return "greedy"
	}
	return fmt.Sprintf("LogitsMode(%d)", int(m))
}

// Logits are host float32 logits, Rows × Vocab; row r belongs to sequence position Pos0+r.
// In LogitsGreedy mode Data is nil and Greedy is the last position's argmax (backend.ArgMax).
type Logits struct {
	Rows, Vocab int
	Pos0        int
	Data        []float32
	Greedy      int
}

// Row returns row r.
func (l *Logits) Row(r int) []float32 { return l.Data[r*l.Vocab : (r+1)*l.Vocab] }

// ForwardOptions are optional hooks of ForwardWith.
type ForwardOptions struct {
	// OnHidden receives, on the host, the residual stream [T, hidden] after the embedding
	// (layer -1, HF's hidden_states[0]) and after each block (layer i = 0..NumLayers-1, HF's
	// hidden_states[i+1] except that HF's last entry is taken after the final norm), then the
	// final-norm output of the rows logits are computed for (layer NumLayers; not called with
	// LogitsNone). For layer-by-layer parity tools; it costs a download per layer.
	OnHidden func(layer int, hidden []float32)
}

// Activations are the tensors one decoder block writes for a chunk of T tokens, one per op
// output, named after the block's equations. Inference reuses one set for every layer; the
// training forward will keep a set per layer (plus a copy of X at each block's input) for the
// backward pass, or recompute them.
type Activations struct {
	T       int
	X       backend.Tensor // [T, hidden] residual stream, updated in place by each block
	AttnIn  backend.Tensor // [T, hidden] RMSNorm(X; input_layernorm)
	Q       backend.Tensor // [T, heads*head_dim] AttnIn·Wqᵀ
	K       backend.Tensor // [T, kv_heads*head_dim] AttnIn·Wkᵀ
	V       backend.Tensor // [T, kv_heads*head_dim] AttnIn·Wvᵀ (cached as is)
	QR      backend.Tensor // Q after q_norm (per head) and RoPE
	KR      backend.Tensor // K after k_norm (per head) and RoPE (cached)
	Ctx     backend.Tensor // [T, heads*head_dim] causal attention over the cache
	AttnOut backend.Tensor // [T, hidden] Ctx·Woᵀ
	MLPIn   backend.Tensor // [T, hidden] RMSNorm(X; post_attention_layernorm)
	Gate    backend.Tensor // [T, intermediate] MLPIn·Wgateᵀ
	Up      backend.Tensor // [T, intermediate] MLPIn·Wupᵀ
	H       backend.Tensor // [T, intermediate] silu(Gate)*Up
	MLPOut  backend.Tensor // [T, hidden] H·Wdownᵀ
}

// NewActivations allocates one block's activations for T tokens (category Activations).
func (m *Model) NewActivations(T int) (*Activations, error) {
	c := m.Config
	s := &Activations{T: T}
	var err error
	for _, f := range []struct {
		dst  *backend.Tensor
		cols int
	}{
		{&s.X, c.HiddenSize}, {&s.AttnIn, c.HiddenSize}, {&s.Q, c.QDim()}, {&s.K, c.KVDim()}, {&s.V, c.KVDim()},
		{&s.QR, c.QDim()}, {&s.KR, c.KVDim()}, {&s.Ctx, c.QDim()}, {&s.AttnOut, c.HiddenSize},
		{&s.MLPIn, c.HiddenSize}, {&s.Gate, c.IntermediateSize}, {&s.Up, c.IntermediateSize},
		{&s.H, c.IntermediateSize}, {&s.MLPOut, c.HiddenSize},
	} {
		if *f.dst, err = m.B.Alloc(backend.Activations, T, f.cols); err != nil {
			s.Free(m.B)
			return nil, fmt.Errorf("activations for %d tokens: %w", T, err)
		}
	}
	return s, nil
}

// Free releases the activations.
func (s *Activations) Free(b backend.Backend) {
	for _, t := range []*backend.Tensor{&s.X, &s.AttnIn, &s.Q, &s.K, &s.V, &s.QR, &s.KR, &s.Ctx, &s.AttnOut, &s.MLPIn, &s.Gate, &s.Up, &s.H, &s.MLPOut} {
		if *t != nil {
			b.Free(*t)
			*t = nil
		}
	}
}

// firstErr returns the first non-nil error. Go evaluates every argument before the call, so
// in `firstErr(op1(…), op2(…))` all ops run; an op that fails has written nothing, later ones
// then compute on stale data, and the first error is what the caller sees.
func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// fusedDecode returns the backend's fused decode ops (backend.FusedDecode: CUDA folds norms,
// SwiGLU and residual adds into its resident GEMV) when a chunk of T rows should use them: no
// more rows than the backend says they pay for; longer chunks take the Fused path.
func (m *Model) fusedDecode(T int) (backend.FusedDecode, bool) {
	if m.Unfused {
		return nil, false
	}
	fd, ok := m.B.(backend.FusedDecode)
	if !ok || T > fd.FusedDecodeRows() {
		return nil, false
	}
	return fd, true
}

// blockTailDecode is blockTail with the fused decode ops: x += o_proj(ctx) in the product,
// x += down(SwiGLU(gate, up)) with the MLP's norm and activation folded into its GEMVs. The
// next block normalises x itself (NormMatMulMany), so s.AttnIn and s.MLPIn stay unwritten.
func (m *Model) blockTailDecode(fd backend.FusedDecode, i int, s *Activations) error {
	l := &m.Layers[i]
	eps := float32(m.Config.RMSNormEps)
	return firstErr(
		fd.MatMulAdd(s.X, s.Ctx, l.O),
		fd.NormMatMulMany([]backend.Tensor{s.Gate, s.Up}, s.X, l.PostNorm, eps, []backend.Weight{l.Gate, l.Up}),
		fd.SwiGLUMatMulAdd(s.X, s.Gate, s.Up, l.Down),
	)
}

// blockFused is block with the backend's fused kernels: about half the launches, the same
// results. The input norm of layer i+1 is fused with the residual add that ends layer i, so
// s.AttnIn is ready when the next block starts (layer 0 computes its own). With the fused
// decode ops (chunks of up to fusedDecodeRows) every block normalises its own input instead.
func (m *Model) blockFused(f backend.Fused, i int, s *Activations, cache *KVCache, pos0 int) error {
	b, c, l := m.B, m.Config, &m.Layers[i]
	eps := float32(c.RMSNormEps)
	if fd, ok := m.fusedDecode(s.T); ok {
		err := firstErr(
			fd.NormMatMulMany([]backend.Tensor{s.Q, s.K, s.V}, s.X, l.InputNorm, eps, []backend.Weight{l.Q, l.K, l.V}),
			m.qkNormRoPEAttention(f, i, s, cache, pos0),
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
		m.qkNormRoPEAttention(f, i, s, cache, pos0),
	)
	if err != nil {
		return err
	}
	return m.blockTailFused(f, i, s)
}

// qkNormRoPEAttention is layer i's q/k norms, RoPE, cache write and attention: one op where the
// backend folds them for one row (backend.NormRoPEAttention), else QKNormRoPECache then Attention.
func (m *Model) qkNormRoPEAttention(f backend.Fused, i int, s *Activations, cache *KVCache, pos0 int) error {
	b, c, l := m.B, m.Config, &m.Layers[i]
	eps := float32(c.RMSNormEps)
	if na, ok := b.(backend.NormRoPEAttention); ok && s.T == 1 {
		return na.QKNormRoPEAttention(s.Ctx, s.QR, s.KR, s.Q, s.K, s.V, l.QNorm, l.KNorm, cache.K(i), cache.V(i),
			c.NumHeads, c.NumKVHeads, c.HeadDim, pos0, c.RopeTheta, eps)
	}
	return firstErr(
		f.QKNormRoPECache(s.QR, s.KR, s.Q, s.K, s.V, l.QNorm, l.KNorm, cache.K(i), cache.V(i), c.HeadDim, pos0, c.RopeTheta, eps),
		b.Attention(s.Ctx, s.QR, cache.K(i), cache.V(i), pos0, c.NumHeads, c.NumKVHeads, c.HeadDim),
	)
}

// blockTailFused is blockTail with the fused ops; the residual add that ends layer i is fused
// with layer i+1's input norm (s.AttnIn is then ready for it).
func (m *Model) blockTailFused(f backend.Fused, i int, s *Activations) error {
	b, l := m.B, &m.Layers[i]
	eps := float32(m.Config.RMSNormEps)
	err := firstErr(
		b.MatMul(s.AttnOut, s.Ctx, l.O),
		f.AddRMSNorm(s.MLPIn, s.X, s.AttnOut, l.PostNorm, eps),
		f.MatMulMany([]backend.Tensor{s.Gate, s.Up}, s.MLPIn, []backend.Weight{l.Gate, l.Up}),
		b.SwiGLU(s.H, s.Gate, s.Up),
		b.MatMul(s.MLPOut, s.H, l.Down),
	)
	if err != nil {
		return err
	}
	if i+1 < len(m.Layers) {
		return f.AddRMSNorm(s.AttnIn, s.X, s.MLPOut, m.Layers[i+1].InputNorm, eps)
	}
	return b.Add(s.X, s.MLPOut)
}

// blockTail is layer i after attention — x += o_proj(ctx), then x += mlp(RMSNorm(x)) — the part
// that runs on every row at once in Forward and in DecodeBatch.
func (m *Model) blockTail(i int, s *Activations) error {
	b, l := m.B, &m.Layers[i]
	eps := float32(m.Config.RMSNormEps)
	return firstErr(
		b.MatMul(s.AttnOut, s.Ctx, l.O),
		b.Add(s.X, s.AttnOut),
		// x += mlp(RMSNorm(x))
		b.RMSNorm(s.MLPIn, s.X, l.PostNorm, eps),
		b.MatMul(s.Gate, s.MLPIn, l.Gate),
		b.MatMul(s.Up, s.MLPIn, l.Up),
		b.SwiGLU(s.H, s.Gate, s.Up),
		b.MatMul(s.MLPOut, s.H, l.Down),
		b.Add(s.X, s.MLPOut),
	)
}

// block runs decoder layer i on the chunk in s.X (updated in place), writing the chunk's keys
// and values to rows pos0..pos0+T-1 of the cache and attending over rows 0..pos0+T-1.
func (m *Model) block(i int, s *Activations, cache *KVCache, pos0 int) error {
	b, c, l := m.B, m.Config, &m.Layers[i]
	eps := float32(c.RMSNormEps)
	return firstErr(
		// x += attention(RMSNorm(x))
		b.RMSNorm(s.AttnIn, s.X, l.InputNorm, eps),
		b.MatMul(s.Q, s.AttnIn, l.Q),
		b.MatMul(s.K, s.AttnIn, l.K),
		b.MatMul(s.V, s.AttnIn, l.V),
		b.RMSNorm(s.QR, s.Q, l.QNorm, eps), // q_norm has head_dim elements: per head
		b.RMSNorm(s.KR, s.K, l.KNorm, eps),
		b.RoPE(s.QR, s.QR, c.HeadDim, pos0, c.RopeTheta),
		b.RoPE(s.KR, s.KR, c.HeadDim, pos0, c.RopeTheta),
		b.CopyRows(cache.K(i), pos0, s.KR, 0, s.T),
		b.CopyRows(cache.V(i), pos0, s.V, 0, s.T),
		b.Attention(s.Ctx, s.QR, cache.K(i), cache.V(i), pos0, c.NumHeads, c.NumKVHeads, c.HeadDim),
		m.blockTail(i, s),
	)
}

// decodeLayers runs every layer of a one-token step in one backend call when the backend is a
// backend.LayerDecoder that takes this model (no hidden-state hooks, not OpDecode or Unfused);
// whole reports whether it did.
func (m *Model) decodeLayers(s *Activations, cache *KVCache, pos0 int, opt ForwardOptions) (whole bool, err error) {
	ld, ok := m.B.(backend.LayerDecoder)
	if !ok || s.T != 1 || opt.OnHidden != nil || m.OpDecode || m.Unfused {
		return false, nil
	}
	c := m.Config
	m.decodeMu.Lock()
	defer m.decodeMu.Unlock()
	if m.decodeFor != cache || len(m.decodeSet) != len(m.Layers) { // built once per cache, not per token
		m.decodeSet = make([]backend.DecodeLayer, len(m.Layers))
		for i := range m.Layers {
			l := &m.Layers[i]
			m.decodeSet[i] = backend.DecodeLayer{InputNorm: l.InputNorm, PostNorm: l.PostNorm, QNorm: l.QNorm, KNorm: l.KNorm,
				Q: l.Q, K: l.K, V: l.V, O: l.O, Gate: l.Gate, Up: l.Up, Down: l.Down, KCache: cache.K(i), VCache: cache.V(i)}
		}
		m.decodeFor = cache
	}
	return ld.DecodeLayers(s.X, m.decodeSet, pos0, backend.DecodeParams{NumHeads: c.NumHeads, NumKVHeads: c.NumKVHeads,
		HeadDim: c.HeadDim, RopeTheta: c.RopeTheta, RMSNormEps: float32(c.RMSNormEps)})
}

// Forward runs ids through the model at the cache's current position, appends their keys and
// values to the cache and returns the logits mode asks for (nil for LogitsNone). With a nil
// cache it runs over ids alone (a temporary cache: the recompute path). ctx is checked between
// layers; a failed or cancelled call leaves the cache as it was.
func (m *Model) Forward(ctx context.Context, ids []int, cache *KVCache, mode LogitsMode) (*Logits, error) {
	return m.ForwardWith(ctx, ids, cache, mode, ForwardOptions{})
}

// ForwardWith is Forward with hooks. The whole call runs through backend.RunOn, so on the GPU
// the layers' ops go to the device without a goroutine hand-off each.
func (m *Model) ForwardWith(ctx context.Context, ids []int, cache *KVCache, mode LogitsMode, opt ForwardOptions) (lg *Logits, err error) {
	if m.B == nil {
		return nil, fmt.Errorf("forward: the model has no backend")
	}
	err = backend.RunOn(m.B, func() error {
		var ferr error
		lg, ferr = m.forwardWith(ctx, ids, cache, mode, opt)
		return ferr
	})
	return lg, err
}

func (m *Model) forwardWith(ctx context.Context, ids []int, cache *KVCache, mode LogitsMode, opt ForwardOptions) (_ *Logits, err error) {
	c, b := m.Config, m.B
	T := len(ids)
	switch {
	case m.Layers == nil:
		return nil, fmt.Errorf("forward: the model was freed")
	case T == 0:
		return nil, fmt.Errorf("forward: no tokens")
	case mode != LogitsLast && mode != LogitsAll && mode != LogitsNone && mode != LogitsGreedy:
		return nil, fmt.Errorf("forward: unknown logits mode %d", int(mode))
	}
	if cache == nil {
		if cache, err = m.NewKVCache(T); err != nil {
			return nil, fmt.Errorf("forward: %w", err)
		}
		defer cache.Free()
	}
	if cache.Backend() != b || cache.Layers() != c.NumLayers || cache.Width() != c.KVDim() {
		return nil, fmt.Errorf("forward: the KV cache (%d layers of width %d) was not made for this model (%d layers of width %d on %s)",
			cache.Layers(), cache.Width(), c.NumLayers, c.KVDim(), b.Name())
	}
	pos0 := cache.Len()
	if err := cache.Check(T); err != nil {
		return nil, err
	}
	if c.MaxPositions > 0 && pos0+T > c.MaxPositions {
		return nil, fmt.Errorf("forward: positions up to %d exceed max_position_embeddings %d", pos0+T-1, c.MaxPositions)
	}
	s, err := m.NewActivations(T)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	defer s.Free(b)
	hook := func(layer int, t backend.Tensor) error {
		if opt.OnHidden == nil {
			return nil
		}
		h, err := b.Download(t, nil)
		if err == nil {
			opt.OnHidden(layer, h)
		}
		return err
	}

	if err := b.Embedding(s.X, m.Embed, ids); err != nil {
		return nil, fmt.Errorf("forward: embedding: %w", err)
	}
	if err := hook(-1, s.X); err != nil {
		return nil, fmt.Errorf("forward: embedding: %w", err)
	}
	whole, err := m.decodeLayers(s, cache, pos0, opt)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	for i := 0; i < len(m.Layers) && !whole; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var err error
		if f, ok := b.(backend.Fused); ok && !m.Unfused {
			err = m.blockFused(f, i, s, cache, pos0)
		} else {
			err = m.block(i, s, cache, pos0)
		}
		if err != nil {
			return nil, fmt.Errorf("forward: layer %d: %w", i, err)
		}
		if err := hook(i, s.X); err != nil {
			return nil, fmt.Errorf("forward: layer %d: %w", i, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := cache.Commit(T); err != nil {
		return nil, err
	}
	if mode == LogitsNone {
		return nil, nil
	}
	lg, err := m.logits(s.X, mode, hook)
	if err != nil {
		return nil, fmt.Errorf("forward: logits: %w", err)
	}
	lg.Pos0 = pos0
	if mode == LogitsLast || mode == LogitsGreedy {
		lg.Pos0 = pos0 + T - 1
	}
	return lg, nil
}

// logits computes RMSNorm(x; model.norm)·lm_headᵀ for all rows of x or its last row (for
// LogitsGreedy only that row's argmax comes back).
func (m *Model) logits(x backend.Tensor, mode LogitsMode, hook func(int, backend.Tensor) error) (*Logits, error) {
	b, c := m.B, m.Config
	rows := x
	if (mode == LogitsLast || mode == LogitsGreedy) && x.Rows() > 1 {
		last, err := b.Alloc(backend.Activations, 1, c.HiddenSize)
		if err != nil {
			return nil, err
		}
		defer b.Free(last)
		if err := b.CopyRows(last, 0, x, x.Rows()-1, 1); err != nil {
			return nil, err
		}
		rows = last
	}
	data, ids, err := m.head(rows, mode == LogitsGreedy, hook)
	if err != nil {
		return nil, err
	}
	if mode == LogitsGreedy {
		return &Logits{Rows: 1, Vocab: m.LMHead.Out(), Greedy: ids[0]}, nil
	}
	return &Logits{Rows: rows.Rows(), Vocab: m.LMHead.Out(), Data: data}, nil
}

// head computes RMSNorm(rows; model.norm)·lm_headᵀ for every row and returns the logits
// [rows, vocab], or with greedy only each row's argmax (picked by the backend when it is a
// backend.ArgMaxer, so no logits are downloaded).
func (m *Model) head(rows backend.Tensor, greedy bool, hook func(int, backend.Tensor) error) ([]float32, []int, error) {
	b, c := m.B, m.Config
	n, vocab := rows.Rows(), m.LMHead.Out()
	normed, err := b.Alloc(backend.Activations, n, c.HiddenSize)
	if err != nil {
		return nil, nil, err
	}
	defer b.Free(normed)
	out, err := b.Alloc(backend.Activations, n, vocab)
	if err != nil {
		return nil, nil, err
	}
	defer b.Free(out)
	if err := b.RMSNorm(normed, rows, m.Norm, float32(c.RMSNormEps)); err != nil {
		return nil, nil, err
	}
	if err := hook(c.NumLayers, normed); err != nil {
		return nil, nil, err
	}
	if err := b.MatMul(out, normed, m.LMHead); err != nil {
		return nil, nil, err
	}
	if greedy {
		if am, ok := b.(backend.ArgMaxer); ok {
			ids, err := am.ArgMaxRows(out)
			return nil, ids, err
		}
	}
	data, err := b.Download(out, nil)
	if err != nil || !greedy {
		return data, nil, err
	}
	ids := make([]int, n)
	for r := range ids {
		ids[r] = backend.ArgMax(data[r*vocab : (r+1)*vocab])
	}
	return nil, ids, nil
}
