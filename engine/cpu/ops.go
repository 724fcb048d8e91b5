package cpu

import (
	"fmt"
	"math"

	"github.com/qwengo/qwengo/engine/backend"
)

// RMSNorm implements backend.Backend.
func (b *Backend) RMSNorm(out, x, w backend.Tensor, eps float32) error {
	o, err := b.ten(out, "rmsnorm", "out")
	if err != nil {
		return err
	}
	a, err := b.ten(x, "rmsnorm", "x")
	if err != nil {
		return err
	}
	g, err := b.ten(w, "rmsnorm", "weight")
	if err != nil {
		return err
	}
	n := len(g.Data)
	if n == 0 || a.cols%n != 0 || o.rows != a.rows || o.cols != a.cols {
		return fmt.Errorf("cpu: rmsnorm: x [%d, %d] with a weight of %d into [%d, %d] (the weight length must divide the width)", a.rows, a.cols, n, o.rows, o.cols)
	}
	groups := len(a.Data) / n
	b.parallelRange(groups, max(1, 4096/n), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			xs, os := a.Data[i*n:(i+1)*n], o.Data[i*n:(i+1)*n]
			var ss float64
			for _, v := range xs {
				ss += float64(v) * float64(v)
			}
			inv := float32(1 / math.Sqrt(ss/float64(n)+float64(eps)))
			for j, v := range xs {
				os[j] = g.Data[j] * (v * inv)
			}
		}
	})
	return nil
}

// RoPE implements backend.Backend. As in Hugging Face: inv_freq in float32, the angle
// position·inv_freq in float32, cos and sin of it.
func (b *Backend) RoPE(out, x backend.Tensor, headDim, pos0 int, theta float64) error {
	o, err := b.ten(out, "rope", "out")
	if err != nil {
		return err
	}
	a, err := b.ten(x, "rope", "x")
	if err != nil {
		return err
	}
	if headDim <= 0 || headDim%2 != 0 || a.cols%headDim != 0 || o.rows != a.rows || o.cols != a.cols || pos0 < 0 || !(theta > 0) {
		return fmt.Errorf("cpu: rope: x [%d, %d] into [%d, %d] with head_dim %d, position %d, theta %v", a.rows, a.cols, o.rows, o.cols, headDim, pos0, theta)
	}
	b.ropeRows(o, a, headDim, func(t int) int { return pos0 + t }, ropeInvFreq(headDim, theta))
	return nil
}

// Attention implements backend.Backend: one job per (query row, head); scores in float32 with
// the maximum subtracted before exp.
func (b *Backend) Attention(out, q, k, v backend.Tensor, pos0, nHeads, nKV, headDim int) error {
	o, qt, kt, vt, err := b.attnTensors("attention", out, q, k, v)
	if err != nil {
		return err
	}
	if err := backend.CheckAttention("cpu", o, qt, kt, vt, pos0, nHeads, nKV, headDim); err != nil {
		return err
	}
	T := qt.rows
	group := nHeads / nKV
	scale := float32(1 / math.Sqrt(float64(headDim)))
	bufs := make([]*[]float32, b.workers)
	b.parallel(T*nHeads, func(worker, job int) {
		t, h := job/nHeads, job%nHeads
		kvh := h / group
		n := pos0 + t + 1 // bottom-right causal mask
		if bufs[worker] == nil {
			bufs[worker] = b.buffer(pos0 + T)
		}
		qv := qt.Data[t*qt.cols+h*headDim : t*qt.cols+(h+1)*headDim]
		ov := o.Data[t*o.cols+h*headDim : t*o.cols+(h+1)*headDim]
		attendRow(ov, qv, kt, vt, 0, n, kvh, scale, (*bufs[worker])[:n])
	})
	for _, p := range bufs {
		if p != nil {
			b.release(p)
		}
	}
	return nil
}

