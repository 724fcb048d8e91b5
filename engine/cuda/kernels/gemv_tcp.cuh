// NVFP4 decode GEMV on tensor cores for 1..8 token rows, resident and pipelined:
// out[r, n] = Σ_k x[r, k] · W[n, k], r < T ≤ 8.
//
// Why: gemv_tc.cu (one row) and gemv_tcb.cu (up to eight) run a short block per 16-row tile (and
// K slice): issue a few steps' loads, wait, decode, reduce, exit. ncu on the H200 (session 5,
// 2560→9728, one row): 13.4 µs, DRAM 22 %, issue slots 25 %, no eligible warp 66 % of cycles,
// 105 registers and 4 blocks of 4 warps per SM — latency-bound: each block's loads are one round
// trip that nothing overlaps, and a 1216-tile matrix is ~5 such waves. Every variant of those
// kernels plateaued at ~12 µs for a 14 MB matrix (1.2 TB/s).
//
// Here the grid is resident (the host sizes it from the occupancy: a few blocks per SM) and each
// warp walks a sequence of (tile, step) pairs with a ring of D steps in flight: the loads of
// step j + D are issued as soon as step j's registers are read, across tile boundaries, so a
// warp always has D · 1 KB of weights requested until its sequence ends, and x is staged once per
// block for the whole kernel.
//
// Work split: K is cut into slices of `slice` 128-wide steps (gemv_tcb.go gemvTCBSlice: from T
// and K only). Block b serves slice b % slices and is the (b / slices)-th of `bps` blocks on it;
// its warp w takes the job-flattened tiles first = (b / slices)·W + w, first + bps·W, ...
// so a block stages only its slice of x (T · slice · 512 bytes). Each (tile, slice) is summed by
// exactly one warp in a fixed k order whatever bps is; with several slices the partial sums go
// to part[(tile · slices + slice) · T · 16 …] and the last warp to finish a tile (an arrival
// counter per tile, left at zero) adds them in slice order — deterministic, and a product sums
// the same in one launch with others (q/k/v) as alone.
//
// Decode, k-permutation and the hi/lo split of x are gemv_tc.cu's (gemv_tc.cuh); the mma's 8 B
// columns hold rows as (hi, lo) pairs, so P = ceil(T/4) passes serve T rows (gemv_tcb.cu).
// Bytes per weight row and step: 64 (codes) + 8 (E4M3 scales); FLOPs 2·T per weight.
//
// This header holds the kernel and its entry-point macros; gemv_tcp.cu instantiates the engine's
// entry points, gemv_tcp_st.cu the stamped copies (a measurement tool in a module of its own,
// loaded only when a test asks for stamps, so that opening the backend JIT-compiles none of it).
#pragma once
#include "gemv_tc.cuh"

// tcp_job is one product's pointers for a tile, found without indexing gemv_jobs dynamically
// (a dynamic index puts the struct in local memory).
struct tcp_job {
    float* out;
    const uint8_t* packed;
    const uint8_t* scales;
    float gscale;
    int N, tile;  // rows of the product; the tile within it
};

__device__ __forceinline__ tcp_job tcp_find(const gemv_jobs& jobs, int ft) {
    tcp_job j = {jobs.out[0], jobs.packed[0], jobs.scales[0], jobs.gscale[0], jobs.N[0], ft};
    if (jobs.njobs > 1 && j.tile >= jobs.tiles[0]) {
        j = {jobs.out[1], jobs.packed[1], jobs.scales[1], jobs.gscale[1], jobs.N[1], j.tile - jobs.tiles[0]};
        if (jobs.njobs > 2 && j.tile >= jobs.tiles[1])
            j = {jobs.out[2], jobs.packed[2], jobs.scales[2], jobs.gscale[2], jobs.N[2], j.tile - jobs.tiles[1]};
    }
    return j;
}

// tcp_rows are a lane's load addresses for one tile over the block's slice: rows g and g+8 of
// the tile (clamped to the last row), chunk t of each step.
struct tcp_rows {
    const uint4* pa;
    const uint4* pb;
    const uint16_t* sa;
    const uint16_t* sb;
};

__device__ __forceinline__ tcp_rows tcp_locate(const gemv_jobs& jobs, int ft, int K, int s0, int g, int t) {
    const tcp_job j = tcp_find(jobs, ft);
    const int ra = min(j.tile * 16 + g, j.N - 1), rb = min(j.tile * 16 + g + 8, j.N - 1);
    tcp_rows r;
    r.pa = reinterpret_cast<const uint4*>(j.packed + (size_t)ra * (K / 2)) + 4 * s0 + t;
    r.pb = reinterpret_cast<const uint4*>(j.packed + (size_t)rb * (K / 2)) + 4 * s0 + t;
    r.sa = reinterpret_cast<const uint16_t*>(j.scales + (size_t)ra * (K / 16)) + 4 * s0 + t;
    r.sb = reinterpret_cast<const uint16_t*>(j.scales + (size_t)rb * (K / 16)) + 4 * s0 + t;
    return r;
}

// What the GEMV multiplies (XM): x itself; RMSNorm(x; nw, eps) per row (the decoder block's input
// and post-attention norms folded into q/k/v and gate/up); or SwiGLU(x, x2) = silu(x)·x2 (the MLP's
// activation folded into down). Each value is computed exactly as rmsnorm_f32 / swiglu_f32 do.
#define TCP_X 0
#define TCP_NORM 1
#define TCP_SWIGLU 2

