package devtrain

import (
	"context"
	"fmt"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/data"
)

// prepared is a batch laid out for the backend: N = B·T rows (T after trimming).
type prepared struct {
	B, T, N int
	ids     []int // N token ids (positions past a row's end hold 0)
	targets []int // N targets: the id logit row r scores, −1 where unscored
	n       int   // scored tokens
}

// prepare trims trailing padding (as engine/grad does per row) to the longest row and
// derives the targets: logit row t of a sequence scores ids[t+1] when mask[t+1].
func (m *Model) prepare(b *data.Batch) (*prepared, error) {
	if b == nil || b.B <= 0 || b.T <= 0 {
		return nil, fmt.Errorf("devtrain: empty batch")
	}
	if len(b.IDs) != b.B*b.T || len(b.Mask) != b.B*b.T {
		return nil, fmt.Errorf("devtrain: batch of %d×%d has %d ids and %d mask entries", b.B, b.T, len(b.IDs), len(b.Mask))
	}
	V := m.cfg.VocabSize
	ends := make([]int, b.B)
	T := 1
	for r := range ends {
		mask := b.Mask[r*b.T : (r+1)*b.T]
		end := b.T
		for end > 1 && !mask[end-1] {
			end--
		}
		ends[r] = end
		T = max(T, end)
	}
	p := &prepared{B: b.B, T: T, N: b.B * T, ids: make([]int, b.B*T), targets: make([]int, b.B*T)}
	for r, end := range ends {
		row := b.IDs[r*b.T : (r+1)*b.T]
		mask := b.Mask[r*b.T : (r+1)*b.T]
		for t := 0; t < T; t++ {
			p.targets[r*T+t] = -1
			if t >= end {
				continue
			}
			id := row[t]
			if id < 0 || id >= V {
				return nil, fmt.Errorf("devtrain: batch row %d: token id %d at position %d is outside the vocabulary (0..%d)", r, id, t, V-1)
			}
			p.ids[r*T+t] = id
			if t >= 1 && mask[t] {
				p.targets[r*T+t-1] = id
				p.n++
			}
		}
	}
	return p, nil
}

// acts are one layer's activations ([N, width] each); x0 is the layer's input.
type acts struct {
	x0, a, q, k, v, qn, kn, o, x1, mm, gate, up, h backend.Tensor
	// lse, [rows, NumHeads], holds the attention forward's statistics for its backward when
	// the backend keeps them (backend.AttentionStats; see Model.attnStats), else nil.
	lse backend.Tensor
}

// bwork are the activation gradients of the backward, reused across layers. dx, the
// gradient of the residual stream, has every row ([N, H]); the others have the rows of one
// span (see spans). dx also holds the gradient of the final normed hidden state before the
// final norm's backward turns it (in place) into that of the last layer's output; dmm also
// holds the gradient of the attention block's normed input (da).
type bwork struct {
	dx, dmm, dh, dgate, dup, do, dq, dk, dv backend.Tensor
}

// pass tracks a step's temporary tensors (and bf16 buffers) so that every exit frees them.
type pass struct {
	b    backend.Training
	live []backend.Tensor
	bufs []backend.BF16
}

// allocBF16 allocates a bf16 buffer on the backend's BF16Store (New checked it has one).
func (p *pass) allocBF16(cat backend.Category, rows, cols int, what string) (backend.BF16, error) {
	buf, err := p.b.(backend.BF16Store).AllocBF16(cat, rows, cols)
	if err != nil {
		return nil, fmt.Errorf("devtrain: %s [%d, %d] bf16: %w", what, rows, cols, err)
	}
	p.bufs = append(p.bufs, buf)
	return buf, nil
}

// freeBF16 releases buf now (freeing twice does nothing).
func (p *pass) freeBF16(buf backend.BF16) {
	if buf != nil {
		p.b.(backend.BF16Store).FreeBF16(buf)
	}
}

func (p *pass) alloc(cat backend.Category, rows, cols int, what string) (backend.Tensor, error) {
	t, err := p.b.Alloc(cat, rows, cols)
	if err != nil {
		return nil, fmt.Errorf("devtrain: %s [%d, %d]: %w", what, rows, cols, err)
	}
	p.live = append(p.live, t)
	return t, nil
}

