// Streaming NVFP4 GEMV for decode: out[t, n] = Σ_k x[t, k] · W[n, k] for T ≤ 4 token rows.
//
// Why a second GEMV: the first one (matmul.cu, gemv_nvfp4_t*) issues its weight loads from
// registers and reaches only ~15 % of HBM bandwidth; Nsight showed it latency-bound (too few
// bytes in flight; see NOTES.md). Here every lane copies its next 16-byte chunk of each of the
// warp's 4 weight rows (and lanes 0-3 the rows' block scales) into a shared-memory ring with
// cp.async before it computes on the current chunk, so the loads of the next step are always in
// flight while the current one is decoded: 2 KB per warp and stage, ~100 KB per SM.
//
// Geometry (as matmul.cu's GEMV, so the same block reduction is used): 8 warps per block; warp
// w owns row group w / ksplit (4 rows) and K slice w % ksplit; a slice is a whole number of
// 8-chunk units (chunk = 32 elements = 16 packed bytes = 2 scale bytes) so the 16-byte copies of
// the scales stay aligned. Needs K % 256 == 0 (checked on the host).
#include "common.cuh"

#define GS_ROWS 4
#define GS_WARPS 8
#define GS_STAGES 2

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
    unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

struct gs_stage {
    uint4 w[GS_ROWS][32];        // one 16-byte chunk per row and lane
    uint32_t sc[GS_ROWS][16];    // the 64 scale bytes of the step's 32 chunks, per row
};

template <int T>
__device__ __forceinline__ void gemv_nvfp4_stream(float* __restrict__ out, const float* __restrict__ x,
                                                  const uint8_t* __restrict__ packed, const uint8_t* __restrict__ scales,
                                                  float g16k, int N, int K, int ksplit, int slice) {
    __shared__ __align__(16) gs_stage ring[GS_WARPS][GS_STAGES];
    __shared__ float red[GS_WARPS * GS_ROWS * T];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int groups = GS_WARPS / ksplit;
    const int row0 = (blockIdx.x * groups + warp / ksplit) * GS_ROWS, kp = warp % ksplit;
    const int chunks = K / 32, nb = K / 16;
    const int c0 = kp * slice, c1 = min(chunks, c0 + slice);
    const int steps = c1 > c0 ? (c1 - c0 + 31) / 32 : 0;
    float acc[GS_ROWS][T];
#pragma unroll
    for (int r = 0; r < GS_ROWS; r++)
#pragma unroll
        for (int t = 0; t < T; t++) acc[r][t] = 0.f;

    // issue copies step s of this warp's slice into ring stage s % GS_STAGES.
    auto issue = [&](int s) {
        gs_stage& st = ring[warp][s % GS_STAGES];
        const int cs = c0 + s * 32, valid = min(32, c1 - cs);
#pragma unroll
        for (int r = 0; r < GS_ROWS; r++) {
            const int n = row0 + r;
            const bool ok = n < N && lane < valid;
            const uint8_t* src = packed + (size_t)(ok ? n : 0) * (K / 2) + (size_t)(ok ? cs + lane : 0) * 16;
            cp_async16(&st.w[r][lane], src, ok ? 16 : 0);
            if (lane < 4) {
                const int bytes = n < N ? max(0, min(16, 2 * valid - 16 * lane)) : 0;
                const uint8_t* ssrc = scales + (size_t)(n < N ? n : 0) * nb + (size_t)2 * cs + (bytes ? 16 * lane : 0);
                cp_async16(&st.sc[r][4 * lane], ssrc, bytes);
            }
        }
    };

    if (row0 < N && steps > 0) {
#pragma unroll
        for (int s = 0; s < GS_STAGES - 1; s++) {
            if (s < steps) issue(s);
            cp_async_commit();
        }
        for (int s = 0; s < steps; s++) {
            if (s + GS_STAGES - 1 < steps) issue(s + GS_STAGES - 1);
            cp_async_commit();
            cp_async_wait<GS_STAGES - 1>();
            __syncwarp();
            const gs_stage& st = ring[warp][s % GS_STAGES];
            const int c = c0 + s * 32 + lane;
            if (c < c1) {
                float4 xv[T][8];
#pragma unroll
                for (int t = 0; t < T; t++)
#pragma unroll
                    for (int q = 0; q < 8; q++) xv[t][q] = __ldg(reinterpret_cast<const float4*>(x + (size_t)t * K) + c * 8 + q);
#pragma unroll
                for (int r = 0; r < GS_ROWS; r++) {
                    const uint4 p = st.w[r][lane];
                    const uint32_t sw = st.sc[r][lane >> 1] >> (16 * (lane & 1));
                    const float f0 = e4m3_to_f32(sw & 0xffu) * g16k, f1 = e4m3_to_f32((sw >> 8) & 0xffu) * g16k;
#pragma unroll
                    for (int t = 0; t < T; t++) {
                        float s0 = dot8(p.x, xv[t][0], xv[t][1]) + dot8(p.y, xv[t][2], xv[t][3]);
                        float s1 = dot8(p.z, xv[t][4], xv[t][5]) + dot8(p.w, xv[t][6], xv[t][7]);
                        acc[r][t] = fmaf(s1, f1, fmaf(s0, f0, acc[r][t]));
                    }
                }
            }
            __syncwarp(); // every lane is done with this stage before it is refilled
        }
        cp_async_wait<0>();
    }

    // Block reduction in a fixed order (deterministic): warp sums, then the ksplit slices.
#pragma unroll
    for (int r = 0; r < GS_ROWS; r++)
#pragma unroll
        for (int t = 0; t < T; t++) {
            float s = warp_sum(acc[r][t]);
            if (lane == 0) red[(warp * GS_ROWS + r) * T + t] = s;
        }
    __syncthreads();
    for (int i = threadIdx.x; i < groups * GS_ROWS * T; i += blockDim.x) {
        int g = i / (GS_ROWS * T), rem = i % (GS_ROWS * T), r = rem / T, t = rem % T;
        float s = 0.f;
        for (int q = 0; q < ksplit; q++) s += red[((g * ksplit + q) * GS_ROWS + r) * T + t];
        int n = (blockIdx.x * groups + g) * GS_ROWS + r;
        if (n < N) out[(size_t)t * N + n] = s;
    }
}

