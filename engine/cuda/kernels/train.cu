// Training kernels: the backward twins of the forward ops, cross-entropy over logit rows, AdamW
// on resident weights with fp32 or blockwise int8 moments, and the small ops (scale, sum of
// squares). Every kernel is deterministic: each output element is produced by one thread in a
// fixed order, and reductions across blocks go through per-block partial results that a second
// kernel (or the host) sums in a fixed order — no floating-point atomics.
//
// Numerics follow engine/cpu and engine/optim where they are element-wise: products and sums are
// rounded separately (__fmul_rn/__fadd_rn, no contraction into fused multiply-adds), exp in
// double where the CPU uses math.Exp, RoPE angles in float32 with sin/cos in double. Products
// that accumulate (matmul, attention) use fmaf in float32.
#include "common.cuh"
#include "adamw.cuh"

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// ---------------------------------------------------------------------------------------------
// Small ops.

// scale_f32: x *= s.
extern "C" __global__ void scale_f32(float* x, float s, size_t n) {
    GRID_STRIDE(i, n) { x[i] = __fmul_rn(x[i], s); }
}

// sumsq_part_{f32,bf16}: part[block] = Σ x² (in double) over the block's share of x (a float32
// tensor, or a bf16 parameter gradient widened exactly). Thread t of the grid's nt threads takes
// the 8-element groups t, t + nt, t + 2nt, … (when vec: x 16-byte aligned — one 16-byte load of
// 8 bf16 or two of 8 floats, two groups' loads issued together), each group's squares added in
// element order, then the elements past the last whole group (all of them without vec) one by
// one, element i to thread i mod nt. The grid is a function of n only (training.go sumsqParts),
// so the sum of the partials (on the host, in block order) is the same on every run and device.
// Session 11: the element-by-element form read a Qwen3-4B layer's bf16 gradients at ~1.2 TB/s
// (~170 µs a layer of a S=192 step, 36 a step).
template <bool BF16>
__device__ __forceinline__ void sumsq_group(const void* x, size_t g, float (&v)[8]) {
    if (BF16) {
        const uint4 u = __ldg(reinterpret_cast<const uint4*>(x) + g);
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) v[2 * j] = bf16_lo(w[j]), v[2 * j + 1] = bf16_hi(w[j]);
    } else {
        const float4 a = __ldg(reinterpret_cast<const float4*>(x) + 2 * g), b = __ldg(reinterpret_cast<const float4*>(x) + 2 * g + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
}

template <bool BF16>
__device__ __forceinline__ void sumsq_part(double* part, const void* x, size_t n, int vec) {
    __shared__ double red[32];
    double s = 0.0;
    const size_t nt = (size_t)gridDim.x * blockDim.x, t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t done = 0;
    if (vec) {
        const size_t groups = n / 8;
        size_t g = t;
        for (; g + nt < groups; g += 2 * nt) {
            float a[8], b[8];
            sumsq_group<BF16>(x, g, a);
            sumsq_group<BF16>(x, g + nt, b);
#pragma unroll
            for (int e = 0; e < 8; e++) s = fma((double)a[e], (double)a[e], s);
#pragma unroll
            for (int e = 0; e < 8; e++) s = fma((double)b[e], (double)b[e], s);
        }
        if (g < groups) {
            float a[8];
            sumsq_group<BF16>(x, g, a);
#pragma unroll
            for (int e = 0; e < 8; e++) s = fma((double)a[e], (double)a[e], s);
        }
        done = groups * 8;
    }
    for (size_t i = done + t; i < n; i += nt) {
        const double v = BF16 ? (double)bf16_to_f32(reinterpret_cast<const uint16_t*>(x)[i]) : (double)reinterpret_cast<const float*>(x)[i];
        s = fma(v, v, s);
    }
    s = block_sum_d(s, red);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}
extern "C" __global__ void __launch_bounds__(256) sumsq_part_f32(double* part, const float* x, size_t n, int vec) {
    sumsq_part<false>(part, x, n, vec);
}
extern "C" __global__ void __launch_bounds__(256) sumsq_part_bf16(double* part, const uint16_t* x, size_t n, int vec) {
    sumsq_part<true>(part, x, n, vec);
}

// ---------------------------------------------------------------------------------------------
// MatMul backward. The forward is out[T, N] = x[T, K] · W[N, K]ᵀ.

#define TM 64
#define TN 64
#define TK 32
#define TPAD 4

enum { KIND_F32 = 0, KIND_BF16 = 1, KIND_NVFP4 = 2 };

// mm_tile_product accumulates acc += As[kk][ty*4+i] * Bs[kk][tx*4+j] over the 32 steps of a tile.
__device__ __forceinline__ void mm_tile_product(const float (&As)[TK][TM + TPAD], const float (&Bs)[TK][TN + TPAD],
                                                float (&acc)[4][4], int tx, int ty) {
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
}

// mm_bwd_dx: dx[T, K] = dout[T, N] · W[N, K] (added to dx when accumulate != 0). Grid
// (ceil(K/64), ceil(T/64)), 256 threads; 64x64 output tiles, 32 rows of W per step, W decoded to
// float32 on the way into shared memory exactly as matmul.cu's tiled kernel decodes it.
template <int KIND>
__device__ __forceinline__ void mm_bwd_dx(float* __restrict__ dx, const float* __restrict__ dout,
                                          const void* __restrict__ w, const uint8_t* __restrict__ scales, float g,
                                          int T, int N, int K, int accumulate) {
    __shared__ __align__(16) float As[TK][TM + TPAD];  // As[n][t] = dout[t][n]
    __shared__ __align__(16) float Bs[TK][TN + TPAD];  // Bs[n][k] = W[n][k]
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int m0 = blockIdx.y * TM, k0 = blockIdx.x * TN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int n0 = 0; n0 < N; n0 += TK) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int r = (tid >> 5) + 8 * i, c = tid & 31;
            int m = m0 + r, n = n0 + c;
            As[c][r] = (m < T && n < N) ? dout[(size_t)m * N + n] : 0.f;
        }
        if (KIND == KIND_NVFP4) {
            // 32 weight rows x 8 parts of 8 elements (one packed 32-bit word) per thread.
            int r = tid >> 3, part = tid & 7;
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
            for (int i = 0; i < 8; i++) Bs[r][part * 8 + i] = v[i];
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int r = (tid >> 6) + 4 * i, c = tid & 63;
                int n = n0 + r, k = k0 + c;
                float v = 0.f;
                if (n < N && k < K) {
                    size_t o = (size_t)n * K + k;
                    v = KIND == KIND_BF16 ? bf16_to_f32(reinterpret_cast<const uint16_t*>(w)[o])
                                          : reinterpret_cast<const float*>(w)[o];
                }
                Bs[r][c] = v;
            }
        }
        __syncthreads();
        mm_tile_product(As, Bs, acc, tx, ty);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int m = m0 + ty * 4 + i;
        if (m >= T) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int k = k0 + tx * 4 + j;
            if (k < K) {
                size_t o = (size_t)m * K + k;
                dx[o] = accumulate ? __fadd_rn(dx[o], acc[i][j]) : acc[i][j];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
mm_bwd_dx_f32(float* dx, const float* dout, const float* w, int T, int N, int K, int accumulate) {
    mm_bwd_dx<KIND_F32>(dx, dout, w, nullptr, 1.f, T, N, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
mm_bwd_dx_bf16(float* dx, const float* dout, const uint16_t* w, int T, int N, int K, int accumulate) {
    mm_bwd_dx<KIND_BF16>(dx, dout, w, nullptr, 1.f, T, N, K, accumulate);
}

// K % 16 == 0 (NVFP4 blocks): an 8-element part never straddles a block or the row's end.
extern "C" __global__ void __launch_bounds__(256)
mm_bwd_dx_nvfp4(float* dx, const float* dout, const uint8_t* packed, const uint8_t* scales, float g, int T, int N,
                int K, int accumulate) {
    mm_bwd_dx<KIND_NVFP4>(dx, dout, packed, scales, g, T, N, K, accumulate);
}

// mm_bwd_dw: dw[N, K] += dout[T, N]ᵀ · x[T, K]. Grid (ceil(K/64), ceil(N/64)), 256 threads;
// 64x64 tiles of dw, 32 token rows per step; each dw element is summed by one thread over the
// token rows in order, then added to dw — for a bf16 dw (a bf16 parameter gradient,
// mm_bwd_dw_bf16) added to the widened value and rounded once (f32_bf16_bits).
template <typename DW>
__device__ __forceinline__ void mm_bwd_dw(DW* __restrict__ dw, const float* __restrict__ dout,
                                          const float* __restrict__ x, int T, int N, int K) {
    __shared__ __align__(16) float As[TK][TM + TPAD];  // As[t][n] = dout[t][n]
    __shared__ __align__(16) float Bs[TK][TN + TPAD];  // Bs[t][k] = x[t][k]
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int n0 = blockIdx.y * TM, k0 = blockIdx.x * TN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
    for (int t0 = 0; t0 < T; t0 += TK) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int r = (tid >> 6) + 4 * i, c = tid & 63;
            int t = t0 + r;
            As[r][c] = (t < T && n0 + c < N) ? dout[(size_t)t * N + n0 + c] : 0.f;
            Bs[r][c] = (t < T && k0 + c < K) ? x[(size_t)t * K + k0 + c] : 0.f;
        }
        __syncthreads();
        mm_tile_product(As, Bs, acc, tx, ty);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int n = n0 + ty * 4 + i;
        if (n >= N) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int k = k0 + tx * 4 + j;
            if (k < K) {
                size_t o = (size_t)n * K + k;
                if constexpr (sizeof(DW) == 2)
                    dw[o] = (uint16_t)f32_bf16_bits(__fadd_rn(bf16_to_f32(dw[o]), acc[i][j]));
                else
                    dw[o] = __fadd_rn(dw[o], acc[i][j]);
            }
        }
    }
}
extern "C" __global__ void __launch_bounds__(256)
mm_bwd_dw_f32(float* __restrict__ dw, const float* __restrict__ dout, const float* __restrict__ x, int T, int N, int K) {
    mm_bwd_dw<float>(dw, dout, x, T, N, K);
}
extern "C" __global__ void __launch_bounds__(256)
mm_bwd_dw_bf16(uint16_t* __restrict__ dw, const float* __restrict__ dout, const float* __restrict__ x, int T, int N, int K) {
    mm_bwd_dw<uint16_t>(dw, dout, x, T, N, K);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm backward. The forward (norm.cu) is out = w ⊙ (x · r), r = 1/√(mean(x²) + eps) over
// groups of n consecutive elements, the statistics in double.

// rms_inv recomputes r for the group at base exactly as rmsnorm_f32 does (block-wide).
__device__ __forceinline__ float rms_inv(const float* x, size_t base, int n, float eps, double* red) {
    double ss = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        double v = (double)x[base + j];
        ss = fma(v, v, ss);
    }
    ss = block_sum_d(ss, red);
    return (float)(1.0 / sqrt(ss / (double)n + (double)eps));
}

