// NVFP4 decode GEMV on tensor cores for up to eight token rows, sliced along K:
// out[r, n] = Σ_k x[r, k] · W[n, k], r < T ≤ 8.
//
// Why: batched decode (8 sequences a step) multiplies 8 rows by every weight. gemv_tc.cu takes one
// row; the tiled SIMT matmul it fell back to re-reads weights per 64-row tile and ran at ~1 % of
// HBM (device run 17: batch-8 decode 107 tok/s, below batch 1). Here the weights are decoded once
// into mma A fragments (gemv_tc.cu's decode and k-permutation, gemv_tc.cuh) and multiplied by up to
// eight rows: the mma's 8 B columns hold rows as (hi, lo) f16 pairs, so one mma serves four rows
// and a second mma on the same A fragment the next four (P passes, P = ceil(T/4)).
//
// Geometry: a block is W warps over W consecutive 16-row tiles of one job and one K slice of
// `slice` 128-wide steps; each warp owns one tile and walks the slice's steps D at a time, every
// load of a round issued before any is decoded. The block stages x's slice once for its W tiles:
// x costs T·4 bytes per k per block against 16·W·0.5625 weight bytes, so at eight rows a block
// of 4 warps reads 0.9 bytes of x (from L2) per weight byte — the first version (4 warps sharing
// one tile) read 3.6 and was L2-bound (device run 18: 8 rows 2560→9728 in 29 µs). Slices keep
// the staged rows (T·slice·512 bytes) within the default 48 KB of shared memory and give
// 2560-output matrices enough blocks (160 tiles are 40 blocks unsliced). The slice length
// depends only on T and K (gemv_tcb.go), never on which products share the launch, so q/k/v in
// one launch sum exactly as three launches do.
//
// Sums: with one slice a warp writes its tile's outputs directly; otherwise its partial sums
// (unscaled) go to part[((tile₀ + tile)·slices + slice)·T·16 …] and the last warp to finish a
// tile (an arrival counter per tile, left at zero) adds the slices in slice order: results are
// deterministic and do not depend on timing.
//
// Bytes per weight row and step: 64 (codes) + 8 (E4M3 scales); FLOPs 2·T per weight.
#include "gemv_tc.cuh"


template <int P, int W, int D>
__device__ __forceinline__ void gemv_tcb(const gemv_jobs& jobs, const float* __restrict__ x, int K, int T, int slice,
                                         float* __restrict__ part, int* __restrict__ counters, uint32_t* xs) {
    const int steps = K / 128, slices = (steps + slice - 1) / slice;
    int item = blockIdx.x, job = 0, tile0 = 0;
    for (;;) {
        const int items = (jobs.tiles[job] + W - 1) / W * slices;
        if (job + 1 >= jobs.njobs || item < items) break;
        item -= items;
        tile0 += jobs.tiles[job];
        job++;
    }
    const int group = item / slices, sl = item % slices;
    const int s0 = sl * slice, nsteps = min(slice, steps - s0);
    const int N = jobs.N[job], tiles = jobs.tiles[job];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int tile = group * W + warp;
    const bool live = tile < tiles;
    const uint8_t* __restrict__ packed = jobs.packed[job];
    const uint8_t* __restrict__ scales = jobs.scales[job];
    const int ra = min(tile * 16 + g, N - 1), rb = min(tile * 16 + g + 8, N - 1);
    const uint4* pa = reinterpret_cast<const uint4*>(packed + (size_t)ra * (K / 2)) + 4 * s0 + t;
    const uint4* pb = reinterpret_cast<const uint4*>(packed + (size_t)rb * (K / 2)) + 4 * s0 + t;
    const uint16_t* sa = reinterpret_cast<const uint16_t*>(scales + (size_t)ra * (K / 16)) + 4 * s0 + t;
    const uint16_t* sb = reinterpret_cast<const uint16_t*>(scales + (size_t)rb * (K / 16)) + 4 * s0 + t;

    pdl_trigger();  // the next kernel may launch now; it waits for this one before reading
    uint4 wa[D], wb[D];
    uint32_t ca[D], cb[D];
    auto issue = [&](int r) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            const int s = D * r + d;
            if (live && s < nsteps) {
                wa[d] = __ldg(pa + 4 * s);
                wb[d] = __ldg(pb + 4 * s);
                ca[d] = __ldg(sa + 4 * s);
                cb[d] = __ldg(sb + 4 * s);
            }
        }
    };
    // Weights first (they do not depend on the previous kernel), then x once it is written.
    issue(0);
    pdl_wait();
    const int cstride = 4 * slice * 16;  // u32 per (row, hi|lo) column of xs
    stage_x_hilo(xs, x, K, T, 128 * s0, 4 * nsteps, cstride);
    __syncthreads();
    if (!live) return;  // no block-wide barrier follows

    // Pass p, column g: row 4p + g/2, hi (g even) or lo (g odd); rows ≥ T feed zeros.
    const uint32_t* xcol[P];
    bool rowLive[P];
#pragma unroll
    for (int p = 0; p < P; p++) {
        const int row = 4 * p + (g >> 1);
        rowLive[p] = row < T;
        xcol[p] = xs + (size_t)(2 * row + (g & 1)) * cstride + t * 16;
    }
    float acc[P][2][4];
