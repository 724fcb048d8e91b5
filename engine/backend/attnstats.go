package backend

// AttentionStats is implemented by training backends whose attention backward can start from
// statistics its forward saved instead of running the forward again: a flash-attention
// backward needs the softmax's log-sum-exp of every head and row, which the forward computes
// anyway. engine/devtrain uses it when the backend says it applies (its recomputed forward
// runs just before each layer's backward, so the backward's own forward would be a third
// one); otherwise Attention and AttentionBackward as usual.
type AttentionStats interface {
	// AttentionStatsApply reports whether the two methods below apply to sequences of T rows
	// with this head dimension. When false, use Attention and AttentionBackward.
	AttentionStatsApply(T, headDim int) bool
	// AttentionSaveStats is Attention over one sequence without a cache (pos0 = 0, k and v
	// with exactly T rows, the causal mask) that also writes into stats — any tensor of
	// T·nHeads elements — what AttentionBackwardStats needs. Its contents are the backend's.
	AttentionSaveStats(out, stats, q, k, v Tensor, nHeads, nKV, headDim int) error
	// AttentionBackwardStats is AttentionBackward given the stats AttentionSaveStats wrote for
	// the same q, k and v (unchanged since). Its results equal AttentionBackward's.
	AttentionBackwardStats(dq, dk, dv, dout, q, k, v, out, stats Tensor, nHeads, nKV, headDim int) error
}
