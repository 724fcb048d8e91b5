//go:build cuda

package cuda

import (
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
)

// backend.AttentionStats: the flash forward writes the log-sum-exp of every (head, row) into
// the caller's stats tensor, and the flash backward starts from it instead of running the
// forward a third time (devtrain recomputes each layer's forward just before its backward).
// The backward's results are AttentionBackward's bit for bit: the same kernel computed the
// same statistics from the same q, k and v.

var _ backend.AttentionStats = (*Backend)(nil)

// AttentionStatsApply implements backend.AttentionStats: where the flash kernels take both the
// forward and the backward.
func (b *Backend) AttentionStatsApply(T, headDim int) bool {
	ok := false
	b.do(func() error { ok = b.useFlashBackward(T, headDim); return nil })
	return ok
}

// statsTensor checks that stats holds nHeads·T floats and does not overlap the others.
func (b *Backend) statsTensor(op string, stats backend.Tensor, T, nHeads int, others ...*Tensor) (*Tensor, error) {
	st, err := b.ten(stats, op, "stats")
	if err != nil {
		return nil, err
	}
	if int64(st.rows)*int64(st.cols) != int64(T)*int64(nHeads) {
		return nil, fmt.Errorf("cuda: %s: stats [%d, %d] for %d rows of %d heads (want %d elements)", op, st.rows, st.cols, T, nHeads, T*nHeads)
	}
	for _, o := range others {
		if overlaps(st, o) {
			return nil, fmt.Errorf("cuda: %s: stats share memory with another argument", op)
		}
	}
	return st, nil
}

// AttentionSaveStats implements backend.AttentionStats.
func (b *Backend) AttentionSaveStats(out, stats, q, k, v backend.Tensor, nHeads, nKV, headDim int) error {
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
		T := qt.rows
		if kt.rows != T || vt.rows != T {
			return fmt.Errorf("cuda: %s: k [%d, %d] and v [%d, %d] need exactly the %d rows of q", op, kt.rows, kt.cols, vt.rows, vt.cols, T)
		}
		if !b.useFlashBackward(T, headDim) {
			return fmt.Errorf("cuda: %s: %d rows of head_dim %d do not take the flash kernels (AttentionStatsApply is false)", op, T, headDim)
		}
		st, err := b.statsTensor(op, stats, T, nHeads, o, qt, kt, vt)
		if err != nil {
			return err
		}
		if err := b.flashAttention(o.ptr, st.ptr, qt, kt, vt, 0, nHeads, nKV); err != nil {
			return fmt.Errorf("cuda: %s: %w", op, err)
		}
		return nil
	})
}

// AttentionBackwardStats implements backend.AttentionStats.
func (b *Backend) AttentionBackwardStats(dq, dk, dv, dout, q, k, v, out, stats backend.Tensor, nHeads, nKV, headDim int) error {
	return b.do(func() error {
		const op = "attention backward (saved statistics)"
		ts, err := b.attentionBackwardArgs(op, dq, dk, dv, dout, q, k, v, out, nHeads, nKV, headDim)
		if err != nil {
			return err
		}
		dqt, dkt, dvt, dot, qt, kt, vt, ot := ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7]
		T := qt.rows
		if !b.useFlashBackward(T, headDim) {
			return fmt.Errorf("cuda: %s: %d rows of head_dim %d do not take the flash kernels (AttentionStatsApply is false)", op, T, headDim)
		}
		st, err := b.statsTensor(op, stats, T, nHeads, dqt, dkt, dvt)
		if err != nil {
			return err
		}
		if err := b.flashBackward(dqt, dkt, dvt, dot, qt, kt, vt, ot, st.ptr, nHeads, nKV); err != nil {
			return fmt.Errorf("cuda: %s (flash): %w", op, err)
		}
		return nil
	})
}
