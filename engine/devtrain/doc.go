// Package devtrain is a Qwen3 full-parameter training step on any backend that implements
// backend.Training: the master weights, the gradients and the AdamW moments stay resident on
// the backend, so the same code trains on the CPU reference (engine/cpu) and on the GPU
// (engine/cuda). It mirrors engine/grad (the host float32 reference) op for op, with the same
// parameters in the same order (grad.Model.Params), tied or untied embeddings.
//
// # Use
//
//	m, err := devtrain.New(tb, gm, devtrain.DefaultOptions()) // gm a *grad.Model (host)
//	defer m.Close()
//	st, err := m.Step(ctx, batch, 1e-5) // forward, chunked loss, backward, AdamW
//	gm2, err := m.Export()              // masters back into a host grad.Model
//
// New uploads the parameters: every matrix (the embedding, projections, an untied lm_head) as
// a dense master in Options.Master precision ("bf16" or "fp32"), every RMSNorm weight as f32
// (viewed as a tensor through Training.WeightTensor). Each parameter gets its AdamW moments
// (Options.State "fp32", "int8" or "4bit", engine/optim's layouts) under OptimizerState, and
// its gradient: bf16 for matrices with DefaultOptions (Options.Grad; backend.GradientFormat:
// each backward product's float32 sum added with one rounding), float32 for norms.
//
// # The step, top to bottom
//
// A batch is B rows of T tokens (data.Batch); as in engine/grad, logit row t of a sequence
// scores ids[t+1] where mask[t+1] is set, and trailing padding past a row's last target is
// ignored. The step runs every row at T' = the longest row after that trimming (positions
// past a row's own end are computed but score nothing and, the attention being causal, add
// exactly zero to every gradient). Activations are [B·T', width] tensors; RoPE and attention
// run per sequence on row views (position 0 at each row's start).
//
//  1. Forward, per layer, the ops of grad/pass.go: RMSNorm, q/k/v MatMul, per-head q/k
//     RMSNorm, RoPE, causal attention, o_proj plus residual, RMSNorm, gate/up MatMul, SwiGLU,
//     down plus residual. The context is checked before every layer.
//  2. Loss: the final RMSNorm, then ChunkRows rows of logits at a time (MatMul with the
//     lm_head, or the embedding when tied), the backend's CrossEntropy scaled by 1/n (n the
//     scored tokens of the batch, so every gradient is that of the mean loss), and at once the
//     MatMulBackward of that chunk into the lm_head gradient and the final hidden state's
//     gradient. [B·T' × vocab] logits never exist. A non-finite loss skips the step here,
//     before anything is changed.
//  3. Backward, layers in reverse, each op's backward twin in the reverse order; the
//     embedding gradient last (added to the lm_head's when tied).
//  4. AdamW (unfused): the global gradient norm from the gradients' sums of squares (one
//     backend.SumSquaresMany, one wait for the device); a non-finite norm skips the step; the
//     clip factor ClipNorm/norm (when the norm exceeds ClipNorm) is folded into
//     AdamWHyper.GradScale; every parameter is updated in place in one backend.AdamWMany (a
//     backend with AdamWBatch takes many parameters a launch); norms are not decayed. The
//     fused mode does the same a layer at a time: one wait and one batch a layer.
//
// The phases of StepStats are "forward" (it includes the chunked loss and its lm_head
// backward, since logits are made and consumed chunk by chunk), "backward" and "optimizer"
// ("update" in fused mode: only the embedding, lm_head and final norm are left for it), each
// with its duration and the backend's peak since the step began.
//
// # Memory
//
// Activations are allocated under Activations, gradients (of parameters and of
// activations) under Gradients. Without Recompute every layer keeps its activations from the
// forward until its backward has run, then frees them. With Recompute only each layer's
// input is kept; one set of layer buffers is reused, and each layer's activations are
// recomputed from its input just before its backward (bit-identical: the same ops on the same
// inputs). Options.ChunkRows bounds the logits buffer.
//
// Options.LayerChunkRows runs a layer (forward, recomputation, backward) over spans of whole
// sequences, so the layer buffers and the activation gradients (all but the residual
// stream's, dx, which has every row) hold one span's rows. Every op of a layer is row-wise or
// per sequence; only the parameter gradients sum over rows, and they accumulate span after
// span in row order, which on the CPU reference is the order of one pass over all rows: the
// results are bit-identical (TestLayerChunksBitIdentical). Options.CheckpointBF16 keeps the
// layer inputs as bf16 (backend.BF16Store) and rounds the residual stream at each layer's
// input in every forward, so that the recomputation still repeats the forward exactly.
//
// The step's peak is at the chunked loss: every kept input, the last layer's output and the
// final normed state, the layer buffers (allocated once, before the first layer), the
// backward's buffers and a logits chunk; the backward allocates nothing more. Model.PeakPlan
// lists these parts from the shapes; on the CPU reference they are the measured peak to the
// byte (TestPeakPlan). At Qwen3-4B's shapes (36 layers, hidden 2560, intermediate 9728, q
// 4096, kv 1024, vocabulary 151936 tied), bf16 masters, int8 moments, Recompute and
// FusedOptimizer, bf16 gradients, S = 2048 × batch 8 (N = 16384 rows), in GB (10⁹ bytes):
//
//	                                          all rows at once    LayerChunkRows 4096
//	                                          f32 inputs          + CheckpointBF16
//	master weights (bf16)                         8.05                8.05
//	AdamW moments (int8, with block scales)       8.55                8.55
//	embedding = lm_head gradient (bf16)           0.78                0.78
//	one layer's parameter gradients (bf16)        0.20                0.20
//	layer inputs (36 × [N, 2560])                 6.04 (f32)          3.02 (bf16)
//	last layer output, final norm                 0.34                0.34
//	layer buffers ([R, 52224], R = N or 4096)     3.42                0.90 (with the widened input)
//	activation gradients ([R, 41984] + dx)        2.92                0.86
//	logits chunk ([441, 151936])                  0.27                0.27
//	devtrain's plan                              30.56               22.95
//
// A GPU backend adds its own workspace (engine/cuda: the bf16 operand copies of its
// cuBLASLt products, 0.35-0.7 GB at these shapes, attention and reduction scratch, and freed
// blocks it keeps for reuse, up to 2 GiB, which include the shapes of earlier steps until
// released). The 34.3 GB (31.9 GiB) measured in device run 12 (float32 gradients then) leaves about 2.8 GB to it
// beyond the left column, most likely blocks cached by the earlier figures (S=192, S=2048 ×
// 1): engine/bench now releases the cached blocks before each training figure and prints the
// peak per category next to PeakPlan. With LayerChunkRows 4096 alone the plan is 25.93 GB,
// with CheckpointBF16 alone 27.71 GB. The layer's products then have 4096 rows (still whole
// tensor-core tiles), and the six intermediate-wide buffers (gate, up, SwiGLU and their
// gradients) 159 MB each instead of 637 MB.
//
// With FusedOptimizer, AdamW is applied to a layer's parameters as soon as its backward is
// done, so only one layer's parameter gradients exist at a time (plus the embedding, lm_head
// and final norm, updated at the end). Global-norm clipping needs every gradient before the
// first update, so FusedOptimizer requires ClipNorm == 0. Gradients are the same as unfused
// (the update of layer l happens after the gradient flowing to layer l-1 was computed), so
// fused and unfused steps agree bit for bit.
//
// # Atomicity and cancellation
//
// An error or a cancellation before the optimizer leaves weights, moments and the step count
// untouched. Unfused, the context is checked before every layer of the forward and of the
// backward and before the optimizer; once the optimizer starts it runs to the end. Fused, the
// context is checked during the forward only: once the backward (which updates layers as it
// goes) has started, the step runs to completion. Fused mode sees each layer's gradient only
// just before updating it: a non-finite loss still skips the whole step, but a gradient that
// becomes non-finite only within the backward stops the step with an error after the layers
// above it were updated (the unfused mode never updates partially).
//
// QAT (grad.Model.QAT, projections through NVFP4 quantise-dequantise) is not supported yet:
// New refuses such a model.
package devtrain
