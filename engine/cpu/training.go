package cpu

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/tensor"
)

// backend.Training on the CPU: the reference the GPU's training ops are tested against.
//
// The math mirrors engine/grad (the float32 training reference checked against PyTorch) op
// for op, with two differences that keep memory at the forward's: RMSNorm statistics are
// recomputed from x (in float64, as RMSNorm computes them), and attention recomputes each
// (head, query row)'s softmax exactly as Attention does, with per-row scratch only (no T×T
// matrix). Every reduction has a fixed order (work is split by output rows, by KV heads or by
// fixed-size blocks, never by worker count), so results do not depend on the number of
// workers. Cross-entropy is engine/train.CrossEntropy's arithmetic per row; AdamW is
// engine/optim's update, in place on the weight, with the moments in optim's layouts.

var _ backend.Training = (*Backend)(nil)

// RowView implements backend.Training.
func (b *Backend) RowView(x backend.Tensor, row0, n int) (backend.Tensor, error) {
	t, err := b.ten(x, "row view", "tensor")
	if err != nil {
		return nil, err
	}
	if row0 < 0 || n <= 0 || row0+n > t.rows {
		return nil, fmt.Errorf("cpu: row view: rows [%d, %d) of a [%d, %d] tensor", row0, row0+n, t.rows, t.cols)
	}
	return &Tensor{rows: n, cols: t.cols, Data: t.Data[row0*t.cols : (row0+n)*t.cols : (row0+n)*t.cols], cat: t.cat, owner: b, view: true, bf16Values: t.bf16Values}, nil
}

// WeightTensor implements backend.Training.
func (b *Backend) WeightTensor(x backend.Weight) (backend.Tensor, error) {
	w, err := b.weight(x, "weight tensor")
	if err != nil {
		return nil, err
	}
	if w.f32 == nil {
		return nil, fmt.Errorf("cpu: weight tensor: %q is %s, not f32", w.name, w.Kind())
	}
	return &Tensor{rows: w.out, cols: w.in, Data: w.f32, cat: backend.Weights, owner: b, view: true}, nil
}

// Zero implements backend.Training.
func (b *Backend) Zero(x backend.Tensor) error {
	t, err := b.tenG(x, "zero", "tensor")
	if err != nil {
		return err
	}
	b.parallelRange(len(t.Data), 1<<16, func(lo, hi int) { clear(t.Data[lo:hi]) })
	return nil
}

// Scale implements backend.Training.
func (b *Backend) Scale(x backend.Tensor, s float32) error {
	t, err := b.ten(x, "scale", "tensor")
	if err != nil {
		return err
	}
	b.parallelRange(len(t.Data), 1<<16, func(lo, hi int) {
		d := t.Data[lo:hi]
		for i := range d {
			d[i] *= s
		}
	})
	return nil
}

// sumBlock is SumSquares' unit of work: each block of this many elements is summed in order
// in float64 and the block sums are added in block order, whatever the number of workers.
const sumBlock = 1 << 16

// SumSquares implements backend.Training.
func (b *Backend) SumSquares(x backend.Tensor) (float64, error) {
	t, err := b.tenG(x, "sum of squares", "tensor")
	if err != nil {
		return 0, err
	}
	parts := make([]float64, (len(t.Data)+sumBlock-1)/sumBlock)
	b.parallel(len(parts), func(_, k int) {
		var s float64
		for _, v := range t.Data[k*sumBlock : min((k+1)*sumBlock, len(t.Data))] {
			s += float64(v) * float64(v)
		}
		parts[k] = s
	})
	var s float64
	for _, v := range parts {
		s += v
	}
	return s, nil
}

func (b *Backend) optTen(x backend.Tensor, op, name string) (*Tensor, error) {
	if x == nil {
		return nil, nil
	}
	if t, ok := x.(*Tensor); ok && t == nil {
		return nil, nil
	}
	return b.ten(x, op, name)
}

// shares reports whether two tensors' storage overlaps.
func shares(a, c *Tensor) bool {
	if a == nil || c == nil || len(a.Data) == 0 || len(c.Data) == 0 {
		return false
	}
	a0, a1 := &a.Data[0], &a.Data[len(a.Data)-1]
	c0, c1 := &c.Data[0], &c.Data[len(c.Data)-1]
	return !(uintptrOf(a1) < uintptrOf(c0) || uintptrOf(c1) < uintptrOf(a0))
}

