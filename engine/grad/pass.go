package grad

import (
	"context"
	"fmt"

	"github.com/qwengo/qwengo/engine/nvfp4"

	"github.com/qwengo/qwengo/engine/data"
	"github.com/qwengo/qwengo/engine/train"
)

// acts holds one layer's saved activations for the backward.
type acts struct {
	x0, a, rstd1, q, k, v, qn, kn, rstdq, rstdk, P, o []float32
	x1, mm, rstd2, gate, up, h                        []float32
}

// forward runs one sequence and returns the final normed hidden state and the saved state.
type state struct {
	T        int
	ids      []int
	layers   []acts
	xL, xf   []float32
	rstdF    []float32
	cos, sin []float32
}

func (m *Model) w(i int) []float32 { return m.Params[i].W }

// lw returns the weights a projection computes with: the parameter itself, or under QAT its
// NVFP4 quantise-dequantise image (straight-through: the gradient flows to the dense master).
func (m *Model) lw(i int) []float32 {
	if !m.QAT {
		return m.Params[i].W
	}
	m.fqMu.Lock()
	defer m.fqMu.Unlock()
	if w, ok := m.fq[i]; ok {
		return w
	}
	p := m.Params[i]
	q, err := nvfp4.QuantizeModelOpt(p.W, p.Rows, p.Cols)
	if err != nil { // non-finite weights: compute with them as they are
		return p.W
	}
	if m.fq == nil {
		m.fq = map[int][]float32{}
	}
	m.fq[i] = q.Dequantize()
	return m.fq[i]
}

func (m *Model) phase(name string) {
	if m.OnPhase != nil {
		m.OnPhase(name)
	}
}

func (m *Model) forward(ctx context.Context, ids []int) (*state, error) {
	c := m.Config
	T, H, QD, KV, I := len(ids), c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize
	eps := float32(c.RMSNormEps)
	s := &state{T: T, ids: ids}
	s.cos, s.sin = ropeTables(T, c.HeadDim, 0, c.RopeTheta)
	x := make([]float32, T*H)
	E := m.w(m.embed)
	for t, id := range ids {
		if id < 0 || id >= c.VocabSize {
			return nil, fmt.Errorf("token id %d at position %d is outside the vocabulary (0..%d)", id, t, c.VocabSize-1)
		}
		copy(x[t*H:(t+1)*H], E[id*H:(id+1)*H])
	}
	for _, l := range m.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		a := acts{x0: x}
		a.a, a.rstd1 = make([]float32, T*H), make([]float32, T)
		rmsnormForward(a.a, a.rstd1, x, m.w(l.ln1), T, H, eps)
		a.q, a.k, a.v = make([]float32, T*QD), make([]float32, T*KV), make([]float32, T*KV)
		matmulForward(a.q, a.a, m.lw(l.q), T, H, QD)
		matmulForward(a.k, a.a, m.lw(l.k), T, H, KV)
		matmulForward(a.v, a.a, m.lw(l.v), T, H, KV)
		a.qn, a.kn = make([]float32, T*QD), make([]float32, T*KV)
		a.rstdq, a.rstdk = make([]float32, T*c.NumHeads), make([]float32, T*c.NumKVHeads)
		rmsnormForward(a.qn, a.rstdq, a.q, m.w(l.qn), T*c.NumHeads, c.HeadDim, eps)
		rmsnormForward(a.kn, a.rstdk, a.k, m.w(l.kn), T*c.NumKVHeads, c.HeadDim, eps)
		ropeApply(a.qn, s.cos, s.sin, T, QD, c.HeadDim, 1)
		ropeApply(a.kn, s.cos, s.sin, T, KV, c.HeadDim, 1)
		a.P, a.o = make([]float32, c.NumHeads*T*T), make([]float32, T*QD)
		attentionForward(a.o, a.P, a.qn, a.kn, a.v, T, c.NumHeads, c.NumKVHeads, c.HeadDim)
		x1 := make([]float32, T*H)
		matmulForward(x1, a.o, m.lw(l.o), T, QD, H)
		for i := range x1 {
			x1[i] += x[i]
		}
		a.x1 = x1
		a.mm, a.rstd2 = make([]float32, T*H), make([]float32, T)
		rmsnormForward(a.mm, a.rstd2, x1, m.w(l.ln2), T, H, eps)
		a.gate, a.up, a.h = make([]float32, T*I), make([]float32, T*I), make([]float32, T*I)
		matmulForward(a.gate, a.mm, m.lw(l.gate), T, H, I)
		matmulForward(a.up, a.mm, m.lw(l.up), T, H, I)
		swigluForward(a.h, a.gate, a.up)
		x2 := make([]float32, T*H)
		matmulForward(x2, a.h, m.lw(l.down), T, I, H)
		for i := range x2 {
			x2[i] += x1[i]
		}
		s.layers = append(s.layers, a)
		x = x2
	}
	s.xL = x
	s.xf, s.rstdF = make([]float32, T*H), make([]float32, T)
	rmsnormForward(s.xf, s.rstdF, x, m.w(m.norm), T, H, eps)
	return s, nil
}