// ---- v4: persistent, pipelined across rows ----
//
// The streaming kernel above still ran at ~15-18 % of HBM: each warp had only ~3 steps of work,
// so blocks were short-lived and the grid ran in 1.15 waves (latency and a tail, not bytes in
// flight, bound it). Here a fixed grid of resident warps walks a list of work items: an item is
// one step (≤ 32 chunks of 16 bytes, i.e. ≤ 1024 elements) of one group of 4 weight rows. Warp w
// takes items w, w+W, w+2W, ... with GS_PSTAGES-1 items' copies in flight while it decodes one,
// so every warp streams continuously across rows. An item's 4×T dot products are warp-summed
// and, when a row needs more than one step, written to partial[step][t][n]; the warp that
// completes a row group (a per-group arrival counter) sums its partials in step order — the
// result does not depend on which warp finishes last — and resets the counter for the next
// launch. One launch, deterministic.
#define GS_PSTAGES 4
#define GS_PWARPS 4
#define GS_PJOBS 3

// gp_jobs describes up to three products sharing x and K (q/k/v, gate/up): one launch walks
// the concatenation of their item lists. Job j's partial sums start after those of jobs < j in
// partial, its counters after theirs in counters.
struct gp_jobs {
    float* out[GS_PJOBS];
    const uint8_t* packed[GS_PJOBS];
    const uint8_t* scales[GS_PJOBS];
    float g16k[GS_PJOBS];
    int N[GS_PJOBS];
    int njobs;
};