func uintptrOf(p *float32) uintptr { return uintptr(unsafe.Pointer(p)) }

// MatMulBackward implements backend.Training. dw first (it reads x), then dx.
func (b *Backend) MatMulBackward(dx, dw, dout, x backend.Tensor, bw backend.Weight, accumulate bool) error {
	const op = "matmul backward"
	w, err := b.weight(bw, op)
	if err != nil {
		return err
	}
	d, err := b.ten(dout, op, "dout")
	if err != nil {
		return err
	}
	dxt, err := b.optTen(dx, op, "dx")
	if err != nil {
		return err
	}
	var dwt *Tensor
	if dw != nil {
		if t, ok := dw.(*Tensor); !ok || t != nil {
			if dwt, err = b.tenG(dw, op, "dw"); err != nil {
				return err
			}
		}
	}
	xt, err := b.optTen(x, op, "x")
	if err != nil {
		return err
	}
	if err := backend.CheckMatMulBackward("cpu", dxt, dwt, d, xt, w, w.name, shares); err != nil {
		return err
	}
	T, N, K := d.rows, w.out, w.in
	if dwt != nil {
		// dw[n, :] += Σ_t dout[t, n] · x[t, :] over the non-zero dout[t, n] in t order; rows of
		// dw split over workers.
		b.parallelRange(N, 8, func(lo, hi int) {
			var coef []float32
			var rows [][]float32
			for n := lo; n < hi; n++ {
				coef, rows = coef[:0], rows[:0]
				for t := 0; t < T; t++ {
					if g := d.Data[t*N+n]; g != 0 {
						coef, rows = append(coef, g), append(rows, xt.Data[t*K:(t+1)*K])
					}
				}
				axpyRows(dwt.Data[n*K:(n+1)*K], coef, rows)
				dwt.roundStored(dwt.Data[n*K : (n+1)*K]) // a bf16 gradient: once a call
			}
		})
	}
	if dxt != nil {
		// dx[t, :] = Σ_n dout[t, n] · W[n, :] over the non-zero dout[t, n] in n order, W decoded
		// a tile of rows at a time; each worker owns a range of token rows and walks the tiles
		// in order.
		const tile = 64
		if !accumulate {
			clear(dxt.Data)
		}
		b.parallelRange(T, 1, func(lo, hi int) {
			buf := b.buffer(tile * K)
			defer b.release(buf)
			coef, rows := make([]float32, 0, tile), make([][]float32, 0, tile)
			for n0 := 0; n0 < N; n0 += tile {
				n1 := min(n0+tile, N)
				wt := w.decodeRows(*buf, n0, n1)
				for t := lo; t < hi; t++ {
					coef, rows = coef[:0], rows[:0]
					for n := n0; n < n1; n++ {
						if g := d.Data[t*N+n]; g != 0 {
							coef, rows = append(coef, g), append(rows, wt[(n-n0)*K:(n-n0+1)*K])
						}
					}
					axpyRows(dxt.Data[t*K:(t+1)*K], coef, rows)
				}
			}
		})
	}
	return nil
}

// axpyRows adds coef[i]·rows[i] to y for i in order, element by element exactly as that many
// axpy calls would (y[j] += c0·r0[j], then += c1·r1[j], …: the same roundings), but reading
// and writing y once per four rows.
func axpyRows(y []float32, coef []float32, rows [][]float32) {
	i := 0
	for ; i+4 <= len(coef); i += 4 {
		c0, c1, c2, c3 := coef[i], coef[i+1], coef[i+2], coef[i+3]
		r0, r1, r2, r3 := rows[i][:len(y)], rows[i+1][:len(y)], rows[i+2][:len(y)], rows[i+3][:len(y)]
		for j := range y {
			v := y[j]
			v += c0 * r0[j]
			v += c1 * r1[j]
			v += c2 * r2[j]
			v += c3 * r3[j]
			y[j] = v
		}
	}
	for ; i < len(coef); i++ {
		axpy(y, coef[i], rows[i])
	}
}

func axpy(y []float32, a float32, x []float32) {
	x = x[:len(y)]
	for i := range y {
		y[i] += a * x[i]
	}
}

