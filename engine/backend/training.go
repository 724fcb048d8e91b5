package backend

import "fmt"

// Training is what a backend adds to Backend so that a model can be trained on it, llm.c
// style: the backward twin of each forward op with the same argument conventions, a
// cross-entropy over a chunk of logit rows (so the full [tokens × vocab] logits never exist),
// and the AdamW update applied in place to resident weights with packed moments.
//
// Conventions shared by every op here:
//
//   - Gradients of parameters (dw of MatMulBackward, RMSNormBackward, EmbeddingBackward) are
//     float32 tensors of the parameter's shape and are ACCUMULATED (+=), so several sequences,
//     micro-batches or the tied embedding/lm_head add into one buffer. Zero them with Zero.
//     A backend with GradientFormat can also keep them as bf16 (MatMulBackward's dw,
//     EmbeddingBackward's dtable, SumSquares, AdamW; rounded once a call, see GradientFormat).
//   - Gradients of activations (dx, dq, dgate, …) are WRITTEN, unless the op takes an
//     accumulate flag and it is true, in which case they are added (two projections reading
//     the same input, the residual stream).
//   - A nil gradient argument means "not wanted" and is skipped where the doc says so.
//   - Errors are returned before anything is written (shape checks), as in Backend.
//
// engine/cpu is the reference (float32, deterministic); engine/cuda implements the same ops.
// engine/devtrain runs a Qwen3 training step on any Training backend.
type Training interface {
	Backend

	// RowView returns a tensor sharing t's storage for rows [row0, row0+n) (all columns).
	// Freeing a view does nothing; the view must not be used after t is freed. Views let one
	// [B·T, width] activation be processed per sequence (RoPE positions, attention).
	RowView(t Tensor, row0, n int) (Tensor, error)
	// WeightTensor returns a [Out, In] tensor sharing the storage of a dense f32 weight (the
	// RMSNorm weights of a trainable model are f32 weights; RMSNorm takes them as tensors).
	// It fails for bf16 and NVFP4 weights. Freeing the view does nothing.
	WeightTensor(w Weight) (Tensor, error)
	// Zero sets every element of t to 0.
	Zero(t Tensor) error
	// Scale multiplies every element of t by s.
	Scale(t Tensor, s float32) error
	// SumSquares returns Σ t² in float64 (gradient norms for clipping); a sync point.
	SumSquares(t Tensor) (float64, error)

	// MatMulBackward is the backward of out = x·Wᵀ (out [T, Out], x [T, In], W [Out, In]):
	// dx = dout·W (written, or added when accumulate) and dw += doutᵀ·x (dw a [Out, In] f32
	// tensor). dx or dw may be nil. W may be f32, bf16 or NVFP4 (decoded as in MatMul).
	MatMulBackward(dx, dw, dout, x Tensor, w Weight, accumulate bool) error
	// RMSNormBackward is the backward of out = RMSNorm(x, w, eps) with w of n elements
	// (n = width, or n = head_dim per head): dx written (added when accumulate), dw += ∂L/∂w
	// ([1, n]; nil skips it). The statistics are recomputed from x. dx may be dout only when
	// accumulate is false.
	RMSNormBackward(dx, dw, dout, x, w Tensor, eps float32, accumulate bool) error
	// RoPEBackward applies the inverse rotation of RoPE with the same arguments:
	// dx = Rᵀ·dout. dx may be dout.
	RoPEBackward(dx, dout Tensor, headDim, pos0 int, theta float64) error
	// AttentionBackward is the backward of Attention over one sequence without a cache
	// (pos0 = 0, k and v with exactly T rows, the causal mask): given the forward's q, k, v
	// and output out, it writes dq [T, nHeads·headDim], dk and dv [T, nKV·headDim] (each KV
	// head's gradient summed over the query heads that share it). The softmax is recomputed
	// (flash-attention style: no [T × T] matrix is kept between forward and backward).
	AttentionBackward(dq, dk, dv, dout, q, k, v, out Tensor, nHeads, nKV, headDim int) error
	// SwiGLUBackward is the backward of out = silu(gate)·up: dgate and dup written.
	SwiGLUBackward(dgate, dup, dout, gate, up Tensor) error
	// EmbeddingBackward: dtable[ids[t]] += dout[t] for every t (dtable [V, H] f32).
	// Repeated ids add up. Deterministic.
	EmbeddingBackward(dtable, dout Tensor, ids []int) error

	// CrossEntropy scores logits [R, V] against targets (len R; −1 = row not scored):
	// per scored row the loss is −log softmax(logits)[target] with label smoothing ls
	// ((1−ls)·NLL + ls·mean over the vocabulary of −log softmax), computed in float32 with a
	// max-subtracted log-sum-exp. It writes dlogits [R, V] = scale·∂loss/∂logits (zero rows
	// for unscored ones; dlogits may be logits) and returns the summed loss (unscaled) and
	// the number of scored rows. It is a sync point (the sum is downloaded).
	CrossEntropy(dlogits, logits Tensor, targets []int, ls, scale float32) (sum float64, n int, err error)

	// NewAdamWState allocates zeroed moments for a [rows, cols] parameter in the given
	// format ("fp32": m and v float32; "int8": engine/optim's Int8 layout — m signed linear
	// int8 and √v a zero-free unsigned 8-bit code, blocks of 64 with a float32 absmax;
	// "4bit": engine/optim's Bit4 layout — m a signed companded 4-bit code, blocks of 128 with
	// a float32 absmax, rounded stochastically from (Seed, Step, Param, index); v a zero-free
	// 4-bit log code normalised by min(row max, column max) of v, or by a block absmax for one
	// row: about 1.03 bytes per parameter), accounted under OptimizerState.
	NewAdamWState(format string, rows, cols int) (AdamWState, error)
	// FreeAdamWState releases st.
	FreeAdamWState(st AdamWState)
	// AdamW updates the dense weight w (f32, or bf16 with stochastic rounding when
	// h.StochasticRound) in place from grad (f32, same shape; multiplied by h.GradScale before
	// use) and the moments st, as engine/optim does for the same format: decoupled weight
	// decay lr·wd·w (skipped when h.NoDecay), bias correction with h.Step (1-based).
	AdamW(w Weight, grad Tensor, st AdamWState, h AdamWHyper) error
}