// tcp_put stores a finished output, or adds it to what is there (ACC: out = out + product, as
// add_f32 / add_rmsnorm_f32 add a product to the residual).
// The product is scaled and added with explicit roundings: a contracted fma(sum, scale, out)
// would differ from the unfused ops (device run 7: TestFusedBlock, 2e-7 relative).
template <bool ACC>
__device__ __forceinline__ void tcp_put(float* o, float sum, float scale) {
    const float v = __fmul_rn(sum, scale);
    *o = ACC ? __fadd_rn(*o, v) : v;
}

// tcp_put_onto is tcp_put with out's value read earlier (prior; ACC only): the merge loads it
// with the partials instead of after them.
template <bool ACC>
__device__ __forceinline__ void tcp_put_onto(float* o, float prior, float sum, float scale) {
    const float v = __fmul_rn(sum, scale);
    *o = ACC ? __fadd_rn(prior, v) : v;
}

// The global merge's forms (gemv_tcp's MERGE): none (partials only: the merge-cost probe), the
// batched merge (finish), or the per-tile one it replaced (merge_per_tile, entry points _m0: a
// measurement form, QWENGO_CUDA_GEMV_MERGE0=1).
#define TCP_MERGE_NONE 0
#define TCP_MERGE_BATCHED 1
#define TCP_MERGE_PER_TILE 2

// TCP_MERGE_BATCH: slices whose partials the merge loads at once, for one pass (Qwen3's most:
// 13, down_proj at one to four rows) and half as many for two (ptxas spills more with 16); more
// are summed in batches of this many, in order.
#define TCP_MERGE_BATCH 16

// tcp_row_inv computes rmsnorm_f32's 1/sqrt(mean(x²) + eps) for row r of x (K elements) with
// the block's threads (blockDim = rmsnorm_f32's for K, checked on the host, so the fp64 sums
// and their reduction order are rmsnorm_f32's). Rows of up to TCP_NORM_CACHE·blockDim elements
// (Qwen3's 2,560 at 256 threads) have all their loads issued before the first sum, as
// rmsnorm_f32 does: the loop form waits on each load in turn — a chain of L2 round trips after
// pdl_wait, on the critical path of every _norm launch (session 14).
#define TCP_NORM_CACHE 16
// TCP_BM_PIECES: a thread's staged pieces (4 elements each) of a whole row in BM's one-row norm
// staging: rows of up to 4·4·blockDim elements (Qwen3's 2,560 at 256 threads: 2.5 a thread).
#define TCP_BM_PIECES 4
__device__ __forceinline__ float tcp_row_inv(const float* __restrict__ x, int K, float eps, double* red) {
    double ss = 0.0;
    if (K <= TCP_NORM_CACHE * (int)blockDim.x) {
        float xv[TCP_NORM_CACHE];
#pragma unroll
        for (int i = 0; i < TCP_NORM_CACHE; i++) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j < K) xv[i] = x[j];
        }
#pragma unroll
        for (int i = 0; i < TCP_NORM_CACHE; i++)
            if (threadIdx.x + i * blockDim.x < K) ss = fma((double)xv[i], (double)xv[i], ss);
    } else {
        for (int j = threadIdx.x; j < K; j += blockDim.x) {
            const double v = (double)x[j];
            ss = fma(v, v, ss);
        }
    }
    ss = block_sum_d(ss, red);
    return (float)(1.0 / sqrt(ss / (double)K + (double)eps));
}

// gemv_tcp: XM picks the multiplied input (TCP_X, TCP_NORM with nw and eps, TCP_SWIGLU with x2);
// with ACC the products are added to out (out += …: the residual adds folded in; each output
// element is read and written by the one lane that finishes it).
//
// BM (block merge, one pass only): every K slice of a tile is summed inside one block — warp w
// takes slice w % slices of tile slot w / slices (the host makes slices divide W), the block's
// tile slots walk tiles blockIdx.x·tpb + slot, + gridDim.x·tpb, … — so the slices meet in shared
// memory after one barrier instead of through global partials, a fence, an arrival counter and
// the last arriver's reads (~2-2.5 µs at the end of every launch, session 5's probe). The block
// stages all of x (T·K·4 bytes) instead of its slice. Same partials, summed from 0 in slice
// order as the global merge does: same bits (TestTCPBlockMergeSameBits).
// CS (column scales, one row only: the host launches these forms at T = 1): the mma's B columns
// 2t, 2t+1 carry x's hi and lo on lane t's k slots only, so D gives every lane the unscaled sums
// of its own NVFP4 blocks (quarters 0-1 of a step are block 2t, 2-3 block 2t+1), which the E4M3
// scales then multiply in f32; without CS every weight pair is scaled in half2 before the mma
// (tc_quarters), as more rows need (their columns are rows). CS forms also issue the ring's
// next loads after each step's decode (see the loop).
// Stamps (the _st entry points, a measurement tool: TestFiguresGEMVStamps): thread 0 of every
// block records TCP_ST_REC u64 at st[blockIdx.x · TCP_ST_REC …]: %globaltimer (ns) at its start,
// after pdl_wait, after x is staged, after warp 0's loop and at its end (0 … 4), clock64 at the
// same points (5 … 9) and the SM (10). Warp 0 stands for the block; 0 where it returned before.
#define TCP_ST_REC 12