// attnTensors resolves an attention op's output, query, key and value tensors, naming the
// one that is not a live CPU tensor.
func (b *Backend) attnTensors(op string, out, q, k, v backend.Tensor) (o, qt, kt, vt *Tensor, err error) {
	var ts [4]*Tensor
	for i, x := range []struct {
		t    backend.Tensor
		name string
	}{{out, "out"}, {q, "q"}, {k, "k"}, {v, "v"}} {
		if ts[i], err = b.ten(x.t, op, x.name); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	return ts[0], ts[1], ts[2], ts[3], nil
}

// attendRow is one query head's attention over n keys of KV head kvh: ov = softmax(qv·k_jᵀ·scale)
// · v_j for j < n, key j at row base+j of k and v (the single-sequence cache starts at row 0, a
// batch cache's sequence r at r·capacity). s is scratch for the n scores. Attention and
// AttentionBatch share it, so a batched row computes exactly what decoding it alone does.
func attendRow(ov, qv []float32, kt, vt *Tensor, base, n, kvh int, scale float32, s []float32) {
	hd := len(qv)
	maxv := float32(math.Inf(-1))
	for j := range s[:n] {
		row := (base + j) * kt.cols
		s[j] = dot(qv, kt.Data[row+kvh*hd:row+(kvh+1)*hd]) * scale
		maxv = max(maxv, s[j])
	}
	var sum float32
	for j, x := range s[:n] {
		e := float32(math.Exp(float64(x - maxv)))
		s[j] = e
		sum += e
	}
	clear(ov)
	inv := 1 / sum
	for j, p := range s[:n] {
		p *= inv
		row := (base + j) * vt.cols
		vv := vt.Data[row+kvh*hd : row+(kvh+1)*hd]
		vv = vv[:len(ov)]
		for i := range ov {
			ov[i] += p * vv[i]
		}
	}
}

// SwiGLU implements backend.Backend.
func (b *Backend) SwiGLU(out, gate, up backend.Tensor) error {
	o, err := b.ten(out, "swiglu", "out")
	if err != nil {
		return err
	}
	g, err := b.ten(gate, "swiglu", "gate")
	if err != nil {
		return err
	}
	u, err := b.ten(up, "swiglu", "up")
	if err != nil {
		return err
	}
	if g.rows != u.rows || g.cols != u.cols || o.rows != g.rows || o.cols != g.cols {
		return fmt.Errorf("cpu: swiglu: gate [%d, %d], up [%d, %d], out [%d, %d]", g.rows, g.cols, u.rows, u.cols, o.rows, o.cols)
	}
	b.parallelRange(len(o.Data), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x := g.Data[i]
			o.Data[i] = x / (1 + float32(math.Exp(float64(-x)))) * u.Data[i]
		}
	})
	return nil
}

// Add implements backend.Backend.
func (b *Backend) Add(dst, src backend.Tensor) error {
	d, err := b.ten(dst, "add", "dst")
	if err != nil {
		return err
	}
	s, err := b.ten(src, "add", "src")
	if err != nil {
		return err
	}
	if d.rows != s.rows || d.cols != s.cols {
		return fmt.Errorf("cpu: add: [%d, %d] += [%d, %d]", d.rows, d.cols, s.rows, s.cols)
	}
	b.parallelRange(len(d.Data), 1<<15, func(lo, hi int) {
		ds, ss := d.Data[lo:hi], s.Data[lo:hi]
		for i, v := range ss {
			ds[i] += v
		}
	})
	return nil
}

// CopyRows implements backend.Backend.
func (b *Backend) CopyRows(dst backend.Tensor, dstRow int, src backend.Tensor, srcRow, n int) error {
	d, err := b.ten(dst, "copy rows", "dst")
	if err != nil {
		return err
	}
	s, err := b.ten(src, "copy rows", "src")
	if err != nil {
		return err
	}
	if d.cols != s.cols || n < 0 || dstRow < 0 || srcRow < 0 || dstRow+n > d.rows || srcRow+n > s.rows {
		return fmt.Errorf("cpu: copy rows: %d rows from row %d of [%d, %d] to row %d of [%d, %d]", n, srcRow, s.rows, s.cols, dstRow, d.rows, d.cols)
	}
	to := d.Data[dstRow*d.cols : (dstRow+n)*d.cols]
	copy(to, s.Data[srcRow*s.cols:(srcRow+n)*s.cols])
	d.roundStored(to)
	return nil
}

var _ backend.ArgMaxer = (*Backend)(nil)

// ArgMaxRows implements backend.ArgMaxer with backend.ArgMax per row.
func (b *Backend) ArgMaxRows(x backend.Tensor) ([]int, error) {
	t, err := b.ten(x, "argmax", "x")
	if err != nil {
		return nil, err
	}
	ids := make([]int, t.rows)
	for r := range ids {
		ids[r] = backend.ArgMax(t.Data[r*t.cols : (r+1)*t.cols])
	}
	return ids, nil
}