// RMSNormBackward implements backend.Training (engine/grad's rmsnormBackward with the
// statistics recomputed as RMSNorm computes them).
func (b *Backend) RMSNormBackward(dx, dw, dout, x, w backend.Tensor, eps float32, accumulate bool) error {
	const op = "rmsnorm backward"
	d, err := b.ten(dout, op, "dout")
	if err != nil {
		return err
	}
	a, err := b.ten(x, op, "x")
	if err != nil {
		return err
	}
	g, err := b.ten(w, op, "weight")
	if err != nil {
		return err
	}
	dxt, err := b.ten(dx, op, "dx")
	if err != nil {
		return err
	}
	dwt, err := b.optTen(dw, op, "dw")
	if err != nil {
		return err
	}
	n := len(g.Data)
	switch {
	case a.cols%n != 0 || d.rows != a.rows || d.cols != a.cols || dxt.rows != a.rows || dxt.cols != a.cols:
		return fmt.Errorf("cpu: %s: x [%d, %d], dout [%d, %d], dx [%d, %d] with a weight of %d", op, a.rows, a.cols, d.rows, d.cols, dxt.rows, dxt.cols, n)
	case dwt != nil && len(dwt.Data) != n:
		return fmt.Errorf("cpu: %s: dw has %d elements, want %d", op, len(dwt.Data), n)
	case accumulate && shares(dxt, d):
		return fmt.Errorf("cpu: %s: dx may be dout only when not accumulating", op)
	}
	groups := len(a.Data) / n
	inv := make([]float32, groups)
	for r := 0; r < groups; r++ {
		var ss float64
		for _, v := range a.Data[r*n : (r+1)*n] {
			ss += float64(v) * float64(v)
		}
		inv[r] = float32(1 / math.Sqrt(ss/float64(n)+float64(eps)))
	}
	if dwt != nil { // dw += Σ_groups dy ⊙ x · inv, groups in order
		for r := 0; r < groups; r++ {
			xr, dy := a.Data[r*n:(r+1)*n], d.Data[r*n:(r+1)*n]
			for i := range dwt.Data {
				dwt.Data[i] += dy[i] * xr[i] * inv[r]
			}
		}
	}
	b.parallelRange(groups, max(1, 4096/n), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr, dy, dr := a.Data[r*n:(r+1)*n], d.Data[r*n:(r+1)*n], dxt.Data[r*n:(r+1)*n]
			var s float64
			for i := range xr {
				s += float64(g.Data[i] * dy[i] * xr[i])
			}
			iv := inv[r]
			c := float32(s) * iv * iv * iv / float32(n)
			for i := range xr {
				v := iv*g.Data[i]*dy[i] - c*xr[i]
				if accumulate {
					dr[i] += v
				} else {
					dr[i] = v
				}
			}
		}
	})
	return nil
}

// RoPEBackward implements backend.Training: the rotation by −angle with RoPE's cos and sin.
func (b *Backend) RoPEBackward(dx, dout backend.Tensor, headDim, pos0 int, theta float64) error {
	o, err := b.ten(dx, "rope backward", "dx")
	if err != nil {
		return err
	}
	a, err := b.ten(dout, "rope backward", "dout")
	if err != nil {
		return err
	}
	if headDim <= 0 || headDim%2 != 0 || a.cols%headDim != 0 || o.rows != a.rows || o.cols != a.cols || pos0 < 0 || !(theta > 0) {
		return fmt.Errorf("cpu: rope backward: dout [%d, %d] into [%d, %d] with head_dim %d, position %d, theta %v", a.rows, a.cols, o.rows, o.cols, headDim, pos0, theta)
	}
	half := headDim / 2
	inv := make([]float32, half)
	for i := range inv {
		inv[i] = float32(1 / math.Pow(theta, float64(2*i)/float64(headDim)))
	}
	b.parallelRange(a.rows, 1, func(lo, hi int) {
		cos, sin := make([]float32, half), make([]float32, half)
		for t := lo; t < hi; t++ {
			p := float32(pos0 + t)
			for i := range inv {
				s, c := math.Sincos(float64(p * inv[i]))
				cos[i], sin[i] = float32(c), float32(s)
			}
			src, dst := a.Row(t), o.Row(t)
			for h := 0; h < a.cols; h += headDim {
				ys, xs := src[h:h+headDim], dst[h:h+headDim]
				for i := 0; i < half; i++ {
					y1, y2 := ys[i], ys[i+half]
					xs[i] = y1*cos[i] + y2*sin[i]
					xs[i+half] = y2*cos[i] - y1*sin[i]
				}
			}
		}
	})
	return nil
}