template <int T>
__device__ __forceinline__ void gemv_nvfp4_persist(const gp_jobs& jb, float* __restrict__ partial,
                                                   unsigned* __restrict__ counters, const float* __restrict__ x, int K) {
    __shared__ __align__(16) gs_stage ring[GS_PWARPS][GS_PSTAGES];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int chunks = K / 32, nb = K / 16;
    const int spr = (chunks + 31) / 32; // steps (items) per row group
    long itemsEnd[GS_PJOBS];
    long items = 0;
#pragma unroll
    for (int j = 0; j < GS_PJOBS; j++) {
        if (j < jb.njobs) items += (long)((jb.N[j] + GS_ROWS - 1) / GS_ROWS) * spr;
        itemsEnd[j] = items;
    }
    const long W = (long)gridDim.x * GS_PWARPS;
    const long first = (long)blockIdx.x * GS_PWARPS + warp;

    // locate maps a global item to its job, row group and step.
    struct loc { int job, g, s, N; };
    auto locate = [&](long it) {
        loc l;
        l.job = it < itemsEnd[0] ? 0 : (it < itemsEnd[1] ? 1 : 2);
        const long base = l.job == 0 ? 0 : itemsEnd[l.job - 1];
        l.g = (int)((it - base) / spr);
        l.s = (int)((it - base) % spr);
        l.N = jb.N[l.job];
        return l;
    };

    auto issue = [&](long j) {
        const long it = first + j * W;
        gs_stage& st = ring[warp][j % GS_PSTAGES];
        if (it >= items) return;
        const loc l = locate(it);
        const uint8_t* packed = jb.packed[l.job];
        const uint8_t* scales = jb.scales[l.job];
        const int cs = l.s * 32, valid = min(32, chunks - cs);
#pragma unroll
        for (int r = 0; r < GS_ROWS; r++) {
            const int n = l.g * GS_ROWS + r;
            const bool ok = n < l.N && lane < valid;
            const uint8_t* src = packed + (size_t)(ok ? n : 0) * (K / 2) + (size_t)(ok ? cs + lane : 0) * 16;
            cp_async16(&st.w[r][lane], src, ok ? 16 : 0);
            if (lane < 4) {
                const int bytes = n < l.N ? max(0, min(16, 2 * valid - 16 * lane)) : 0;
                const uint8_t* ssrc = scales + (size_t)(n < l.N ? n : 0) * nb + (size_t)2 * cs + (bytes ? 16 * lane : 0);
                cp_async16(&st.sc[r][4 * lane], ssrc, bytes);
            }
        }
    };

    const long mine = first < items ? (items - first + W - 1) / W : 0;
#pragma unroll
    for (int j = 0; j < GS_PSTAGES - 1; j++) {
        issue(j);
        cp_async_commit();
    }
    for (long j = 0; j < mine; j++) {
        issue(j + GS_PSTAGES - 1);
        cp_async_commit();
        cp_async_wait<GS_PSTAGES - 1>();
        __syncwarp();
        const loc l = locate(first + j * W);
        const float g16k = jb.g16k[l.job];
        const gs_stage& st = ring[warp][j % GS_PSTAGES];
        const int c = l.s * 32 + lane;
        float acc[GS_ROWS][T];
#pragma unroll
        for (int r = 0; r < GS_ROWS; r++)
#pragma unroll
            for (int t = 0; t < T; t++) acc[r][t] = 0.f;
        if (c < chunks) {
            float4 xv[T][8];
#pragma unroll
            for (int t = 0; t < T; t++)
#pragma unroll
                for (int q = 0; q < 8; q++) xv[t][q] = __ldg(reinterpret_cast<const float4*>(x + (size_t)t * K) + c * 8 + q);
#pragma unroll
            for (int r = 0; r < GS_ROWS; r++) {
                const uint4 p = st.w[r][lane];
                const uint32_t sw = st.sc[r][lane >> 1] >> (16 * (lane & 1));
                const float f0 = e4m3_to_f32(sw & 0xffu) * g16k, f1 = e4m3_to_f32((sw >> 8) & 0xffu) * g16k;
#pragma unroll
                for (int t = 0; t < T; t++) {
                    float s0 = dot8(p.x, xv[t][0], xv[t][1]) + dot8(p.y, xv[t][2], xv[t][3]);
                    float s1 = dot8(p.z, xv[t][4], xv[t][5]) + dot8(p.w, xv[t][6], xv[t][7]);
                    acc[r][t] = fmaf(s1, f1, s0 * f0);
                }
            }
        }
        __syncwarp(); // the stage may be refilled from here on
#pragma unroll
        for (int r = 0; r < GS_ROWS; r++)
#pragma unroll
            for (int t = 0; t < T; t++) acc[r][t] = warp_sum(acc[r][t]);
        // lane r*T+t holds output (row r, token t) of the item.
        float v = 0.f;
#pragma unroll
        for (int rr = 0; rr < GS_ROWS; rr++)
#pragma unroll
            for (int tt = 0; tt < T; tt++)
                if (rr * T + tt == lane) v = acc[rr][tt];
        const int r = lane / T, t = lane % T, n = l.g * GS_ROWS + r;
        float* out = jb.out[l.job];
        if (spr == 1) {
            if (lane < GS_ROWS * T && n < l.N) out[(size_t)t * l.N + n] = v;
            continue;
        }
        long pbase = 0, cbase = 0;
        for (int q = 0; q < l.job; q++) {
            pbase += (long)spr * T * jb.N[q];
            cbase += (jb.N[q] + GS_ROWS - 1) / GS_ROWS;
        }
        float* part = partial + pbase;
        if (lane < GS_ROWS * T && n < l.N) part[((size_t)l.s * T + t) * l.N + n] = v;
        gpu_fence();
        __syncwarp(); // every lane's partial is visible device-wide before lane 0 arrives
        unsigned last = 0;
        if (lane == 0) last = atomicAdd(&counters[cbase + l.g], 1u) == (unsigned)(spr - 1);
        last = __shfl_sync(0xffffffffu, last, 0);
        if (last) {
            gpu_fence();
            if (lane < GS_ROWS * T && n < l.N) {
                float sum = 0.f;
                for (int q = 0; q < spr; q++) sum += __ldcg(part + ((size_t)q * T + t) * l.N + n);
                out[(size_t)t * l.N + n] = sum;
            }
            if (lane == 0) counters[cbase + l.g] = 0u;
        }
    }
    cp_async_wait<0>();
}