// tcp_lds128 loads 16 bytes from a 32-bit shared-memory address. The CS loop keeps its x
// address as one: from the generic pointer, ptxas (11.8 and 13.0) re-derived the shared window
// (S2R SR_CgaCtaId, PRMT, two IMAD) before every predicated load and zeroed the dead lanes'
// registers (2 CS2R), 4 loads a step; session 21, call 6: −1.4 µs a layer at context 8192.
__device__ __forceinline__ uint4 tcp_lds128(uint32_t a) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a));
    return v;
}
__device__ __forceinline__ unsigned long long tcp_gtime() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
template <bool ST>
__device__ __forceinline__ void tcp_stamp(unsigned long long* st, int i) {
    if constexpr (ST) {
        if (threadIdx.x == 0) {
            unsigned long long* r = st + (size_t)blockIdx.x * TCP_ST_REC;
            r[i] = tcp_gtime();
            r[5 + i] = clock64();
            if (i == 0) {
                unsigned sm;
                asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
                r[10] = sm;
            }
        }
    }
}

template <int P, int W, int D, int MERGE, int XM, bool ACC, bool TILED, bool BM = false, bool ST = false, bool CS = false>
__device__ __forceinline__ void gemv_tcp(const gemv_jobs& jobs, const float* __restrict__ x, int K, int T, int slice,
                                         int bps, float* __restrict__ part, int* __restrict__ counters,
                                         const float* __restrict__ x2, const float* __restrict__ nw, float eps,
                                         uint32_t* xs, unsigned long long* st = nullptr) {
    static_assert(!BM || (P == 1 && !TILED), "the block merge is a one-pass, per-step form");
    static_assert(!CS || (P == 1 && !TILED), "the column-scale form is one row, per step");
    // x's staging is swizzled for two passes (five to eight rows, hilo_slot): one row loads x in
    // one phase whose lanes already meet few bank groups, and there the swizzle's extra index
    // work measured slower (session 12, call 1: T=1 2560→4096 6.7 → 7.9 µs; eight rows
    // 2560→9728 18.7 → 16.3 µs).
    constexpr bool SWZ = P > 1;
    const int steps = K / 128, slices = (steps + slice - 1) / slice;
    int ntiles = jobs.tiles[0];
    if (jobs.njobs > 1) ntiles += jobs.tiles[1];
    if (jobs.njobs > 2) ntiles += jobs.tiles[2];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // BM: tpb tile slots a block; the block's first tile and the stride of a slot's tiles.
    const int tpb = BM ? W / slices : 0, bfirst = BM ? (int)blockIdx.x * tpb : 0;
    const int sl = BM ? warp % slices : blockIdx.x % slices;
    const int s0 = sl * slice, nsteps = min(slice, steps - s0);
    const int stride = BM ? (int)gridDim.x * tpb : bps * W;
    const int first = BM ? (warp < tpb * slices ? bfirst + warp / slices : ntiles) : (blockIdx.x / slices) * W + warp;
    const int mine = first < ntiles ? (ntiles - 1 - first) / stride + 1 : 0;
    const int total = mine * nsteps;
    // BM: x is staged whole (k from 0, all steps) and a warp reads its slice at xofs; the
    // partials of the block's tiles follow x in shared memory: bp[((i·tpb + slot)·slices +
    // slice)·T·16 + row·16 + n] for the slot's i-th tile.
    const int ks0 = BM ? 0 : s0, ksteps = BM ? steps : nsteps, xofs = BM ? 64 * s0 : 0;
    float* bp = BM ? reinterpret_cast<float*>(xs + (size_t)128 * T * steps) : nullptr;

    pdl_trigger();  // the next kernel may launch now; it waits for this one before reading
    uint4 wa[D], wb[D];
    uint32_t ca[D], cb[D];
    // The issue cursor: the warp's it-th tile, step is of the slice, and that tile's addresses.
    int it = 0, is = 0;
    tcp_rows ir = {};
    if (mine > 0) ir = tcp_locate(jobs, first, K, s0, g, t);
    auto issue = [&](int d) {
        wa[d] = __ldg(ir.pa + 4 * is);
        wb[d] = __ldg(ir.pb + 4 * is);
        ca[d] = __ldg(ir.sa + 4 * is);
        cb[d] = __ldg(ir.sb + 4 * is);
        if (++is == nsteps) {
            is = 0;
            if (++it < mine) ir = tcp_locate(jobs, first + it * stride, K, s0, g, t);
        }
    };
    // Weights first (they do not depend on the previous kernel), then x once it is written.
#pragma unroll
    for (int d = 0; d < D; d++)
        if (d < total) issue(d);
    pdl_wait();
    tcp_stamp<ST>(st, 1);
    const int cstride = 4 * (BM ? steps : slice) * 16;  // u32 per (row, hi|lo) column of xs
    if (BM && XM == TCP_NORM && T == 1 && K <= TCP_NORM_CACHE * (int)blockDim.x && K <= 4 * TCP_BM_PIECES * (int)blockDim.x) {
        // One row, all of it staged: as below with up to TCP_BM_PIECES pieces a thread, all
        // loaded with the row's statistics.
        __shared__ double red1[32];
        float xv[TCP_BM_PIECES][4], wv[TCP_BM_PIECES][4];
#pragma unroll
        for (int u = 0; u < TCP_BM_PIECES; u++) {
            const int i = threadIdx.x + u * blockDim.x, c = i >> 3, j = i & 7, k = c * 32 + 8 * (j >> 1) + 2 * (j & 1);
            if (4 * i < K) {
                xv[u][0] = x[k], xv[u][1] = x[k + 1], xv[u][2] = x[k + 4], xv[u][3] = x[k + 5];
                wv[u][0] = nw[k], wv[u][1] = nw[k + 1], wv[u][2] = nw[k + 4], wv[u][3] = nw[k + 5];
            }
        }
        const float inv = tcp_row_inv(x, K, eps, red1);
#pragma unroll
        for (int u = 0; u < TCP_BM_PIECES; u++) {
            const int i = threadIdx.x + u * blockDim.x;
            if (4 * i < K)
                put_hilo<SWZ>(xs, cstride, 0, i >> 3, i & 7, __fmul_rn(wv[u][0], __fmul_rn(xv[u][0], inv)),
                              __fmul_rn(wv[u][1], __fmul_rn(xv[u][1], inv)), __fmul_rn(wv[u][2], __fmul_rn(xv[u][2], inv)),
                              __fmul_rn(wv[u][3], __fmul_rn(xv[u][3], inv)));
        }
    } else if (!BM && XM == TCP_NORM && T == 1 && K <= TCP_NORM_CACHE * (int)blockDim.x && 32 * nsteps <= (int)blockDim.x) {
        // One row whose slice is at most one staged piece a thread (decode, batch 1): the piece's
        // x and norm weights are loaded with the row's statistics, one round trip from L2 after
        // pdl_wait instead of two; the same values as tcp_stage below.
        __shared__ double red1[32];
        const int i = threadIdx.x, c = i >> 3, j = i & 7, k = 128 * s0 + c * 32 + 8 * (j >> 1) + 2 * (j & 1);
        const bool live = i < 32 * nsteps;
        float xa = 0.f, xb = 0.f, xc = 0.f, xd = 0.f, wa_ = 0.f, wb_ = 0.f, wc = 0.f, wd = 0.f;
        if (live) {  // scalar loads: nw may be any float-aligned view
            xa = x[k], xc = x[k + 1], xb = x[k + 4], xd = x[k + 5];
            wa_ = nw[k], wc = nw[k + 1], wb_ = nw[k + 4], wd = nw[k + 5];
        }
        const float inv = tcp_row_inv(x, K, eps, red1);
        if (live) {
            put_hilo<SWZ>(xs, cstride, 0, c, j, __fmul_rn(wa_, __fmul_rn(xa, inv)), __fmul_rn(wc, __fmul_rn(xc, inv)),
                          __fmul_rn(wb_, __fmul_rn(xb, inv)), __fmul_rn(wd, __fmul_rn(xd, inv)));
        }
    } else if (XM == TCP_NORM) {
        __shared__ double red[32];
        __shared__ float inv[8];
        for (int r = 0; r < T; r++) {
            const float v = tcp_row_inv(x + (size_t)r * K, K, eps, red);
            if (threadIdx.x == 0) inv[r] = v;
        }
        __syncthreads();
        tcp_stage<SWZ>(xs, T, 128 * ks0, 4 * ksteps, cstride, [&](int r, int k) {
            return __fmul_rn(nw[k], __fmul_rn(x[(size_t)r * K + k], inv[r]));
        });
    } else if (XM == TCP_SWIGLU) {
        tcp_stage<SWZ>(xs, T, 128 * ks0, 4 * ksteps, cstride, [&](int r, int k) {
            const float gv = x[(size_t)r * K + k];
            const float e = (float)exp(-(double)gv);
            return __fmul_rn(__fdiv_rn(gv, __fadd_rn(1.0f, e)), x2[(size_t)r * K + k]);
        });
    } else {
        stage_x_hilo<SWZ>(xs, x, K, T, 128 * ks0, 4 * ksteps, cstride);
    }
    // CS: lanes that feed zeros read them from tcp_zq (64 bytes, a step's four quarters), so the
    // loop's x loads need no predicate and no zeroing moves.
    __shared__ __align__(16) uint4 tcp_zq[CS ? 4 : 1];
    if constexpr (CS) {
        if (threadIdx.x < 4) tcp_zq[threadIdx.x] = make_uint4(0u, 0u, 0u, 0u);
    }
    __syncthreads();
    tcp_stamp<ST>(st, 2);
    if (!BM && total == 0) return;  // no block-wide barrier follows (BM: the merge's follows)

    // Pass p, column g: row 4p + g/2, hi (g even) or lo (g odd); rows ≥ T feed zeros.
    // With SWZ, quarter i of this lane's chunk of x is at i ^ xq (hilo_slot<true>).
    const int xq = SWZ ? (g & 1) + 2 * ((t >> 1) & 1) : 0;
    const uint32_t* xcol[P];
    bool rowLive[P];
#pragma unroll
    for (int p = 0; p < P; p++) {
        const int row = CS ? 0 : 4 * p + (g >> 1);
        // CS (one row): column g holds x (hi for even g, lo for odd) on the k slots of lane
        // t = g/2 only, zeros elsewhere, so the mma keeps each lane's own scale block apart.
        rowLive[p] = CS ? (g >> 1) == t : row < T;
        xcol[p] = xs + (size_t)(2 * row + (g & 1)) * cstride + xofs + t * 16;
    }
    // CS: the lane's x in shared memory at step 0 of a slice, and its stride a step (64 words;
    // 0 for the zero quads).
    uint32_t xsa = 0, xss = 0;
    if constexpr (CS) {
        xsa = rowLive[0] ? (uint32_t)__cvta_generic_to_shared(xcol[0]) : (uint32_t)__cvta_generic_to_shared(tcp_zq);
        xss = rowLive[0] ? 256u : 0u;
    }
    float acc[P][2][4];
    // CS: the lane's scaled sums of its blocks of weight rows g (cs0) and g+8 (cs1) in the tile.
    float cs0 = 0.f, cs1 = 0.f;
    auto zero = [&]() {
#pragma unroll
        for (int p = 0; p < P; p++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int c = 0; c < 4; c++) acc[p][h][c] = 0.f;
        cs0 = cs1 = 0.f;
    };
    zero();

    // flush finishes tile ft: lane (g, t) holds, for row 4p + t of x, weight row g's hi and lo
    // sums in c0, c1 and weight row g+8's in c2, c3.
    auto flush = [&](int ft) {
        float v[P][2];
        if constexpr (CS) {  // the four lanes of a row group hold its blocks: add them (t = 0 puts)
            float s0 = cs0 + __shfl_xor_sync(0xffffffffu, cs0, 1), s1 = cs1 + __shfl_xor_sync(0xffffffffu, cs1, 1);
            v[0][0] = s0 + __shfl_xor_sync(0xffffffffu, s0, 2);
            v[0][1] = s1 + __shfl_xor_sync(0xffffffffu, s1, 2);
        } else {
#pragma unroll
            for (int p = 0; p < P; p++) {
                v[p][0] = (acc[p][0][0] + acc[p][1][0]) + (acc[p][0][1] + acc[p][1][1]);
                v[p][1] = (acc[p][0][2] + acc[p][1][2]) + (acc[p][0][3] + acc[p][1][3]);
            }
        }
        if (BM && slices > 1) {
            // the slot's i-th tile: ft = first + i·stride
            float* mp = bp + ((size_t)((ft - first) / stride * tpb + warp / slices) * slices + sl) * (T * 16);
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int row = 4 * p + t;
                if (row < T) mp[row * 16 + g] = v[p][0], mp[row * 16 + g + 8] = v[p][1];
            }
            return;
        }
        const tcp_job j = tcp_find(jobs, ft);
        const int n0 = j.tile * 16 + g, n1 = n0 + 8;
        if (slices == 1) {
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int row = 4 * p + t;
                if (row < T) {
                    if (n0 < j.N) tcp_put<ACC>(j.out + (size_t)row * j.N + n0, v[p][0], j.gscale);
                    if (n1 < j.N) tcp_put<ACC>(j.out + (size_t)row * j.N + n1, v[p][1], j.gscale);
                }
            }
            return;
        }
        float* mine_part = part + (size_t)ft * slices * (T * 16);