// AttentionBackward implements backend.Training (engine/grad's attentionBackward with the
// probabilities recomputed). Work is split by KV head: a worker owns dk and dv of its head,
// walks the query heads of the group and the query rows in order, and recomputes each row's
// softmax exactly as Attention computes it (per-row scratch, no T×T matrix). The softmax
// backward uses D = Σ_j p_j·dp_j from the recomputed row (out is checked, not read: D equals
// dout·out up to rounding).
func (b *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out backend.Tensor, nHeads, nKV, headDim int) error {
	const op = "attention backward"
	var ts [8]*Tensor
	names := [8]string{"dq", "dk", "dv", "dout", "q", "k", "v", "out"}
	for i, x := range [8]backend.Tensor{dq, dk, dv, dout, q, k, v, out} {
		t, err := b.ten(x, op, names[i])
		if err != nil {
			return err
		}
		ts[i] = t
	}
	DQ, DK, DV, DO, Q, K, V, O := ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], ts[7]
	if err := backend.CheckAttention("cpu", O, Q, K, V, 0, nHeads, nKV, headDim); err != nil {
		return err
	}
	T := Q.rows
	if K.rows != T || V.rows != T || DQ.rows != T || DQ.cols != Q.cols || DK.rows != T || DK.cols != K.cols ||
		DV.rows != T || DV.cols != V.cols || DO.rows != T || DO.cols != Q.cols {
		return fmt.Errorf("cpu: %s: q [%d, %d], k/v [%d, %d], dq [%d, %d], dk [%d, %d], dv [%d, %d], dout [%d, %d] (one sequence: k and v have T rows)",
			op, Q.rows, Q.cols, K.rows, K.cols, DQ.rows, DQ.cols, DK.rows, DK.cols, DV.rows, DV.cols, DO.rows, DO.cols)
	}
	for i := 0; i < 3; i++ { // outputs overlap neither each other nor an input
		for j := 0; j < 7; j++ {
			if j != i && shares(ts[i], ts[j]) {
				return fmt.Errorf("cpu: %s: %s shares memory with %s", op, names[i], names[j])
			}
		}
	}
	group := nHeads / nKV
	scale := float32(1 / math.Sqrt(float64(headDim)))
	clear(DQ.Data)
	clear(DK.Data)
	clear(DV.Data)
	b.parallel(nKV, func(_, g int) {
		pb, db := b.buffer(T), b.buffer(T)
		defer b.release(pb)
		defer b.release(db)
		p, dp := *pb, *db
		kv := func(m *Tensor, j int) []float32 {
			return m.Data[j*m.cols+g*headDim : j*m.cols+(g+1)*headDim]
		}
		for h := g * group; h < (g+1)*group; h++ {
			hs := func(m *Tensor, t int) []float32 {
				return m.Data[t*m.cols+h*headDim : t*m.cols+(h+1)*headDim]
			}
			for t := 0; t < T; t++ {
				qv, do, dqv := hs(Q, t), hs(DO, t), hs(DQ, t)
				p := p[:t+1]
				// The forward's softmax row, as Attention computes it.
				maxv := float32(math.Inf(-1))
				for j := range p {
					p[j] = dot(qv, kv(K, j)) * scale
					maxv = max(maxv, p[j])
				}
				var sum float32
				for j, x := range p {
					e := float32(math.Exp(float64(x - maxv)))
					p[j] = e
					sum += e
				}
				inv := 1 / sum
				var rowsum float32
				for j := range p {
					p[j] *= inv
					dp[j] = dot(do, kv(V, j))
					rowsum += dp[j] * p[j]
					axpy(kv(DV, j), p[j], do)
				}
				for j := range p {
					ds := p[j] * (dp[j] - rowsum) * scale
					if ds == 0 {
						continue
					}
					// dq += ds·k_j and dk_j += ds·q in one pass (the roundings of two axpy).
					kj, dkj := kv(K, j), kv(DK, j)
					kj, dkj, qq := kj[:len(dqv)], dkj[:len(dqv)], qv[:len(dqv)]
					for i := range dqv {
						dqv[i] += ds * kj[i]
						dkj[i] += ds * qq[i]
					}
				}
			}
		}
	})
	return nil
}

