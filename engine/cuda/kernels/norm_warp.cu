// RMSNorm over many small groups (per-head q/k norms: head_dim 128) with one warp per group.
//
// rmsnorm_f32, rmsnorm_rstd and rmsnorm_bwd_dx run one block per group. At head_dim 128 that
// is 131,072 blocks of 128 threads for the q norm of a 4096-row training span, each with two
// __syncthreads; the kernel timer put these norms at ~3.5 ms a layer of a training step
// (session 6 run 2), ~20× their bytes at HBM speed. Here a 256-thread block takes eight groups,
// one per warp, with no shared memory or barrier.
//
// Results are the block kernels' bit for bit, for n = 32·k ≤ 256 (their block is then n
// threads, one element each): lane l holds elements l + 32·i, i < k, which is element l of the
// block kernel's warp i; each value is reduced with the same xor butterfly (warp_sum_d) that
// warp i ran, and the k warp sums are added in increasing i from 0.0, as block_sum_d adds its
// shared-memory slots. A squared element is fma(x, x, 0.0) in both (the block kernels' first
// accumulation into 0.0).
#include "common.cuh"

// NW_MAX, warp_groups_sum and warp_rms_inv are in common.cuh (attention.cu's decode kernel with
// the q/k norms folded in uses them too).

// rmsnorm_warp_f32 is rmsnorm_f32 (norm.cu) for groups of n = 32·k ≤ 256: out = w·(x·r).
extern "C" __global__ void __launch_bounds__(256)
rmsnorm_warp_f32(float* out, const float* x, const float* w, int groups, int n, float eps) {
    pdl_wait();
    pdl_trigger();
    const int g = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (g >= groups) return;
    const int lane = threadIdx.x & 31, nper = n >> 5;
    const size_t base = (size_t)g * n;
    float xv[NW_MAX], wv[NW_MAX];
#pragma unroll
    for (int i = 0; i < NW_MAX; i++)
        if (i < nper) wv[i] = w[lane + 32 * i];
    const float inv = warp_rms_inv(x, base, n, eps, xv);
#pragma unroll
    for (int i = 0; i < NW_MAX; i++)
        if (i < nper) out[base + lane + 32 * i] = __fmul_rn(wv[i], __fmul_rn(xv[i], inv));
}

// rmsnorm_rstd_warp is rmsnorm_rstd (train.cu) for groups of n = 32·k ≤ 256.
extern "C" __global__ void __launch_bounds__(256)
rmsnorm_rstd_warp(float* rstd, const float* x, int groups, int n, float eps) {
    const int g = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (g >= groups) return;
    float xv[NW_MAX];
    const float inv = warp_rms_inv(x, (size_t)g * n, n, eps, xv);
    if ((threadIdx.x & 31) == 0) rstd[g] = inv;
}

// rmsnorm_bwd_dx_warp is rmsnorm_bwd_dx (train.cu) for groups of n = 32·k ≤ 256:
// dx = r·w·dy − c·x with c = (Σ w·dy·x)·r³/n, added to dx when accumulate != 0. dx may be dy
// when not accumulating (a lane reads its elements before it writes them).
extern "C" __global__ void __launch_bounds__(256)
rmsnorm_bwd_dx_warp(float* dx, const float* dy, const float* x, const float* w, int groups, int n, float eps,
                    int accumulate) {
    const int g = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (g >= groups) return;
    const int lane = threadIdx.x & 31, nper = n >> 5;
    const size_t base = (size_t)g * n;
    float xv[NW_MAX], wv[NW_MAX], dv[NW_MAX];
#pragma unroll
    for (int i = 0; i < NW_MAX; i++)
        if (i < nper) wv[i] = w[lane + 32 * i], dv[i] = dy[base + lane + 32 * i];
    const float inv = warp_rms_inv(x, base, n, eps, xv);
    double v[NW_MAX];
#pragma unroll
    for (int i = 0; i < NW_MAX; i++) v[i] = i < nper ? 0.0 + (double)__fmul_rn(__fmul_rn(wv[i], dv[i]), xv[i]) : 0.0;
    const double s = warp_groups_sum(v, nper);
    const float c = __fdiv_rn(__fmul_rn(__fmul_rn(__fmul_rn((float)s, inv), inv), inv), (float)n);
#pragma unroll
    for (int i = 0; i < NW_MAX; i++) {
        if (i >= nper) continue;
        const size_t o = base + lane + 32 * i;
        const float r = __fsub_rn(__fmul_rn(__fmul_rn(inv, wv[i]), dv[i]), __fmul_rn(c, xv[i]));
        dx[o] = accumulate ? __fadd_rn(dx[o], r) : r;
    }
}
