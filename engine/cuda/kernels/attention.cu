// Causal grouped-query attention over a KV cache, first version: one block per (head, query
// row), online softmax over chunks of ATT_THREADS keys (scores for a chunk in shared memory,
// running max and sum rescaled per chunk), so any context length runs in fixed shared memory.
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_MAXD 4  // output dims per thread: head_dim <= ATT_THREADS * ATT_MAXD = 512

// attention_f32: out[t, h*hd:(h+1)*hd] = softmax(q_t·k_jᵀ * scale) · v_j over keys j <= pos0+t
// (bottom-right causal mask), query head h reading KV head h / (nHeads/nKV). q and out are
// [T, nHeads*hd], k and v [>= pos0+T, nKV*hd]. grid (nHeads, T), block ATT_THREADS, dynamic
// shared memory (hd + ATT_THREADS) floats.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention_f32(float* out, const float* q, const float* k, const float* v, int pos0, int nHeads, int nKV,
              int headDim, float scale) {
    extern __shared__ float sh[];
    float* qs = sh;            // [headDim]
    float* ps = sh + headDim;  // [ATT_THREADS] probabilities of the current chunk
    __shared__ float red[32];
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    const int kvh = h / (nHeads / nKV);
    const size_t qStride = (size_t)nHeads * headDim, kvStride = (size_t)nKV * headDim;
    const int n = pos0 + t + 1;
    const float* qrow = q + (size_t)t * qStride + (size_t)h * headDim;
    for (int d = tid; d < headDim; d += ATT_THREADS) qs[d] = qrow[d];
    __syncthreads();
    const float* kbase = k + (size_t)kvh * headDim;
    const float* vbase = v + (size_t)kvh * headDim;
    float acc[ATT_MAXD];
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) acc[i] = 0.f;
    float m = -INFINITY, l = 0.f;
    for (int j0 = 0; j0 < n; j0 += ATT_THREADS) {
        int j = j0 + tid;
        float s = -INFINITY;
        if (j < n) {
            const float* kr = kbase + (size_t)j * kvStride;
            float dot = 0.f;
            for (int d = 0; d < headDim; d++) dot = fmaf(qs[d], kr[d], dot);
            s = dot * scale;
        }
        float mnew = fmaxf(m, block_max(s, red));  // finite: key j0 < n is in every chunk
        float p = j < n ? expf(s - mnew) : 0.f;
        ps[tid] = p;
        float corr = expf(m - mnew);  // 0 on the first chunk (m = -inf)
        l = l * corr + block_sum(p, red);  // block_sum's barriers also publish ps
        int cnt = min(ATT_THREADS, n - j0);
#pragma unroll
        for (int i = 0; i < ATT_MAXD; i++) {
            int d = tid + i * ATT_THREADS;
            if (d < headDim) {
                float a = acc[i] * corr;
                const float* vc = vbase + (size_t)j0 * kvStride + d;
                for (int jj = 0; jj < cnt; jj++) a = fmaf(ps[jj], vc[(size_t)jj * kvStride], a);
                acc[i] = a;
            }
        }
        m = mnew;
        __syncthreads();  // everyone is done with ps before the next chunk overwrites it
    }
    float inv = 1.f / l;
    float* orow = out + (size_t)t * qStride + (size_t)h * headDim;
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) {
        int d = tid + i * ATT_THREADS;
        if (d < headDim) orow[d] = acc[i] * inv;
    }
}