#pragma unroll
        for (int p = 0; p < P; p++) {
            const int row = 4 * p + t;
            if (row < T) {
                mine_part[(size_t)sl * (T * 16) + row * 16 + g] = v[p][0];
                mine_part[(size_t)sl * (T * 16) + row * 16 + g + 8] = v[p][1];
            }
        }
    };
    // merge_per_tile is the merge before session 19 (TCP_MERGE_PER_TILE, a measurement form):
    // lane 0 announces tile ft, and the warp, if last, sums the slices through a loop and adds
    // to out after — a round trip a tile for the arrival, more for the loads.
    auto merge_per_tile = [&](int ft) {
        int last = 0;
        if (lane == 0) {
            last = atomicAdd(counters + ft, 1) == slices - 1;
            if (last) counters[ft] = 0;
        }
        last = __shfl_sync(0xffffffffu, last, 0);
        if (!last) return;
        gpu_fence();
        const tcp_job j = tcp_find(jobs, ft);
        const int n0 = j.tile * 16 + g, n1 = n0 + 8;
        const float* all = part + (size_t)ft * slices * (T * 16);
#pragma unroll
        for (int p = 0; p < P; p++) {
            const int row = 4 * p + t;
            if (row >= T) continue;
            float sum0 = 0.f, sum1 = 0.f;
            for (int q = 0; q < slices; q++) {
                sum0 += __ldcg(all + (size_t)q * (T * 16) + row * 16 + g);
                sum1 += __ldcg(all + (size_t)q * (T * 16) + row * 16 + g + 8);
            }
            if (n0 < j.N) tcp_put<ACC>(j.out + (size_t)row * j.N + n0, sum0, j.gscale);
            if (n1 < j.N) tcp_put<ACC>(j.out + (size_t)row * j.N + n1, sum1, j.gscale);
        }
    };
    // finish adds up every slice's partial of tile ft (this warp arrived last on it) and puts the
    // sums. All of a row's partial loads (up to TCP_MERGE_BATCH slices), and with ACC the outputs
    // being added to, go out before the first add: one L2 round trip where the loop over slices
    // and the read-modify-write of out were up to three. Same sums in slice order: same bits.
    auto finish = [&](int ft) {
        const tcp_job j = tcp_find(jobs, ft);
        const int n0 = j.tile * 16 + g, n1 = n0 + 8;
        const float* all = part + (size_t)ft * slices * (T * 16);
        float sum[P][2], prior[P][2];
#pragma unroll
        for (int p = 0; p < P; p++) {
            sum[p][0] = sum[p][1] = prior[p][0] = prior[p][1] = 0.f;
            const int row = min(4 * p + t, T - 1);
            if (ACC && n0 < j.N) prior[p][0] = j.out[(size_t)row * j.N + n0];
            if (ACC && n1 < j.N) prior[p][1] = j.out[(size_t)row * j.N + n1];
        }
        constexpr int MB = TCP_MERGE_BATCH / P;
        for (int q0 = 0; q0 < slices; q0 += MB) {
            float v[P][MB][2];
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int row = min(4 * p + t, T - 1);  // rows ≥ T load row T − 1's and put nothing
#pragma unroll
                for (int q = 0; q < MB; q++)
                    if (q0 + q < slices) {
                        v[p][q][0] = __ldcg(all + (size_t)(q0 + q) * (T * 16) + row * 16 + g);
                        v[p][q][1] = __ldcg(all + (size_t)(q0 + q) * (T * 16) + row * 16 + g + 8);
                    }
            }
#pragma unroll
            for (int p = 0; p < P; p++)
#pragma unroll
                for (int q = 0; q < MB; q++)
                    if (q0 + q < slices) sum[p][0] += v[p][q][0], sum[p][1] += v[p][q][1];
        }
