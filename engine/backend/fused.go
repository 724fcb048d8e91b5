package backend

// Fused is implemented by backends with fused kernels for the decoder block, which a decode
// step otherwise spends mostly launching (one op is one kernel launch; a Qwen3 block is ~20).
// Each method is exactly the composition of the Backend ops its doc names — the same results on
// that backend — so a model computes the same with or without them; engine/qwen3 uses them
// when the backend has them.
type Fused interface {
	// MatMulMany computes outs[i] = x·ws[i]ᵀ for one to three weights with the same In (the
	// q/k/v projections; gate and up): MatMul for each.
	MatMulMany(outs []Tensor, x Tensor, ws []Weight) error
	// AddRMSNorm adds delta to x in place, then writes out = RMSNorm(x, w, eps): Add(x, delta)
	// then RMSNorm(out, x, w, eps).
	AddRMSNorm(out, x, delta, w Tensor, eps float32) error
	// QKNormRoPECache is RMSNorm per head (weights qn, kn of headDim elements) then RoPE at
	// positions pos0.. of q into qr and of k into kr, then the cache writes
	// CopyRows(kCache, pos0, kr, 0, T) and CopyRows(vCache, pos0, v, 0, T).
	QKNormRoPECache(qr, kr, q, k, v, qn, kn, kCache, vCache Tensor, headDim, pos0 int, theta float64, eps float32) error
}

// FusedDecode is implemented by backends that fold a decoder block's norms, SwiGLU and residual
// adds into its few-row products (CUDA: the resident tensor-core GEMV), so that a decode step
// launches about a third fewer kernels. Each method equals the sequence of ops it names and
// falls back to it where the fused form does not apply (other weight formats, more rows);
// x, out and the inputs must not share memory.
type FusedDecode interface {
	// NormMatMulMany computes outs[i] = RMSNorm(x; w, eps)·ws[i]ᵀ for one to three weights:
	// RMSNorm into a temporary, then MatMulMany.
	NormMatMulMany(outs []Tensor, x, w Tensor, eps float32, ws []Weight) error
	// MatMulAdd adds a·wᵀ to x: MatMul into a temporary, then Add(x, temporary).
	MatMulAdd(x, a Tensor, w Weight) error
	// SwiGLUMatMulAdd adds SwiGLU(gate, up)·wᵀ to x: SwiGLU, MatMul, Add.
	SwiGLUMatMulAdd(x, gate, up Tensor, w Weight) error
	// FusedDecodeRows is the most token rows for which these beat the ops they fold (0: none,
	// use the Fused path); callers use them for chunks of at most that many rows.
	FusedDecodeRows() int
}

// NormRoPEAttention is implemented by backends that fold the per-head q/k norms, RoPE and the
// KV-cache write into one-row decode attention (CUDA: one kernel instead of two, so a batch-1
// decode layer has one kernel boundary fewer).
type NormRoPEAttention interface {
	// QKNormRoPEAttention is QKNormRoPECache(qr, kr, q, k, v, qn, kn, kCache, vCache, headDim,
	// pos, theta, eps) then Attention(out, qr, kCache, vCache, pos, nHeads, nKV, headDim) for one
	// token row at position pos (q [1, nHeads·headDim], k and v [1, nKV·headDim]): the same
	// results, and it falls back to those two ops where the fused form does not apply.
	QKNormRoPEAttention(out, qr, kr, q, k, v, qn, kn, kCache, vCache Tensor, nHeads, nKV, headDim, pos int, theta float64, eps float32) error
}

// LayerDecoder is implemented by backends that can run every decoder layer of a one-token
// decode step in one call (CUDA: one persistent kernel for the whole stack, phases separated by
// grid barriers). Its sums run in another order than the per-op path's, so results agree with
// it within float tolerance, not bit for bit; engine/qwen3 takes it unless told not to
// (Model.OpDecode).
type LayerDecoder interface {
	// DecodeLayers runs layers over the one row x ([1, hidden], updated in place) at position
	// pos: for each layer, attention over rows 0..pos of its caches after writing the token's
	// key and value at row pos, then the MLP, with the residual adds. ok is false, with nothing
	// done, when the backend's decoder does not take these shapes or weight formats (the caller
	// then runs the layers op by op); err reports a failure after checks passed.
	DecodeLayers(x Tensor, layers []DecodeLayer, pos int, p DecodeParams) (ok bool, err error)
}

// DecodeLayer is one decoder layer's weights and KV cache rows for LayerDecoder.
type DecodeLayer struct {
	InputNorm, PostNorm, QNorm, KNorm Tensor
	Q, K, V, O, Gate, Up, Down        Weight
	KCache, VCache                    Tensor
}

// DecodeParams are the model constants LayerDecoder needs.
type DecodeParams struct {
	NumHeads, NumKVHeads, HeadDim int
	RopeTheta                     float64
	RMSNormEps                    float32
}
