// MatMul: out[T, N] = x[T, K] · Wᵀ with W [N, K] stored as float32, bf16 or NVFP4 (packed E2M1
// codes [N, K/2], E4M3 block scales [N, K/16], tensor scale g), fp32 accumulation. The weight is
// decoded in registers inside the product; no dequantised copy exists.
//
// Two shapes of kernel:
//   gemv_*_t{1..4}  few token rows (decode): each warp streams GEMV_ROWS weight rows over a
//                   slice of K (split-K across the warps of a block, ksplit of them per row
//                   group) for all T token rows at once; x is read through the L1 cache; the
//                   block sums the warps' partial dot products in a fixed order.
//   matmul_tiled_*  many token rows (prefill): 64x64 output tiles, 32-wide K steps through
//                   shared memory, 4x4 outputs per thread; weight tiles are decoded to float32
//                   on the way into shared memory.
#include "common.cuh"

#define GEMV_ROWS 4    // weight rows per warp
#define GEMV_WARPS 8   // warps per block (blockDim.x = 256)

// gemv_reduce sums the per-warp partials acc[r][t] of each row group over its ksplit warps and
// writes out[t, n]. Warp w of the block owns row group w / ksplit and K slice w % ksplit.
template <int T>
__device__ __forceinline__ void gemv_reduce(float* __restrict__ out, float (&acc)[GEMV_ROWS][T], int ksplit, int N) {
    __shared__ float red[GEMV_WARPS * GEMV_ROWS * T];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < T; t++) {
            float s = warp_sum(acc[r][t]);
            if (lane == 0) red[(warp * GEMV_ROWS + r) * T + t] = s;
        }
    __syncthreads();
    const int groups = GEMV_WARPS / ksplit;
    for (int i = threadIdx.x; i < groups * GEMV_ROWS * T; i += blockDim.x) {
        int g = i / (GEMV_ROWS * T), rem = i % (GEMV_ROWS * T), r = rem / T, t = rem % T;
        float s = 0.f;
        for (int kp = 0; kp < ksplit; kp++) s += red[((g * ksplit + kp) * GEMV_ROWS + r) * T + t];
        int n = (blockIdx.x * groups + g) * GEMV_ROWS + r;
        if (n < N) out[(size_t)t * N + n] = s;
    }
}

// gemv_nvfp4: one lane handles one 16-element block (8 packed bytes, one scale) per step. (A
// variant loading two blocks, 16 bytes, per lane and step ran no faster for one token row and
// slower for four: the kernel is latency-bound, see NOTES.md.)
template <int T>
__device__ __forceinline__ void gemv_nvfp4(float* __restrict__ out, const float* __restrict__ x,
                                           const uint8_t* __restrict__ packed, const uint8_t* __restrict__ scales,
                                           float g16k, int N, int K, int ksplit) {
    const int nb = K / 16;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int groups = GEMV_WARPS / ksplit;
    const int row0 = (blockIdx.x * groups + warp / ksplit) * GEMV_ROWS, kp = warp % ksplit;
    float acc[GEMV_ROWS][T];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < T; t++) acc[r][t] = 0.f;
    if (row0 < N) {
        for (int u = kp * 32 + lane; u < nb; u += 32 * ksplit) {
            float4 xv[T][4];
#pragma unroll
            for (int t = 0; t < T; t++)
#pragma unroll
                for (int q = 0; q < 4; q++) xv[t][q] = __ldg(reinterpret_cast<const float4*>(x + (size_t)t * K) + u * 4 + q);
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++) {
                int n = row0 + r;
                if (n < N) {
                    uint2 p = __ldg(reinterpret_cast<const uint2*>(packed + (size_t)n * (K / 2)) + u);
                    float f = e4m3_to_f32(__ldg(scales + (size_t)n * nb + u)) * g16k;
#pragma unroll
                    for (int t = 0; t < T; t++) {
                        float s = dot8(p.x, xv[t][0], xv[t][1]) + dot8(p.y, xv[t][2], xv[t][3]);
                        acc[r][t] = fmaf(s, f, acc[r][t]);
                    }
                }
            }
        }
    }
    gemv_reduce<T>(out, acc, ksplit, N);
}