// rmsnorm_bwd_dx: one block per group. dx = r·w·dy − c·x with c = (Σ w·dy·x)·r³/n (the sum in
// double over float32 products); added to dx when accumulate != 0. dx may be dy when not
// accumulating (each element is read, then written, by the same thread after the reductions).
extern "C" __global__ void rmsnorm_bwd_dx(float* dx, const float* dy, const float* x, const float* w, int n,
                                          float eps, int accumulate) {
    __shared__ double red[32];
    const size_t base = (size_t)blockIdx.x * n;
    float inv = rms_inv(x, base, n, eps, red);
    double s = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        s += (double)__fmul_rn(__fmul_rn(w[j], dy[base + j]), x[base + j]);
    s = block_sum_d(s, red);
    float c = __fdiv_rn(__fmul_rn(__fmul_rn(__fmul_rn((float)s, inv), inv), inv), (float)n);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        size_t o = base + j;
        float v = __fsub_rn(__fmul_rn(__fmul_rn(inv, w[j]), dy[o]), __fmul_rn(c, x[o]));
        dx[o] = accumulate ? __fadd_rn(dx[o], v) : v;
    }
}

// rmsnorm_rstd: rstd[group] = r of that group (one block per group).
extern "C" __global__ void rmsnorm_rstd(float* rstd, const float* x, int n, float eps) {
    __shared__ double red[32];
    float inv = rms_inv(x, (size_t)blockIdx.x * n, n, eps, red);
    if (threadIdx.x == 0) rstd[blockIdx.x] = inv;
}

// rmsnorm_bwd_dw_part: part[p, j] = Σ over groups [p·per, (p+1)·per) of dy·x·r, in group order.
// Grid (ceil(n/128), P), 128 threads, one column j per thread.
extern "C" __global__ void rmsnorm_bwd_dw_part(float* part, const float* dy, const float* x, const float* rstd, int n,
                                               int groups, int per) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const int g0 = blockIdx.y * per, g1 = min(g0 + per, groups);
    float s = 0.f;
    for (int g = g0; g < g1; g++) {
        size_t o = (size_t)g * n + j;
        s = __fadd_rn(s, __fmul_rn(__fmul_rn(dy[o], x[o]), rstd[g]));
    }
    part[(size_t)blockIdx.y * n + j] = s;
}

// sum_parts_add: dst[j] += Σ_p part[p, j] in order of p (one thread per column j).
extern "C" __global__ void sum_parts_add(float* dst, const float* part, int n, int P) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float s = 0.f;
    for (int p = 0; p < P; p++) s = __fadd_rn(s, part[(size_t)p * n + j]);
    dst[j] = __fadd_rn(dst[j], s);
}

// ---------------------------------------------------------------------------------------------
// RoPE backward: the transposed rotation, with the angles of rope_f32 (norm.cu):
// dx1 = dy1·cos + dy2·sin, dx2 = dy2·cos − dy1·sin. dx may be dy.
extern "C" __global__ void rope_bwd_f32(float* dx, const float* dy, const float* invf, int rows, int cols,
                                        int headDim, int pos0) {
    int half = headDim / 2;
    size_t pairsPerRow = (size_t)cols / 2;
    size_t total = (size_t)rows * pairsPerRow;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t t = idx / pairsPerRow;
        int r = (int)(idx % pairsPerRow);
        int h = r / half, i = r % half;
        float ang = __fmul_rn((float)(pos0 + (int)t), invf[i]);
        double s, c;
        sincos((double)ang, &s, &c);
        float cs = (float)c, sn = (float)s;
        size_t o = t * cols + (size_t)h * headDim + i;
        float y1 = dy[o], y2 = dy[o + half];
        dx[o] = __fadd_rn(__fmul_rn(y1, cs), __fmul_rn(y2, sn));
        dx[o + half] = __fsub_rn(__fmul_rn(y2, cs), __fmul_rn(y1, sn));
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU backward: with s = 1/(1+e^−g), dgate = dout·up·(s·(1 + g·(1−s))), dup = dout·g·s.
// Each element is read before it is written, so the outputs may alias the inputs.
extern "C" __global__ void swiglu_bwd_f32(float* dgate, float* dup, const float* dout, const float* gate,
                                          const float* up, size_t n) {
    GRID_STRIDE(i, n) {
        float g = gate[i], u = up[i], d = dout[i];
        float s = __fdiv_rn(1.f, __fadd_rn(1.f, (float)exp(-(double)g)));
        float ds = __fmul_rn(s, __fadd_rn(1.f, __fmul_rn(g, __fsub_rn(1.f, s))));
        float dg = __fmul_rn(__fmul_rn(d, u), ds);
        float du = __fmul_rn(__fmul_rn(d, g), s);
        dgate[i] = dg;
        dup[i] = du;
    }
}

// ---------------------------------------------------------------------------------------------
// Embedding backward: dtable[uniq[u], :] += dout[p, :] for the positions p of id uniq[u]
// (pos[off[u] .. off[u+1]), ascending), summed in that order. Grid (U, ceil(H/256)); the host
// sorted the positions by id, so no two blocks write one row.
extern "C" __global__ void embedding_bwd_f32(float* dtable, const float* dout, const int* uniq, const int* off,
                                             const int* pos, int H) {
    const int u = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= H) return;
    float* row = dtable + (size_t)uniq[u] * H;
    float s = row[c];
    for (int i = off[u]; i < off[u + 1]; i++) s = __fadd_rn(s, dout[(size_t)pos[i] * H + c]);
    row[c] = s;
}

// ---------------------------------------------------------------------------------------------
// Attention backward (causal, no cache, GQA), flash style: nothing of size T×T is stored.
//   attn_bwd_dq:  block (h, t) recomputes the softmax statistics of query row t (as the forward's
//                 online softmax does), writes lse[h, t] and D[h, t] = Σ dout∘out, then
//                 dq = Σ_j dS_j k_j · scale with P_j = e^(s_j − lse), dS_j = P_j (dout·v_j − D).
//   attn_bwd_dkv: block (g, j) for KV head g and key row j sums over the heads of the group and
//                 the query rows t ≥ j: dv_j = Σ P dout_t, dk_j = Σ dS q_t · scale.
// Scores are computed the same way in both kernels (fmaf over the head dimension in order), so
// P is the same number in both.

#define ATT_THREADS 128
#define ATT_MAXD 4  // head_dim <= ATT_THREADS * ATT_MAXD = 512

__device__ __forceinline__ float dot_f32(const float* a, const float* b, int n) {
    float s = 0.f;
    for (int d = 0; d < n; d++) s = fmaf(a[d], b[d], s);
    return s;
}