// backward accumulates parameter gradients from dxf (gradient at the final normed hidden).
func (m *Model) backward(s *state, dxf []float32, grads [][]float32) {
	c := m.Config
	T, H, QD, KV, I := s.T, c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize
	dx := make([]float32, T*H)
	rmsnormBackward(dx, grads[m.norm], dxf, s.xL, s.rstdF, m.w(m.norm), T, H)
	for li := len(m.layers) - 1; li >= 0; li-- {
		l, a := m.layers[li], s.layers[li]
		// MLP: x2 = x1 + down(swiglu(gate(mm), up(mm)))
		dh := make([]float32, T*I)
		matmulBackward(dh, grads[l.down], dx, a.h, m.lw(l.down), T, I, H)
		dgate, dup := make([]float32, T*I), make([]float32, T*I)
		swigluBackward(dgate, dup, dh, a.gate, a.up)
		dmm := make([]float32, T*H)
		matmulBackward(dmm, grads[l.gate], dgate, a.mm, m.lw(l.gate), T, H, I)
		matmulBackward(dmm, grads[l.up], dup, a.mm, m.lw(l.up), T, H, I)
		dx1 := dx // residual
		rmsnormBackward(dx1, grads[l.ln2], dmm, a.x1, a.rstd2, m.w(l.ln2), T, H)
		// attention: x1 = x0 + o_proj(attn(rope(qnorm(q)), rope(knorm(k)), v))
		do := make([]float32, T*QD)
		matmulBackward(do, grads[l.o], dx1, a.o, m.lw(l.o), T, QD, H)
		dqr, dkr, dv := make([]float32, T*QD), make([]float32, T*KV), make([]float32, T*KV)
		attentionBackward(dqr, dkr, dv, do, a.P, a.qn, a.kn, a.v, T, c.NumHeads, c.NumKVHeads, c.HeadDim)
		ropeApply(dqr, s.cos, s.sin, T, QD, c.HeadDim, -1)
		ropeApply(dkr, s.cos, s.sin, T, KV, c.HeadDim, -1)
		dq, dk := make([]float32, T*QD), make([]float32, T*KV)
		rmsnormBackward(dq, grads[l.qn], dqr, a.q, a.rstdq, m.w(l.qn), T*c.NumHeads, c.HeadDim)
		rmsnormBackward(dk, grads[l.kn], dkr, a.k, a.rstdk, m.w(l.kn), T*c.NumKVHeads, c.HeadDim)
		da := make([]float32, T*H)
		matmulBackward(da, grads[l.q], dq, a.a, m.lw(l.q), T, H, QD)
		matmulBackward(da, grads[l.k], dk, a.a, m.lw(l.k), T, H, KV)
		matmulBackward(da, grads[l.v], dv, a.a, m.lw(l.v), T, H, KV)
		rmsnormBackward(dx1, grads[l.ln1], da, a.x0, a.rstd1, m.w(l.ln1), T, H)
		dx = dx1
	}
	dE := grads[m.embed]
	for t, id := range s.ids {
		axpy(dE[id*H:(id+1)*H], 1, dx[t*H:(t+1)*H])
	}
}

// sequence runs forward, the loss on the logits, and (when grads != nil) the backward for one
// sequence of a batch. Logits are computed for all T positions of this one sequence only.
func (m *Model) sequence(ctx context.Context, ids []int, mask []bool, loss train.Loss, grads [][]float32) (float64, int, error) {
	c := m.Config
	s, err := m.forward(ctx, ids)
	if err != nil {
		return 0, 0, err
	}
	T, H, V := s.T, c.HiddenSize, c.VocabSize
	logits := make([]float32, T*V)
	matmulForward(logits, s.xf, m.w(m.lm), T, H, V)
	dlogits := make([]float32, T*V)
	sum, n := loss.Value(logits, T, V, ids, mask, dlogits)
	m.phase("forward_done")
	if grads == nil || n == 0 {
		return sum, n, nil
	}
	dxf := make([]float32, T*H)
	matmulBackward(dxf, grads[m.lm], dlogits, s.xf, m.w(m.lm), T, H, V)
	m.backward(s, dxf, grads)
	m.phase("backward_done")
	return sum, n, nil
}

// trim drops trailing padding (mask false and beyond the last target) of a batch row.
func trim(ids []int, mask []bool) ([]int, []bool) {
	end := len(ids)
	for end > 1 && !mask[end-1] {
		end--
	}
	return ids[:end], mask[:end]
}

// Grad returns the summed loss, the target count and the gradients of the mean loss.
func (m *Model) Grad(ctx context.Context, b *data.Batch, loss train.Loss) (float64, int, [][]float32, error) {
	grads := make([][]float32, len(m.Params))
	for i, p := range m.Params {
		grads[i] = make([]float32, len(p.W))
	}
	var sum float64
	var n int
	for r := 0; r < b.B; r++ {
		ids, mask := trim(b.IDs[r*b.T:(r+1)*b.T], b.Mask[r*b.T:(r+1)*b.T])
		s, c, err := m.sequence(ctx, ids, mask, loss, grads)
		if err != nil {
			return 0, 0, nil, err
		}
		sum += s
		n += c
	}
	if n > 0 {
		inv := 1 / float32(n)
		for _, g := range grads {
			for i := range g {
				g[i] *= inv
			}
		}
	}
	return sum, n, grads, nil
}

// LossOnly scores a batch without gradients.
func (m *Model) LossOnly(ctx context.Context, b *data.Batch, loss train.Loss) (float64, int, error) {
	var sum float64
	var n int
	for r := 0; r < b.B; r++ {
		ids, mask := trim(b.IDs[r*b.T:(r+1)*b.T], b.Mask[r*b.T:(r+1)*b.T])
		s, c, err := m.sequence(ctx, ids, mask, loss, nil)
		if err != nil {
			return 0, 0, err
		}
		sum += s
		n += c
	}
	return sum, n, nil
}

// Logits returns the logits of every position of ids (T×V).
func (m *Model) Logits(ctx context.Context, ids []int) ([]float32, error) {
	s, err := m.forward(ctx, ids)
	if err != nil {
		return nil, err
	}
	c := m.Config
	logits := make([]float32, s.T*c.VocabSize)
	matmulForward(logits, s.xf, m.w(m.lm), s.T, c.HiddenSize, c.VocabSize)
	return logits, nil
}