#pragma unroll
        for (int p = 0; p < P; p++) {
            const int row = 4 * p + t;
            if (row >= T) continue;
            if (n0 < j.N) tcp_put_onto<ACC>(j.out + (size_t)row * j.N + n0, prior[p][0], sum[p][0], j.gscale);
            if (n1 < j.N) tcp_put_onto<ACC>(j.out + (size_t)row * j.N + n1, prior[p][1], sum[p][1], j.gscale);
        }
    };

    if (TILED && P > 1 && nsteps % D == 0) {
        // Two passes (five to eight rows) over a slice of whole rings of D steps (Qwen3's
        // shapes: 4 or 8 steps): walk tiles, then rings, then the D steps unrolled, so the
        // cursor bookkeeping, the next tile's addresses and the flush run once a ring or a tile
        // instead of once a step, and lanes of rows ≥ T read row T − 1's x instead of predicated
        // zeros (a dead row's mma column is never read: flush takes live rows' columns only, and
        // column n of the product depends only on column n of x). Same sums in the same order as
        // the per-step form: same bits (TestTCPTiledSameBits). Session 15, calls 4-5: batch 8
        // decode +7-10 % (2,281-2,303 against 2,028-2,083 tok/s). One row keeps the per-step form:
        // without its per-step branches ptxas sinks a ring's loads below its second step (fewer
        // weights in flight) and one-row decode measured 4 % slower this way.
        const uint32_t* xl[P];
#pragma unroll
        for (int p = 0; p < P; p++) {
            const int row = min(4 * p + (g >> 1), T - 1);
            xl[p] = xs + (size_t)(2 * row + (g & 1)) * cstride + t * 16;
        }
        const int rings = nsteps / D;
        // The load cursor, one tile's addresses as in the per-step form (a second set of
        // addresses made ptxas hold back the ring's loads): the warp's li-th tile, step ls of
        // the slice — the ring after the one in registers.
        int li = 0, ls = D;
        tcp_rows ir = tcp_locate(jobs, first, K, s0, g, t);
        if (ls == nsteps) {
            ls = 0;
            if (++li < mine) ir = tcp_locate(jobs, first + stride, K, s0, g, t);
        }
        for (int i = 0; i < mine; i++) {
            for (int r = 0; r < rings; r++) {
                const bool more = li < mine;
#pragma unroll
                for (int d = 0; d < D; d++) {
                    const uint4 qa = wa[d], qb = wb[d];
                    const uint32_t sfa = e4m3x2_to_f16x2(ca[d]), sfb = e4m3x2_to_f16x2(cb[d]);
                    if (more) {
                        wa[d] = __ldg(ir.pa + 4 * (ls + d));
                        wb[d] = __ldg(ir.pb + 4 * (ls + d));
                        ca[d] = __ldg(ir.sa + 4 * (ls + d));
                        cb[d] = __ldg(ir.sb + 4 * (ls + d));
                    }
                    const int cs = r * D + d;
                    const uint32_t wra[4] = {qa.x, qa.y, qa.z, qa.w}, wrb[4] = {qb.x, qb.y, qb.z, qb.w};
                    tc_quarters(sfa, sfb, wra, wrb,
                                [&](int q, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4,
                                    uint32_t a5, uint32_t a6, uint32_t a7) {
#pragma unroll
                                    for (int p = 0; p < P; p++) {
                                        const uint4 b = reinterpret_cast<const uint4*>(xl[p] + 64 * cs)[q ^ xq];
                                        mma_f16(acc[p][0], a0, a1, a2, a3, b.x, b.y);
                                        mma_f16(acc[p][1], a4, a5, a6, a7, b.z, b.w);
                                    }
                                });
                }
                ls += D;
                if (ls == nsteps) {
                    ls = 0;
                    if (++li < mine) ir = tcp_locate(jobs, first + li * stride, K, s0, g, t);
                }
            }
            flush(first + i * stride);
            zero();
        }
    } else {
        // The consume cursor: the warp's ct-th tile, step cs of the slice.
        int ct = 0, cs = 0;
        for (int j0 = 0; j0 < total; j0 += D) {
#pragma unroll
            for (int d = 0; d < D; d++) {
                if (j0 + d >= total) break;
                const uint4 qa = wa[d], qb = wb[d];
                const uint32_t sfa = e4m3x2_to_f16x2(ca[d]), sfb = e4m3x2_to_f16x2(cb[d]);
                // The ring: step j + D into the slot just read — before the decode, or with CS
                // after it, when the slot's registers are free again: issued first, its loads
                // must not overwrite the registers being decoded, so ptxas copied the whole ring
                // (32 moves a ring of four steps, session 20's SASS); measured in one process
                // (session 20, call 5) 0.4-1.3 µs a layer faster at context 8192, even at 512.
                if (!CS && j0 + d + D < total) issue(d);
                const uint32_t wra[4] = {qa.x, qa.y, qa.z, qa.w}, wrb[4] = {qb.x, qb.y, qb.z, qb.w};
                if constexpr (CS) {
                    // One row: the mma sums each lane's blocks unscaled (columns 2t, 2t+1 are
                    // lane t's hi and lo: D's c0..c3 are its rows g, g+8), quarters 0-1 block
                    // 2t, 2-3 block 2t+1; the scales multiply those sums in f32 — no half2
                    // multiply of every weight pair (32 HMUL2 a step, session 20).
                    float ce[4] = {0.f, 0.f, 0.f, 0.f}, co[4] = {0.f, 0.f, 0.f, 0.f};
                    tc_quarters_raw(wra, wrb,
                                    [&](int i, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4,
                                        uint32_t a5, uint32_t a6, uint32_t a7) {
                                        const uint4 b = tcp_lds128(xsa + cs * xss + 16 * i);
                                        float(&c)[4] = i < 2 ? ce : co;
                                        mma_f16(c, a0, a1, a2, a3, b.x, b.y);
                                        mma_f16(c, a4, a5, a6, a7, b.z, b.w);
                                    });
                    const float2 fa = __half22float2(*reinterpret_cast<const __half2*>(&sfa));
                    const float2 fb = __half22float2(*reinterpret_cast<const __half2*>(&sfb));
                    cs0 = fmaf(fa.y, co[0] + co[1], fmaf(fa.x, ce[0] + ce[1], cs0));
                    cs1 = fmaf(fb.y, co[2] + co[3], fmaf(fb.x, ce[2] + ce[3], cs1));
                } else {
                    tc_quarters(sfa, sfb, wra, wrb,
                                [&](int i, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4,
                                    uint32_t a5, uint32_t a6, uint32_t a7) {
#pragma unroll
                                    for (int p = 0; p < P; p++) {
                                        uint4 b = make_uint4(0u, 0u, 0u, 0u);
                                        if (rowLive[p]) b = reinterpret_cast<const uint4*>(xcol[p] + 64 * cs)[i ^ xq];
                                        mma_f16(acc[p][0], a0, a1, a2, a3, b.x, b.y);
                                        mma_f16(acc[p][1], a4, a5, a6, a7, b.z, b.w);
                                    }
                                });
                }
                if (CS && j0 + d + D < total) issue(d);
                if (++cs == nsteps) {
                    flush(first + ct * stride);
                    zero();
                    cs = 0;
                    ct++;
                }
            }
        }
    }
    tcp_stamp<ST>(st, 3);
    if constexpr (BM) {  // constexpr: tpb is 0 in the other forms
        if (slices == 1) return;  // flush wrote the outputs
        // Every slice of the block's tiles is in bp: warp w adds up the (tile, slot) pairs w,
        // w + W, … — each output from 0 in slice order, as merge does.
        __syncthreads();
        const int most = bfirst < ntiles ? (ntiles - 1 - bfirst) / stride + 1 : 0;  // slot 0's tiles
        for (int pr = warp; pr < most * tpb; pr += W) {
            const int i = pr / tpb, slot = pr - i * tpb, ft = bfirst + slot + i * stride;
            if (ft >= ntiles) continue;
            const tcp_job j = tcp_find(jobs, ft);
            const float* all = bp + (size_t)pr * slices * (T * 16);
            for (int o = lane; o < T * 16; o += 32) {
                const int row = o >> 4, n = j.tile * 16 + (o & 15);
                float sum = 0.f;
                for (int q = 0; q < slices; q++) sum += all[q * (T * 16) + o];
                if (n < j.N) tcp_put<ACC>(j.out + (size_t)row * j.N + n, sum, j.gscale);
            }
        }
        return;
    }
    if (slices == 1 || MERGE == TCP_MERGE_NONE) return;  // the merge-cost probe (partials only)
    // Partials are announced after the warp's last load: a fence mid-sequence would wait for
    // the weight loads in flight. Lane i announces the warp's i-th tile (all of the warp's
    // arrivals in one round trip, not one a tile); the tiles it was last on are finished in turn.
    gpu_fence();
    __syncwarp();
    if (MERGE == TCP_MERGE_PER_TILE) {
        for (int i = 0; i < mine; i++) merge_per_tile(first + i * stride);
        return;
    }
    for (int i0 = 0; i0 < mine; i0 += 32) {
        bool last = false;
        if (i0 + lane < mine) {
            const int ft = first + (i0 + lane) * stride;
            last = atomicAdd(counters + ft, 1) == slices - 1;
            if (last) counters[ft] = 0;  // ready for the next launch
        }
        unsigned lasts = __ballot_sync(0xffffffffu, last);
        if (lasts == 0) continue;
        gpu_fence();  // the other slices' partials, observed through the counters, before reading them
        for (; lasts != 0; lasts &= lasts - 1) finish(first + (i0 + __ffs(lasts) - 1) * stride);
    }
}

