// Fused decoder-block kernels (backend.Fused). Each does exactly what the separate kernels it
// replaces do — the same per-element arithmetic and the same reduction order (the block size is
// chosen by the host as for rmsnorm_f32) — so results are identical to the unfused path.
#include "attention_common.cuh"

// add_rmsnorm_f32: per row (blockIdx.x), x += delta, then out = w * (x * 1/sqrt(mean(x^2)+eps)).
// Each thread adds the elements it then reads for the statistics, so no barrier is needed
// between the two. Rows of up to FUSED_CACHE·blockDim elements stay in registers with every load
// issued up front (as rmsnorm_f32 in norm.cu; the same accumulation order).
#define FUSED_CACHE 16
extern "C" __global__ void add_rmsnorm_f32(float* out, float* x, const float* delta, const float* w, int n, float eps) {
    __shared__ double red[32];
    pdl_wait();
    pdl_trigger();
    size_t base = (size_t)blockIdx.x * n;
    if (n <= FUSED_CACHE * (int)blockDim.x) {
        float xv[FUSED_CACHE], dv[FUSED_CACHE], wv[FUSED_CACHE];
#pragma unroll
        for (int i = 0; i < FUSED_CACHE; i++) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j < n) xv[i] = x[base + j], dv[i] = delta[base + j], wv[i] = w[j];
        }
        double ss = 0.0;
#pragma unroll
        for (int i = 0; i < FUSED_CACHE; i++) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j < n) {
                xv[i] = xv[i] + dv[i];
                x[base + j] = xv[i];
                ss = fma((double)xv[i], (double)xv[i], ss);
            }
        }
        ss = block_sum_d(ss, red);
        float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
#pragma unroll
        for (int i = 0; i < FUSED_CACHE; i++) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j < n) out[base + j] = __fmul_rn(wv[i], __fmul_rn(xv[i], inv));
        }
        return;
    }
    double ss = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float v = x[base + j] + delta[base + j];
        x[base + j] = v;
        double d = (double)v;
        ss = fma(d, d, ss);
    }
    ss = block_sum_d(ss, red);
    float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        out[base + j] = __fmul_rn(w[j], __fmul_rn(x[base + j], inv));
    }
}

// qk_norm_rope_cache: grid (T, nHeads + nKV), blockDim as rmsnorm_f32 for n = headDim (≤ 256,
// headDim ≤ 512). Block (t, h) normalises head h of row t of q (h < nHeads, weight qn) or head
// h-nHeads of k (weight kn), rotates it (RoPE at position pos0+t, inv_freq from the host) into
// qr or kr, and for k heads writes kr's head and v's head to row pos0+t of the caches.
// qk_norm_rope_cache_kb writes a bf16 cache (attention_common.cuh: KV element types).
template <typename KV>
__device__ __forceinline__ void qk_norm_rope_cache_rows(float* qr, float* kr, const float* q, const float* k,
                                                        const float* v, const float* qn, const float* kn, KV* kcache,
                                                        KV* vcache, const float* invf, int nHeads, int nKV, int headDim,
                                                        int pos0, float eps) {
    __shared__ double red[32];
    __shared__ float y[512];
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x;
    qk_norm_rope_row(qr, kr, q, k, v, qn, kn, kcache, vcache, invf, nHeads, nKV, headDim, eps, t, blockIdx.y, pos0 + t,
                     (size_t)(pos0 + t), red, y);
}
#define QKC_ENTRY(NAME, KV)                                                                                      \
    extern "C" __global__ void NAME(float* qr, float* kr, const float* q, const float* k, const float* v,             \
                                    const float* qn, const float* kn, KV* kcache, KV* vcache, const float* invf,      \
                                    int nHeads, int nKV, int headDim, int pos0, float eps) {                         \
        qk_norm_rope_cache_rows(qr, kr, q, k, v, qn, kn, kcache, vcache, invf, nHeads, nKV, headDim, pos0, eps);     \
    }
QKC_ENTRY(qk_norm_rope_cache, float)
QKC_ENTRY(qk_norm_rope_cache_kb, uint16_t)