// free releases t now (Free twice does nothing, so the final freeAll may see it again).
func (p *pass) free(ts ...backend.Tensor) {
	for _, t := range ts {
		if t != nil {
			p.b.Free(t)
		}
	}
}

func (p *pass) freeAll() {
	for _, t := range p.live {
		p.b.Free(t)
	}
	for _, buf := range p.bufs {
		p.freeBF16(buf)
	}
	p.live, p.bufs = nil, nil
}

// span is a block of whole sequences, rows [r0, r0+n) of the batch, with the sequences'
// shape for the per-sequence ops (B = n/T; ids and targets unused).
type span struct {
	r0, n int
	pr    *prepared
}

// layerRows is the row count of the layer buffers: N, or Options.LayerChunkRows rounded down
// to whole sequences (at least one) when the mode does not keep every activation.
func (m *Model) layerRows(pr *prepared, mode keep) int {
	c := m.opt.LayerChunkRows
	if mode == keepAll || c <= 0 || c >= pr.N {
		return pr.N
	}
	return max(1, c/pr.T) * pr.T
}

// spans splits pr's rows into blocks of rows rows (a multiple of pr.T), the last one shorter.
func spans(pr *prepared, rows int) []span {
	if rows >= pr.N {
		return []span{{0, pr.N, pr}}
	}
	var out []span
	for r0 := 0; r0 < pr.N; r0 += rows {
		n := min(rows, pr.N-r0)
		out = append(out, span{r0, n, &prepared{B: n / pr.T, T: pr.T, N: n}})
	}
	return out
}

// rowsOf is rows [r0, r0+n) of t: t itself when that is all of it.
func (m *Model) rowsOf(t backend.Tensor, r0, n int) (backend.Tensor, error) {
	if r0 == 0 && n == t.Rows() {
		return t, nil
	}
	v, err := m.b.RowView(t, r0, n)
	if err != nil {
		return nil, fmt.Errorf("devtrain: rows %d..%d: %w", r0, r0+n, err)
	}
	return v, nil
}

// head returns the first n rows of every tensor that dsts point to, in place of the tensor.
func (m *Model) head(n int, dsts ...*backend.Tensor) error {
	for _, d := range dsts {
		v, err := m.rowsOf(*d, 0, n)
		if err != nil {
			return err
		}
		*d = v
	}
	return nil
}

// spanActs is the layer buffers work (x0 unset) cut to s's rows, with x0 rows s of the
// layer input x.
func (m *Model) spanActs(work *acts, x backend.Tensor, s span) (*acts, error) {
	a := *work
	if err := m.head(s.n, &a.a, &a.q, &a.k, &a.v, &a.qn, &a.kn, &a.o, &a.x1, &a.mm, &a.gate, &a.up, &a.h); err != nil {
		return nil, err
	}
	if a.lse != nil {
		if err := m.head(s.n, &a.lse); err != nil {
			return nil, err
		}
	}
	var err error
	if a.x0, err = m.rowsOf(x, s.r0, s.n); err != nil {
		return nil, err
	}
	return &a, nil
}

// spanInput is rows s of layer l's input for its recomputation: a view of the kept f32
// input, or (CheckpointBF16) the kept bf16 rows widened into f.in.
func (m *Model) spanInput(f *forward, l int, s span) (backend.Tensor, error) {
	if f.ckpts == nil {
		return m.rowsOf(f.layers[l].x0, s.r0, s.n)
	}
	x0, err := m.rowsOf(f.in, 0, s.n)
	if err != nil {
		return nil, err
	}
	if err := m.b.(backend.BF16Store).FromBF16(x0, f.ckpts[l], s.r0); err != nil {
		return nil, fmt.Errorf("devtrain: layer %d input from bf16: %w", l, err)
	}
	return x0, nil
}

// spanWork is the backward buffers w cut to s's rows (dx: rows s of the residual gradient).
func (m *Model) spanWork(w *bwork, s span) (*bwork, error) {
	v := *w
	if err := m.head(s.n, &v.dmm, &v.dh, &v.dgate, &v.dup, &v.do, &v.dq, &v.dk, &v.dv); err != nil {
		return nil, err
	}
	var err error
	if v.dx, err = m.rowsOf(w.dx, s.r0, s.n); err != nil {
		return nil, err
	}
	return &v, nil
}