// Entry points gemv_nvfp4_tcp{P}_{W}x{D}[_norm|_swiacc|_acc](x, K, T, slice, bps, part, counters,
// x2, nw, eps, njobs, then out, packed, scales, gscale, N for each of 3 jobs — unused ones
// null/0): T ≤ 4·P rows, grid ceil(K/128/slice)·bps blocks of W·32 threads (bps blocks per
// slice, sized by the host from the occupancy), dynamic shared memory T·slice·512 bytes.
// Register cap for 16 warps an SM. _norm multiplies RMSNorm(x; nw, eps), _swiacc adds
// SwiGLU(x, x2)·Wᵀ to out, _acc adds x·Wᵀ to out (the fused decode ops, fused.go).
// GP_ENTRY_X: ST adds a last parameter, the stamps (STPARAM and STARG in parentheses, unwrapped).
#define GP_UNPAREN(...) __VA_ARGS__
#define GP_ENTRY_XC(P, W, D, MERGE, XM, ACC, TILED, BM, ST, CS, SUF, STPARAM, STARG)                                       \
    extern "C" __global__ void __launch_bounds__(W * 32, 16 / W) gemv_nvfp4_tcp##P##_##W##x##D##SUF(               \
        const float* x, int K, int T, int slice, int bps, float* part, int* counters, const float* x2,            \
        const float* nw, float eps, int njobs, GEMV_JOB_PARAMS(0), GEMV_JOB_PARAMS(1),                            \
        GEMV_JOB_PARAMS(2) GP_UNPAREN STPARAM) {                                                                  \
        extern __shared__ __align__(16) uint32_t xs[];                                                            \
        gemv_jobs jobs = GEMV_JOBS_INIT;                                                                          \
        tcp_stamp<ST>(GP_UNPAREN STARG, 0);                                                                       \
        gemv_tcp<P, W, D, MERGE, XM, ACC, TILED, BM, ST, CS>(jobs, x, K, T, slice, bps, part, counters, x2, nw,   \
                                                            eps, xs, GP_UNPAREN STARG);                           \
        tcp_stamp<ST>(GP_UNPAREN STARG, 4);                                                                       \
    }