// SwiGLUBackward implements backend.Training (engine/grad's swigluBackward).
func (b *Backend) SwiGLUBackward(dgate, dup, dout, gate, up backend.Tensor) error {
	const op = "swiglu backward"
	var ts [5]*Tensor
	for i, x := range []struct {
		t    backend.Tensor
		name string
	}{{dgate, "dgate"}, {dup, "dup"}, {dout, "dout"}, {gate, "gate"}, {up, "up"}} {
		t, err := b.ten(x.t, op, x.name)
		if err != nil {
			return err
		}
		ts[i] = t
	}
	dg, du, d, g, u := ts[0], ts[1], ts[2], ts[3], ts[4]
	for _, t := range []*Tensor{dg, du, d, u} {
		if t.rows != g.rows || t.cols != g.cols {
			return fmt.Errorf("cpu: %s: shapes [%d, %d] and [%d, %d] differ", op, t.rows, t.cols, g.rows, g.cols)
		}
	}
	b.parallelRange(len(g.Data), 4096, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			gi, ui, di := g.Data[i], u.Data[i], d.Data[i]
			s := 1 / (1 + float32(math.Exp(float64(-gi))))
			dg.Data[i] = di * ui * (s * (1 + gi*(1-s)))
			du.Data[i] = di * gi * s
		}
	})
	return nil
}

// EmbeddingBackward implements backend.Training.
func (b *Backend) EmbeddingBackward(dtable, dout backend.Tensor, ids []int) error {
	dt, err := b.tenG(dtable, "embedding backward", "dtable")
	if err != nil {
		return err
	}
	d, err := b.ten(dout, "embedding backward", "dout")
	if err != nil {
		return err
	}
	if d.rows != len(ids) || d.cols != dt.cols {
		return fmt.Errorf("cpu: embedding backward: dout [%d, %d] for %d ids into a table of width %d", d.rows, d.cols, len(ids), dt.cols)
	}
	for t, id := range ids {
		if id < 0 || id >= dt.rows {
			return fmt.Errorf("token id %d at position %d is outside the vocabulary (0..%d)", id, t, dt.rows-1)
		}
	}
	for t, id := range ids {
		axpy(dt.Row(id), 1, d.Row(t))
	}
	if dt.bf16Values { // a bf16 gradient: each touched row rounded once (again is a no-op)
		for _, id := range ids {
			dt.roundStored(dt.Row(id))
		}
	}
	return nil
}

// CrossEntropy implements backend.Training with engine/train.CrossEntropy's arithmetic.
func (b *Backend) CrossEntropy(dlogits, logits backend.Tensor, targets []int, ls, scale float32) (float64, int, error) {
	d, err := b.ten(dlogits, "cross-entropy", "dlogits")
	if err != nil {
		return 0, 0, err
	}
	l, err := b.ten(logits, "cross-entropy", "logits")
	if err != nil {
		return 0, 0, err
	}
	R, V := l.rows, l.cols
	if d.rows != R || d.cols != V || len(targets) != R {
		return 0, 0, fmt.Errorf("cpu: cross-entropy: logits [%d, %d], dlogits [%d, %d], %d targets", R, V, d.rows, d.cols, len(targets))
	}
	for r, tgt := range targets {
		if tgt < -1 || tgt >= V {
			return 0, 0, fmt.Errorf("cpu: cross-entropy: target %d of row %d is outside the vocabulary (0..%d, or -1)", tgt, r, V-1)
		}
	}
	losses := make([]float64, R)
	eps := float64(ls)
	b.parallelRange(R, 1, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row, dr := l.Row(r), d.Row(r)
			tgt := targets[r]
			if tgt < 0 {
				clear(dr)
				continue
			}
			maxv := math.Inf(-1)
			for _, x := range row {
				maxv = math.Max(maxv, float64(x))
			}
			var s float64
			for _, x := range row {
				s += math.Exp(float64(x) - maxv)
			}
			lse := maxv + math.Log(s)
			nll := lse - float64(row[tgt])
			if eps > 0 {
				var mean float64
				for _, x := range row {
					mean += lse - float64(x)
				}
				nll = (1-eps)*nll + eps*mean/float64(V)
			}
			losses[r] = nll
			for k, x := range row {
				p := math.Exp(float64(x) - lse)
				g := p - eps/float64(V)
				if k == tgt {
					g -= 1 - eps
				}
				dr[k] = float32(g) * scale
			}
		}
	})
	var sum float64
	n := 0
	for r, tgt := range targets {
		if tgt >= 0 {
			sum += losses[r]
			n++
		}
	}
	return sum, n, nil
}