// spanErr names the rows of a failed span when the layer runs in several.
func spanErr(sp []span, s span, err error) error {
	if len(sp) == 1 {
		return err
	}
	return fmt.Errorf("rows %d..%d: %w", s.r0, s.r0+s.n, err)
}

// allocActs allocates a layer's activations except x0, for N rows of sequences of T.
func (m *Model) allocActs(p *pass, N, T int) (*acts, error) {
	c := m.cfg
	H, QD, KV, I := c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize
	a := &acts{}
	for _, s := range []struct {
		dst  *backend.Tensor
		cols int
		name string
	}{{&a.a, H, "attn norm"}, {&a.q, QD, "q"}, {&a.k, KV, "k"}, {&a.v, KV, "v"}, {&a.qn, QD, "q normed"},
		{&a.kn, KV, "k normed"}, {&a.o, QD, "attention output"}, {&a.x1, H, "residual"}, {&a.mm, H, "mlp norm"},
		{&a.gate, I, "gate"}, {&a.up, I, "up"}, {&a.h, I, "swiglu"}} {
		t, err := p.alloc(backend.Activations, N, s.cols, s.name)
		if err != nil {
			return nil, err
		}
		*s.dst = t
	}
	if m.attnStats(T) != nil {
		t, err := p.alloc(backend.Activations, N, c.NumHeads, "attention statistics")
		if err != nil {
			return nil, err
		}
		a.lse = t
	}
	return a, nil
}

func (p *pass) freeActs(a *acts) {
	p.free(a.x0, a.a, a.q, a.k, a.v, a.qn, a.kn, a.o, a.x1, a.mm, a.gate, a.up, a.h)
	if a.lse != nil {
		p.free(a.lse)
	}
}

// attnStats is the backend's AttentionStats when it applies to sequences of T rows, else nil.
func (m *Model) attnStats(T int) backend.AttentionStats {
	if st, ok := m.b.(backend.AttentionStats); ok && st.AttentionStatsApply(T, m.cfg.HeadDim) {
		return st
	}
	return nil
}

// perSeq calls fn with row r's views [r·T, (r+1)·T) of each tensor in ts.
func (m *Model) perSeq(pr *prepared, ts []backend.Tensor, fn func(vs []backend.Tensor) error) error {
	vs := make([]backend.Tensor, len(ts))
	for r := 0; r < pr.B; r++ {
		for i, t := range ts {
			v, err := m.b.RowView(t, r*pr.T, pr.T)
			if err != nil {
				return fmt.Errorf("devtrain: row view of sequence %d: %w", r, err)
			}
			vs[i] = v
		}
		if err := fn(vs); err != nil {
			return fmt.Errorf("sequence %d: %w", r, err)
		}
	}
	return nil
}

func (m *Model) w(i int) backend.Weight  { return m.params[i].w }
func (m *Model) nv(i int) backend.Tensor { return m.params[i].view }

