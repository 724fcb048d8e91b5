// NVFP4 decode GEMV on tensor cores: out[n] = Σ_k x[k] · W[n, k] for one token row.
//
// Why: the CUDA-core GEMVs (matmul.cu, gemv.cu) spend ~4-5 instructions per weight (decode an
// E2M1 code to a half, convert to float, FMA) and, with per-lane x loads scattered over 64-128
// bytes, stall on L1; they reach 12-18 % of HBM. Here a warp multiplies a 16-row × 16-k tile of
// decoded weights by x with one mma.sync m16n8k16 (f16 operands, fp32 accumulation), so the
// only per-weight work left is the decode itself: ~2.5 instructions per weight.
//
// Decode: the E2M1 code of an element goes to half bits [11:9] (magnitude) and 15 (sign), which
// is the E2M1 value times 2^-14, exactly (dot8 in common.cuh does the same); the pair is then
// multiplied by its E4M3 block scale as f16 (cvt.rn.f16x2.e4m3x2, exact; e2m1·e4m3·2^-14 has at
// most 6 significant bits and lies within f16's range, subnormals included). The FP32 tensor
// scale and the 2^14 are applied to the fp32 sums at the end.
//
// x: the row is split as x = hi + lo with hi = f16(x) and lo = f16(x − hi); hi feeds column 0 of
// the mma's B operand and lo column 1, so one mma yields both partial sums and their total
// carries ~22 bits of x (parity with the fp32 kernels to ~1e-6, not f16's 1e-3).
//
// k-permutation: a dot product may take its k terms in any order as long as both operands use
// the same one. Lane (g, t) (g = lane/4, t = lane%4) loads one 16-byte chunk (32 elements) of
// rows g and g+8 — chunk 4s+t of step s, so the four lanes of a row read 64 contiguous bytes —
// and feeds word i, element pair (p, p+4) of that chunk to k-slots (2t, 2t+1) of mma 2i+p/2
// (p even) or (2t+8, 2t+9) (p odd). Each block stages x once in that order, as hi and lo f16
// pairs, in shared memory; lane t of column 0 (hi) or 1 (lo) then reads its B registers for the
// 8 mmas of a step with four 16-byte loads.
//
// Geometry: a block = W warps = one tile of 16 rows of one job; its warps take the
// 128-wide k steps round-robin and their fp32 partial sums are added in warp order (fixed:
// deterministic). One launch serves up to three products sharing x (q/k/v, gate/up): the
// blocks of job j follow those of jobs < j. K % 128 == 0 (checked on the host).
#include "gemv_tc.cuh"