// gemv_dense: one lane handles 8 consecutive elements per step (K % 8 == 0).
template <int T, bool BF16>
__device__ __forceinline__ void gemv_dense(float* __restrict__ out, const float* __restrict__ x,
                                           const void* __restrict__ w, int N, int K, int ksplit) {
    const int nu = K / 8;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int groups = GEMV_WARPS / ksplit;
    const int row0 = (blockIdx.x * groups + warp / ksplit) * GEMV_ROWS, kp = warp % ksplit;
    float acc[GEMV_ROWS][T];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
        for (int t = 0; t < T; t++) acc[r][t] = 0.f;
    if (row0 < N) {
        for (int u = kp * 32 + lane; u < nu; u += 32 * ksplit) {
            float4 xv[T][2];
#pragma unroll
            for (int t = 0; t < T; t++) {
                const float4* xr = reinterpret_cast<const float4*>(x + (size_t)t * K);
                xv[t][0] = __ldg(xr + 2 * u);
                xv[t][1] = __ldg(xr + 2 * u + 1);
            }
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++) {
                int n = row0 + r;
                if (n < N) {
                    float4 wa, wb;
                    if constexpr (BF16) {
                        uint4 p = __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const uint16_t*>(w) + (size_t)n * K) + u);
                        wa = make_float4(bf16_lo(p.x), bf16_hi(p.x), bf16_lo(p.y), bf16_hi(p.y));
                        wb = make_float4(bf16_lo(p.z), bf16_hi(p.z), bf16_lo(p.w), bf16_hi(p.w));
                    } else {
                        const float4* wr = reinterpret_cast<const float4*>(reinterpret_cast<const float*>(w) + (size_t)n * K);
                        wa = __ldg(wr + 2 * u);
                        wb = __ldg(wr + 2 * u + 1);
                    }
#pragma unroll
                    for (int t = 0; t < T; t++) {
                        float s = acc[r][t];
                        s = fmaf(wa.x, xv[t][0].x, s);
                        s = fmaf(wa.y, xv[t][0].y, s);
                        s = fmaf(wa.z, xv[t][0].z, s);
                        s = fmaf(wa.w, xv[t][0].w, s);
                        s = fmaf(wb.x, xv[t][1].x, s);
                        s = fmaf(wb.y, xv[t][1].y, s);
                        s = fmaf(wb.z, xv[t][1].z, s);
                        s = fmaf(wb.w, xv[t][1].w, s);
                        acc[r][t] = s;
                    }
                }
            }
        }
    }
    gemv_reduce<T>(out, acc, ksplit, N);
}

// Entry points. Launch with GEMV_WARPS*32 threads and ceil(N / (GEMV_ROWS * GEMV_WARPS/ksplit))
// blocks, ksplit one of 1, 2, 4, 8.
// Dense GEMVs (bf16, f32) for 1-8 token rows; 5-8 serve a batched decode step's lm_head (one
// pass over the 778 MB bf16 embedding for eight sequences instead of two passes of four).
#define GEMV_DENSE_ENTRIES(T)                                                                               \
    extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t##T(float* out, const float* x,           \
                                                                     const uint16_t* w, int N, int K,      \
                                                                     int ksplit) {                         \
        gemv_dense<T, true>(out, x, w, N, K, ksplit);                                                       \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(256) gemv_f32_t##T(float* out, const float* x,            \
                                                                    const float* w, int N, int K,          \
                                                                    int ksplit) {                          \
        gemv_dense<T, false>(out, x, w, N, K, ksplit);                                                      \
    }
// NVFP4 GEMVs for 1-4 token rows, with the dense ones of the same row count.
#define GEMV_ENTRIES(T)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) gemv_nvfp4_t##T(float* out, const float* x,          \
                                                                      const uint8_t* packed,               \
                                                                      const uint8_t* scales, float g16k,   \
                                                                      int N, int K, int ksplit) {          \
        gemv_nvfp4<T>(out, x, packed, scales, g16k, N, K, ksplit);                                          \
    }                                                                                                       \
    GEMV_DENSE_ENTRIES(T)
