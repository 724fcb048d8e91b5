package backend

// AttentionStats is implemented by training backends whose attention backward can start from
// statistics its forward saved instead of running the forward again (a flash-attention
// backward needs the softmax's log-sum-exp of every head and row, which the forward computes
// anyway), and that take a batch of sequences in one call. engine/devtrain uses it when the
// backend says it applies — its recomputed forward runs just before each layer's backward, so
// the backward's own forward would be a third one — otherwise Attention and AttentionBackward
// per sequence.
//
// Both methods take B = q.Rows()/T sequences of T rows stored one after another (q, k, v, out
// and the gradients alike), each attending causally within itself from position 0.
type AttentionStats interface {
	// AttentionStatsApply reports whether the two methods below apply to sequences of T rows
	// with this head dimension. When false, use Attention and AttentionBackward.
	AttentionStatsApply(T, headDim int) bool
	// AttentionSaveStats is Attention over each sequence (pos0 = 0, the causal mask) that also
	// writes into stats — any tensor of q.Rows()·nHeads elements — what AttentionBackwardStats
	// needs. Its contents are the backend's.
	AttentionSaveStats(out, stats, q, k, v Tensor, T, nHeads, nKV, headDim int) error
	// AttentionBackwardStats is AttentionBackward over each sequence, given the stats
	// AttentionSaveStats wrote for the same q, k and v (unchanged since). Its results equal
	// AttentionBackward's.
	AttentionBackwardStats(dq, dk, dv, dout, q, k, v, out, stats Tensor, T, nHeads, nKV, headDim int) error
}
