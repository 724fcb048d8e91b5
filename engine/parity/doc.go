// Package parity compares two numeric paths through one Qwen3 checkpoint layer by layer — the
// comparison the seed project did by hand when its two paths disagreed.
//
// A path is a Spec: backend (cpu, cuda), precision of the linear weights (nvfp4, bf16, f32,
// stored), QAT (linears through their NVFP4 quantise-dequantise image, dense compute) and KV
// cache (prefill all but the last token, then the last token through the cache; off: one full
// forward). Specs are written "cpu:nvfp4:kv" (ParseSpec).
//
// Compare loads the model once per distinct set of weights (backend, precision, QAT, fault),
// one model at a time so peak memory is one copy, runs both paths over the same token ids and
// captures the residual stream through qwen3.ForwardOptions.OnHidden after the embedding
// (layer -1), after every block (0..N-1) and after the final norm (N). Per layer the Report
// gives max_abs, mean_abs, cosine and relative error of the last position (and, with
// Options.AllPositions, of every position), the first layer past the thresholds (cosine below
// 0.999 or relative error above 0.05 by default), and for the next token both top-10 lists,
// KL(a‖b) and whether the argmax agrees. Report.String is an aligned table; the Report is
// JSON (NaN and ±Inf, which a broken path produces, are written as strings: see Float).
//
// Design:
//   - Backends are opened by name through the engine/backend registry, so this package never
//     imports engine/cuda; it registers "cpu" itself when nobody has.
//   - Precision, QAT and fault injection happen at load time by wrapping the checkpoint's
//     format.Source (LoadModel): engine/qwen3 loads rewritten tensors like any checkpoint, so
//     what is compared is the production forward pass, not a copy of it.
//   - The seed's fp8-scale bug (cause 10 in shared/reference/seed-lessons.md: E4M3 block-scale
//     bytes read as integers) is reproducible on one layer (Spec.ScaleBug, scalebug=N): the
//     worked example of notebook 03, where the report points at exactly that layer. See
//     ScaleBugDequantize for what the bug was and what it does to ModelOpt and seed weights.
//   - KV caches are bf16 on CUDA and float32 on the CPU unless a spec says (cache=f32,
//     cache=bf16: Spec.Cache); a GPU-versus-CPU comparison on one cache type sees only the
//     other differences. Each side reports the type it ran with.
package parity

import (
	"github.com/qwengo/qwengo/engine/backend"
	"github.com/qwengo/qwengo/engine/cpu"
)

func init() {
	if !backend.Registered("cpu") {
		backend.Register("cpu", func() (backend.Backend, error) { return cpu.New(), nil })
	}
}
