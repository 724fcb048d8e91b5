package cpu

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/optim"
	"github.com/qwengo/qwengo/engine/tensor"
)

// backend.Training on the CPU: the reference the GPU's training ops are tested against.
//
// The math mirrors engine/grad (the float32 training reference checked against PyTorch):
// RMSNorm statistics in float64, the attention softmax recomputed per (head, query row) in
// float32, exp in float64. Every reduction has a fixed order (work is split by output rows or
// by KV heads, never by the summed dimension), so results do not depend on the worker count.
// AdamW is engine/optim itself: a one-parameter optim.AdamW per state, so the CPU backend
// updates weights exactly as the host optimizer does (its master copy lives in the state:
// twice the weight memory, the price of one implementation of every packed format).

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
	return &Tensor{rows: n, cols: t.cols, Data: t.Data[row0*t.cols : (row0+n)*t.cols : (row0+n)*t.cols], cat: t.cat, owner: b, view: true}, nil
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
	t, err := b.ten(x, "zero", "tensor")
	if err != nil {
		return err
	}
	clear(t.Data)
	return nil
}

// Scale implements backend.Training.
func (b *Backend) Scale(x backend.Tensor, s float32) error {
	t, err := b.ten(x, "scale", "tensor")
	if err != nil {
		return err
	}
	for i := range t.Data {
		t.Data[i] *= s
	}
	return nil
}

