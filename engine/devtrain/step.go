package devtrain

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/data"
)

var errClosed = errors.New("devtrain: the model was closed")

// Step runs one training step on batch with learning rate lr: forward, chunked loss,
// backward and AdamW, all on the backend. On an error or cancellation before the optimizer
// nothing is changed (see the package doc for the fused mode's guarantees).
func (m *Model) Step(ctx context.Context, batch *data.Batch, lr float64) (StepStats, error) {
	if m.closed {
		return StepStats{}, errClosed
	}
	if math.IsNaN(lr) || math.IsInf(lr, 0) || lr < 0 {
		return StepStats{}, fmt.Errorf("devtrain: learning rate %v: want a finite value ≥ 0", lr)
	}
	pr, err := m.prepare(batch)
	if err != nil {
		return StepStats{}, err
	}
	var st StepStats
	err = backend.RunOn(m.b, func() error {
		var err error
		st, err = m.trainStep(ctx, pr, lr)
		return err
	})
	return st, err
}

func (m *Model) hyper(i int, lr float64, scale float32) backend.AdamWHyper {
	p := m.params[i]
	return backend.AdamWHyper{
		LR: lr, Beta1: m.opt.Beta1, Beta2: m.opt.Beta2, Eps: m.opt.Eps, WeightDecay: m.opt.WeightDecay,
		Step: p.steps + 1, GradScale: scale, NoDecay: p.noDecay,
		StochasticRound: m.opt.StochasticRounding && m.opt.Master == "bf16" && p.rows > 1,
		Seed:            m.opt.Seed, Param: uint64(i),
	}
}

// update applies AdamW to parameters idx from gradients gs (gs[k] for idx[k]) in one batch
// (backend.AdamWMany: a backend with AdamWBatch updates them in a few launches).
func (m *Model) update(idx []int, gs []backend.Tensor, lr float64, scale float32) error {
	jobs := make([]backend.AdamWJob, len(idx))
	for k, i := range idx {
		p := m.params[i]
		jobs[k] = backend.AdamWJob{W: p.w, Grad: gs[k], State: p.st, Hyper: m.hyper(i, lr, scale)}
	}
	if err := backend.AdamWMany(m.b, jobs); err != nil {
		return fmt.Errorf("devtrain: AdamW of %d parameters from %s: %w", len(idx), m.params[idx[0]].name, err)
	}
	for _, i := range idx {
		m.params[i].steps++
	}
	return nil
}