#pragma unroll
    for (int p = 0; p < P; p++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[p][h][c] = 0.f;

    for (int r = 0; D * r < nsteps; r++) {
        if (r > 0) issue(r);
#pragma unroll
        for (int d = 0; d < D; d++) {
            const int s = D * r + d;
            if (s >= nsteps) break;
            const uint32_t sfa = e4m3x2_to_f16x2(ca[d]), sfb = e4m3x2_to_f16x2(cb[d]);
            const uint32_t wra[4] = {wa[d].x, wa[d].y, wa[d].z, wa[d].w}, wrb[4] = {wb[d].x, wb[d].y, wb[d].z, wb[d].w};
            tc_quarters(sfa, sfb, wra, wrb,
                        [&](int i, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5,
                            uint32_t a6, uint32_t a7) {
#pragma unroll
                            for (int p = 0; p < P; p++) {
                                uint4 b = make_uint4(0u, 0u, 0u, 0u);
                                if (rowLive[p]) b = reinterpret_cast<const uint4*>(xcol[p] + 64 * s)[i];
                                mma_f16(acc[p][0], a0, a1, a2, a3, b.x, b.y);
                                mma_f16(acc[p][1], a4, a5, a6, a7, b.z, b.w);
                            }
                        });
        }
    }
    // Lane (g, t) holds, for row 4p + t of x, weight row g's hi and lo sums in c0, c1 and
    // weight row g+8's in c2, c3.
    float v[P][2];
#pragma unroll
    for (int p = 0; p < P; p++) {
        v[p][0] = (acc[p][0][0] + acc[p][1][0]) + (acc[p][0][1] + acc[p][1][1]);
        v[p][1] = (acc[p][0][2] + acc[p][1][2]) + (acc[p][0][3] + acc[p][1][3]);
    }
    float* out = jobs.out[job];
    const float gs = jobs.gscale[job];
    const int n0 = tile * 16 + g, n1 = n0 + 8;
    if (slices == 1) {
#pragma unroll
        for (int p = 0; p < P; p++) {
            const int row = 4 * p + t;
            if (row < T) {
                if (n0 < N) out[(size_t)row * N + n0] = v[p][0] * gs;
                if (n1 < N) out[(size_t)row * N + n1] = v[p][1] * gs;
            }
        }
        return;
    }
    float* mine = part + (size_t)(tile0 + tile) * slices * (T * 16);
#pragma unroll
    for (int p = 0; p < P; p++) {
        const int row = 4 * p + t;
        if (row < T) {
            mine[(size_t)sl * (T * 16) + row * 16 + g] = v[p][0];
            mine[(size_t)sl * (T * 16) + row * 16 + g + 8] = v[p][1];
        }
    }
    gpu_fence();
    __syncwarp();
    int last = 0;
    if (lane == 0) {
        int* ctr = counters + tile0 + tile;
        last = atomicAdd(ctr, 1) == slices - 1;
        if (last) *ctr = 0;  // ready for the next launch
    }
    last = __shfl_sync(0xffffffffu, last, 0);
    if (!last) return;
    gpu_fence();
#pragma unroll
    for (int p = 0; p < P; p++) {
        const int row = 4 * p + t;
        if (row >= T) continue;
        float sum0 = 0.f, sum1 = 0.f;
        for (int q = 0; q < slices; q++) {
            sum0 += __ldcg(mine + (size_t)q * (T * 16) + row * 16 + g);
            sum1 += __ldcg(mine + (size_t)q * (T * 16) + row * 16 + g + 8);
        }
        if (n0 < N) out[(size_t)row * N + n0] = sum0 * gs;
        if (n1 < N) out[(size_t)row * N + n1] = sum1 * gs;
    }
}

// Entry points gemv_nvfp4_tcb{P}_{W}x{D}(x, K, T, slice, part, counters, njobs, then out,
// packed, scales, gscale, N for each of 3 jobs — unused ones null/0): T ≤ 4·P rows, grid
// Σ_j ceil(ceil(N_j/16)/W)·ceil(K/128/slice) blocks of W·32 threads, dynamic shared memory
// T·slice·512 bytes.
#define GB_ENTRY(P, W, D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(W * 32) gemv_nvfp4_tcb##P##_##W##x##D(                     \
        const float* x, int K, int T, int slice, float* part, int* counters, int njobs, GEMV_JOB_PARAMS(0), \
        GEMV_JOB_PARAMS(1), GEMV_JOB_PARAMS(2)) {                                                           \
        extern __shared__ __align__(16) uint32_t xs[];                                                      \
        gemv_jobs jobs = GEMV_JOBS_INIT;                                                                    \
        gemv_tcb<P, W, D>(jobs, x, K, T, slice, part, counters, xs);                                        \
    }
GB_ENTRY(1, 4, 2)
GB_ENTRY(2, 4, 2)
GB_ENTRY(1, 8, 2)
GB_ENTRY(2, 8, 2)
GB_ENTRY(1, 4, 4)
GB_ENTRY(2, 4, 4)
GB_ENTRY(1, 8, 4)
GB_ENTRY(2, 8, 4)