// attn_bwd_dq: grid (nHeads, T), ATT_THREADS threads, dynamic shared memory (2·hd + ATT_THREADS)
// floats. q, out, dout, dq are [T, nHeads·hd]; k, v [T, nKV·hd]; stats is [2, nHeads, T]
// (lse, then D).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_bwd_dq(float* dq, float* stats, const float* dout, const float* q, const float* k, const float* v,
            const float* out, int T, int nHeads, int nKV, int headDim, float scale) {
    extern __shared__ float sh[];
    float* qs = sh;                 // [hd]
    float* dos = sh + headDim;      // [hd]
    float* ps = sh + 2 * headDim;   // [ATT_THREADS]
    __shared__ float red[32];
    __shared__ double redd[32];
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    const int kvh = h / (nHeads / nKV);
    const size_t qStride = (size_t)nHeads * headDim, kvStride = (size_t)nKV * headDim;
    const size_t qo = (size_t)t * qStride + (size_t)h * headDim;
    double dd = 0.0;
    for (int d = tid; d < headDim; d += ATT_THREADS) {
        float a = dout[qo + d];
        qs[d] = q[qo + d];
        dos[d] = a;
        dd += (double)__fmul_rn(a, out[qo + d]);
    }
    const float D = (float)block_sum_d(dd, redd);  // its barriers also publish qs and dos
    const float* kb = k + (size_t)kvh * headDim;
    const float* vb = v + (size_t)kvh * headDim;
    const int nk = t + 1;
    // Pass 1: the running maximum and sum of exponentials, chunk by chunk as the forward.
    float m = -INFINITY, l = 0.f;
    for (int j0 = 0; j0 < nk; j0 += ATT_THREADS) {
        int j = j0 + tid;
        float s = j < nk ? dot_f32(qs, kb + (size_t)j * kvStride, headDim) * scale : -INFINITY;
        float mnew = fmaxf(m, block_max(s, red));
        float p = j < nk ? expf(s - mnew) : 0.f;
        l = l * expf(m - mnew) + block_sum(p, red);
        m = mnew;
    }
    const float lse = m + logf(l);
    // Pass 2: dS per key, then dq.
    float acc[ATT_MAXD];
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) acc[i] = 0.f;
    for (int j0 = 0; j0 < nk; j0 += ATT_THREADS) {
        int j = j0 + tid;
        float ds = 0.f;
        if (j < nk) {
            float s = dot_f32(qs, kb + (size_t)j * kvStride, headDim) * scale;
            float p = expf(s - lse);
            float dp = dot_f32(dos, vb + (size_t)j * kvStride, headDim);
            ds = p * (dp - D);
        }
        ps[tid] = ds;
        __syncthreads();
        int cnt = min(ATT_THREADS, nk - j0);
#pragma unroll
        for (int i = 0; i < ATT_MAXD; i++) {
            int d = tid + i * ATT_THREADS;
            if (d < headDim) {
                float a = acc[i];
                const float* kc = kb + (size_t)j0 * kvStride + d;
                for (int jj = 0; jj < cnt; jj++) a = fmaf(ps[jj], kc[(size_t)jj * kvStride], a);
                acc[i] = a;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) {
        int d = tid + i * ATT_THREADS;
        if (d < headDim) dq[qo + d] = acc[i] * scale;
    }
    if (tid == 0) {
        stats[(size_t)h * T + t] = lse;
        stats[(size_t)nHeads * T + (size_t)h * T + t] = D;
    }
}

// attn_bwd_dkv: grid (nKV, T), ATT_THREADS threads, dynamic shared memory (2·hd + 2·ATT_THREADS)
// floats. dk, dv are [T, nKV·hd]; stats as written by attn_bwd_dq.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_bwd_dkv(float* dk, float* dv, const float* stats, const float* dout, const float* q, const float* k,
             const float* v, int T, int nHeads, int nKV, int headDim, float scale) {
    extern __shared__ float sh[];
    float* ks = sh;                             // [hd]
    float* vs = sh + headDim;                   // [hd]
    float* ps = sh + 2 * headDim;               // [ATT_THREADS] P
    float* dss = sh + 2 * headDim + ATT_THREADS;  // [ATT_THREADS] dS
    const int g = blockIdx.x, j = blockIdx.y, tid = threadIdx.x;
    const int group = nHeads / nKV;
    const size_t qStride = (size_t)nHeads * headDim, kvStride = (size_t)nKV * headDim;
    const size_t ko = (size_t)j * kvStride + (size_t)g * headDim;
    for (int d = tid; d < headDim; d += ATT_THREADS) {
        ks[d] = k[ko + d];
        vs[d] = v[ko + d];
    }
    __syncthreads();
    float ak[ATT_MAXD], av[ATT_MAXD];
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) ak[i] = av[i] = 0.f;
    for (int h = g * group; h < (g + 1) * group; h++) {
        const float* lse = stats + (size_t)h * T;
        const float* Ds = stats + (size_t)nHeads * T + (size_t)h * T;
        for (int t0 = j; t0 < T; t0 += ATT_THREADS) {
            int t = t0 + tid;
            float p = 0.f, ds = 0.f;
            if (t < T) {
                const size_t qo = (size_t)t * qStride + (size_t)h * headDim;
                float s = dot_f32(q + qo, ks, headDim) * scale;
                p = expf(s - lse[t]);
                float dp = dot_f32(dout + qo, vs, headDim);
                ds = p * (dp - Ds[t]);
            }
            ps[tid] = p;
            dss[tid] = ds;
            __syncthreads();
            int cnt = min(ATT_THREADS, T - t0);
#pragma unroll
            for (int i = 0; i < ATT_MAXD; i++) {
                int d = tid + i * ATT_THREADS;
                if (d < headDim) {
                    float a = av[i], b = ak[i];
                    const size_t base = (size_t)t0 * qStride + (size_t)h * headDim + d;
                    for (int tt = 0; tt < cnt; tt++) {
                        size_t o = base + (size_t)tt * qStride;
                        a = fmaf(ps[tt], dout[o], a);
                        b = fmaf(dss[tt], q[o], b);
                    }
                    av[i] = a;
                    ak[i] = b;
                }
            }
            __syncthreads();
        }
    }
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) {
        int d = tid + i * ATT_THREADS;
        if (d < headDim) {
            dk[ko + d] = ak[i] * scale;
            dv[ko + d] = av[i];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy over logit rows, as engine/train's CrossEntropy: per scored row (target ≥ 0)
// lse = max + log Σ e^(x − max), loss = (1−ls)·(lse − x_target) + ls·(lse − mean x), and
// dlogits = scale·(softmax − ls/V − (1−ls)·onehot). Unscored rows (target −1) get a zero
// gradient and loss 0. dlogits may be logits.
//
// Design (figures: an H200, in place; a scratch harness timing variants, and
// TestFiguresCrossEntropy). The kernel is memory-bound: a row's log-sum-exp needs all of it
// before the first gradient element, so the floor is two reads and one write, 12·V bytes a row
// (0.19 ms for a 441-row, 256 MiB chunk at the ~4.2 TB/s a device copy reaches). The first
// version read each row three times (max; exp sums; gradient) with scalar loads and a double exp
// per element twice: 0.92 ms for 441 rows, 5.1 ms for 4096. This one measures 0.23 ms and
// 1.74–1.81 ms (1,728 rows, devtrain's automatic chunk: 0.78 ms, 93 % of 4.3 TB/s).
//   Pass 1 reads the row once, online: each thread keeps a running max m and Σ e^(x − m),
// rescaled when a group of 16 logits raises m (rare after the first groups), and the block
// merges the threads' pairs as online softmax does, S = Σ s_i·e^(m_i − M). Pass 2 reads the row
// again and writes the gradient over it (each element read and written by one thread, after
// the block's barriers: in place is safe; plain loads, not the read-only path, for that
// reason). Loads and stores are float4 (LDG.E.128/STG.E.128), four in flight per thread, when
// V % 4 == 0 and both tensors' first rows are 16-byte aligned, which makes every row aligned;
// otherwise (V not a multiple of 4: the rows' alignments vary) scalar, sixteen in flight.
//   Pass 1 keeps exp in double, ce_exp: fp32 expf there measured 1–4e-10 relative error on the
// loss (sum and per row, logits N(0, 3²)) — inside TestTrainingCrossEntropy's 1e-9 bound
// against engine/train, but by 3–6×, and it saved only 8 % at 441 rows (213 vs 231 µs) and
// nothing at 4096 (1753 vs 1740 µs): with ~26 instructions a logit (16 FP64) pass 1 overlaps
// its FP64 work with the memory traffic. The library's double exp (a slow path, 56 bytes of
// spills at the 64-register cap) made the kernel FP64-bound: 522 µs at 441 rows. Pass 2 is
// float32 (expf, 2 ulp): in double it measured 329 against 244 µs (256 threads), since each
// element then needs two conversions besides the exp.
//   Blocks of 512 threads capped at 64 registers (__launch_bounds__(512, 2): no spills) keep 2
// rows on each SM with 4 float4 loads per thread in flight, 64 KB an SM: 231 µs (441 rows) and
// 1740 µs (4096), against 243/1807 µs for 256 threads × 4 blocks, 251/1827 for 1024 × 1, and
// 252/1828 and 226/1756 for 256 × 6 and 512 × 3 at ≤ 40 registers (8 bytes of spills). 441
// rows are 1.7 waves of 264 blocks; the second wave still has ~5 MB of loads in flight, enough
// for HBM, so the waves cost little. Tried and slower: 2 float4 per thread (266 µs at 256
// threads), 8 (125 registers, 284 µs), a grid of 64 or 128 blocks looping over the rows so that
// the rows in flight fit the L2 and pass 2 reads hit it (258–340 µs: too few SMs pulling from
// HBM), and streaming hints on pass 2 (ld.cs/st.cs: the same time).
//   Accuracy (TestTrainingCrossEntropy: dlogits within 1e-5 of engine/cpu and 1e-6 of
// engine/train, relative to the tensor's largest |gradient| G; the loss sum within 1e-6 and
// 1e-9 relative). Loss: x − m is exact in double, ce_exp's relative error is < 4e-13, the
// rescaling and merge factors are the library exp's (1 ulp double), the sums are double: S and
// so lse are within ~1e-12 of engine/train's (measured: 3e-15 relative on the loss per row),
// and the loss formulae are engine/train's. Gradient, non-target elements: the argument
// (x − lh) − ll (lse = lh + ll, two floats) is rounded to float, an error ≤ |x − lse|·2^-24 =
// |ln p|·6e-8 relative to p, and expf adds ≤ 2 ulp (2.4e-7); − ls/V and × scale round to float
// as engine/cpu does (≤ 1.2e-7). With ls = 0, p_j ≤ 1 − p_target ≤ G/scale, and p·|ln p| grows
// for p < 1/e, so the error is ≤ G·(3.6e-7 + 6e-8·max(1, ln(scale/G))): inside 1e-6 unless
// every scored row of the tensor gives its target p > 1 − 2e-5; ls > 0 only adds ls/V to each
// p. Measured: 3e-8 (random logits) and 4e-9–3e-8 (rows with ±80 and −∞ logits). The target
// element, where p − (1 − ls) can cancel, is computed in double from x_target (read before any
// write), as engine/cpu does.

#define CE_THREADS 512  // threads per block, one block per row: training.go's crossEntropyThreads
#define CE_UNROLL 4     // float4 loads in flight per thread and iteration (16 logits)

// ce_exp is e^(x − m) in double for floats x ≤ m (m finite; x may be −∞), branch-free: the
// difference is exact in double; k = round((x − m)/ln 2) by the 1.5·2^52 shifter, r = (x − m) −
// k·ln 2 with ln 2 in two parts (|r| ≤ ln2/2, error ~1e-16), e^r by its Taylor series to r^10
// (truncation ≤ e^0.35·0.347^11/11! < 4e-13 relative), times 2^k built from k's bits. A difference
// below −700 counts as −700 (e^-700 ≈ 1e-304 instead of less: nothing at the sums' precision),
// which keeps 2^k normal and turns −∞ into a finite argument; a NaN x stays NaN.
__device__ __forceinline__ double ce_exp(float x, float m) {
    const double d = x - m < -700.f ? -700.0 : (double)x - (double)m;
    const double t = fma(d, 1.4426950408889634, 6755399441055744.0);
    const double kd = t - 6755399441055744.0;
    const int k = __double2loint(t);
    double r = fma(kd, -6.93147180369123816490e-01, d);
    r = fma(kd, -1.90821492927058770002e-10, r);
    double p = 2.7557319223985893e-07;      // 1/10!
    p = fma(p, r, 2.7557319223985888e-06);  // 1/9!
    p = fma(p, r, 2.4801587301587302e-05);  // 1/8!
    p = fma(p, r, 1.9841269841269841e-04);  // 1/7!
    p = fma(p, r, 1.3888888888888889e-03);  // 1/6!
    p = fma(p, r, 8.3333333333333333e-03);  // 1/5!
    p = fma(p, r, 4.1666666666666667e-02);  // 1/4!
    p = fma(p, r, 1.6666666666666667e-01);  // 1/3!
    p = fma(p, r, 0.5);
    p = fma(p, r, 1.0);
    p = fma(p, r, 1.0);
    return p * __hiloint2double((k + 1023) << 20, 0);
}

// ce_accum folds N logits into one thread's running max m, Σ e^(x − m) s and Σ x sx, online:
// a larger maximum first rescales s by e^(m_old − m_new) (library exp: rare, and m_old may be
// −∞). Until the thread has seen a finite logit m is −∞, s is 0 and its terms are taken
// against 0 instead (the −∞ logits give e^-700-small terms, a NaN gives NaN); NaNs reach s and
// propagate to the loss even though fmaxf skips them.
template <int N>
__device__ __forceinline__ void ce_accum(const float (&v)[N], float& m, double& s, double& sx, bool smooth) {
    float cm = v[0];
#pragma unroll
    for (int i = 1; i < N; i++) cm = fmaxf(cm, v[i]);
    if (cm > m) {
        s *= exp((double)m - (double)cm);
        m = cm;
    }
    const float mr = m == -INFINITY ? 0.f : m;
#pragma unroll
    for (int i = 0; i < N; i++) s += ce_exp(v[i], mr);
    if (smooth) {
#pragma unroll
        for (int i = 0; i < N; i++) sx += (double)v[i];
    }
}

// ce_grad is one non-target element's gradient, scale·(e^(x − lse) − ls/V), in float32: lse
// is the double lh + ll (both floats).
__device__ __forceinline__ float ce_grad(float x, float lh, float ll, float epsV, float scale) {
    return __fmul_rn(__fsub_rn(expf(__fsub_rn(__fsub_rn(x, lh), ll)), epsV), scale);
}

__device__ __forceinline__ float4 ce_grad4(float4 q, int e, int tgt, float gt, float lh, float ll, float epsV, float scale) {
    float4 g;
    g.x = e == tgt ? gt : ce_grad(q.x, lh, ll, epsV, scale);
    g.y = e + 1 == tgt ? gt : ce_grad(q.y, lh, ll, epsV, scale);
    g.z = e + 2 == tgt ? gt : ce_grad(q.z, lh, ll, epsV, scale);
    g.w = e + 3 == tgt ? gt : ce_grad(q.w, lh, ll, epsV, scale);
    return g;
}

// cross_entropy_f32: rows blockIdx.x, blockIdx.x + gridDim.x, … < R, CE_THREADS threads each.
extern "C" __global__ void __launch_bounds__(CE_THREADS, 2)
    cross_entropy_f32(float* dlogits, double* loss, const float* logits, const int* targets, int R, int V, float ls,
                      float scale) {
    __shared__ float red[32];
    __shared__ double redd[32];
    constexpr int NT = CE_THREADS, U = CE_UNROLL;
    const bool smooth = ls > 0.f;
    for (int row = blockIdx.x; row < R; row += gridDim.x) {
        const size_t base = (size_t)row * V;
        const float* x = logits + base;
        float* d = dlogits + base;
        const int tgt = targets[row];
        // float4 loads and stores need 16-byte aligned rows: V a multiple of 4 and both tensors
        // aligned at row 0 (a row view at an odd offset is not).
        const bool vec = (V & 3) == 0 && (((uintptr_t)x | (uintptr_t)d) & 15) == 0;
        if (tgt < 0) {
            if (vec) {
                for (int i = threadIdx.x; i < V >> 2; i += NT) reinterpret_cast<float4*>(d)[i] = make_float4(0.f, 0.f, 0.f, 0.f);
            } else {
                for (int j = threadIdx.x; j < V; j += NT) d[j] = 0.f;
            }
            if (threadIdx.x == 0) loss[row] = 0.0;
            continue;
        }
        const float xt = x[tgt];  // read by every thread before any write (in place)

        // Pass 1: one read of the row.
        float m = -INFINITY;
        double s = 0.0, sx = 0.0;
        if (vec) {
            const float4* x4 = reinterpret_cast<const float4*>(x);
            const int n4 = V >> 2;
            int i = threadIdx.x;
            for (; i + (U - 1) * NT < n4; i += U * NT) {
                float v[4 * U];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const float4 q = x4[i + u * NT];
                    v[4 * u] = q.x, v[4 * u + 1] = q.y, v[4 * u + 2] = q.z, v[4 * u + 3] = q.w;
                }
                ce_accum(v, m, s, sx, smooth);
            }
            for (; i < n4; i += NT) {
                const float4 q = x4[i];
                const float v[4] = {q.x, q.y, q.z, q.w};
                ce_accum(v, m, s, sx, smooth);
            }
        } else {
            int j = threadIdx.x;
            for (; j + (4 * U - 1) * NT < V; j += 4 * U * NT) {
                float v[4 * U];
#pragma unroll
                for (int u = 0; u < 4 * U; u++) v[u] = x[j + u * NT];
                ce_accum(v, m, s, sx, smooth);
            }
            for (; j < V; j += NT) {
                const float v[1] = {x[j]};
                ce_accum(v, m, s, sx, smooth);
            }
        }
        // The threads' (m, s) pairs combine as online softmax: S = Σ s_i·e^(m_i − M).
        const float M = block_max(m, red);
        const double S = block_sum_d(m == -INFINITY ? s : s * exp((double)m - (double)M), redd);
        if (smooth) sx = block_sum_d(sx, redd);
        const double lse = (double)M + log(S);
        const double eps = ls, epsV = eps / (double)V;
        if (threadIdx.x == 0) {
            double nll = lse - (double)xt;
            if (smooth) nll = (1 - eps) * nll + eps * (lse - sx / (double)V);
            loss[row] = nll;
        }

        // Pass 2: the gradient, element by element where it was read; the target's in double.
        const float gt = __fmul_rn((float)(exp((double)xt - lse) - epsV - (1 - eps)), scale);
        const float lh = (float)lse, ll = (float)(lse - (double)lh), epsVf = (float)epsV;
        if (vec) {
            const float4* x4 = reinterpret_cast<const float4*>(x);
            float4* d4 = reinterpret_cast<float4*>(d);
            const int n4 = V >> 2;
            int i = threadIdx.x;
            for (; i + (U - 1) * NT < n4; i += U * NT) {
                float4 q[U];
#pragma unroll
                for (int u = 0; u < U; u++) q[u] = x4[i + u * NT];
#pragma unroll
                for (int u = 0; u < U; u++) d4[i + u * NT] = ce_grad4(q[u], 4 * (i + u * NT), tgt, gt, lh, ll, epsVf, scale);
            }
            for (; i < n4; i += NT) d4[i] = ce_grad4(x4[i], 4 * i, tgt, gt, lh, ll, epsVf, scale);
        } else {
            int j = threadIdx.x;
            for (; j + (4 * U - 1) * NT < V; j += 4 * U * NT) {
                float q[4 * U];
#pragma unroll
                for (int u = 0; u < 4 * U; u++) q[u] = x[j + u * NT];
#pragma unroll
                for (int u = 0; u < 4 * U; u++) d[j + u * NT] = j + u * NT == tgt ? gt : ce_grad(q[u], lh, ll, epsVf, scale);
            }
            for (; j < V; j += NT) {
                const float q = x[j];
                d[j] = j == tgt ? gt : ce_grad(q, lh, ll, epsVf, scale);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AdamW, as engine/optim's update() (format 2, session 10): for each element, with g =
// grad·gscale,
//   m = β1·m + (1−β1)·g;  v = β2·v + ((1−β2)·g)·g;
//   w = w − decay·w − lrc·(m / (√v·rbc2 + eps))      (lrc = lr/bc1, rbc2 = 1/√bc2: optim's)
// every operation rounded to float32 separately (optim's conversions keep Go from fusing).
// Moments are fp32 or optim's Int8 format (blocks of 64: m signed linear int8 with absmax
// scale, √v the zero-free unsigned code (k+1)/256 of the block's max √v, both codes read from
// the bits of a float32 sum, see adamw.cuh m_code / v_code). Weights are f32, or bf16 rounded
// to nearest even or stochastically with optim's SRDraw(key, index). In place, one pass.
//
// Layout (session 5). The kernel moves ~12.25 B per element (bf16 master, int8 moments): its
// memory floor on an H200 is ~11.5 ms for the 4.02 B parameters at 4.3 TB/s. Each lane owns 8
// consecutive elements and a warp 256 per iteration — four int8 blocks, one per group of 8
// lanes, whose absmax is a 3-step __shfl_xor within the group (max is exact and order-free).
// Loads and stores are vectors: bf16 w 16 B (f32 2×16 B), grad 2×16 B (a bf16 gradient 16 B:
// the _gb kernels, 10.25 B an element), the int8 codes of m and √v 8 B each, one scale pair per
// lane. With int8 moments (session 12) a lane owns 16 elements and a warp 512 — four lanes a
// block, a 2-step shuffle (adamw_lane16); fp32 moments keep the 8-element lanes.
//
// Instructions (why format 2). Session 5's kernel executed 98 SASS instructions per element
// (121 with stochastic rounding) and ran at ~half the memory floor, bound by issue: two FMA
// divisions by bc1 and bc2, two square roots (the update's √(v/bc2) and the code's √v), a
// double-precision fallback for the √v code near rounding boundaries, six instructions of
// round-and-clamp per code, and a 64-bit splitmix hash per stochastically rounded element
// (~22). Format 2 folds the bias corrections into two host constants, takes one √v for both
// the update and the code, reads each code from one float add (plus two integer clamps for
// √v), and hashes with 32-bit multiplies (~8). The shortcuts left are sqrt_fast (a lane whose
// v are all +0 or in [2^-100, FLT_MAX]) and the vector roundings of w (adamw_w8); other lanes
// take the plain operations, so every result is the scalar kernel's bit for bit. A parameter
// whose pointers are not 16-byte aligned (w, grad; fp32 moments) or 8-byte aligned (int8
// codes) — a view at an odd offset — and the last n mod 256 elements go through the scalar
// kernel (adamw_blocks).

// INV127 is RN(1/127) (optim's inv127), the int8 m decode's factor.
#define INV127 __uint_as_float(0x3C010204u)

// adamw_block1 is the scalar code: the calling warp updates block blk of 64 elements (lane l
// owns elements l and l+32), every operation the plain one. It handles the tail past the
// vectorized part, and whole parameters whose pointers are not aligned for vectors.
template <bool BF16, bool INT8, bool GB>
__device__ __forceinline__ void adamw_block1(void* __restrict__ w, const void* __restrict__ grad, void* __restrict__ mbuf,
                                             void* __restrict__ vbuf, float* __restrict__ msc, float* __restrict__ vsc,
                                             const AdamParams& p, int sr, uint32_t key, size_t n, size_t blk) {
    const int lane = threadIdx.x & 31;
    {
        float mo[2], vo[2], so[2], wo[2];
        bool ok[2];
        float mf = 0.f, vf = 0.f;
        if (INT8) {
            mf = __fmul_rn(msc[blk], INV127);
            vf = __fmul_rn(vsc[blk], 0.00390625f);
        }
#pragma unroll
        for (int e = 0; e < 2; e++) {
            size_t i = blk * 64 + lane + 32 * e;
            ok[e] = i < n;
            mo[e] = vo[e] = so[e] = wo[e] = 0.f;
            if (!ok[e]) continue;
            float wv = BF16 ? bf16_to_f32(reinterpret_cast<const uint16_t*>(w)[i]) : reinterpret_cast<const float*>(w)[i];
            float m, v;
            if (INT8) {
                m = __fmul_rn((float)reinterpret_cast<const int8_t*>(mbuf)[i], mf);
                float sv = __fmul_rn(__fadd_rn((float)reinterpret_cast<const uint8_t*>(vbuf)[i], 1.f), vf);
                v = vsc[blk] == 0.f ? 0.f : __fmul_rn(sv, sv);
            } else {
                m = reinterpret_cast<const float*>(mbuf)[i];
                v = reinterpret_cast<const float*>(vbuf)[i];
            }
            float g = __fmul_rn(grad_at<GB>(grad, i), p.gscale);
            m = __fadd_rn(__fmul_rn(p.b1, m), __fmul_rn(p.omb1, g));
            v = __fadd_rn(__fmul_rn(p.b2, v), __fmul_rn(__fmul_rn(p.omb2, g), g));
            const float sv = __fsqrt_rn(v);
            const float upd = __fdiv_rn(m, __fadd_rn(__fmul_rn(sv, p.rbc2), p.eps));
            wv = __fsub_rn(__fsub_rn(wv, __fmul_rn(p.decay, wv)), __fmul_rn(p.lrc, upd));
            mo[e] = m;
            vo[e] = v;
            so[e] = sv;
            wo[e] = wv;
        }
        float am = 0.f, avmax = 0.f;
        if (INT8) {
            am = warp_max(fmaxf(fabsf(mo[0]), fabsf(mo[1])));
            avmax = warp_max(fmaxf(fabsf(vo[0]), fabsf(vo[1])));
        }
        const float ms = am, vs = __fsqrt_rn(avmax);
        const float minv = ms != 0.f ? __fdiv_rn(127.f, ms) : 0.f, vinv = vs != 0.f ? __fdiv_rn(256.f, vs) : 0.f;
#pragma unroll
        for (int e = 0; e < 2; e++) {
            if (!ok[e]) continue;
            size_t i = blk * 64 + lane + 32 * e;
            if (BF16) {
                uint16_t h = sr ? stochastic_bf16(wo[e], sr_draw(key, i)) : bf16_rne(wo[e]);
                reinterpret_cast<uint16_t*>(w)[i] = h;
            } else {
                reinterpret_cast<float*>(w)[i] = wo[e];
            }
            if (INT8) {
                reinterpret_cast<uint8_t*>(mbuf)[i] = (uint8_t)m_code(mo[e], minv);
                reinterpret_cast<uint8_t*>(vbuf)[i] = (uint8_t)v_code(so[e], vinv);
            } else {
                reinterpret_cast<float*>(mbuf)[i] = mo[e];
                reinterpret_cast<float*>(vbuf)[i] = vo[e];
            }
        }
        if (INT8 && lane == 0) {
            msc[blk] = ms;
            vsc[blk] = vs;
        }
    }
}

// adamw_blocks runs adamw_block1 over the blocks from blk0 on, one warp a block.
template <bool BF16, bool INT8, bool GB>
__device__ __forceinline__ void adamw_blocks(void* __restrict__ w, const void* __restrict__ grad, void* __restrict__ mbuf,
                                             void* __restrict__ vbuf, float* __restrict__ msc, float* __restrict__ vsc,
                                             const AdamParams& p, int sr, uint32_t key, size_t n, size_t blk0) {
    const size_t warps = (size_t)gridDim.x * (blockDim.x >> 5);
    for (size_t blk = blk0 + (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); blk * 64 < n; blk += warps)
        adamw_block1<BF16, INT8, GB>(w, grad, mbuf, vbuf, msc, vsc, p, sr, key, n, blk);
}

// adamw_lane8 updates elements i0 … i0+7 (i0 a multiple of 8, all < n) of a parameter with fp32
// moments, with vector loads and the exact shortcuts (int8 moments: adamw_lane16). key is
// optim's SRKey of the call.
template <bool BF16, bool GB>
__device__ __forceinline__ void adamw_lane8(void* __restrict__ w, const void* __restrict__ grad, void* __restrict__ mbuf,
                                            void* __restrict__ vbuf, const AdamParams& p, bool divu, int sr, uint32_t key,
                                            size_t i0) {
    float wv[8], mv[8], vv[8];
    load8<BF16>(w, i0, wv);
    const float4* m4 = reinterpret_cast<const float4*>(mbuf) + i0 / 4;
    const float4* v4 = reinterpret_cast<const float4*>(vbuf) + i0 / 4;
    const float4 a = m4[0], b = m4[1], c = v4[0], d = v4[1];
    mv[0] = a.x, mv[1] = a.y, mv[2] = a.z, mv[3] = a.w, mv[4] = b.x, mv[5] = b.y, mv[6] = b.z, mv[7] = b.w;
    vv[0] = c.x, vv[1] = c.y, vv[2] = c.z, vv[3] = c.w, vv[4] = d.x, vv[5] = d.y, vv[6] = d.z, vv[7] = d.w;
    float sv[8], am, av;
    adamw_update8<BF16, GB>(w, grad, wv, mv, vv, sv, p, divu, sr, key, i0, am, av);
    float4* mo = reinterpret_cast<float4*>(mbuf) + i0 / 4;
    float4* vo = reinterpret_cast<float4*>(vbuf) + i0 / 4;
    mo[0] = make_float4(mv[0], mv[1], mv[2], mv[3]);
    mo[1] = make_float4(mv[4], mv[5], mv[6], mv[7]);
    vo[0] = make_float4(vv[0], vv[1], vv[2], vv[3]);
    vo[1] = make_float4(vv[4], vv[5], vv[6], vv[7]);
}

template <bool BF16, bool GB>
__device__ __forceinline__ void adamw_lane16_from(void* __restrict__ w, void* __restrict__ mbuf, void* __restrict__ vbuf,
                                                  float* __restrict__ msc, float* __restrict__ vsc, const AdamParams& p,
                                                  bool divu, int sr, uint32_t key, uint32_t magic, size_t i0,
                                                  const Vec8<BF16> (&wr)[2], const Vec8<GB> (&gr)[2], uint4 mc, uint4 vc,
                                                  float mscale, float vscale);

// adamw_lane16 updates elements i0 … i0+15 (i0 a multiple of 16, all < n) of an int8-moment
// parameter: four lanes a block of 64, a warp 512 elements an iteration (session 12). Against
// adamw_lane8 (a lane 8 elements, eight lanes a block) it halves what a lane does once per
// iteration whatever its element count — the addresses and their constants, the block's
// shuffles, √ and reciprocals of its maxima, the scale loads and stores, the loop — which was
// about a quarter of the lane8 loop's instructions. Every load is issued first (the w and
// gradient vectors raw, widened half by half), then each half of 8 is updated as adamw_lane8
// updates its 8 (adamw_update8g), then both codes of all 16 with the block's scales.
template <bool BF16, bool GB>
__device__ __forceinline__ void adamw_lane16(void* __restrict__ w, const void* __restrict__ grad, void* __restrict__ mbuf,
                                             void* __restrict__ vbuf, float* __restrict__ msc, float* __restrict__ vsc,
                                             const AdamParams& p, bool divu, int sr, uint32_t key, uint32_t magic,
                                             size_t i0) {
    Vec8<BF16> wr[2];
    Vec8<GB> gr[2];
#pragma unroll
    for (int h = 0; h < 2; h++) wr[h].load(w, i0 + 8 * h), gr[h].ldg(grad, i0 + 8 * h);
    const uint4 mc = *reinterpret_cast<const uint4*>(reinterpret_cast<const int8_t*>(mbuf) + i0);
    const uint4 vc = *reinterpret_cast<const uint4*>(reinterpret_cast<const uint8_t*>(vbuf) + i0);
    const size_t blk = i0 >> 6;
    adamw_lane16_from<BF16, GB>(w, mbuf, vbuf, msc, vsc, p, divu, sr, key, magic, i0, wr, gr, mc, vc, msc[blk], vsc[blk]);
}

// adamw_lane16_from is adamw_lane16 once its loads have landed: the lane's 16 weights and
// gradients as loaded (wr, gr), its 16 m and √v codes (mc, vc) and its block's two scales.
template <bool BF16, bool GB>
__device__ __forceinline__ void adamw_lane16_from(void* __restrict__ w, void* __restrict__ mbuf, void* __restrict__ vbuf,
                                                  float* __restrict__ msc, float* __restrict__ vsc, const AdamParams& p,
                                                  bool divu, int sr, uint32_t key, uint32_t magic, size_t i0,
                                                  const Vec8<BF16> (&wr)[2], const Vec8<GB> (&gr)[2], uint4 mc, uint4 vc,
                                                  float mscale, float vscale) {
    const size_t blk = i0 >> 6;
    const float mf = __fmul_rn(mscale, INV127), vf = __fmul_rn(vscale, 0.00390625f);
    const uint32_t mw[4] = {mc.x ^ 0x80808080u, mc.y ^ 0x80808080u, mc.z ^ 0x80808080u, mc.w ^ 0x80808080u};
    const uint32_t vw[4] = {vc.x, vc.y, vc.z, vc.w};
    float mo[16], so[16], am = 0.f, av = 0.f;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float wv[8], gv[8], mv[8], vv[8], sv[8], a, b;
        wr[h].widen(wv);
        gr[h].widen(gv);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int k = 8 * h + e;
            mv[e] = __fmul_rn(byte_f32(mw[k >> 2], k & 3, 8388736.f, magic), mf);
            // (c + 1)·vf squared; a zero scale gives vf = +0 and v = +0, as the scalar kernel's test.
            const float s = __fmul_rn(byte_f32(vw[k >> 2], k & 3, 8388607.f, magic), vf);
            vv[e] = __fmul_rn(s, s);
        }
        adamw_update8g<BF16>(w, gv, wv, mv, vv, sv, p, divu, sr, key, i0 + 8 * h, a, b);
        am = fmaxf(am, a), av = fmaxf(av, b);
#pragma unroll
        for (int e = 0; e < 8; e++) mo[8 * h + e] = mv[e], so[8 * h + e] = sv[e];
    }
    // The block's absmax of m and max of v over its 4 lanes (fmaxf: exact, order-free).
#pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
        am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, o));
        av = fmaxf(av, __shfl_xor_sync(0xffffffffu, av, o));
    }
    const float ms = am, vs = sqrt_rn(av);
    // 127/absmax and 256/max√v (0 for a zero maximum), by div_pos when both maxima are in its range.
    float minv, vinv;
    if (ms >= 0x1p-60f && ms <= 0x1p60f && vs >= 0x1p-60f && vs <= 0x1p60f) {
        minv = div_pos(127.f, ms);
        vinv = div_pos(256.f, vs);
    } else {
        ADAMW_SLOW();
        minv = ms != 0.f ? __fdiv_rn(127.f, ms) : 0.f;
        vinv = vs != 0.f ? __fdiv_rn(256.f, vs) : 0.f;
    }
    uint32_t mq[4], vq[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        mq[j] = pack4(m_code(mo[4 * j], minv), m_code(mo[4 * j + 1], minv), m_code(mo[4 * j + 2], minv),
                      m_code(mo[4 * j + 3], minv));
        vq[j] = pack4(v_code(so[4 * j], vinv), v_code(so[4 * j + 1], vinv), v_code(so[4 * j + 2], vinv),
                      v_code(so[4 * j + 3], vinv));
    }
    *reinterpret_cast<uint4*>(reinterpret_cast<int8_t*>(mbuf) + i0) = make_uint4(mq[0], mq[1], mq[2], mq[3]);
    *reinterpret_cast<uint4*>(reinterpret_cast<uint8_t*>(vbuf) + i0) = make_uint4(vq[0], vq[1], vq[2], vq[3]);
    if ((threadIdx.x & 3) == 0) {
        msc[blk] = ms;
        vsc[blk] = vs;
    }
}