#define GP_ENTRY_X(P, W, D, MERGE, XM, ACC, TILED, BM, ST, SUF, STPARAM, STARG) \
    GP_ENTRY_XC(P, W, D, MERGE, XM, ACC, TILED, BM, ST, false, SUF, STPARAM, STARG)
// GP_ENTRY_CS: the one-row column-scale form (CS) of an entry point, named SUF_cs (the host
// launches it for T = 1 only); ST adds the stamps as in GP_ENTRY_ST.
#define GP_ENTRY_CS(P, W, D, MERGE, XM, ACC, BM, SUF) \
    GP_ENTRY_XC(P, W, D, MERGE, XM, ACC, false, BM, false, true, SUF##_cs, (), (nullptr))
#define GP_ENTRY_CS_ST(P, W, D, MERGE, XM, ACC, BM, SUF) \
    GP_ENTRY_XC(P, W, D, MERGE, XM, ACC, false, BM, true, true, SUF##_cs_st, (, unsigned long long* st), (st))
#define GP_ENTRY_TB(P, W, D, MERGE, XM, ACC, TILED, BM, SUF) \
    GP_ENTRY_X(P, W, D, MERGE, XM, ACC, TILED, BM, false, SUF, (), (nullptr))
#define GP_ENTRY_ST(P, W, D, MERGE, XM, ACC, TILED, BM, SUF) \
    GP_ENTRY_X(P, W, D, MERGE, XM, ACC, TILED, BM, true, SUF##_st, (, unsigned long long* st), (st))
#define GP_ENTRY_T(P, W, D, MERGE, XM, ACC, TILED, SUF) GP_ENTRY_TB(P, W, D, MERGE, XM, ACC, TILED, false, SUF)
#define GP_ENTRY(P, W, D, MERGE, XM, ACC, SUF) GP_ENTRY_T(P, W, D, MERGE, XM, ACC, true, SUF)
#define GP_ENTRY_V0(P, W, D, MERGE, XM, ACC, SUF) GP_ENTRY_T(P, W, D, MERGE, XM, ACC, false, SUF##_v0)