// gemv_tc runs one block of W warps; each warp takes k steps s = warp, warp+W, ... in rounds of
// D steps whose weight loads are all issued before any of them is decoded (D·2 KB per warp in
// flight), so a row tile costs about ceil(steps / (W·D)) memory round trips.
template <int W, int D>
__device__ __forceinline__ void gemv_tc(const gemv_jobs& jobs, const float* __restrict__ x, int K, uint32_t* xs,
                                        float (*red)[16]) {
    int tile = blockIdx.x, job = 0;
    while (job + 1 < jobs.njobs && tile >= jobs.tiles[job]) tile -= jobs.tiles[job++];
    const int N = jobs.N[job];
    const uint8_t* __restrict__ packed = jobs.packed[job];
    const uint8_t* __restrict__ scales = jobs.scales[job];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int steps = K / 128, chunks = K / 32;
    const int ra = min(tile * 16 + g, N - 1), rb = min(tile * 16 + g + 8, N - 1);
    const uint4* pa = reinterpret_cast<const uint4*>(packed + (size_t)ra * (K / 2)) + t;
    const uint4* pb = reinterpret_cast<const uint4*>(packed + (size_t)rb * (K / 2)) + t;
    const uint16_t* sa = reinterpret_cast<const uint16_t*>(scales + (size_t)ra * (K / 16)) + t;
    const uint16_t* sb = reinterpret_cast<const uint16_t*>(scales + (size_t)rb * (K / 16)) + t;

    pdl_trigger();  // the next kernel may launch now; it waits for this one before reading
    uint4 wa[D], wb[D];
    uint32_t ca[D], cb[D];
    // issue loads round r's weights (steps warp + W·(D·r + d)).
    auto issue = [&](int r) {
#pragma unroll
        for (int d = 0; d < D; d++) {
            const int s = warp + W * (D * r + d);
            if (s < steps) {
                wa[d] = __ldg(pa + 4 * s);
                wb[d] = __ldg(pb + 4 * s);
                ca[d] = __ldg(sa + 4 * s);
                cb[d] = __ldg(sb + 4 * s);
            }
        }
    };
    // The first round's weights are requested before x is staged, so the two overlap; with
    // programmatic dependent launch they are requested while the kernel that writes x (the
    // norm, SwiGLU or attention before this product) is still running.
    issue(0);
    pdl_wait();
    stage_x_hilo(xs, x, K, 1, 0, K / 32, (K / 32) * 16);
    __syncthreads();

    // Lanes 0-3 read the hi pairs (column 0), lanes 4-7 the lo pairs (column 1); the others
    // feed zero columns.
    const uint32_t* xcol = g == 0 ? xs : xs + chunks * 16;
    float acc0[4] = {0.f, 0.f, 0.f, 0.f}, acc1[4] = {0.f, 0.f, 0.f, 0.f};
    for (int r = 0; warp + W * D * r < steps; r++) {
        if (r > 0) issue(r);
#pragma unroll
        for (int d = 0; d < D; d++) {
            const int s = warp + W * (D * r + d);
            if (s >= steps) break;
            uint32_t bx[16];
            if (g < 2) {
                const uint4* xp = reinterpret_cast<const uint4*>(xcol + (4 * s + t) * 16);
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    uint4 v = xp[q];
                    bx[4 * q] = v.x, bx[4 * q + 1] = v.y, bx[4 * q + 2] = v.z, bx[4 * q + 3] = v.w;
                }
            } else {
#pragma unroll
                for (int q = 0; q < 16; q++) bx[q] = 0u;
            }
            const uint32_t sfa = e4m3x2_to_f16x2(ca[d]), sfb = e4m3x2_to_f16x2(cb[d]);
            const uint32_t wra[4] = {wa[d].x, wa[d].y, wa[d].z, wa[d].w}, wrb[4] = {wb[d].x, wb[d].y, wb[d].z, wb[d].w};
            // mma 2i: pairs 0 (slots 2t..) and 1 (slots 2t+8..); mma 2i+1: pairs 2 and 3.
            tc_quarters(sfa, sfb, wra, wrb,
                        [&](int i, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4, uint32_t a5,
                            uint32_t a6, uint32_t a7) {
                            mma_f16(acc0, a0, a1, a2, a3, bx[4 * i], bx[4 * i + 1]);
                            mma_f16(acc1, a4, a5, a6, a7, bx[4 * i + 2], bx[4 * i + 3]);
                        });
        }
    }
    // Lane (g, 0) holds row g's hi and lo sums in c0, c1 and row g+8's in c2, c3.
    if (t == 0) {
        red[warp][g] = (acc0[0] + acc1[0]) + (acc0[1] + acc1[1]);
        red[warp][g + 8] = (acc0[2] + acc1[2]) + (acc0[3] + acc1[3]);
    }
    __syncthreads();
    if (threadIdx.x < 16) {
        const int n = tile * 16 + threadIdx.x;
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < W; w++) sum += red[w][threadIdx.x];
        if (n < N) jobs.out[job][n] = sum * jobs.gscale[job];
    }
}

// Entry points: gemv_nvfp4_tc{W}x{D}(x, K, njobs, then out, packed, scales, gscale, N for each
// of 3 jobs — unused ones null/0), grid Σ_j ceil(N_j/16) blocks of W·32 threads, dynamic shared
// memory K·4 bytes (x as hi and lo f16).
#define GT_ENTRY_MB(NAME, W, D, MB)                                                                          \
    extern "C" __global__ void __launch_bounds__(W * 32, MB)                                                 \
        NAME(const float* x, int K, int njobs, GEMV_JOB_PARAMS(0), GEMV_JOB_PARAMS(1), GEMV_JOB_PARAMS(2)) { \
        extern __shared__ __align__(16) uint32_t xs[];                                                       \
        __shared__ float red[W][16];                                                                         \
        gemv_jobs jobs = GEMV_JOBS_INIT;                                                                     \
        gemv_tc<W, D>(jobs, x, K, xs, red);                                                                  \
    }
// The two shapes the backend picks from (gemv.go gemvTCPick). Measured and dropped (NOTES.md,
// device runs 7 and 10): 8×1, 4×5, 16×2, and register caps for 32 warps per SM (faster alone,
// slower in the model).
GT_ENTRY_MB(gemv_nvfp4_tc4x3, 4, 3, 1)
GT_ENTRY_MB(gemv_nvfp4_tc8x3, 8, 3, 1)