// ADAM_ITEM is the elements a warp updates an iteration: 512 with int8 moments (adamw_lane16),
// 256 with fp32 ones (adamw_lane8). training.go adamChunkOf.
#define ADAM_ITEM(INT8) ((INT8) ? 512 : 256)

template <bool BF16, bool INT8, bool GB>
__device__ __forceinline__ void adamw(void* __restrict__ w, const void* __restrict__ grad, void* __restrict__ mbuf,
                                      void* __restrict__ vbuf, float* __restrict__ msc, float* __restrict__ vsc,
                                      AdamParams p, int sr, uint32_t key, size_t n) {
    // Vectors need w, grad, the int8 codes and fp32 moments 16-byte aligned.
    const uintptr_t mis = ((uintptr_t)w | (uintptr_t)grad | (uintptr_t)mbuf | (uintptr_t)vbuf) & 15u;
    constexpr int item = ADAM_ITEM(INT8);
    const size_t chunks = mis ? 0 : n / item;
    const uint32_t magic = byte_magic(n);
    const bool divu = div_uniform(p);
    const size_t warps = (size_t)gridDim.x * (blockDim.x >> 5);
    for (size_t c = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); c < chunks; c += warps) {
        if constexpr (INT8)
            adamw_lane16<BF16, GB>(w, grad, mbuf, vbuf, msc, vsc, p, divu, sr, key, magic, c * item + (threadIdx.x & 31) * 16);
        else
            adamw_lane8<BF16, GB>(w, grad, mbuf, vbuf, p, divu, sr, key, c * item + (threadIdx.x & 31) * 8);
    }
    adamw_blocks<BF16, INT8, GB>(w, grad, mbuf, vbuf, msc, vsc, p, sr, key, n, chunks * (item / 64));
}