// SumSquares implements backend.Training.
func (b *Backend) SumSquares(x backend.Tensor) (float64, error) {
	t, err := b.ten(x, "sum of squares", "tensor")
	if err != nil {
		return 0, err
	}
	var s float64
	for _, v := range t.Data {
		s += float64(v) * float64(v)
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
	dwt, err := b.optTen(dw, op, "dw")
	if err != nil {
		return err
	}
	xt, err := b.optTen(x, op, "x")
	if err != nil {
		return err
	}
	T, N, K := d.rows, w.out, w.in
	switch {
	case d.cols != N:
		return fmt.Errorf("cpu: %s %s: dout [%d, %d] for a weight [%d, %d]", op, w.name, d.rows, d.cols, N, K)
	case dxt != nil && (dxt.rows != T || dxt.cols != K):
		return fmt.Errorf("cpu: %s %s: dx [%d, %d], want [%d, %d]", op, w.name, dxt.rows, dxt.cols, T, K)
	case dxt != nil && shares(dxt, d):
		return fmt.Errorf("cpu: %s %s: dx and dout share memory", op, w.name)
	case xt != nil && (xt.rows != T || xt.cols != K):
		return fmt.Errorf("cpu: %s %s: x [%d, %d], want [%d, %d]", op, w.name, xt.rows, xt.cols, T, K)
	case dwt != nil && xt == nil:
		return fmt.Errorf("cpu: %s %s: dw needs x", op, w.name)
	case dwt != nil && (dwt.rows != N || dwt.cols != K):
		return fmt.Errorf("cpu: %s %s: dw [%d, %d], want [%d, %d]", op, w.name, dwt.rows, dwt.cols, N, K)
	case dwt != nil && (shares(dwt, d) || shares(dwt, xt) || shares(dwt, dxt)):
		return fmt.Errorf("cpu: %s %s: dw shares memory with dout, x or dx", op, w.name)
	}
	if dwt != nil {
		// dw[n, :] += Σ_t dout[t, n] · x[t, :], rows of dw split over workers.
		b.parallelRange(N, 8, func(lo, hi int) {
			for n := lo; n < hi; n++ {
				row := dwt.Data[n*K : (n+1)*K]
				for t := 0; t < T; t++ {
					g := d.Data[t*N+n]
					if g == 0 {
						continue
					}
					axpy(row, g, xt.Data[t*K:(t+1)*K])
				}
			}
		})
	}
	if dxt != nil {
		// dx[t, :] = Σ_n dout[t, n] · W[n, :], W decoded a tile of rows at a time; each worker
		// owns a range of token rows and walks the tiles in order.
		const tile = 64
		if !accumulate {
			clear(dxt.Data)
		}
		b.parallelRange(T, 1, func(lo, hi int) {
			buf := b.buffer(tile * K)
			defer b.scratch.Put(buf)
			for n0 := 0; n0 < N; n0 += tile {
				n1 := min(n0+tile, N)
				wt := w.decodeRows(*buf, n0, n1)
				for t := lo; t < hi; t++ {
					dr := dxt.Data[t*K : (t+1)*K]
					for n := n0; n < n1; n++ {
						if g := d.Data[t*N+n]; g != 0 {
							axpy(dr, g, wt[(n-n0)*K:(n-n0+1)*K])
						}
					}
				}
			}
		})
	}
	return nil
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

// AttentionBackward implements backend.Training. Work is split by KV head: a worker owns dk
// and dv of its head, walks the query heads of the group and the query rows in order, and
// recomputes each row's softmax (no T×T matrix).
func (b *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out backend.Tensor, nHeads, nKV, headDim int) error {
	const op = "attention backward"
	var ts [8]*Tensor
	for i, x := range []struct {
		t    backend.Tensor
		name string
	}{{dq, "dq"}, {dk, "dk"}, {dv, "dv"}, {dout, "dout"}, {q, "q"}, {k, "k"}, {v, "v"}, {out, "out"}} {
		t, err := b.ten(x.t, op, x.name)
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
	group := nHeads / nKV
	scale := float32(1 / math.Sqrt(float64(headDim)))
	clear(DQ.Data)
	clear(DK.Data)
	clear(DV.Data)
	b.parallel(nKV, func(_, kvh int) {
		p := make([]float32, T)
		dp := make([]float32, T)
		kv := func(m *Tensor, j int) []float32 {
			return m.Data[j*m.cols+kvh*headDim : j*m.cols+(kvh+1)*headDim]
		}
		for h := kvh * group; h < (kvh+1)*group; h++ {
			hs := func(m *Tensor, t int) []float32 {
				return m.Data[t*m.cols+h*headDim : t*m.cols+(h+1)*headDim]
			}
			for t := 0; t < T; t++ {
				qv, gv, ov := hs(Q, t), hs(DO, t), hs(O, t)
				n := t + 1
				maxv := float32(math.Inf(-1))
				for j := 0; j < n; j++ {
					p[j] = dot(qv, kv(K, j)) * scale
					maxv = max(maxv, p[j])
				}
				var sum float32
				for j := 0; j < n; j++ {
					e := float32(math.Exp(float64(p[j] - maxv)))
					p[j] = e
					sum += e
				}
				inv := 1 / sum
				D := dot(gv, ov) // Σ_j p_j dp_j = dout · out
				dqv := hs(DQ, t)
				for j := 0; j < n; j++ {
					p[j] *= inv
					dp[j] = dot(gv, kv(V, j))
					ds := p[j] * (dp[j] - D) * scale
					axpy(dqv, ds, kv(K, j))
					axpy(kv(DK, j), ds, qv)
					axpy(kv(DV, j), p[j], gv)
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
	dt, err := b.ten(dtable, "embedding backward", "dtable")
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

// adamState is a CPU AdamW state: engine/optim's optimizer for the one parameter, created on
// the first update (it needs the weight's values and the hyper-parameters).
type adamState struct {
	format     string
	rows, cols int
	opt        *optim.AdamW
	h          backend.AdamWHyper // as at creation
	bytes      int64
	owner      *Backend
}

func (s *adamState) Format() string { return s.format }
func (s *adamState) Bytes() int64   { return s.bytes }

// NewAdamWState implements backend.Training.
func (b *Backend) NewAdamWState(format string, rows, cols int) (backend.AdamWState, error) {
	f, err := optim.ParseStateFormat(format)
	if err != nil {
		return nil, fmt.Errorf("cpu: adamw state: %w", err)
	}
	if f == optim.Bit4 {
		return nil, fmt.Errorf("cpu: adamw state: format %q is not a backend format (fp32 or int8)", format)
	}
	if rows <= 0 || cols <= 0 {
		return nil, fmt.Errorf("cpu: adamw state: [%d, %d]", rows, cols)
	}
	bytes := int64(rows) * int64(cols) * 8
	if f == optim.Int8 {
		n := int64(rows) * int64(cols)
		bytes = 2*n + 8*((n+63)/64)
	}
	if err := b.account(backend.OptimizerState, bytes); err != nil {
		return nil, err
	}
	return &adamState{format: f.String(), rows: rows, cols: cols, bytes: bytes, owner: b}, nil
}

// FreeAdamWState implements backend.Training.
func (b *Backend) FreeAdamWState(x backend.AdamWState) {
	s, ok := x.(*adamState)
	if !ok || s == nil || s.owner != b || s.bytes == 0 {
		return
	}
	b.account(backend.OptimizerState, -s.bytes)
	s.bytes, s.opt = 0, nil
}

// AdamW implements backend.Training through engine/optim: the state's one-parameter optimizer
// steps with the scaled gradient and the weight takes its master's value. Its stochastic
// rounding draws srBits(Seed, Step, Param, index) as the GPU does: optim's stream for
// parameter 0 with Seed ^ Param·0xbf58476d1ce4e5b9 is the same hash.
func (b *Backend) AdamW(bw backend.Weight, grad backend.Tensor, x backend.AdamWState, h backend.AdamWHyper) error {
	if err := backend.CheckAdamWHyper(h); err != nil {
		return fmt.Errorf("cpu: %w", err)
	}
	w, err := b.weight(bw, "adamw")
	if err != nil {
		return err
	}
	g, err := b.ten(grad, "adamw", "gradient")
	if err != nil {
		return err
	}
	s, ok := x.(*adamState)
	if !ok || s == nil || s.owner != b || s.bytes == 0 {
		return fmt.Errorf("cpu: adamw %s: the state is not a live CPU AdamW state", w.name)
	}
	if w.q != nil {
		return fmt.Errorf("cpu: adamw %s: NVFP4 weights are not trainable (keep a dense master)", w.name)
	}
	if g.rows != w.out || g.cols != w.in || s.rows != w.out || s.cols != w.in {
		return fmt.Errorf("cpu: adamw %s: weight [%d, %d], gradient [%d, %d], state [%d, %d]", w.name, w.out, w.in, g.rows, g.cols, s.rows, s.cols)
	}
	if s.opt == nil {
		if h.Step != 1 {
			return fmt.Errorf("cpu: adamw %s: a new state starts at step 1, not %d", w.name, h.Step)
		}
		master := optim.MasterFP32
		init := w.f32
		if w.bf16 != nil {
			master = optim.MasterBF16
			init = make([]float32, len(w.bf16))
			widenBF16(init, w.bf16)
		}
		f, _ := optim.ParseStateFormat(s.format)
		cfg := optim.Config{Beta1: h.Beta1, Beta2: h.Beta2, Eps: h.Eps, WeightDecay: h.WeightDecay, State: f, Master: master,
			StochasticRounding: h.StochasticRound, Seed: h.Seed ^ h.Param*0xbf58476d1ce4e5b9, ChunkElems: len(init)}
		opt, err := optim.NewAdamW(cfg, []optim.ParamSpec{{Name: w.name, Rows: w.out, Cols: w.in, Init: init, NoDecay: h.NoDecay}})
		if err != nil {
			return fmt.Errorf("cpu: adamw %s: %w", w.name, err)
		}
		s.opt, s.h = opt, h
	} else if h.Beta1 != s.h.Beta1 || h.Beta2 != s.h.Beta2 || h.Eps != s.h.Eps || h.WeightDecay != s.h.WeightDecay ||
		h.NoDecay != s.h.NoDecay || h.StochasticRound != s.h.StochasticRound || h.Seed != s.h.Seed || h.Param != s.h.Param {
		return fmt.Errorf("cpu: adamw %s: hyper-parameters other than the learning rate changed after the first step", w.name)
	}
	if want := s.opt.Steps() + 1; h.Step != want {
		return fmt.Errorf("cpu: adamw %s: step %d, but the state is at step %d", w.name, h.Step, want-1)
	}
	gs := make([]float32, len(g.Data))
	for i, v := range g.Data {
		gs[i] = v * h.GradScale
	}
	st, err := s.opt.Step([][]float32{gs}, h.LR)
	if err != nil {
		return fmt.Errorf("cpu: adamw %s: %w", w.name, err)
	}
	if st.Skipped {
		return fmt.Errorf("cpu: adamw %s: non-finite gradient (nothing updated)", w.name)
	}
	vals := s.opt.Weights(0, nil)
	if w.f32 != nil {
		copy(w.f32, vals)
	} else {
		for i, v := range vals { // the bf16 master's values: exact
			w.bf16[i] = tensor.F32ToBF16(v)
		}
	}
	return nil
}
