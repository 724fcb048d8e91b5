// Package cuda is the GPU backend: engine/backend.Backend on an NVIDIA GPU through the CUDA
// driver API. Everything that touches CUDA is behind the build tag `cuda`; without it the
// package holds only the embedded kernels and this documentation.
//
// # Design
//
//   - Driver: libcuda.so.1 is opened with dlopen (a small cgo shim over cuda.h's types), so a
//     binary built with the tag starts on machines without a GPU or driver; Open then returns an
//     error and the tests skip. gorgonia.org/cu was the first choice but its package init calls
//     cuInit and exits the process when that fails.
//   - One owner of the context (DESIGN principle 6): Open starts a goroutine locked to its OS
//     thread that makes the device's primary context current and runs every backend call, sent
//     to it as a closure over a channel. Callers on any goroutine (yaegi cells) are safe; calls
//     are serialised. Both sides poll the channels a few tens of microseconds before parking
//     (when GOMAXPROCS > 1), which makes a call ~1.5 µs instead of ~18 µs. Kernels run in call
//     order on one blocking stream (driver.go), which synchronises with the legacy stream the
//     copies, events and cuBLASLt use; decode kernels use programmatic dependent launch
//     (launchDep). Download (and Sync) wait for them, so a kernel fault surfaces there at the
//     latest.
//   - Kernels are CUDA C++ in kernels/*.cu, compiled to PTX for sm_90 by gen_ptx.sh, which also
//     assembles each PTX into a gzipped sm_90 cubin (cubins.sum holds the PTX's SHA-256 and the
//     ptxas release; scripts/cubins_on_device.sh reassembles them with CUDA 13's ptxas). All are
//     committed and embedded; Open loads the cubins with cuModuleLoadData on compute capability
//     9.0 (no JIT: ~2.5 s cold against ~36 s) and the PTX elsewhere, or where a cubin is
//     refused. No PTX is written by hand.
//   - Memory is accounted, not discovered (principle 4): every cuMemAlloc goes through one
//     allocator that tracks bytes per backend.Category, the peak and the live allocations, and
//     checks an optional budget (SetBudget) before asking the driver: an allocation that would
//     cross it fails with an error wrapping *backend.OverBudget that also names the bytes in use
//     per category; nothing is allocated and the backend stays usable. Freed tensors of the
//     transient categories (activations, gradients, workspace) are pooled by size and reused
//     (zeroed), accounted under workspace; the pool is released before anything is refused
//     and by ReleaseCache.
//   - Tensors are float32 on the device; parameter gradients float32 or bf16 (AllocGradient,
//     backend.GradientFormat), KV caches bf16 or float32. Weights stay in their
//     stored precision (f32, bf16, NVFP4 packed codes + E4M3 block scales + FP32 tensor scale).
//     MatMul: a few token rows take a GEMV that decodes the weights in registers (NVFP4 on
//     tensor cores: gemv_tcp.cu for 1-15 rows, eight a launch, a resident grid with four weight
//     steps in flight per warp; gemv.go picks the kernel per shape, QWENGO_CUDA_GEMV forces
//     one); 16 rows or more go to cuBLASLt (blaslt.go, gemm.go: bf16 operands, fp32
//     accumulation; NVFP4 weights expanded to bf16 per call; a shape's algorithm is chosen by
//     timing the heuristic's top eight at its third launch, gemm_tune.go, off with
//     QWENGO_CUDA_GEMM_TUNE=0), else a tiled SIMT kernel. Attention: prefill (≥ 16 rows, head_dim 128) and
//     its backward on tensor-core flash kernels (flash.go); decode one block per KV head and key
//     split with the splits merged in the same launch; otherwise one block per (head, row).
//   - A call made on the owner's own thread runs directly (Run, backend.Runner): qwen3's
//     forward and devtrain's step run whole on the owner goroutine, paying one hand-off.
//   - backend.Fused (fused.go) and backend.Training (training.go, kernels/train.cu) are
//     implemented: fused decoder-block kernels, every backward op, chunked cross-entropy and
//     the AdamW update with fp32, int8 or 4-bit moments. backend.Batched (batch.go, kernels/batch.cu)
//     runs a batched decode step's per-sequence ops in one launch each for up to 32 sequences.
//   - backend.FusedDecode (fused_decode.go): the block's norms, SwiGLU and residual adds folded
//     into the GEMVs; exact, and the model's batch-1 decode path since session 14 (3-7 % faster
//     once the norm GEMVs load their row at once); QWENGO_CUDA_DECODE_FUSED=0 switches them off.
//   - backend.NormRoPEAttention (fused_decode.go): a one-row decode step's q/k norms, RoPE and
//     cache write folded into the register-walk decode attention (attention.cu
//     attention_decode_nr{G}); bit for bit the two kernels it replaces, measured slower in the
//     36-layer model, so only with QWENGO_CUDA_DECODE_NR=1.
//   - backend.LayerDecoder (decode_layers.go, kernels/decode_layers.cu): every layer of a
//     one-token step in one persistent, cooperatively launched kernel; agrees with the per-op
//     path to ~1e-6 but measured slower (NOTES.md, session 7), so it runs only with
//     QWENGO_CUDA_DECODE_LAYERS=1 (QWENGO_CUDA_DECODE_STAGES caps its weight stages).
//   - CUDA graphs (graph.go): CaptureGraph records the kernels a function launches and
//     Graph.Replay runs them as one launch; the model does not use them yet (NOTES.md says why).
//   - Profiling (backend.Profiler): ProfileRange delimits the range ncu/nsys capture with
//     capture-from-start off; with QWENGO_CUDA_KERNEL_TIMES=1 it also times every launch in it
//     with events (ktimes.go), no profiler needed.
//
// NOTES.md has the kernels' bytes, FLOPs and measured times on an H200 and what comes next.
//
// # Environment
//
// Every knob is read from the process environment (at start, when a backend opens, or when its
// op runs) and exists for A/B measurements against the default, which is the measured-best
// path; a value not listed keeps the default.
//
//	QWENGO_CUDA_GEMV=v2|stream|persist|tc|tcb|tcp  one NVFP4 GEMV kernel for every shape (default auto: gemv_tcp)
//	QWENGO_CUDA_GEMV_TCP=4x3|8x3|4x4|8x4           gemv_tcp's warps × steps in flight (default per shape)
//	QWENGO_CUDA_GEMV_TC=4x3|8x3, _TCB=4x2|8x2|4x4|8x4  the older tensor-core GEMVs' shapes
//	QWENGO_CUDA_GEMV_SLICE=N                       K steps a block of the tensor-core GEMVs (default from T and K)
//	QWENGO_CUDA_GEMV_LONG_SLICE=N                  K steps a block of gemv_tcp's 1..4-row products with K ≥ 8192 (default 6)
//	QWENGO_CUDA_GEMV_STEPLOOP=1                    gemv_tcp's per-step loop for 5..8 rows, not the tile-structured one
//	QWENGO_CUDA_GEMV_BM=0                          gemv_tcp's global K-slice merge for 1..4 rows, not the in-block one
//	QWENGO_CUDA_GEMV_MERGE0=1                      gemv_tcp's per-tile global merge (before session 19), where it has one
//	QWENGO_CUDA_GEMV_CS=0                          one-row gemv_tcp with every weight pair scaled in half2, not the column-scale forms
//	QWENGO_CUDA_JIT=1                              the driver JIT-compiles the PTX even where the sm_90 cubins fit
//	QWENGO_CUDA_PDL=0                              no programmatic dependent launch in decode
//	QWENGO_CUDA_LMHEAD_HILO=0                      2..8 rows of a large bf16 weight on the GEMV, not cuBLASLt's hi/lo product
//	QWENGO_CUDA_GEMM=simt                          the tiled SIMT kernel instead of cuBLASLt for 16+ rows
//	QWENGO_CUDA_GEMM_TUNE=0                        cuBLASLt's first heuristic choice, untimed (same bits every run)
//	QWENGO_CUDA_ATTN=simt                          prefill attention on the fp32 kernel, not the flash kernels
//	QWENGO_CUDA_DECODE_ATTN=tiles                  decode attention from shared-memory tiles, not registers
//	QWENGO_CUDA_DECODE_ATTN_BLOCKS=N               decode attention's key splits aim for N blocks an SM (default 4)
//	QWENGO_CUDA_DECODE_ATTN_PREFETCH=N             one-row decode attention asks L2 for N cached rows a block before
//	                                               pdl_wait (0: none; default: a block's range when it is ≤ 32 keys)
//	QWENGO_CUDA_KV=f32                             new KV caches hold float32 (default bf16; also SetKVCacheDType)
//	QWENGO_CUDA_BATCHED=0                          no backend.Batched: a batched step runs its per-sequence ops one by one
//	QWENGO_CUDA_DECODE_FUSED=0                     batch-1 decode without the fused forms (norms, SwiGLU, adds in the GEMVs)
//	QWENGO_CUDA_DECODE_FUSED_ROWS=N                the fused forms for chunks of up to N ≤ 8 rows (default 1; 8 measured slower)
//	QWENGO_CUDA_DECODE_NR=1                        QKNormRoPEAttention as one kernel (measured slower: fused_decode.go)
//	QWENGO_CUDA_DECODE_LAYERS=1                    the whole-stack decoder; QWENGO_CUDA_DECODE_STAGES=N caps its stages
//	QWENGO_CUDA_SUMSQ_BATCH=0                      SumSquaresMany one gradient at a time
//	QWENGO_CUDA_ADAMW_PDL=0                        an AdamWMany call's launches one after another, not chained
//	QWENGO_CUDA_ADAMW_SINGLE=0                     AdamWMany's parameters of 1M+ elements in batch launches too
//	QWENGO_CUDA_ADAMW_STAGED=0                     the plain int8 AdamW kernel for one bf16 parameter, not the staged one
//	QWENGO_CUDA_KERNEL_TIMES=1                     ProfileRange also times every launch (ktimes.go)
//
// The tests read more: QWENGO_CUDA_BENCH=1 runs the TestFigures* measurements (among them
// TestFiguresDecodeForms, the decode forms interleaved in one process, and
// TestFiguresDecodeAblation and TestFiguresDecodeBatchAblation, each decode op's cost inside the
// launch chain at batch 1 and 8),
// QWENGO_CUDA_FIG_LAYERS=N their depth, QWENGO_CUDA_FIG_SLICE=5,… extra K-slice forms,
// QWENGO_CUDA_FIG_LONG=6,… extra forms with that K slice for down_proj, QWENGO_CUDA_FIG_FORMS=
// fused/bm,… only those decode forms, QWENGO_CUDA_FIG_GEMV=tcp,… limits TestFiguresGEMV to those
// kernels, QWENGO_CUDA_PROFILE=1 makes the decode figures' timed steps a profiler range,
// QWENGO_CUDA_FIG_MERGE0=1 interleaves batch 8's rounds with the per-tile GEMV merge and
// QWENGO_CUDA_FIG_FUSED_ROWS=1,8 with those fused-form row limits.
// TestFiguresLaunchChain times the bare dependency mechanisms (kernels/probe.cu).
// TestFiguresGEMVStamps times the inside of every decode GEMV launch of a step from stamps its
// blocks record (gemv_stamps.go, kernels/gemv_tcp_st.cu); QWENGO_CUDA_STAMPS_DIR=dir also writes
// every block's stamps as CSV.
//
// # Numerics (parity with engine/cpu)
//
// Element-wise ops, RMSNorm (statistics in double), RoPE (inv_freq from the host, angles in
// float32, sin/cos in double, no fused multiply-adds) and the embedding gather reproduce the CPU
// reference to a bit or two. MatMul and attention accumulate in float32 in a different order
// than the CPU, so they agree to about 1e-6 relative; the tests state the bound per op.
package cuda