// layerForward computes layer l's activations from a.x0 and, when out is not nil, the
// layer's output out = x1 + down(h). The ops and their order are grad/pass.go's.
func (m *Model) layerForward(l int, a *acts, out backend.Tensor, pr *prepared) error {
	c, b, L := m.cfg, m.b, m.layers[l]
	eps, hd, theta := float32(c.RMSNormEps), c.HeadDim, c.RopeTheta
	wrap := func(op string, err error) error {
		if err != nil {
			return fmt.Errorf("devtrain: layer %d forward %s: %w", l, op, err)
		}
		return nil
	}
	if err := b.RMSNorm(a.a, a.x0, m.nv(L[pLn1]), eps); err != nil {
		return wrap("input_layernorm", err)
	}
	if err := m.matMulMany([]backend.Tensor{a.q, a.k, a.v}, a.a, L[pQ], L[pK], L[pV]); err != nil {
		return wrap("q/k/v_proj", err)
	}
	if err := firstErr(b.RMSNorm(a.qn, a.q, m.nv(L[pQn]), eps), b.RMSNorm(a.kn, a.k, m.nv(L[pKn]), eps)); err != nil {
		return wrap("q/k_norm", err)
	}
	// With AttentionStats every sequence of the span goes in one call (and the statistics are
	// saved for the backward); otherwise attention runs per sequence.
	st := m.attnStats(pr.T)
	batched := st != nil && a.lse != nil
	err := m.perSeq(pr, []backend.Tensor{a.qn, a.kn, a.v, a.o}, func(vs []backend.Tensor) error {
		if err := firstErr(b.RoPE(vs[0], vs[0], hd, 0, theta), b.RoPE(vs[1], vs[1], hd, 0, theta)); err != nil {
			return err
		}
		if batched {
			return nil
		}
		return b.Attention(vs[3], vs[0], vs[1], vs[2], 0, c.NumHeads, c.NumKVHeads, hd)
	})
	if err == nil && batched {
		err = st.AttentionSaveStats(a.o, a.lse, a.qn, a.kn, a.v, pr.T, c.NumHeads, c.NumKVHeads, hd)
	}
	if err != nil {
		return wrap("rope/attention", err)
	}
	if err := firstErr(b.MatMul(a.x1, a.o, m.w(L[pO])), b.Add(a.x1, a.x0)); err != nil {
		return wrap("o_proj", err)
	}
	if err := b.RMSNorm(a.mm, a.x1, m.nv(L[pLn2]), eps); err != nil {
		return wrap("post_attention_layernorm", err)
	}
	if err := firstErr(m.matMulMany([]backend.Tensor{a.gate, a.up}, a.mm, L[pGate], L[pUp]), b.SwiGLU(a.h, a.gate, a.up)); err != nil {
		return wrap("gate/up/swiglu", err)
	}
	if out != nil {
		if err := firstErr(b.MatMul(out, a.h, m.w(L[pDown])), b.Add(out, a.x1)); err != nil {
			return wrap("down_proj", err)
		}
	}
	return nil
}

// matMulMany computes outs[i] = x·W(params[i])ᵀ: in one call where the backend has
// backend.Fused (the CUDA backend rounds x to bf16 once for all of them), else MatMul each.
// The results are MatMul's either way.
func (m *Model) matMulMany(outs []backend.Tensor, x backend.Tensor, params ...int) error {
	ws := make([]backend.Weight, len(params))
	for i, p := range params {
		ws[i] = m.w(p)
	}
	if f, ok := m.b.(backend.Fused); ok {
		return f.MatMulMany(outs, x, ws)
	}
	for i, w := range ws {
		if err := m.b.MatMul(outs[i], x, w); err != nil {
			return err
		}
	}
	return nil
}