// ---------------------------------------------------------------------------------------------
// Staged int8 AdamW for one bf16 parameter (adamw_bf16_int8{,_gb}_st; training.go adamOneArgs).
// adamw_lane16 issues an item's loads and waits for them before it computes, so a warp has data
// in flight only between its items; at the three blocks an SM its registers allow, the plain
// kernel moves 3.3 TB/s of the ~3.85 a traffic-only probe reaches (NOTES.md, sessions 10-13).
// Here each warp copies its next item (w, gradient, m and √v codes, the eight blocks' scales:
// 3,136 bytes with bf16 gradients) into the other of two shared-memory stages with cp.async
// while it computes the current one, so its loads stay in flight through the arithmetic and no
// register more is needed. The arithmetic is adamw_lane16's (adamw_lane16_from), element for
// element, so the staged kernel's results are the plain kernel's bit for bit (TestAdamWStaged).
template <bool GB>
struct AdamStage {  // byte offsets of one stage (one warp's item); every part a multiple of 16
    static constexpr int w = 0, g = 1024, m = g + 512 * (GB ? 2 : 4), v = m + 512, ms = v + 512, vs = ms + 32,
                         bytes = vs + 32;
};

__device__ __forceinline__ uint32_t adam_smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void adam_cp16(uint32_t dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}

