package devtrain

import (
	"fmt"
	"math"
	"time"
)

// Options configure a Model: master and moment precision, AdamW hyper-parameters, and the
// memory/speed trade-offs of the step.
type Options struct {
	// Master is the precision of the matrices' master weights: "bf16" or "fp32" ("" = bf16).
	// RMSNorm weights are always fp32.
	Master string
	// State is the AdamW moments' format ("" = int8), engine/optim's layouts: "fp32" (8 bytes
	// per parameter), "int8" (about 2.1: m linear, √v zero-free, blocks of 64) or "4bit"
	// (about 1.03: m companded with stochastic rounding, blocks of 128; v a zero-free log code
	// normalised by min(row max, column max) — the rank-1 normaliser — which takes the
	// backend's AdamW a second pass over the gradient).
	State string
	// Grad is the element type of the matrices' parameter gradients: "fp32" ("" = fp32) or
	// "bf16" (what PyTorch keeps for a bf16 model: half the bytes, and AdamW reads 10.25 bytes a
	// parameter instead of 12.25 with int8 moments). Each backward product adds its whole
	// float32 sum into a bf16 gradient with one rounding (backend.GradientFormat), so the tied
	// embedding/lm_head gradient is rounded once a logits chunk and once for the embedding
	// rows. RMSNorm weights keep float32 gradients. Needs a backend.GradientFormat backend.
	Grad string
	// Beta1, Beta2, Eps are AdamW's; all three zero (a zero Options) means 0.9, 0.999, 1e-8.
	Beta1, Beta2, Eps float64
	// WeightDecay is decoupled weight decay (lr·wd·w), not applied to norms.
	WeightDecay float64
	// ClipNorm > 0 clips the global gradient norm to it; 0 turns clipping off.
	ClipNorm float64
	// Seed seeds stochastic rounding of bf16 masters.
	Seed uint64
	// StochasticRounding rounds bf16 masters stochastically (engine/optim's bits).
	StochasticRounding bool
	// Recompute keeps only each layer's input from the forward and recomputes the layer's
	// activations just before its backward: less memory, one more forward.
	Recompute bool
	// FusedOptimizer applies AdamW to each layer right after its backward and reuses one
	// layer's gradient buffers. It needs ClipNorm == 0.
	FusedOptimizer bool
	// ChunkRows is the number of logit rows computed at once (0 = automatic: about 1 GiB of
	// float32 logits, a multiple of 64 rows between 64 and 4096 — 1,728 rows at Qwen3's
	// 151,936-entry vocabulary). Each chunk adds its rows' lm_head gradient into the whole
	// [V, H] float32 gradient, so small chunks make that accumulation memory-bound: at 441
	// rows it took 1.18 ms a chunk, 43.5 ms of a S=2048 × 8 step (session 6, H200).
	ChunkRows int
	// LabelSmoothing mixes the uniform distribution into the target (0 = off, below 1).
	LabelSmoothing float32
	// LayerChunkRows > 0 runs each layer's forward (and, with Recompute, its recomputation and
	// backward) over at most this many rows at a time, whole sequences (at least one), so the
	// layer's activations and their gradients take [LayerChunkRows, width] buffers instead of
	// [B·T, width]. Layers are independent across sequences, so the results do not change (bit
	// for bit on the CPU reference). Without Recompute every activation is kept and it applies
	// to Loss only. 0 = all rows at once.
	LayerChunkRows int
	// CheckpointBF16 keeps each layer's input as bf16 between the forward and its
	// recomputation (half the bytes of the largest part of a Recompute step's activations). So
	// that the recomputation still sees exactly what the forward saw, the residual stream is
	// rounded to bf16 at every layer's input, in every forward (Step, Grads, Loss); the
	// backward takes the rounding as the identity. This changes results slightly (the loss by
	// ~1e-4 relative, gradients by ~1e-2 of their largest element, on the tiny test models;
	// the GPU's tensor-core products round their activations to bf16 anyway). Needs Recompute
	// and a backend.BF16Store backend.
	CheckpointBF16 bool
}

// DefaultOptions are engine/optim's defaults: bf16 masters with stochastic rounding, int8
// moments, bf16 gradients, AdamW(0.9, 0.999, 1e-8), weight decay 0.01, global-norm clipping
// at 1; no recompute, unfused optimizer, automatic logit chunks.
func DefaultOptions() Options {
	return Options{Master: "bf16", State: "int8", Grad: "bf16", Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, ClipNorm: 1, StochasticRounding: true}
}