// adamState is a CPU AdamW state: the moments of one parameter in engine/optim's layout for
// the format (fp32: m and v; int8: m signed linear and √v zero-free unsigned, with one float32
// absmax per block of adamBlock elements; 4bit: m and v codes two to a byte, m's absmax per
// block of optim.Bit4Block, and v's normaliser — the row and column maxima of v for a matrix,
// a block absmax for a one-row parameter). The master is the weight itself.
type adamState struct {
	format     string
	rows, cols int
	m32, v32   []float32 // fp32
	m8         []int8    // int8: m, absmax in msc
	v8         []uint8   // int8: √v, absmax of √v in vsc
	msc, vsc   []float32 // int8 block scales; 4bit: m's block absmax, v's block absmax (one row)
	m4, v4     []byte    // 4bit: m and v codes, element i in nibble i&1 of byte i>>1
	rowM, colM []float32 // 4bit matrices: the maxima of v per row and per column
	bytes      int64
	owner      *Backend
}

// adamBlock is engine/optim's int8 block (64 elements with one float32 absmax); fp32 moments
// are updated in blocks of the same size.
const adamBlock = optim.Int8Block

// adam4Block is engine/optim's 4-bit block (128 elements with one float32 absmax of m).
const adam4Block = optim.Bit4Block

func (s *adamState) Format() string { return s.format }
func (s *adamState) Bytes() int64   { return s.bytes }

// adamWStateBytes is the storage of a [rows, cols] parameter's moments in format, as
// engine/optim's StateBytes counts it: fp32 8 bytes per element; int8 2 plus two float32
// scales per 64; 4bit two nibbles, a float32 absmax of m per 128, and the float32 row and
// column maxima of v (a matrix) or an absmax of v per 128 (one row): about 1.03 bytes per
// element for the model's matrices. ok is false for an unknown format.
func adamWStateBytes(format string, rows, cols int) (bytes int64, ok bool) {
	n := int64(rows) * int64(cols)
	switch format {
	case "fp32":
		return 8 * n, true
	case "int8":
		return 2*n + 8*((n+adamBlock-1)/adamBlock), true
	case "4bit":
		nb := (n + adam4Block - 1) / adam4Block
		v := 4 * nb
		if rows > 1 {
			v = 4 * (int64(rows) + int64(cols))
		}
		return 2*((n+1)/2) + 4*nb + v, true
	}
	return 0, false
}

// NewAdamWState implements backend.Training.
func (b *Backend) NewAdamWState(format string, rows, cols int) (backend.AdamWState, error) {
	bytes, ok := adamWStateBytes(format, rows, cols)
	if !ok {
		return nil, fmt.Errorf("cpu: adamw state: format %q: want fp32, int8 or 4bit", format)
	}
	if rows <= 0 || cols <= 0 || rows > maxElems/cols {
		return nil, fmt.Errorf("cpu: adamw state: cannot allocate moments for [%d, %d]", rows, cols)
	}
	n := rows * cols
	if err := b.account(backend.OptimizerState, bytes); err != nil {
		return nil, err
	}
	s := &adamState{format: format, rows: rows, cols: cols, bytes: bytes, owner: b}
	switch format {
	case "fp32":
		s.m32, s.v32 = make([]float32, n), make([]float32, n)
	case "int8":
		nb := (n + adamBlock - 1) / adamBlock
		s.m8, s.v8, s.msc, s.vsc = make([]int8, n), make([]uint8, n), make([]float32, nb), make([]float32, nb)
	case "4bit":
		nb := (n + adam4Block - 1) / adam4Block
		s.m4, s.v4, s.msc = make([]byte, (n+1)/2), make([]byte, (n+1)/2), make([]float32, nb)
		if rows > 1 {
			s.rowM, s.colM = make([]float32, rows), make([]float32, cols)
		} else {
			s.vsc = make([]float32, nb)
		}
	}
	return s, nil
}

// FreeAdamWState implements backend.Training.
func (b *Backend) FreeAdamWState(x backend.AdamWState) {
	s, ok := x.(*adamState)
	if !ok || s == nil || s.owner != b || s.bytes == 0 {
		return
	}
	b.account(backend.OptimizerState, -s.bytes)
	s.bytes = 0
	s.m32, s.v32, s.m8, s.v8, s.msc, s.vsc = nil, nil, nil, nil, nil, nil
	s.m4, s.v4, s.rowM, s.colM = nil, nil, nil, nil
}

