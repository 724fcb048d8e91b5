// RMSNorm and RoPE. Numerics follow engine/cpu: RMSNorm statistics in double, RoPE angles
// position*inv_freq in float32 (inv_freq computed on the host exactly as the CPU does), sin and
// cos of the angle in double, products and sums rounded separately (no fused multiply-add), so
// results match the CPU to the last bit or two.
#include "common.cuh"

// NORM_CACHE is how many elements per thread the norms keep in registers: up to
// NORM_CACHE·blockDim elements a row, every load (x, and the weights) is issued before the
// reduction instead of in a loop that waits on each, which made a 2560-wide decode RMSNorm a
// chain of memory latencies (~10 µs). Larger rows take the loop. Same accumulation order either
// way (element j = tid + i·blockDim in increasing i), so results are unchanged.
#define NORM_CACHE 16

// rmsnorm_f32 normalises one group of n consecutive elements per block (blockIdx.x = group):
// out = w * (x * 1/sqrt(mean(x^2) + eps)). out may be x.
extern "C" __global__ void rmsnorm_f32(float* out, const float* x, const float* w, int n, float eps) {
    __shared__ double red[32];
    pdl_wait();
    pdl_trigger();
    size_t base = (size_t)blockIdx.x * n;
    if (n <= NORM_CACHE * (int)blockDim.x) {
        float xv[NORM_CACHE], wv[NORM_CACHE];
        double ss = 0.0;
#pragma unroll
        for (int i = 0; i < NORM_CACHE; i++) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j < n) xv[i] = x[base + j], wv[i] = w[j];
        }
#pragma unroll
        for (int i = 0; i < NORM_CACHE; i++) {
            if (threadIdx.x + i * blockDim.x < n) ss = fma((double)xv[i], (double)xv[i], ss);
        }
        ss = block_sum_d(ss, red);
        float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
#pragma unroll
        for (int i = 0; i < NORM_CACHE; i++) {
            const int j = threadIdx.x + i * blockDim.x;
            if (j < n) out[base + j] = __fmul_rn(wv[i], __fmul_rn(xv[i], inv));
        }
        return;
    }
    double ss = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        double v = (double)x[base + j];
        ss = fma(v, v, ss);
    }
    ss = block_sum_d(ss, red);
    float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        out[base + j] = __fmul_rn(w[j], __fmul_rn(x[base + j], inv));
    }
}

// rope_f32 rotates pairs (i, i+headDim/2) of every head of x [rows, cols] (NeoX rotate-half);
// row t is at position pos0+t; invf holds headDim/2 inverse frequencies. One thread per pair.
// out may be x.
extern "C" __global__ void rope_f32(float* out, const float* x, const float* invf, int rows, int cols,
                                    int headDim, int pos0) {
    int half = headDim / 2;
    size_t pairsPerRow = (size_t)cols / 2;
    size_t total = (size_t)rows * pairsPerRow;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t t = idx / pairsPerRow;
        int r = (int)(idx % pairsPerRow);
        int h = r / half, i = r % half;
        size_t o = t * cols + (size_t)h * headDim + i;
        rope_pair(x[o], x[o + half], pos0 + (int)t, invf[i], out[o], out[o + half]);
    }
}