// normalize fills the defaults of zero fields and validates the options for vocabulary size
// vocab.
func (o Options) normalize(vocab int) (Options, error) {
	switch o.Master {
	case "":
		o.Master = "bf16"
	case "bf16":
	case "fp32", "f32":
		o.Master = "fp32"
	default:
		return o, fmt.Errorf("devtrain: master precision %q: want bf16 or fp32", o.Master)
	}
	switch o.State {
	case "":
		o.State = "int8"
	case "fp32", "int8", "4bit":
	default:
		return o, fmt.Errorf("devtrain: optimizer state %q: want fp32, int8 or 4bit", o.State)
	}
	switch o.Grad {
	case "", "fp32", "f32":
		o.Grad = "fp32"
	case "bf16":
	default:
		return o, fmt.Errorf("devtrain: gradient type %q: want fp32 or bf16", o.Grad)
	}
	if o.Beta1 == 0 && o.Beta2 == 0 && o.Eps == 0 {
		o.Beta1, o.Beta2, o.Eps = 0.9, 0.999, 1e-8
	}
	bad := func(x float64) bool { return math.IsNaN(x) || math.IsInf(x, 0) }
	switch {
	case bad(o.Beta1) || o.Beta1 < 0 || o.Beta1 >= 1:
		return o, fmt.Errorf("devtrain: Beta1 %v: want 0 ≤ β1 < 1", o.Beta1)
	case bad(o.Beta2) || o.Beta2 < 0 || o.Beta2 >= 1:
		return o, fmt.Errorf("devtrain: Beta2 %v: want 0 ≤ β2 < 1", o.Beta2)
	case bad(o.Eps) || o.Eps <= 0:
		return o, fmt.Errorf("devtrain: Eps %v: want > 0", o.Eps)
	case bad(o.WeightDecay) || o.WeightDecay < 0:
		return o, fmt.Errorf("devtrain: WeightDecay %v: want ≥ 0", o.WeightDecay)
	case bad(o.ClipNorm) || o.ClipNorm < 0:
		return o, fmt.Errorf("devtrain: ClipNorm %v: want ≥ 0 (0 = no clipping)", o.ClipNorm)
	case o.ChunkRows < 0:
		return o, fmt.Errorf("devtrain: ChunkRows %d: want ≥ 0 (0 = automatic)", o.ChunkRows)
	case math.IsNaN(float64(o.LabelSmoothing)) || o.LabelSmoothing < 0 || o.LabelSmoothing >= 1:
		return o, fmt.Errorf("devtrain: LabelSmoothing %v: want 0 ≤ ls < 1", o.LabelSmoothing)
	case o.FusedOptimizer && o.ClipNorm != 0:
		return o, fmt.Errorf("devtrain: FusedOptimizer with ClipNorm %v: global-norm clipping needs every gradient before the first update; set ClipNorm to 0 or turn FusedOptimizer off", o.ClipNorm)
	}
	if o.ChunkRows == 0 {
		o.ChunkRows = autoChunkRows(vocab)
	}
	return o, nil
}

// autoChunkRows is ChunkRows' automatic value for a vocabulary of vocab entries.
func autoChunkRows(vocab int) int {
	return min(4096, max(64, (1<<30)/(4*vocab)/64*64))
}

// Phase is one part of a step: its name, duration, and the backend's peak bytes since the
// step began, measured when the phase ended.
type Phase struct {
	Name string
	Dur  time.Duration
	Peak int64
}

// StepStats describe one step.
type StepStats struct {
	// Step is the number of applied steps after this one (it does not advance when skipped).
	Step int
	// Loss is the mean loss over the scored tokens.
	Loss float64
	// Tokens is the number of positions computed (B·T' after trimming trailing padding);
	// Targets the number of scored tokens.
	Tokens, Targets int
	// GradNorm is the global L2 norm of the mean-loss gradient (before clipping).
	GradNorm float64
	// Clipped: the gradient was scaled down to ClipNorm. Skipped: nothing was changed
	// (non-finite loss or gradient norm, or no scored token).
	Clipped, Skipped bool
	// Phases are the step's parts in order.
	Phases []Phase
}
