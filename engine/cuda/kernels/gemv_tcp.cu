// The resident tensor-core NVFP4 GEMV's entry points (the kernel and what its template
// parameters mean: gemv_tcp.cuh).
#include "gemv_tcp.cuh"

GP_ENTRY(1, 4, 4, TCP_MERGE_BATCHED, TCP_X, false, )
GP_ENTRY(2, 4, 4, TCP_MERGE_BATCHED, TCP_X, false, )
GP_ENTRY(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, false, )
GP_ENTRY(2, 8, 4, TCP_MERGE_BATCHED, TCP_X, false, )
GP_ENTRY(1, 4, 3, TCP_MERGE_BATCHED, TCP_X, false, )
GP_ENTRY(2, 4, 3, TCP_MERGE_BATCHED, TCP_X, false, )
GP_ENTRY(1, 8, 3, TCP_MERGE_BATCHED, TCP_X, false, )
GP_ENTRY(2, 8, 3, TCP_MERGE_BATCHED, TCP_X, false, )
GP_ENTRY(1, 8, 4, TCP_MERGE_BATCHED, TCP_NORM, false, _norm)
GP_ENTRY(2, 8, 4, TCP_MERGE_BATCHED, TCP_NORM, false, _norm)
GP_ENTRY(1, 8, 4, TCP_MERGE_BATCHED, TCP_SWIGLU, true, _swiacc)
GP_ENTRY(2, 8, 4, TCP_MERGE_BATCHED, TCP_SWIGLU, true, _swiacc)
GP_ENTRY(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, true, _acc)
GP_ENTRY(2, 8, 4, TCP_MERGE_BATCHED, TCP_X, true, _acc)
// The two-pass kernels' per-step consume loop (TILED off): the reference of
// TestTCPTiledSameBits and QWENGO_CUDA_GEMV_STEPLOOP=1's measurements.
GP_ENTRY_V0(2, 8, 4, TCP_MERGE_BATCHED, TCP_X, false, )
GP_ENTRY_V0(2, 8, 4, TCP_MERGE_BATCHED, TCP_NORM, false, _norm)
GP_ENTRY_V0(2, 8, 4, TCP_MERGE_BATCHED, TCP_SWIGLU, true, _swiacc)
GP_ENTRY_V0(2, 8, 4, TCP_MERGE_BATCHED, TCP_X, true, _acc)
// The one-row column-scale forms (gemv_tcp.cuh CS): what the host launches at T = 1 for each
// 8×4 form above, unless QWENGO_CUDA_GEMV_CS=0 (Backend.gemvTCPCS off, a measurement switch).
GP_ENTRY_CS(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, false, false, )
GP_ENTRY_CS(1, 8, 4, TCP_MERGE_BATCHED, TCP_NORM, false, false, _norm)
GP_ENTRY_CS(1, 8, 4, TCP_MERGE_BATCHED, TCP_SWIGLU, true, false, _swiacc)
GP_ENTRY_CS(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, true, false, _acc)
GP_ENTRY_CS(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, false, true, _bm)
GP_ENTRY_CS(1, 8, 4, TCP_MERGE_BATCHED, TCP_NORM, false, true, _norm_bm)
GP_ENTRY_CS(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, true, true, _acc_bm)
GP_ENTRY_CS(1, 8, 4, TCP_MERGE_PER_TILE, TCP_SWIGLU, true, false, _swiacc_m0)
// The block-merge forms (BM above; one pass, one to four rows): gemv_nvfp4_tcp1_8x4{,_norm,_acc}_bm,
// launched with slices dividing 8 and all of x staged (gemv_tcp.go gemvTCPBlockMerge). SwiGLU
// has none: a whole row staged per block would compute every activation once a block.
GP_ENTRY_TB(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, false, false, true, _bm)
GP_ENTRY_TB(1, 8, 4, TCP_MERGE_BATCHED, TCP_NORM, false, false, true, _norm_bm)
GP_ENTRY_TB(1, 8, 4, TCP_MERGE_BATCHED, TCP_X, true, false, true, _acc_bm)
// The merge-cost probe: gemv_tcp without the merge (outputs of multi-slice products are left
// unwritten); only TestFiguresGEMVProbe launches it.
GP_ENTRY(1, 8, 4, TCP_MERGE_NONE, TCP_X, false, _nomerge)
// The per-tile merge (merge_per_tile) of the forms decode runs with the global merge — batch 1's
// down_proj (SwiGLU + acc), batch 8's products — for QWENGO_CUDA_GEMV_MERGE0=1's measurements.
GP_ENTRY(1, 8, 4, TCP_MERGE_PER_TILE, TCP_SWIGLU, true, _swiacc_m0)
GP_ENTRY(2, 8, 4, TCP_MERGE_PER_TILE, TCP_X, false, _m0)

// gemv_probe_{tile,flat}: measurement probes for the figures test (TestFiguresGEMV), not used
// by the engine. They read a codes matrix of `rows` rows × `rowU4` 16-byte chunks as gemv_tcp
// does — a resident grid of 8-warp blocks, each warp with D = 4 items of 1 KB in flight — with no
// decode or x: "tile" in gemv_tcp's pattern (16 rows × 64 bytes an item), "flat" as consecutive
// 1 KB pieces. Their times bound what the access pattern and the loads in flight allow.
template <bool FLAT>
__device__ __forceinline__ void gemv_probe(const uint4* __restrict__ w, int rows, int rowU4, unsigned* sink) {
    constexpr int D = 4;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int G = gridDim.x * (blockDim.x >> 5), gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int steps = rowU4 / 4, items = FLAT ? rows * rowU4 / 64 : rows / 16 * steps;
    auto addr = [&](int it, int half) -> const uint4* {
        if (FLAT) return w + (size_t)it * 64 + half * 32 + lane;
        const int tile = it / steps, s = it - tile * steps;
        return w + (size_t)(tile * 16 + g + 8 * half) * rowU4 + 4 * s + t;
    };
    uint4 ra[D], rb[D];
    unsigned acc = 0;
    int it = gw;
#pragma unroll
    for (int d = 0; d < D; d++)
        if (it + d * G < items) ra[d] = __ldg(addr(it + d * G, 0)), rb[d] = __ldg(addr(it + d * G, 1));
    for (; it < items; it += D * G) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            const int cur = it + d * G;
            if (cur >= items) break;
            acc ^= ra[d].x ^ ra[d].y ^ ra[d].z ^ ra[d].w ^ rb[d].x ^ rb[d].y ^ rb[d].z ^ rb[d].w;
            const int nx = cur + D * G;
            if (nx < items) ra[d] = __ldg(addr(nx, 0)), rb[d] = __ldg(addr(nx, 1));
        }
    }
    if (acc == 0x9e3779b9u) sink[gw] = acc;  // keeps the loads; practically never true
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_probe_tile(const uint4* w, int rows, int rowU4, unsigned* sink) {
    gemv_probe<false>(w, rows, rowU4, sink);
}
extern "C" __global__ void __launch_bounds__(256, 2) gemv_probe_flat(const uint4* w, int rows, int rowU4, unsigned* sink) {
    gemv_probe<true>(w, rows, rowU4, sink);
}