// adamw_stage_item copies item c's bytes into the stage at dst (each 16-byte copy instruction of
// the warp covers 512 contiguous bytes of w and of the gradient), then closes the lane's group.
template <bool GB>
__device__ __forceinline__ void adamw_stage_item(uint32_t dst, const void* w, const void* grad, const void* mbuf,
                                                 const void* vbuf, const float* msc, const float* vsc, size_t c, int lane) {
    using L = AdamStage<GB>;
    const char* ws = reinterpret_cast<const char*>(w) + c * 1024;
    const char* gs = reinterpret_cast<const char*>(grad) + c * 512 * (GB ? 2 : 4);
#pragma unroll
    for (int j = 0; j < 2; j++) adam_cp16(dst + L::w + 512 * j + 16 * lane, ws + 512 * j + 16 * lane);
#pragma unroll
    for (int j = 0; j < (GB ? 2 : 4); j++) adam_cp16(dst + L::g + 512 * j + 16 * lane, gs + 512 * j + 16 * lane);
    adam_cp16(dst + L::m + 16 * lane, reinterpret_cast<const char*>(mbuf) + c * 512 + 16 * lane);
    adam_cp16(dst + L::v + 16 * lane, reinterpret_cast<const char*>(vbuf) + c * 512 + 16 * lane);
    if (lane < 4) adam_cp16(dst + L::ms + 16 * lane, (lane < 2 ? msc + 4 * lane : vsc + 4 * (lane - 2)) + c * 8);
    asm volatile("cp.async.commit_group;" ::: "memory");
}

