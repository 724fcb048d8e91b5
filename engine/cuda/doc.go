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
//   - Kernels are CUDA C++ in kernels/*.cu, compiled to PTX for sm_90 by gen_ptx.sh, committed
//     and embedded; Open JIT-loads them with cuModuleLoadData. No PTX is written by hand.
//   - Memory is accounted, not discovered (principle 4): every cuMemAlloc goes through one
//     allocator that tracks bytes per backend.Category, the peak and the live allocations, and
//     checks an optional budget (SetBudget) before asking the driver: an allocation that would
//     cross it fails with an error wrapping *backend.OverBudget that also names the bytes in use
//     per category; nothing is allocated and the backend stays usable. Freed tensors of the
//     transient categories (activations, gradients, workspace) are pooled by size and reused
//     (zeroed), accounted under workspace; the pool is released before anything is refused
//     and by ReleaseCache.
//   - Tensors are float32 on the device (bf16 activations come later). Weights stay in their
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
//     into the GEMVs; exact, but measured no faster, so the model takes them only with
//     QWENGO_CUDA_DECODE_FUSED=1.
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
// # Numerics (parity with engine/cpu)
//
// Element-wise ops, RMSNorm (statistics in double), RoPE (inv_freq from the host, angles in
// float32, sin/cos in double, no fused multiply-adds) and the embedding gather reproduce the CPU
// reference to a bit or two. MatMul and attention accumulate in float32 in a different order
// than the CPU, so they agree to about 1e-6 relative; the tests state the bound per op.
package cuda