// firstErr returns the first non-nil error. The ops run in order anyway; an op after a
// failed one sees arguments that were checked by the failed op's caller, and the step is
// abandoned before its result is used.
func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// layerBackward runs layer l's backward: dx holds the gradient of the layer's output and
// receives that of its input; g(k) is the gradient tensor of the layer's k-th parameter.
func (m *Model) layerBackward(l int, a *acts, w *bwork, g func(k int) backend.Tensor, pr *prepared) error {
	c, b, L := m.cfg, m.b, m.layers[l]
	eps, hd, theta := float32(c.RMSNormEps), c.HeadDim, c.RopeTheta
	wrap := func(op string, err error) error {
		if err != nil {
			return fmt.Errorf("devtrain: layer %d backward %s: %w", l, op, err)
		}
		return nil
	}
	// MLP: x2 = x1 + down(swiglu(gate(mm), up(mm)))
	if err := b.MatMulBackward(w.dh, g(pDown), w.dx, a.h, m.w(L[pDown]), false); err != nil {
		return wrap("down_proj", err)
	}
	if err := b.SwiGLUBackward(w.dgate, w.dup, w.dh, a.gate, a.up); err != nil {
		return wrap("swiglu", err)
	}
	if err := firstErr(b.MatMulBackward(w.dmm, g(pGate), w.dgate, a.mm, m.w(L[pGate]), false),
		b.MatMulBackward(w.dmm, g(pUp), w.dup, a.mm, m.w(L[pUp]), true)); err != nil {
		return wrap("gate/up_proj", err)
	}
	if err := b.RMSNormBackward(w.dx, g(pLn2), w.dmm, a.x1, m.nv(L[pLn2]), eps, true); err != nil {
		return wrap("post_attention_layernorm", err)
	}
	// attention: x1 = x0 + o_proj(attn(rope(qnorm(q)), rope(knorm(k)), v))
	if err := b.MatMulBackward(w.do, g(pO), w.dx, a.o, m.w(L[pO]), false); err != nil {
		return wrap("o_proj", err)
	}
	// With AttentionStats: every sequence in one call, from the statistics the forward just
	// saved (recomputed or kept); otherwise per sequence.
	st := m.attnStats(pr.T)
	batched := st != nil && a.lse != nil
	if batched {
		if err := st.AttentionBackwardStats(w.dq, w.dk, w.dv, w.do, a.qn, a.kn, a.v, a.o, a.lse, pr.T, c.NumHeads, c.NumKVHeads, hd); err != nil {
			return wrap("attention", err)
		}
	}
	err := m.perSeq(pr, []backend.Tensor{w.dq, w.dk, w.dv, w.do, a.qn, a.kn, a.v, a.o}, func(vs []backend.Tensor) error {
		if !batched {
			if err := b.AttentionBackward(vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], vs[6], vs[7], c.NumHeads, c.NumKVHeads, hd); err != nil {
				return err
			}
		}
		return firstErr(b.RoPEBackward(vs[0], vs[0], hd, 0, theta), b.RoPEBackward(vs[1], vs[1], hd, 0, theta))
	})
	if err != nil {
		return wrap("attention/rope", err)
	}
	if err := firstErr(b.RMSNormBackward(w.dq, g(pQn), w.dq, a.q, m.nv(L[pQn]), eps, false),
		b.RMSNormBackward(w.dk, g(pKn), w.dk, a.k, m.nv(L[pKn]), eps, false)); err != nil {
		return wrap("q/k_norm", err)
	}
	da := w.dmm
	if err := firstErr(b.MatMulBackward(da, g(pQ), w.dq, a.a, m.w(L[pQ]), false),
		b.MatMulBackward(da, g(pK), w.dk, a.a, m.w(L[pK]), true),
		b.MatMulBackward(da, g(pV), w.dv, a.a, m.w(L[pV]), true)); err != nil {
		return wrap("q/k/v_proj", err)
	}
	if err := b.RMSNormBackward(w.dx, g(pLn1), da, a.x0, m.nv(L[pLn1]), eps, true); err != nil {
		return wrap("input_layernorm", err)
	}
	return nil
}

// keep says what the forward keeps for a backward.
type keep int

const (
	keepNone   keep = iota // loss only: nothing
	keepInputs             // recompute: each layer's input
	keepAll                // every activation
)

// forward is the state between the forward and the backward.
type forward struct {
	layers []*acts        // keepAll: every layer's activations; keepInputs: only x0 set (f32 inputs)
	work   *acts          // keepInputs, keepNone: the shared layer buffers of one span (x0 unset)
	spans  []span         // keepInputs, keepNone: the row blocks a layer runs in
	xL, xf backend.Tensor // the last layer's output and the final normed hidden state
	// CheckpointBF16, keepInputs: every layer's input as bf16 (layers[l].x0 unset), and the
	// f32 buffer of one span's rows they are widened into for the recomputation.
	ckpts []backend.BF16
	in    backend.Tensor
}

// roundInput rounds the layer input x to bf16 in place through buf (its copy stays in buf):
// with CheckpointBF16 every forward computes each layer from what its recomputation will see.
func (m *Model) roundInput(x backend.Tensor, buf backend.BF16) error {
	st := m.b.(backend.BF16Store)
	if err := firstErr(st.ToBF16(buf, 0, x), st.FromBF16(x, buf, 0)); err != nil {
		return fmt.Errorf("devtrain: layer input to bf16: %w", err)
	}
	return nil
}