template <bool GB>
__device__ __forceinline__ void adamw_staged(void* __restrict__ w, const void* __restrict__ grad, void* __restrict__ mbuf,
                                             void* __restrict__ vbuf, float* __restrict__ msc, float* __restrict__ vsc,
                                             AdamParams p, int sr, uint32_t key, size_t n) {
    using L = AdamStage<GB>;
    extern __shared__ __align__(16) unsigned char adam_stages[];
    const int lane = threadIdx.x & 31;
    const uint32_t st0 = adam_smem_u32(adam_stages) + (threadIdx.x >> 5) * 2 * L::bytes;
    const unsigned char* sp0 = adam_stages + (threadIdx.x >> 5) * 2 * L::bytes;
    const uintptr_t mis = ((uintptr_t)w | (uintptr_t)grad | (uintptr_t)mbuf | (uintptr_t)vbuf | (uintptr_t)msc |
                           (uintptr_t)vsc) & 15u;
    const size_t chunks = mis ? 0 : n / 512;
    const uint32_t magic = byte_magic(n);
    const bool divu = div_uniform(p);
    const size_t warps = (size_t)gridDim.x * (blockDim.x >> 5);
    size_t c = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (c < chunks) adamw_stage_item<GB>(st0, w, grad, mbuf, vbuf, msc, vsc, c, lane);
    for (int s = 0; c < chunks; c += warps, s ^= 1) {
        // Every lane has read the stage the next copies overwrite (it read it last iteration).
        __syncwarp();
        if (c + warps < chunks)
            adamw_stage_item<GB>(st0 + (s ^ 1) * L::bytes, w, grad, mbuf, vbuf, msc, vsc, c + warps, lane);
        else
            asm volatile("cp.async.commit_group;" ::: "memory");  // an empty group: the wait below still means item c
        asm volatile("cp.async.wait_group 1;" ::: "memory");
        __syncwarp();  // the other lanes' copies of this item are visible
        const unsigned char* sp = sp0 + s * L::bytes;
        Vec8<true> wr[2];
        Vec8<GB> gr[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            wr[h].u[0] = *reinterpret_cast<const uint4*>(sp + L::w + 32 * lane + 16 * h);
#pragma unroll
            for (int k = 0; k < (GB ? 1 : 2); k++)
                gr[h].u[k] = *reinterpret_cast<const uint4*>(sp + L::g + (GB ? 32 : 64) * lane + (GB ? 16 : 32) * h + 16 * k);
        }
        const uint4 mc = *reinterpret_cast<const uint4*>(sp + L::m + 16 * lane);
        const uint4 vc = *reinterpret_cast<const uint4*>(sp + L::v + 16 * lane);
        const float ms = *reinterpret_cast<const float*>(sp + L::ms + 4 * (lane >> 2));
        const float vs = *reinterpret_cast<const float*>(sp + L::vs + 4 * (lane >> 2));
        adamw_lane16_from<true, GB>(w, mbuf, vbuf, msc, vsc, p, divu, sr, key, magic, c * 512 + 16 * lane, wr, gr, mc, vc,
                                    ms, vs);
    }
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    adamw_blocks<true, true, GB>(w, grad, mbuf, vbuf, msc, vsc, p, sr, key, n, chunks * 8);
}

// Entry points adamw_{f32,bf16}_{fp32,int8}[_gb] and the staged adamw_bf16_int8{,_gb}_st (chained
// in an AdamWMany call as the batch launches below are: pdl_trigger first, pdl_wait last; no-ops
// in a plain launch): the scalars are optim.Coeffs.Scalars() (lrc, β1, β2, 1−β1, 1−β2, rbc2, eps,
// decay) and the gradient's scale; key is optim.SRKey(seed, step, param). The _gb forms take a
// bf16 gradient (adamw.cuh grad8), the others a float32 one. UPDATE is the call that updates
// the parameter from those names.
#define ADAMW_ENTRY_OF(name, UPDATE)                                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                                          \
    name(void* w, const void* grad, void* m, void* v, float* msc, float* vsc, float lrc, float b1, float b2,   \
         float omb1, float omb2, float rbc2, float eps, float decay, float gscale, int sr, unsigned key,        \
         size_t n) {                                                                                           \
        AdamParams p = {lrc, b1, b2, omb1, omb2, rbc2, eps, decay, gscale};                                    \
        ADAMW_COUNT_FIX_SR(sr);                                                                                \
        pdl_trigger();                                                                                         \
        UPDATE;                                                                                                \
        pdl_wait();                                                                                            \
    }
#define ADAMW_STAGED_ENTRY(name, GB) ADAMW_ENTRY_OF(name, (adamw_staged<GB>(w, grad, m, v, msc, vsc, p, sr, key, n)))
ADAMW_STAGED_ENTRY(adamw_bf16_int8_st, false)
ADAMW_STAGED_ENTRY(adamw_bf16_int8_gb_st, true)

#define ADAMW_ENTRY(name, BF16, INT8, GB) \
    ADAMW_ENTRY_OF(name, (adamw<BF16, INT8, GB>(w, grad, m, v, msc, vsc, p, sr, key, n)))
ADAMW_ENTRY(adamw_f32_fp32, false, false, false)
ADAMW_ENTRY(adamw_bf16_fp32, true, false, false)
ADAMW_ENTRY(adamw_f32_int8, false, true, false)
ADAMW_ENTRY(adamw_bf16_int8, true, true, false)
ADAMW_ENTRY(adamw_f32_fp32_gb, false, false, true)
ADAMW_ENTRY(adamw_bf16_fp32_gb, true, false, true)
ADAMW_ENTRY(adamw_f32_int8_gb, false, true, true)
ADAMW_ENTRY(adamw_bf16_int8_gb, true, true, true)

// ---------------------------------------------------------------------------------------------
// Several parameters in one launch (backend.AdamWBatch; training.go AdamWMany). A step over
// Qwen3-4B's 398 tensors was 398 launches, 145 of them norms of 128 or 2,560 elements: one
// 99.6 M-element launch moves 3.55 TB/s (TestFiguresAdamW), the whole step only 3.22.
//
// AdamJob is one parameter: its pointers and length, the step's scalars, the rounding key, and
// the first item (ADAM_ITEM elements: 512 int8, 256 fp32) of the launch it owns; vec when its pointers allow the
// vector loads. The host writes the same 112 bytes (training.go putAdamJob). grad is float32
// or bf16 as the kernel's name says (_gb): a launch's jobs all have one gradient type.
struct AdamJob {
    void* w;
    const void* grad;
    void* m;
    void* v;
    float* msc;
    float* vsc;
    unsigned long long n, first;
    AdamParams p;
    unsigned key;
    int sr, vec;
};
static_assert(sizeof(AdamJob) == 112, "AdamJob is training.go's 112-byte descriptor");
#define ADAM_MANY 36  // jobs a launch: the parameters stay within the 4 KB of kernel parameters
struct AdamJobs {
    int njobs, pad;
    AdamJob job[ADAM_MANY];
};

// adamw_many: warps walk the launch's items in order; an item is a job's whole ADAM_ITEM-element
// chunk (adamw_lane16 for int8 moments, adamw_lane8 for fp32, when vec) or its last, partial
// chunk and every chunk of a job without vec (adamw_block1 over its blocks of 64) — each element
// computed as AdamW alone computes it.
template <bool BF16, bool INT8, bool GB>
__device__ __forceinline__ void adamw_many(const AdamJobs& J, unsigned long long items) {
    const size_t warps = (size_t)gridDim.x * (blockDim.x >> 5);
    int j = 0;
    for (size_t it = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); it < items; it += warps) {
        while (j + 1 < J.njobs && it >= J.job[j + 1].first) j++;
        const AdamJob& a = J.job[j];
        constexpr int item = ADAM_ITEM(INT8);
        const size_t i0 = (it - a.first) * item;
        if (a.vec && i0 + item <= a.n) {
            if constexpr (INT8)
                adamw_lane16<BF16, GB>(a.w, a.grad, a.m, a.v, a.msc, a.vsc, a.p, div_uniform(a.p), a.sr, a.key,
                                       byte_magic(a.n), i0 + (threadIdx.x & 31) * 16);
            else
                adamw_lane8<BF16, GB>(a.w, a.grad, a.m, a.v, a.p, div_uniform(a.p), a.sr, a.key, i0 + (threadIdx.x & 31) * 8);
        } else {
            for (size_t blk = i0 / 64; blk * 64 < a.n && blk < i0 / 64 + item / 64; blk++)
                adamw_block1<BF16, INT8, GB>(a.w, a.grad, a.m, a.v, a.msc, a.vsc, a.p, a.sr, a.key, a.n, blk);
        }
    }
}

// The batch launches of one AdamWMany call touch disjoint memory, so each may start while the
// one before it drains (training.go adamManyLaunch chains them as programmatic dependents): it
// lets the next launch start at once (pdl_trigger) and, so that the stream's order still holds
// for whatever follows the chain, ends only after the launch before it has (pdl_wait). Both are
// no-ops in a plain launch.
#define ADAMW_MANY_ENTRY(name, BF16, INT8, GB)                                                                 \
    extern "C" __global__ void __launch_bounds__(256) name(const AdamJobs jobs, unsigned long long items) {      \
        pdl_trigger();                                                                                         \
        adamw_many<BF16, INT8, GB>(jobs, items);                                                               \
        pdl_wait();                                                                                            \
    }
ADAMW_MANY_ENTRY(adamw_many_f32_fp32, false, false, false)
ADAMW_MANY_ENTRY(adamw_many_bf16_fp32, true, false, false)
ADAMW_MANY_ENTRY(adamw_many_f32_int8, false, true, false)
ADAMW_MANY_ENTRY(adamw_many_bf16_int8, true, true, false)
ADAMW_MANY_ENTRY(adamw_many_f32_fp32_gb, false, false, true)
ADAMW_MANY_ENTRY(adamw_many_bf16_fp32_gb, true, false, true)
ADAMW_MANY_ENTRY(adamw_many_f32_int8_gb, false, true, true)
ADAMW_MANY_ENTRY(adamw_many_bf16_int8_gb, true, true, true)

