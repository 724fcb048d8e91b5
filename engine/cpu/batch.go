package cpu

import (
	"errors"
	"fmt"
	"math"

	"github.com/qwengo/qwengo/engine/backend"
)

// backend.Batched on the CPU: each op does, per row, the arithmetic of the single-sequence op
// it is documented as (RoPE, CopyRows, Attention), in the same order, so the results are those
// of the composition bit for bit (TestBatched compares them); the work is split over rows (and
// heads) of all sequences at once instead of one sequence at a time.

var _ backend.Batched = (*Backend)(nil)

// ropeInvFreq returns inv_freq_i = theta^(-2i/headDim) in float32, as RoPE computes it.
func ropeInvFreq(headDim int, theta float64) []float32 {
	inv := make([]float32, headDim/2)
	for i := range inv {
		inv[i] = float32(1 / math.Pow(theta, float64(2*i)/float64(headDim)))
	}
	return inv
}

// RoPEAt implements backend.Batched.
func (b *Backend) RoPEAt(out, x backend.Tensor, headDim int, positions []int, theta float64) error {
	o, err := b.ten(out, "rope at positions", "out")
	if err != nil {
		return err
	}
	a, err := b.ten(x, "rope at positions", "x")
	if err != nil {
		return err
	}
	if err := backend.CheckRoPEAt("cpu", o, a, headDim, positions, theta); err != nil {
		return err
	}
	if shares(o, a) && !(o.rows == a.rows && &o.Data[0] == &a.Data[0]) {
		return fmt.Errorf("cpu: rope at positions: out shares memory with x without being x")
	}
	b.ropeRows(o, a, headDim, func(t int) int { return positions[t] }, ropeInvFreq(headDim, theta))
	return nil
}

// ropeRows rotates row t of a at position pos(t) into row t of o: RoPE (pos0+t) and RoPEAt (a
// position per row) share it.
func (b *Backend) ropeRows(o, a *Tensor, headDim int, pos func(t int) int, inv []float32) {
	half := headDim / 2
	b.parallelRange(a.rows, 1, func(lo, hi int) {
		cos := make([]float32, half)
		sin := make([]float32, half)
		for t := lo; t < hi; t++ {
			p := float32(pos(t))
			for i := range inv {
				s, c := math.Sincos(float64(p * inv[i]))
				cos[i], sin[i] = float32(c), float32(s)
			}
			src, dst := a.Row(t), o.Row(t)
			for h := 0; h < a.cols; h += headDim {
				xs, os := src[h:h+headDim], dst[h:h+headDim]
				for i := 0; i < half; i++ {
					x1, x2 := xs[i], xs[i+half]
					os[i] = x1*cos[i] - x2*sin[i]
					os[i+half] = x2*cos[i] + x1*sin[i]
				}
			}
		}
	})
}

// ScatterRows implements backend.Batched.
func (b *Backend) ScatterRows(dst backend.Tensor, rows []int, src backend.Tensor) error {
	d, err := b.ten(dst, "scatter rows", "dst")
	if err != nil {
		return err
	}
	s, err := b.ten(src, "scatter rows", "src")
	if err != nil {
		return err
	}
	if err := backend.CheckScatterRows("cpu", d, rows, s); err != nil {
		return err
	}
	if shares(d, s) {
		return fmt.Errorf("cpu: scatter rows: dst and src share memory")
	}
	for r, row := range rows {
		copy(d.Row(row), s.Row(r))
		d.roundStored(d.Row(row))
	}
	return nil
}

// AttentionBatch implements backend.Batched: one job per (sequence, head), each Attention's
// arithmetic for its one query row over its sequence's rows of the cache.
func (b *Backend) AttentionBatch(out, q, k, v backend.Tensor, capacity int, positions []int, nHeads, nKV, headDim int) error {
	o, qt, kt, vt, err := b.attnTensors("attention batch", out, q, k, v)
	if err != nil {
		return err
	}
	if err := backend.CheckAttentionBatch("cpu", o, qt, kt, vt, capacity, positions, nHeads, nKV, headDim); err != nil {
		return err
	}
	if shares(o, qt) || shares(o, kt) || shares(o, vt) {
		return fmt.Errorf("cpu: attention batch: out shares memory with q, k or v")
	}
	B := qt.rows
	group := nHeads / nKV
	scale := float32(1 / math.Sqrt(float64(headDim)))
	longest := 0
	for _, p := range positions {
		longest = max(longest, p+1)
	}
	bufs := make([]*[]float32, b.workers)
	b.parallel(B*nHeads, func(worker, job int) {
		r, h := job/nHeads, job%nHeads
		kvh := h / group
		n := positions[r] + 1 // every key of the sequence up to and including its new one
		base := r * capacity  // the sequence's first cache row
		if bufs[worker] == nil {
			bufs[worker] = b.buffer(longest)
		}
		qv := qt.Data[r*qt.cols+h*headDim : r*qt.cols+(h+1)*headDim]
		ov := o.Data[r*o.cols+h*headDim : r*o.cols+(h+1)*headDim]
		attendRow(ov, qv, kt, vt, base, n, kvh, scale, (*bufs[worker])[:n])
	})
	for _, p := range bufs {
		if p != nil {
			b.release(p)
		}
	}
	return nil
}

// QKNormRoPECacheBatch implements backend.Batched as the composition its doc names, after
// checking every argument (so a refused call writes nothing).
func (b *Backend) QKNormRoPECacheBatch(qr, kr, q, k, v, qn, kn, kCache, vCache backend.Tensor, headDim, capacity int, positions []int, theta float64, eps float32) error {
	const op = "qk norm+rope+cache batch"
	var ts [9]*Tensor
	for i, x := range []struct {
		t    backend.Tensor
		name string
	}{{qr, "qr"}, {kr, "kr"}, {q, "q"}, {k, "k"}, {v, "v"}, {qn, "q_norm"}, {kn, "k_norm"}, {kCache, "k cache"}, {vCache, "v cache"}} {
		t, err := b.ten(x.t, op, x.name)
		if err != nil {
			return err
		}
		ts[i] = t
	}
	QR, KR, Q, K, V, QN, KN, KC, VC := ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7], ts[8]
	if err := backend.CheckQKNormRoPECacheBatch("cpu", QR, KR, Q, K, V, QN, KN, KC, VC, headDim, capacity, positions, theta); err != nil {
		return err
	}
	for _, out := range []*Tensor{QR, KR, KC, VC} {
		for _, in := range []*Tensor{Q, K, V, QN, KN} {
			if shares(out, in) {
				return fmt.Errorf("cpu: %s: outputs must not share memory with inputs", op)
			}
		}
	}
	if shares(QR, KR) || shares(QR, KC) || shares(QR, VC) || shares(KR, KC) || shares(KR, VC) || shares(KC, VC) {
		return fmt.Errorf("cpu: %s: the outputs qr, kr and the caches must not share memory", op)
	}
	// Checked above: none of these can fail.
	rows := backend.CacheRows(capacity, positions)
	return errors.Join(
		b.RMSNorm(QR, Q, QN, eps),
		b.RMSNorm(KR, K, KN, eps),
		b.RoPEAt(QR, QR, headDim, positions, theta),
		b.RoPEAt(KR, KR, headDim, positions, theta),
		b.ScatterRows(KC, rows, KR),
		b.ScatterRows(VC, rows, V),
	)
}
