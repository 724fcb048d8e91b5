// Causal grouped-query attention over a KV cache. One block per (head, query row) walks its
// keys in chunks of ATT_THREADS with an online softmax (scores of a chunk in shared memory, the
// running max and sum rescaled per chunk), so any context length runs in fixed shared memory.
// When there are too few (head, row) pairs to fill the GPU (decode), the keys are also split
// across blocks (attention_split_f32) and the partial results merged (attention_combine_f32).
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_MAXD 4  // output dims per thread: head_dim <= ATT_THREADS * ATT_MAXD = 512

// attend runs the online softmax of query qs (in shared memory) over keys [jbeg, jend) of one
// KV head, leaving the unnormalised output in acc (dims tid + i*ATT_THREADS), the running
// max in m and the sum of exponentials in l. ps is shared scratch of ATT_THREADS floats.
__device__ __forceinline__ void attend(const float* qs, const float* kbase, const float* vbase, size_t kvStride,
                                       int jbeg, int jend, int headDim, float scale, float* ps, float* red,
                                       float (&acc)[ATT_MAXD], float& m, float& l) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) acc[i] = 0.f;
    m = -INFINITY;
    l = 0.f;
    for (int j0 = jbeg; j0 < jend; j0 += ATT_THREADS) {
        int j = j0 + tid;
        float s = -INFINITY;
        if (j < jend) {
            const float* kr = kbase + (size_t)j * kvStride;
            float dot = 0.f;
            for (int d = 0; d < headDim; d++) dot = fmaf(qs[d], kr[d], dot);
            s = dot * scale;
        }
        float mnew = fmaxf(m, block_max(s, red));  // finite: key j0 < jend is in every chunk
        float p = j < jend ? expf(s - mnew) : 0.f;
        ps[tid] = p;
        float corr = expf(m - mnew);       // 0 on the first chunk (m = -inf)
        l = l * corr + block_sum(p, red);  // block_sum's barriers also publish ps
        int cnt = min(ATT_THREADS, jend - j0);
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
}

// attention_f32: out[t, h*hd:(h+1)*hd] = softmax(q_t·k_jᵀ * scale) · v_j over keys j <= pos0+t
// (bottom-right causal mask), query head h reading KV head h / (nHeads/nKV). q and out are
// [T, nHeads*hd], k and v [>= pos0+T, nKV*hd]. grid (nHeads, T), block ATT_THREADS, dynamic
// shared memory (hd + ATT_THREADS) floats.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention_f32(float* out, const float* q, const float* k, const float* v, int pos0, int nHeads, int nKV,
              int headDim, float scale) {
    extern __shared__ float sh[];
    float* qs = sh;            // [headDim]
    float* ps = sh + headDim;  // [ATT_THREADS]
    __shared__ float red[32];
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    const int kvh = h / (nHeads / nKV);
    const size_t qStride = (size_t)nHeads * headDim, kvStride = (size_t)nKV * headDim;
    const float* qrow = q + (size_t)t * qStride + (size_t)h * headDim;
    for (int d = tid; d < headDim; d += ATT_THREADS) qs[d] = qrow[d];
    __syncthreads();
    float acc[ATT_MAXD], m, l;
    attend(qs, k + (size_t)kvh * headDim, v + (size_t)kvh * headDim, kvStride, 0, pos0 + t + 1, headDim, scale, ps,
           red, acc, m, l);
    float inv = 1.f / l;
    float* orow = out + (size_t)t * qStride + (size_t)h * headDim;
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) {
        int d = tid + i * ATT_THREADS;
        if (d < headDim) orow[d] = acc[i] * inv;
    }
}

// attention_split_f32: as attention_f32, but block (h, t, s) covers only keys
// [s*chunk, (s+1)*chunk) of row t's range and writes its unnormalised output, max and sum to
// part[((t*nHeads + h)*S + s)*(hd+2) ...] (hd values, then m, then l); S = gridDim.z. An empty
// range writes m = -inf, l = 0.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention_split_f32(float* part, const float* q, const float* k, const float* v, int pos0, int nHeads, int nKV,
                    int headDim, float scale, int chunk) {
    extern __shared__ float sh[];
    float* qs = sh;
    float* ps = sh + headDim;
    __shared__ float red[32];
    const int h = blockIdx.x, t = blockIdx.y, s = blockIdx.z, S = gridDim.z, tid = threadIdx.x;
    const int kvh = h / (nHeads / nKV);
    const size_t qStride = (size_t)nHeads * headDim, kvStride = (size_t)nKV * headDim;
    const float* qrow = q + (size_t)t * qStride + (size_t)h * headDim;
    for (int d = tid; d < headDim; d += ATT_THREADS) qs[d] = qrow[d];
    __syncthreads();
    const int jbeg = s * chunk, jend = min(jbeg + chunk, pos0 + t + 1);
    float acc[ATT_MAXD], m, l;
    attend(qs, k + (size_t)kvh * headDim, v + (size_t)kvh * headDim, kvStride, jbeg, jend, headDim, scale, ps, red,
           acc, m, l);
    float* p = part + (((size_t)t * nHeads + h) * S + s) * (headDim + 2);
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) {
        int d = tid + i * ATT_THREADS;
        if (d < headDim) p[d] = acc[i];
    }
    if (tid == 0) {
        p[headDim] = m;
        p[headDim + 1] = l;
    }
}

// attention_combine_f32 merges the S partial results of each (head h, row t): grid (nHeads, T),
// block ATT_THREADS. out = Σ_s e^(m_s-M) acc_s / Σ_s e^(m_s-M) l_s with M = max_s m_s.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention_combine_f32(float* out, const float* part, int nHeads, int headDim, int S) {
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    const float* p = part + ((size_t)t * nHeads + h) * S * (headDim + 2);
    float M = -INFINITY;
    for (int s = 0; s < S; s++) M = fmaxf(M, p[(size_t)s * (headDim + 2) + headDim]);
    float L = 0.f;
    float acc[ATT_MAXD];
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) acc[i] = 0.f;
    for (int s = 0; s < S; s++) {
        const float* ps = p + (size_t)s * (headDim + 2);
        float ms = ps[headDim];
        if (ms == -INFINITY) continue;  // an empty range
        float w = expf(ms - M);
        L = fmaf(w, ps[headDim + 1], L);
#pragma unroll
        for (int i = 0; i < ATT_MAXD; i++) {
            int d = tid + i * ATT_THREADS;
            if (d < headDim) acc[i] = fmaf(w, ps[d], acc[i]);
        }
    }
    float inv = 1.f / L;
    float* orow = out + ((size_t)t * nHeads + h) * headDim;
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) {
        int d = tid + i * ATT_THREADS;
        if (d < headDim) orow[d] = acc[i] * inv;
    }
}