// SumSquaresBatch is implemented by training backends that sum the squares of several tensors
// with one wait for the device instead of one each; every sum is SumSquares', bit for bit.
type SumSquaresBatch interface {
	SumSquaresMany(xs []Tensor) ([]float64, error)
}

// SumSquaresMany returns SumSquares of every tensor: through t's SumSquaresBatch when it has
// one, else one call each.
func SumSquaresMany(t Training, xs []Tensor) ([]float64, error) {
	if b, ok := t.(SumSquaresBatch); ok {
		return b.SumSquaresMany(xs)
	}
	out := make([]float64, len(xs))
	for i, x := range xs {
		s, err := t.SumSquares(x)
		if err != nil {
			return nil, fmt.Errorf("sum of squares %d: %w", i, err)
		}
		out[i] = s
	}
	return out, nil
}

// AdamWJob is one parameter's update in a batch (AdamWMany).
type AdamWJob struct {
	W     Weight
	Grad  Tensor
	State AdamWState
	Hyper AdamWHyper
}

// AdamWBatch is implemented by training backends that can update several parameters in fewer
// launches than one each. The result is AdamW's on every job, bit for bit; jobs must not share
// a weight or a state (an error names the two), and nothing is updated when a job is invalid.
type AdamWBatch interface {
	AdamWMany(jobs []AdamWJob) error
}

// AdamWMany applies AdamW to every job: through t's AdamWBatch when it has one, else one
// AdamW call each, in order.
func AdamWMany(t Training, jobs []AdamWJob) error {
	if b, ok := t.(AdamWBatch); ok {
		return b.AdamWMany(jobs)
	}
	for i, j := range jobs {
		if err := t.AdamW(j.W, j.Grad, j.State, j.Hyper); err != nil {
			return fmt.Errorf("adamw job %d: %w", i, err)
		}
	}
	return nil
}

// AdamWState is a backend-resident pair of AdamW moments for one parameter.
type AdamWState interface {
	// Format is "fp32", "int8" or "4bit".
	Format() string
	// Bytes is the accounted storage.
	Bytes() int64
}

// AdamWHyper are the per-call AdamW hyper-parameters.
type AdamWHyper struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
	Step                               int     // 1-based step number for bias correction
	GradScale                          float32 // applied to the gradient first (1/n tokens × clip factor)
	NoDecay                            bool
	StochasticRound                    bool   // bf16 weights: round stochastically
	Seed                               uint64 // stochastic rounding: engine/optim's SRDraw(SRKey(Seed, Step, Param), element index)
	Param                              uint64 // the parameter's index in the model (separates rounding streams)
}

// CheckAdamWHyper validates h (a helper for implementations).
func CheckAdamWHyper(h AdamWHyper) error {
	if h.Step < 1 || h.Beta1 < 0 || h.Beta1 >= 1 || h.Beta2 < 0 || h.Beta2 >= 1 || h.Eps <= 0 || h.WeightDecay < 0 || h.LR < 0 {
		return fmt.Errorf("adamw: invalid hyper-parameters %+v", h)
	}
	return nil
}

// AsTraining returns b's Training ops, or an error naming the backend when it has none.
func AsTraining(b Backend) (Training, error) {
	t, ok := b.(Training)
	if !ok {
		return nil, fmt.Errorf("backend %s cannot train (no backward ops)", b.Name())
	}
	return t, nil
}