GEMV_ENTRIES(1)
GEMV_ENTRIES(2)
GEMV_ENTRIES(3)
GEMV_ENTRIES(4)

GEMV_DENSE_ENTRIES(5)
GEMV_DENSE_ENTRIES(6)
GEMV_DENSE_ENTRIES(7)
GEMV_DENSE_ENTRIES(8)

#define TM 64
#define TN 64
#define TK 32
#define TPAD 4

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_NVFP4 = 2 };

// matmul_tiled: grid (ceil(N/64), ceil(T/64)), 256 threads. As[k][m] and Bs[k][n] hold the x and
// decoded weight tiles transposed, so the inner loop reads one float4 of each per k step.
template <int KIND>
__device__ __forceinline__ void matmul_tiled(float* __restrict__ out, const float* __restrict__ x,
                                             const void* __restrict__ w, const uint8_t* __restrict__ scales,
                                             float g, int T, int N, int K) {
    __shared__ __align__(16) float As[TK][TM + TPAD];
    __shared__ __align__(16) float Bs[TK][TN + TPAD];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < K; k0 += TK) {
        // x tile: 64 rows x 32 columns, 8 per thread, coalesced along k.
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int r = (tid >> 5) + 8 * i, c = tid & 31;
            int m = m0 + r, k = k0 + c;
            As[c][r] = (m < T && k < K) ? x[(size_t)m * K + k] : 0.f;
        }
        if (KIND == KIND_NVFP4) {
            // 64 weight rows x 4 parts of 8 elements (one packed 32-bit word) per thread.
            int r = tid >> 2, part = tid & 3;
            int n = n0 + r, k = k0 + part * 8;
            float v[8];
            if (n < N && k < K) {
                const uint8_t* pk = reinterpret_cast<const uint8_t*>(w) + (size_t)n * (K / 2) + k / 2;
                uint32_t word = __ldg(reinterpret_cast<const uint32_t*>(pk));
                float f = __fmul_rn(e4m3_to_f32(__ldg(scales + (size_t)n * (K / 16) + k / 16)), g);
#pragma unroll
                for (int i = 0; i < 8; i++) v[i] = __fmul_rn(e2m1_value((word >> (4 * i)) & 15u), f);
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) v[i] = 0.f;
            }
#pragma unroll
            for (int i = 0; i < 8; i++) Bs[part * 8 + i][r] = v[i];
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int r = (tid >> 5) + 8 * i, c = tid & 31;
                int n = n0 + r, k = k0 + c;
                float v = 0.f;
                if (n < N && k < K) {
                    size_t o = (size_t)n * K + k;
                    v = KIND == KIND_BF16 ? bf16_to_f32(reinterpret_cast<const uint16_t*>(w)[o])
                                          : reinterpret_cast<const float*>(w)[o];
                }
                Bs[c][r] = v;
            }
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < TK; kk++) {
            float4 a = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            float4 b = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int m = m0 + ty * 4 + i;
        if (m >= T) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int n = n0 + tx * 4 + j;
            if (n < N) out[(size_t)m * N + n] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
matmul_tiled_f32(float* out, const float* x, const float* w, int T, int N, int K) {
    matmul_tiled<KIND_F32>(out, x, w, nullptr, 1.f, T, N, K);
}

extern "C" __global__ void __launch_bounds__(256)
matmul_tiled_bf16(float* out, const float* x, const uint16_t* w, int T, int N, int K) {
    matmul_tiled<KIND_BF16>(out, x, w, nullptr, 1.f, T, N, K);
}

// K % 16 == 0 (NVFP4 blocks), so a 32-wide step never splits a block.
extern "C" __global__ void __launch_bounds__(256)
matmul_tiled_nvfp4(float* out, const float* x, const uint8_t* packed, const uint8_t* scales, float g, int T,
                   int N, int K) {
    matmul_tiled<KIND_NVFP4>(out, x, packed, scales, g, T, N, K);
}