// AdamW implements backend.Training: engine/optim's update, in place on the weight, block by
// block of adamBlock elements: decode the block's moments (optim.DecodeInt8M/V for int8), apply
// optim.Coeffs.Update with the gradient scaled by GradScale, store w (bf16: round to nearest
// even, or optim.StochasticBF16Key under SRKey(Seed, Step, Param)) and re-encode m and v
// (optim.EncodeInt8M/V). 4bit states take two passes (adamW4). Calling optim's own code, not a
// copy of it, keeps the result bit-identical to optim.AdamW. A non-finite scaled gradient is an
// error and nothing is updated (engine/optim skips such a step).
func (b *Backend) AdamW(bw backend.Weight, grad backend.Tensor, x backend.AdamWState, h backend.AdamWHyper) error {
	if err := backend.CheckAdamWHyper(h); err != nil {
		return fmt.Errorf("cpu: %w", err)
	}
	w, err := b.weight(bw, "adamw")
	if err != nil {
		return err
	}
	g, err := b.tenG(grad, "adamw", "gradient")
	if err != nil {
		return err
	}
	s, ok := x.(*adamState)
	if !ok || s == nil || s.owner != b || s.bytes == 0 {
		return fmt.Errorf("cpu: adamw %s: the state is not a live CPU AdamW state", w.name)
	}
	if w.q != nil {
		return fmt.Errorf("cpu: adamw %s: NVFP4 weights are not trainable (keep a dense f32 or bf16 master)", w.name)
	}
	if g.rows != w.out || g.cols != w.in || s.rows != w.out || s.cols != w.in {
		return fmt.Errorf("cpu: adamw %s: weight [%d, %d], gradient [%d, %d], state [%d, %d]", w.name, w.out, w.in, g.rows, g.cols, s.rows, s.cols)
	}
	n := w.out * w.in
	var bad atomic.Int64 // the first non-finite element, or n
	bad.Store(int64(n))
	b.parallelRange(n, 1<<16, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if v := g.Data[i] * h.GradScale; v-v != 0 { // NaN or ±Inf
				for cur := bad.Load(); int64(i) < cur && !bad.CompareAndSwap(cur, int64(i)); cur = bad.Load() {
				}
				return
			}
		}
	})
	if i := int(bad.Load()); i < n {
		return fmt.Errorf("cpu: adamw %s: non-finite gradient %v (×%v) at element %d: nothing updated", w.name, g.Data[i], h.GradScale, i)
	}
	p := optim.NewCoeffs(h.Beta1, h.Beta2, h.Eps, h.LR, h.WeightDecay, h.Step, h.NoDecay)
	if s.format == "4bit" {
		b.adamW4(w, g.Data, s, p, h)
		return nil
	}
	nb := (n + adamBlock - 1) / adamBlock
	b.parallelRange(nb, 64, func(lo, hi int) {
		var wb, mb, vb [adamBlock]float32
		for blk := lo; blk < hi; blk++ {
			j0, j1 := blk*adamBlock, min((blk+1)*adamBlock, n)
			k := j1 - j0
			ws, ms, vs := wb[:k], mb[:k], vb[:k]
			w.loadMaster(ws, j0)
			if s.m32 != nil {
				copy(ms, s.m32[j0:j1])
				copy(vs, s.v32[j0:j1])
			} else {
				optim.DecodeInt8M(ms, s.m8[j0:j1], s.msc[blk])
				optim.DecodeInt8V(vs, s.v8[j0:j1], s.vsc[blk])
			}
			p.Update(ws, ms, vs, g.Data[j0:j1], h.GradScale)
			w.storeMaster(ws, j0, h)
			if s.m32 != nil {
				copy(s.m32[j0:j1], ms)
				copy(s.v32[j0:j1], vs)
			} else {
				s.msc[blk] = optim.EncodeInt8M(s.m8[j0:j1], ms)
				s.vsc[blk] = optim.EncodeInt8V(s.v8[j0:j1], vs)
			}
		}
	})
	return nil
}

