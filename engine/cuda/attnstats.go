//go:build cuda

package cuda

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
)

// backend.AttentionStats: the flash forward writes the log-sum-exp of every (sequence, head,
// row) into the caller's stats tensor, and the flash backward starts from it instead of running
// the forward a third time (devtrain recomputes each layer's forward just before its backward).
// All the sequences of a call go in one launch per kernel (grid.z): one sequence at a time,
// flash_bwd_dkdv had 256 blocks at T = 2048 whose causal work differs 64-fold, so the heaviest
// block set the time. The results are AttentionBackward's per sequence bit for bit: the same
// kernels compute the same sums from the same q, k and v.

var _ backend.AttentionStats = (*Backend)(nil)

// AttentionStatsApply implements backend.AttentionStats: where the flash kernels take both the
// forward and the backward.
func (b *Backend) AttentionStatsApply(T, headDim int) bool {
	ok := false
	b.do(func() error { ok = b.useFlashBackward(T, headDim); return nil })
	return ok
}

// statsTensor checks that stats holds nHeads·rows floats and does not overlap the others.
func (b *Backend) statsTensor(op string, stats backend.Tensor, rows, nHeads int, others ...*Tensor) (*Tensor, error) {
	st, err := b.ten(stats, op, "stats")
	if err != nil {
		return nil, err
	}
	if int64(st.rows)*int64(st.cols) != int64(rows)*int64(nHeads) {
		return nil, fmt.Errorf("cuda: %s: stats [%d, %d] for %d rows of %d heads (want %d elements)", op, st.rows, st.cols, rows, nHeads, rows*nHeads)
	}
	for _, o := range others {
		if overlaps(st, o) {
			return nil, fmt.Errorf("cuda: %s: stats share memory with another argument", op)
		}
	}
	return st, nil
}

// AttentionSaveStats implements backend.AttentionStats.
func (b *Backend) AttentionSaveStats(out, stats, q, k, v backend.Tensor, T, nHeads, nKV, headDim int) error {
	return b.do(func() error {
		const op = "attention (saving statistics)"
		var ts [4]*Tensor
		for i, x := range []struct {
			t    backend.Tensor
			name string
		}{{out, "out"}, {q, "q"}, {k, "k"}, {v, "v"}} {
			t, err := b.ten(x.t, op, x.name)
			if err != nil {
				return err
			}
			ts[i] = t
		}
		o, qt, kt, vt := ts[0], ts[1], ts[2], ts[3]
		if err := backend.CheckAttention("cuda", o, qt, kt, vt, 0, nHeads, nKV, headDim); err != nil {
			return err
		}
		if T <= 0 || qt.rows%T != 0 {
			return fmt.Errorf("cuda: %s: %d rows are not sequences of %d", op, qt.rows, T)
		}
		if kt.rows != qt.rows || vt.rows != qt.rows {
			return fmt.Errorf("cuda: %s: k [%d, %d] and v [%d, %d] need exactly the %d rows of q", op, kt.rows, kt.cols, vt.rows, vt.cols, qt.rows)
		}
		if !b.useFlashBackward(T, headDim) {
			return fmt.Errorf("cuda: %s: %d rows of head_dim %d do not take the flash kernels (AttentionStatsApply is false)", op, T, headDim)
		}
		st, err := b.statsTensor(op, stats, qt.rows, nHeads, o, qt, kt, vt)
		if err != nil {
			return err
		}
		if err := b.flashAttention(o.ptr, st.ptr, qt, kt, vt, 0, nHeads, nKV, qt.rows/T); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}

// AttentionBackwardStats implements backend.AttentionStats.
func (b *Backend) AttentionBackwardStats(dq, dk, dv, dout, q, k, v, out, stats backend.Tensor, T, nHeads, nKV, headDim int) error {
	return b.do(func() error {
		const op = "attention backward (saved statistics)"
		ts, err := b.attentionBackwardArgs(op, dq, dk, dv, dout, q, k, v, out, nHeads, nKV, headDim)
		if err != nil {
			return err
		}
		dqt, dkt, dvt, dot, qt, kt, vt, ot := ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7]
		if T <= 0 || qt.rows%T != 0 {
			return fmt.Errorf("cuda: %s: %d rows are not sequences of %d", op, qt.rows, T)
		}
		if !b.useFlashBackward(T, headDim) {
			return fmt.Errorf("cuda: %s: %d rows of head_dim %d do not take the flash kernels (AttentionStatsApply is false)", op, T, headDim)
		}
		st, err := b.statsTensor(op, stats, qt.rows, nHeads, dqt, dkt, dvt)
		if err != nil {
			return err
		}
		if err := b.flashBackward(dqt, dkt, dvt, dot, qt, kt, vt, ot, st.ptr, nHeads, nKV, qt.rows/T); err != nil {
			return fmt.Errorf("cuda: %s (flash): %w", op, err)
		}
		return nil
	})
}