// Entry points: 256 threads, ceil(N / (4 · 8/ksplit)) blocks, ksplit one of 1, 2, 4, 8, slice the
// chunks (of 32 elements) per K slice, a multiple of 8.
#define GS_ENTRY(T)                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) gemv_nvfp4s_t##T(float* out, const float* x,       \
                                                                       const uint8_t* packed,             \
                                                                       const uint8_t* scales, float g16k, \
                                                                       int N, int K, int ksplit,          \
                                                                       int slice) {                       \
        gemv_nvfp4_stream<T>(out, x, packed, scales, g16k, N, K, ksplit, slice);                          \
    }
GS_ENTRY(1)
GS_ENTRY(2)
GS_ENTRY(3)
GS_ENTRY(4)

// Persistent entry points: GS_PWARPS*32 threads, a grid of resident blocks (the host sizes it);
// partial holds ceil(K/1024)·T·ΣN floats and counters Σ ceil(N/4) words, zeroed once (each
// launch leaves them zero). Unused jobs have N = 0.
#define GP_ENTRY(T)                                                                                        \
    extern "C" __global__ void __launch_bounds__(GS_PWARPS * 32) gemv_nvfp4p_t##T(                        \
        float* partial, unsigned* counters, const float* x, int K, int njobs,                             \
        float* out0, const uint8_t* packed0, const uint8_t* scales0, float g0, int N0,                    \
        float* out1, const uint8_t* packed1, const uint8_t* scales1, float g1, int N1,                    \
        float* out2, const uint8_t* packed2, const uint8_t* scales2, float g2, int N2) {                  \
        gp_jobs jb = {{out0, out1, out2}, {packed0, packed1, packed2}, {scales0, scales1, scales2},        \
                      {g0, g1, g2}, {N0, N1, N2}, njobs};                                                  \
        gemv_nvfp4_persist<T>(jb, partial, counters, x, K);                                               \
    }
GP_ENTRY(1)
GP_ENTRY(2)
GP_ENTRY(3)
GP_ENTRY(4)