// adamW4 is AdamW on 4-bit moments (engine/optim's Bit4) with checked arguments. A matrix's v
// codes are normalised by min(row maximum, column maximum) of the NEW v, which is known only
// once every element has been seen: a first pass computes each element's new v
// (optim.Coeffs.NextV from the old v decoded under the old maxima) and keeps only the row and
// column maxima (rows split over workers, each with its own column maxima merged under a
// lock: a maximum does not depend on the order). The second pass goes block by block of
// optim.Bit4Block: decode w, m and v, optim.Coeffs.Update, store w, re-encode m
// (optim.EncodeBit4M: stochastic, drawn from (Seed, Step, Param, index)) and v (under the new
// maxima, or under the block's largest v for a one-row parameter). The new maxima replace the
// old ones last.
func (b *Backend) adamW4(w *Weight, g []float32, s *adamState, p optim.Coeffs, h backend.AdamWHyper) {
	rows, cols := s.rows, s.cols
	n := rows * cols
	var newRow, newCol []float32
	if s.rowM != nil {
		newRow, newCol = make([]float32, rows), make([]float32, cols)
		var mu sync.Mutex
		b.parallelRange(rows, max(1, 4096/cols), func(lo, hi int) {
			colMax := make([]float32, cols)
			for r := lo; r < hi; r++ {
				var rowMax float32
				for c := 0; c < cols; c++ {
					j := r*cols + c
					v := optim.DecodeBit4V(optim.Bit4Nibble(s.v4, j), min(s.rowM[r], s.colM[c]))
					vn := p.NextV(v, g[j], h.GradScale)
					rowMax = max(rowMax, vn)
					colMax[c] = max(colMax[c], vn)
				}
				newRow[r] = rowMax
			}
			mu.Lock()
			for c, v := range colMax {
				newCol[c] = max(newCol[c], v)
			}
			mu.Unlock()
		})
	}
	nb := (n + adam4Block - 1) / adam4Block
	b.parallelRange(nb, 32, func(lo, hi int) {
		var wb, mb, vb [adam4Block]float32
		for blk := lo; blk < hi; blk++ {
			j0, j1 := blk*adam4Block, min((blk+1)*adam4Block, n)
			k := j1 - j0
			ws, ms, vs := wb[:k], mb[:k], vb[:k]
			w.loadMaster(ws, j0)
			optim.DecodeBit4M(ms, s.m4, s.msc[blk], j0)
			for j := j0; j < j1; j++ {
				var norm float32
				if s.rowM != nil {
					norm = min(s.rowM[j/cols], s.colM[j%cols])
				} else {
					norm = s.vsc[blk]
				}
				vs[j-j0] = optim.DecodeBit4V(optim.Bit4Nibble(s.v4, j), norm)
			}
			p.Update(ws, ms, vs, g[j0:j1], h.GradScale)
			w.storeMaster(ws, j0, h)
			s.msc[blk] = optim.EncodeBit4M(s.m4, ms, j0, h.Seed, uint64(h.Step), h.Param)
			if newRow != nil {
				for j := j0; j < j1; j++ {
					optim.SetBit4Nibble(s.v4, j, optim.EncodeBit4V(vs[j-j0], min(newRow[j/cols], newCol[j%cols])))
				}
				continue
			}
			var top float32 // v ≥ 0: its absmax is its maximum
			for _, v := range vs {
				top = max(top, v)
			}
			s.vsc[blk] = top
			for j := j0; j < j1; j++ {
				optim.SetBit4Nibble(s.v4, j, optim.EncodeBit4V(vs[j-j0], top))
			}
		}
	})
	if newRow != nil {
		s.rowM, s.colM = newRow, newCol
	}
}

// loadMaster widens elements j0 … j0+len(dst)-1 of a dense weight to float32.
func (w *Weight) loadMaster(dst []float32, j0 int) {
	if w.f32 != nil {
		copy(dst, w.f32[j0:j0+len(dst)])
	} else {
		widenBF16(dst, w.bf16[j0:j0+len(dst)])
	}
}

// storeMaster stores updated elements from j0 as engine/optim stores masters: f32 as they
// are; bf16 rounded to nearest even, or stochastically with optim.StochasticBF16Key drawn from
// (SRKey(Seed, Step, Param), index) when h.StochasticRound.
func (w *Weight) storeMaster(src []float32, j0 int, h backend.AdamWHyper) {
	switch {
	case w.f32 != nil:
		copy(w.f32[j0:], src)
	case h.StochasticRound:
		key := optim.SRKey(h.Seed, uint64(h.Step), h.Param)
		for j, v := range src {
			w.bf16[j0+j] = optim.StochasticBF16Key(v, key, uint64(j0+j))
		}
	default:
		for j, v := range src {
			w.bf16[j0+j] = tensor.F32ToBF16(v)
		}
	}
}