// div_pos_check (TestDivPos only, not used by the engine): div_pos against __fdiv_rn on n pairs
// drawn from a hash of (seed, index) across div_pos's whole range — a sign, a binade of
// [2^-60, 2^60] and a significand each for a; a binade of [2^-60, 2^57] and a significand for b;
// one a in 64 is ±0, one in 16 a binade edge. out[0] counts the pairs whose bits differ, out[1]
// and out[2] hold one such pair's a and b.
extern "C" __global__ void div_pos_check(unsigned seed, unsigned long long n, unsigned* out) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const uint32_t h1 = sr_mix((uint32_t)i * 0x9e3779b1u + seed), h2 = sr_mix((uint32_t)(i >> 32) ^ h1 ^ 0x85ebca6bu);
        const uint32_t h3 = sr_mix(h2 + 0x27d4eb2fu);
        uint32_t ea = 67u + h1 % 121u, eb = 67u + h2 % 118u;  // biased exponents of 2^-60 … 2^60, 2^57
        uint32_t ma = h2 >> 9, mb = h3 >> 9;
        if ((h3 & 15u) == 0u) ma = (h3 & 16u) ? 0u : 0x7FFFFFu;  // significands at a binade's edges
        if ((h3 & 0xF0u) == 0u) mb = (h3 & 0x100u) ? 0u : 0x7FFFFFu;
        float a = __uint_as_float((h1 & 0x80000000u) | ea << 23 | ma);
        if ((h3 & 0x3F000u) == 0u) a = __uint_as_float(h1 & 0x80000000u);  // ±0
        const float b = __uint_as_float(eb << 23 | mb);
        if (__float_as_uint(div_pos(a, b)) != __float_as_uint(__fdiv_rn(a, b))) {
            if (atomicAdd(out, 1u) == 0u) {
                out[1] = __float_as_uint(a);
                out[2] = __float_as_uint(b);
            }
        }
    }
}

// adamw_probe (TestFiguresAdamW only, not used by the engine): adamw_bf16_int8's memory traffic
// without its arithmetic — the same lanes, vector loads and stores of a bf16 master, an f32
// gradient (adamw_probe_gb: bf16, adamw_bf16_int8_gb's traffic), int8 codes and per-64 scales,
// in place, combined by a few integer operations — so that its time bounds what the access
// pattern allows (n a multiple of 256).
template <bool GB>
__device__ __forceinline__ void adamw_probe_body(uint16_t* w, const void* grad, uint8_t* m, uint8_t* v, float* msc,
                                                 float* vsc, size_t n) {
    const size_t chunks = n / 256, warps = (size_t)gridDim.x * (blockDim.x >> 5);
    for (size_t c = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); c < chunks; c += warps) {
        const size_t i0 = c * 256 + (threadIdx.x & 31) * 8;
        uint4 wv = *reinterpret_cast<const uint4*>(w + i0);
        uint4 g0, g1 = make_uint4(0u, 0u, 0u, 0u);  // a bf16 gradient's 8 elements are all in g0
        if (GB) {
            g0 = __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const uint16_t*>(grad) + i0));
        } else {
            const uint4* g4 = reinterpret_cast<const uint4*>(reinterpret_cast<const float*>(grad) + i0);
            g0 = __ldg(g4), g1 = __ldg(g4 + 1);
        }
        uint2 mc = *reinterpret_cast<const uint2*>(m + i0), vc = *reinterpret_cast<const uint2*>(v + i0);
        const uint32_t s = __float_as_uint(msc[i0 >> 6]) ^ __float_as_uint(vsc[i0 >> 6]);
        const uint32_t x = g0.x ^ g0.y ^ g0.z ^ g0.w ^ g1.x ^ g1.y ^ g1.z ^ g1.w ^ s;
        wv.x ^= x & 1u, wv.y ^= mc.x & 1u, wv.z ^= vc.x & 1u, wv.w ^= (x >> 1) & 1u;
        mc.x ^= x & 0x01010101u, vc.y ^= (x >> 2) & 0x01010101u;
        *reinterpret_cast<uint4*>(w + i0) = wv;
        *reinterpret_cast<uint2*>(m + i0) = mc;
        *reinterpret_cast<uint2*>(v + i0) = vc;
        if ((threadIdx.x & 7) == 0) {
            msc[i0 >> 6] = __uint_as_float(s & 0x3F7FFFFFu);
            vsc[i0 >> 6] = __uint_as_float(x & 0x3F7FFFFFu);
        }
    }
}
extern "C" __global__ void __launch_bounds__(256) adamw_probe(uint16_t* w, const float* grad, uint8_t* m, uint8_t* v,
                                                               float* msc, float* vsc, size_t n) {
    adamw_probe_body<false>(w, grad, m, v, msc, vsc, n);
}
extern "C" __global__ void __launch_bounds__(256) adamw_probe_gb(uint16_t* w, const uint16_t* grad, uint8_t* m,
                                                                  uint8_t* v, float* msc, float* vsc, size_t n) {
    adamw_probe_body<true>(w, grad, m, v, msc, vsc, n);
}

// adamw_traffic (TestFiguresAdamWTraffic only, not used by the engine): adamw_probe_gb's bytes
// (bf16 master and gradient, int8 codes, per-64 f32 scales, in place) in a warp item of 512
// elements as adamw_lane16 moves them, in variants of the access pattern, to find what the
// step's traffic can reach before the kernel is changed to it:
//   0: a lane's 16 elements contiguous (adamw_lane16 today: each 16-byte load of w or the
//      gradient covers every other 16 bytes of the item's 1 KB);
//   1: each 16-byte load of w and the gradient covers 512 contiguous bytes (lane l: elements
//      8l… and 256 + 8l…); the codes as in 0;
//   2: 1 with two items a warp in flight;
//   3: 1 with streaming loads and stores (ld.global.cs / st.global.cs);
//   4: 1 with the loads' L2 sector promotion to 256 bytes (ld.global.L2::256B);
//   5: 1 with plain loads and streaming stores.
template <int V>
__device__ __forceinline__ uint4 traffic_ld(const void* p) {
    const uint4* q = reinterpret_cast<const uint4*>(p);
    if (V == 3) return __ldcs(q);
    if (V == 4) {
        uint4 r;
        asm volatile("ld.global.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                     : "l"(q));
        return r;
    }
    return *q;
}
template <int V>
__device__ __forceinline__ void traffic_st(void* p, uint4 v) {
    uint4* q = reinterpret_cast<uint4*>(p);
    if (V == 3 || V == 5)
        __stcs(q, v);
    else
        *q = v;
}
template <int V>
__device__ __forceinline__ void adamw_traffic(uint16_t* w, const uint16_t* g, uint8_t* m, uint8_t* v, float* msc,
                                              float* vsc, size_t n) {
    constexpr int U = V == 2 ? 2 : 1;
    const size_t items = n / 512, warps = (size_t)gridDim.x * (blockDim.x >> 5);
    const int lane = threadIdx.x & 31;
    for (size_t c0 = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); c0 < items; c0 += U * warps) {
        uint4 wv[U][2], gv[U][2], mc[U], vc[U];
        size_t wo[U][2], co[U];
        uint32_t s[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const size_t c = c0 + u * warps;
            if (c >= items) break;
            const size_t base = c * 512;
            wo[u][0] = V == 0 ? base + 16 * lane : base + 8 * lane;
            wo[u][1] = V == 0 ? wo[u][0] + 8 : wo[u][0] + 256;
            co[u] = base + 16 * lane;
#pragma unroll
            for (int h = 0; h < 2; h++) wv[u][h] = traffic_ld<V>(w + wo[u][h]), gv[u][h] = traffic_ld<V>(g + wo[u][h]);
            mc[u] = traffic_ld<V>(m + co[u]);
            vc[u] = traffic_ld<V>(v + co[u]);
            s[u] = __float_as_uint(msc[co[u] >> 6]) ^ __float_as_uint(vsc[co[u] >> 6]);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const size_t c = c0 + u * warps;
            if (c >= items) break;
            const uint32_t x = gv[u][0].x ^ gv[u][0].y ^ gv[u][0].z ^ gv[u][0].w ^ gv[u][1].x ^ gv[u][1].y ^ gv[u][1].z ^
                               gv[u][1].w ^ s[u];
            wv[u][0].x ^= x & 1u, wv[u][1].y ^= mc[u].x & 1u, wv[u][0].z ^= vc[u].x & 1u, wv[u][1].w ^= (x >> 1) & 1u;
            mc[u].x ^= x & 0x01010101u, vc[u].y ^= (x >> 2) & 0x01010101u;
#pragma unroll
            for (int h = 0; h < 2; h++) traffic_st<V>(w + wo[u][h], wv[u][h]);
            traffic_st<V>(m + co[u], mc[u]);
            traffic_st<V>(v + co[u], vc[u]);
            if ((lane & 3) == 0) {
                msc[co[u] >> 6] = __uint_as_float(s[u] & 0x3F7FFFFFu);
                vsc[co[u] >> 6] = __uint_as_float(x & 0x3F7FFFFFu);
            }
        }
    }
}
#define ADAMW_TRAFFIC_ENTRY(V)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256) adamw_traffic##V(uint16_t* w, const uint16_t* g, uint8_t* m, \
                                                                       uint8_t* v, float* msc, float* vsc, size_t n) { \
        adamw_traffic<V>(w, g, m, v, msc, vsc, n);                                                               \
    }
ADAMW_TRAFFIC_ENTRY(0)
ADAMW_TRAFFIC_ENTRY(1)
ADAMW_TRAFFIC_ENTRY(2)
ADAMW_TRAFFIC_ENTRY(3)
ADAMW_TRAFFIC_ENTRY(4)
ADAMW_TRAFFIC_ENTRY(5)

// copy_u4 and rmw_u4 (TestFiguresAdamWTraffic only): the plain bandwidths the traffic variants
// are read against — a copy of n 16-byte vectors, and the same vectors changed in place.
extern "C" __global__ void __launch_bounds__(256) copy_u4(uint4* dst, const uint4* src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) dst[i] = src[i];
}
extern "C" __global__ void __launch_bounds__(256) rmw_u4(uint4* x, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = x[i];
        v.x ^= 1u;
        x[i] = v;
    }
}
