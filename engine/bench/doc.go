// Package bench is the side-by-side benchmark of issues 6 and 7: the same figures measured on
// the qwengo engine (this package) and on PyTorch + transformers (peer.py, beside this file),
// in one run on the GPU machine (run.sh), combined into one markdown table of our figure, the
// peer's figure, the ratio and the fraction of a roofline.
//
// # Workloads
//
// A random model with Qwen3-4B shapes (hidden 2560, intermediate 9728, 36 layers, 32/8 heads
// of 128, vocabulary 151,936, tied embeddings; Options.Layers takes fewer layers) is built on
// the backend the caller passes (engine.Backend() in `qwenrepl bench`): NVFP4 linears and a bf16
// embedding that doubles as the lm_head, through qwen3.Load from a generator that fills each
// tensor on all cores (qwen3.NewRandom's generator is serial: about 17 ns per parameter,
// a minute for 4B parameters). Then, in this order:
//
//   - prefill S = 512, 2048, 8192: one forward of S tokens into an empty KV cache up to the
//     last row's logits on the host (time to first token), tokens/s;
//   - decode, batch 1, at context 512 and 8192: the cache filled by that prefill (or by an
//     untimed one), then N one-token forwards through the cache, each picking the greedy token
//     on the device (qwen3.LogitsGreedy), tokens/s;
//   - decode, batch 8 at context 1024: eight sequences prefilled to 1024 tokens in their own
//     rows of one batch KV cache (qwen3.BatchKVCache), then N steps of qwen3.ForwardBatch (one
//     token for every sequence a step, one launch per op for all of them on a backend.Batched
//     backend, greedy picks on the device), tokens/s over all sequences;
//   - a standalone optimizer step ("optim"): the backend's AdamW over every parameter of the
//     model shape (bf16 matrices, f32 norms, resident gradients as engine/devtrain keeps them:
//     bf16 matrices' unless QWENGO_TRAIN_GRAD=fp32, f32 norms'), once with int8 and once
//     with 4-bit moments, ending with a sync; the best repetition in ms, with the bytes it
//     moves per parameter and the fraction of 4.3 TB/s that is (peer.py: torch's fused AdamW);
//   - a full-parameter training step at S = 192 and 2048, batch 1 and 8, through
//     engine/devtrain (bf16 masters, int8 AdamW states, bf16 gradients, recompute): tokens/s, peak memory,
//     optimizer time and optimizer bytes per parameter; then S = 192, batch 1 again with
//     4-bit AdamW states (issue 7: peak memory at most 16 GB).
//
// Every timing is wall-clock on the host around a call that ends with a download (a sync):
// one warm-up, then the median of several repetitions within a per-figure time budget (a
// single run longer than LongRun is its own only sample, and says so). Peak memory is the
// backend's MemStats.Peak after a ResetPeak before the figure.
//
// # Reports
//
// Report is the JSON document both sides write (peer.py writes the same schema). Rooflines
// are computed here from the model's shapes and layer count and the H200 anchors of
// shared/reference/anchors.md (4.3 TB/s HBM, 790 TFLOP/s bf16 matmul); Roofline documents
// each. Markdown combines our report with the peer's.
//
// # Running it
//
// Here: `make cuda-bins` (builds .dev/gpu/qwenrepl with -tags cuda). On the GPU machine, from
// the repository root with .dev/gpu carried: `bash engine/bench/run.sh` (all 36 layers; add
// --layers N or --only decode,prefill,optim,train for shorter runs): qwengo first, then peer.py, each
// bounded in time, JSON, logs and table.md in $OUT, the table printed last. Locally:
// `qwenrepl bench --quick` (CPU, tiny shapes), `qwenrepl bench --combine --report ours.json
// --peer peer.json` to redo a table.
//
// The training figures need engine/devtrain: until it lands they are built only with -tags
// devtrain (train_devtrain.go) and report "not run" otherwise (train_stub.go).
package bench