// runForward embeds the batch and runs every layer and the final norm. The context is
// checked before every layer. Without keepAll each layer runs span by span in one set of
// shared buffers, writing its output's rows of the span.
func (m *Model) runForward(ctx context.Context, p *pass, pr *prepared, mode keep) (*forward, error) {
	c, b := m.cfg, m.b
	H, N := c.HiddenSize, pr.N
	x, err := p.alloc(backend.Activations, N, H, "embeddings")
	if err != nil {
		return nil, err
	}
	if err := b.Embedding(x, m.w(m.embed), pr.ids); err != nil {
		return nil, fmt.Errorf("devtrain: embedding: %w", err)
	}
	f := &forward{}
	bf := m.opt.CheckpointBF16 && mode != keepAll
	var round backend.BF16 // keepNone: the rounding's scratch
	if mode != keepAll {
		rows := m.layerRows(pr, mode)
		if f.work, err = m.allocActs(p, rows, pr.T); err != nil {
			return nil, err
		}
		f.spans = spans(pr, rows)
		if bf && mode == keepInputs {
			if f.in, err = p.alloc(backend.Activations, rows, H, "layer input rows"); err != nil {
				return nil, err
			}
		}
		if bf && mode == keepNone {
			if round, err = p.allocBF16(backend.Activations, N, H, "layer input"); err != nil {
				return nil, err
			}
		}
	}
	for l := range m.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if bf {
			buf := round
			if mode == keepInputs {
				if buf, err = p.allocBF16(backend.Activations, N, H, fmt.Sprintf("layer %d input", l)); err != nil {
					return nil, err
				}
				f.ckpts = append(f.ckpts, buf)
			}
			if err := m.roundInput(x, buf); err != nil {
				return nil, err
			}
		}
		out, err := p.alloc(backend.Activations, N, H, fmt.Sprintf("layer %d output", l))
		if err != nil {
			return nil, err
		}
		if mode == keepAll {
			a, err := m.allocActs(p, N, pr.T)
			if err != nil {
				return nil, err
			}
			a.x0 = x
			if err := m.layerForward(l, a, out, pr); err != nil {
				return nil, err
			}
			f.layers = append(f.layers, a)
			x = out
			continue
		}
		for _, s := range f.spans {
			a, err := m.spanActs(f.work, x, s)
			if err != nil {
				return nil, err
			}
			o, err := m.rowsOf(out, s.r0, s.n)
			if err != nil {
				return nil, err
			}
			if err := m.layerForward(l, a, o, s.pr); err != nil {
				return nil, spanErr(f.spans, s, err)
			}
		}
		switch {
		case mode == keepInputs && !bf:
			f.layers = append(f.layers, &acts{x0: x})
		case mode == keepInputs: // kept as bf16 in f.ckpts[l]
			f.layers = append(f.layers, &acts{})
			p.free(x)
		default:
			p.free(x)
		}
		x = out
	}
	f.xL = x
	if f.xf, err = p.alloc(backend.Activations, N, H, "final norm"); err != nil {
		return nil, err
	}
	if err := b.RMSNorm(f.xf, x, m.nv(m.norm), float32(c.RMSNormEps)); err != nil {
		return nil, fmt.Errorf("devtrain: final norm: %w", err)
	}
	return f, nil
}

// lossChunks scores the final normed hidden state xf chunk by chunk. With dxf != nil it
// also writes dxf (the gradient of the mean loss at xf) and adds the lm_head gradient into
// dlm. It returns the summed (unscaled) loss and the scored count.
func (m *Model) lossChunks(p *pass, pr *prepared, xf, dxf, dlm backend.Tensor) (float64, int, error) {
	b, V := m.b, m.cfg.VocabSize
	rows := min(m.opt.ChunkRows, pr.N)
	logits, err := p.alloc(backend.Activations, rows, V, "logits chunk")
	if err != nil {
		return 0, 0, err
	}
	defer p.free(logits)
	scale := float32(0)
	if pr.n > 0 {
		scale = 1 / float32(pr.n)
	}
	lm := m.w(m.lm)
	var sum float64
	var n int
	for r0 := 0; r0 < pr.N; r0 += rows {
		k := min(rows, pr.N-r0)
		xv, err := b.RowView(xf, r0, k)
		if err != nil {
			return 0, 0, fmt.Errorf("devtrain: loss rows %d..%d: %w", r0, r0+k, err)
		}
		lv, err := b.RowView(logits, 0, k)
		if err != nil {
			return 0, 0, fmt.Errorf("devtrain: loss rows %d..%d: %w", r0, r0+k, err)
		}
		if err := b.MatMul(lv, xv, lm); err != nil {
			return 0, 0, fmt.Errorf("devtrain: lm_head rows %d..%d: %w", r0, r0+k, err)
		}
		s, c, err := b.CrossEntropy(lv, lv, pr.targets[r0:r0+k], m.opt.LabelSmoothing, scale)
		if err != nil {
			return 0, 0, fmt.Errorf("devtrain: cross-entropy rows %d..%d: %w", r0, r0+k, err)
		}
		sum += s
		n += c
		if dxf == nil {
			continue
		}
		dv, err := b.RowView(dxf, r0, k)
		if err != nil {
			return 0, 0, fmt.Errorf("devtrain: loss rows %d..%d: %w", r0, r0+k, err)
		}
		if c == 0 { // no target in the chunk: no gradient
			err = b.Zero(dv)
		} else {
			err = b.MatMulBackward(dv, dlm, lv, xv, lm, false)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("devtrain: lm_head backward rows %d..%d: %w", r0, r0+k, err)
		}
	}
	return sum, n, nil
}