func (m *Model) trainStep(ctx context.Context, pr *prepared, lr float64) (StepStats, error) {
	st := StepStats{Step: m.step, Tokens: pr.N, Targets: pr.n}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if pr.n == 0 {
		st.Skipped = true
		return st, nil
	}
	b := m.b
	b.ResetPeak()
	t0 := time.Now()
	mark := func(name string) {
		now := time.Now()
		st.Phases = append(st.Phases, Phase{Name: name, Dur: now.Sub(t0), Peak: b.Memory().Peak})
		t0 = now
	}
	p := &pass{b: b}
	defer p.freeAll()
	mode := keepAll
	if m.opt.Recompute {
		mode = keepInputs
	}
	f, err := m.runForward(ctx, p, pr, mode)
	if err != nil {
		return st, err
	}
	w, err := m.allocBwork(p, pr.N, m.layerRows(pr, mode))
	if err != nil {
		return st, err
	}
	fused := m.opt.FusedOptimizer
	for _, i := range []int{m.embed, m.lm, m.norm} {
		if err := b.Zero(m.grads[i]); err != nil {
			return st, fmt.Errorf("devtrain: zero gradient %s: %w", m.params[i].name, err)
		}
	}
	if !fused {
		for i, g := range m.grads {
			if m.inLayer(i) {
				if err := b.Zero(g); err != nil {
					return st, fmt.Errorf("devtrain: zero gradient %s: %w", m.params[i].name, err)
				}
			}
		}
	}
	sum, n, err := m.lossChunks(p, pr, f.xf, w.dx, m.grads[m.lm])
	if err != nil {
		return st, err
	}
	st.Loss = sum / float64(n)
	mark("forward")
	if math.IsNaN(st.Loss) || math.IsInf(st.Loss, 0) {
		st.Skipped, st.GradNorm = true, math.NaN()
		return st, nil
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	gt := func(i int) backend.Tensor { return m.grads[i] }
	var h hooks
	var ss float64   // fused: Σ g² of the layers updated so far
	var updated bool // fused: some parameter was updated
	if fused {
		h.grad = func(l, k int) backend.Tensor { return m.layerGrads[k] }
		h.before = func(l int) error {
			for k, g := range m.layerGrads {
				if err := b.Zero(g); err != nil {
					return fmt.Errorf("devtrain: zero gradient buffer %s: %w", layerSuffix[k], err)
				}
			}
			return nil
		}
		h.after = func(l int) error {
			sums, err := backend.SumSquaresMany(b, m.layerGrads[:])
			if err != nil {
				return fmt.Errorf("devtrain: norms of layer %d's gradients: %w", l, err)
			}
			for k, s := range sums {
				if math.IsNaN(s) || math.IsInf(s, 0) {
					return m.partial(l, updated, fmt.Sprintf("non-finite gradient of %s", m.params[m.layers[l][k]].name))
				}
				ss += s
			}
			if err := m.update(m.layers[l][:], m.layerGrads[:], lr, 1); err != nil {
				return m.partial(l, updated, err.Error())
			}
			updated = true
			return nil
		}
	} else {
		h.grad = func(l, k int) backend.Tensor { return m.grads[m.layers[l][k]] }
		h.before = func(int) error { return ctx.Err() }
	}
	if err := m.runBackward(p, pr, f, mode, w, gt, h); err != nil {
		return st, err
	}
	p.freeAll()
	mark("backward")
	if fused {
		tail := []int{m.embed, m.norm}
		if m.lm != m.embed {
			tail = append(tail, m.lm)
		}
		gs := make([]backend.Tensor, len(tail))
		for k, i := range tail {
			gs[k] = m.grads[i]
		}
		sums, err := backend.SumSquaresMany(b, gs)
		if err != nil {
			return st, fmt.Errorf("devtrain: norms of the embedding, lm_head and final norm: %w (the layers were updated)", err)
		}
		for _, s := range sums {
			ss += s
		}
		st.GradNorm = math.Sqrt(ss)
		if math.IsNaN(ss) || math.IsInf(ss, 0) {
			return st, fmt.Errorf("devtrain: non-finite gradient of the embedding, lm_head or final norm: the step was applied to every layer but not to them")
		}
		if err := m.update(tail, gs, lr, 1); err != nil {
			return st, fmt.Errorf("%w (the layers were updated)", err)
		}
		m.step++
		st.Step = m.step
		mark("update")
		return st, nil
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	sums, err := backend.SumSquaresMany(b, m.grads)
	if err != nil {
		return st, fmt.Errorf("devtrain: norms of the gradients: %w", err)
	}
	for _, s := range sums {
		ss += s
	}
	st.GradNorm = math.Sqrt(ss)
	if math.IsNaN(ss) || math.IsInf(ss, 0) {
		st.Skipped = true
		mark("optimizer")
		return st, nil
	}
	scale := float32(1)
	if c := m.opt.ClipNorm; c > 0 && st.GradNorm > c {
		scale = float32(c / st.GradNorm)
		st.Clipped = true
	}
	all := make([]int, len(m.grads))
	for i := range all {
		all[i] = i
	}
	if err := m.update(all, m.grads, lr, scale); err != nil {
		return st, fmt.Errorf("%w (step %d left partially applied)", err, m.step+1)
	}
	m.step++
	st.Step = m.step
	mark("optimizer")
	return st, nil
}

// partial is the fused mode's error at layer l: which layers were already updated.
func (m *Model) partial(l int, updated bool, why string) error {
	if !updated {
		return fmt.Errorf("devtrain: fused step stopped at layer %d: %s; nothing was updated", l, why)
	}
	return fmt.Errorf("devtrain: fused step stopped at layer %d: %s; layers above it (up to %d) were already updated", l, why, len(m.layers)-1)
}

// Loss scores batch without gradients: the summed loss over the scored tokens and their
// number. Only one layer's activations exist at a time.
func (m *Model) Loss(ctx context.Context, batch *data.Batch) (sum float64, n int, err error) {
	if m.closed {
		return 0, 0, errClosed
	}
	pr, err := m.prepare(batch)
	if err != nil {
		return 0, 0, err
	}
	err = backend.RunOn(m.b, func() error {
		p := &pass{b: m.b}
		defer p.freeAll()
		f, err := m.runForward(ctx, p, pr, keepNone)
		if err != nil {
			return err
		}
		sum, n, err = m.lossChunks(p, pr, f.xf, nil, nil)
		return err
	})
	return sum, n, err
}

// Grads returns host copies of the gradients of the mean loss over batch's scored tokens, in
// grad.Model's parameter order, with the summed loss and the scored count. It uses
// temporary gradient buffers of the step's types (Options.Grad: bf16 values widened) and
// changes nothing (tests and debugging; Step does not use it).
func (m *Model) Grads(ctx context.Context, batch *data.Batch) ([][]float32, float64, int, error) {
	if m.closed {
		return nil, 0, 0, errClosed
	}
	pr, err := m.prepare(batch)
	if err != nil {
		return nil, 0, 0, err
	}
	var out [][]float32
	var sum float64
	var n int
	err = backend.RunOn(m.b, func() error {
		b := m.b
		p := &pass{b: b}
		defer p.freeAll()
		gs := make([]backend.Tensor, len(m.params))
		for i, q := range m.params {
			g, err := backend.AllocGradient(b, q.rows, q.cols, m.gradType(q))
			if err != nil {
				return fmt.Errorf("devtrain: gradient of %s: %w", q.name, err)
			}
			p.live = append(p.live, g)
			gs[i] = g
		}
		mode := keepAll
		if m.opt.Recompute {
			mode = keepInputs
		}
		f, err := m.runForward(ctx, p, pr, mode)
		if err != nil {
			return err
		}
		w, err := m.allocBwork(p, pr.N, m.layerRows(pr, mode))
		if err != nil {
			return err
		}
		if sum, n, err = m.lossChunks(p, pr, f.xf, w.dx, gs[m.lm]); err != nil {
			return err
		}
		if n > 0 {
			h := hooks{grad: func(l, k int) backend.Tensor { return gs[m.layers[l][k]] }, before: func(int) error { return ctx.Err() }}
			if err := m.runBackward(p, pr, f, mode, w, func(i int) backend.Tensor { return gs[i] }, h); err != nil {
				return err
			}
		}
		out = make([][]float32, len(gs))
		for i, g := range gs {
			if out[i], err = b.Download(g, nil); err != nil {
				return fmt.Errorf("devtrain: download gradient of %s: %w", m.params[i].name, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	return out, sum, n, nil
}