// allocBwork allocates the backward's activation gradients: dx of N rows, the others of rows.
func (m *Model) allocBwork(p *pass, N, rows int) (*bwork, error) {
	c := m.cfg
	H, QD, KV, I := c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize
	w := &bwork{}
	for _, s := range []struct {
		dst  *backend.Tensor
		cols int
		name string
	}{{&w.dx, H, "d residual"}, {&w.dmm, H, "d normed"}, {&w.dh, I, "d swiglu"}, {&w.dgate, I, "d gate"},
		{&w.dup, I, "d up"}, {&w.do, QD, "d attention output"}, {&w.dq, QD, "d q"}, {&w.dk, KV, "d k"}, {&w.dv, KV, "d v"}} {
		n := rows
		if s.dst == &w.dx {
			n = N
		}
		t, err := p.alloc(backend.Gradients, n, s.cols, s.name)
		if err != nil {
			return nil, err
		}
		*s.dst = t
	}
	return w, nil
}

// hooks let the backward's caller see layer boundaries.
type hooks struct {
	// grad returns the gradient tensor of layer l's k-th parameter.
	grad func(l, k int) backend.Tensor
	// before runs before layer l's backward (cancellation checks, zeroing); after runs after
	// it (the fused optimizer).
	before, after func(l int) error
}

// runBackward runs the loss's backward and every layer's, and the embedding's, from the
// forward state f. gt(i) is parameter i's gradient for the non-layer parameters. With
// keepInputs each layer is recomputed and differentiated span by span (f.spans), its
// parameter gradients summed over the spans in row order.
func (m *Model) runBackward(p *pass, pr *prepared, f *forward, mode keep, w *bwork, gt func(i int) backend.Tensor, h hooks) error {
	c, b := m.cfg, m.b
	eps := float32(c.RMSNormEps)
	// w.dx holds dxf (written by lossChunks); the final norm's backward turns it in place
	// into the gradient of the last layer's output.
	if err := b.RMSNormBackward(w.dx, gt(m.norm), w.dx, f.xL, m.nv(m.norm), eps, false); err != nil {
		return fmt.Errorf("devtrain: final norm backward: %w", err)
	}
	p.free(f.xf, f.xL)
	for l := len(m.layers) - 1; l >= 0; l-- {
		if h.before != nil {
			if err := h.before(l); err != nil {
				return err
			}
		}
		g := func(k int) backend.Tensor { return h.grad(l, k) }
		a := f.layers[l]
		if mode == keepAll {
			if err := m.layerBackward(l, a, w, g, pr); err != nil {
				return err
			}
			p.freeActs(a)
		} else {
			for _, s := range f.spans {
				x0, err := m.spanInput(f, l, s)
				if err != nil {
					return err
				}
				sa, err := m.spanActs(f.work, x0, span{0, s.n, s.pr})
				if err != nil {
					return err
				}
				if err := m.layerForward(l, sa, nil, s.pr); err != nil {
					return fmt.Errorf("recompute: %w", spanErr(f.spans, s, err))
				}
				sw, err := m.spanWork(w, s)
				if err != nil {
					return err
				}
				if err := m.layerBackward(l, sa, sw, g, s.pr); err != nil {
					return spanErr(f.spans, s, err)
				}
			}
			p.free(a.x0)
			if f.ckpts != nil {
				p.freeBF16(f.ckpts[l])
				f.ckpts[l] = nil
			}
		}
		f.layers[l] = nil
		if h.after != nil {
			if err := h.after(l); err != nil {
				return err
			}
		}
	}
	if err := b.EmbeddingBackward(gt(m.embed), w.dx, pr.ids); err != nil {
		return fmt.Errorf("devtrain: embedding backward: %w", err)
	}
	return nil
}
