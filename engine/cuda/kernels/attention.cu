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
// block ATT_THREADS, S ≤ ATT_MAXS. out = Σ_s e^(m_s-M) acc_s / Σ_s e^(m_s-M) l_s with M = max_s m_s.
// The S maxima, sums and weights are gathered in shared memory in parallel first, and the
// weighted sum over s is unrolled so its loads are in flight together (a loop waiting on each
// load cost ~12 µs at S = 17); the order of the sums is s = 0, 1, … as before.
#define ATT_MAXS 64
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention_combine_f32(float* out, const float* part, int nHeads, int headDim, int S) {
    __shared__ float ws[ATT_MAXS], ls[ATT_MAXS];
    __shared__ float red[32];
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    const float* p = part + ((size_t)t * nHeads + h) * S * (headDim + 2);
    float ms = -INFINITY;
    if (tid < S) {
        ms = p[(size_t)tid * (headDim + 2) + headDim];
        ls[tid] = p[(size_t)tid * (headDim + 2) + headDim + 1];
    }
    const float M = block_max(ms, red);  // its barriers also publish ls
    if (tid < S) ws[tid] = ms == -INFINITY ? 0.f : expf(ms - M);  // an empty range weighs 0
    __syncthreads();
    float L = 0.f;
    for (int s = 0; s < S; s++) L = fmaf(ws[s], ls[s], L);
    const float inv = 1.f / L;
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) {
        const int d = tid + i * ATT_THREADS;
        if (d >= headDim) break;
        float acc = 0.f;
#pragma unroll 8
        for (int s = 0; s < S; s++) acc = fmaf(ws[s], p[(size_t)s * (headDim + 2) + d], acc);
        out[((size_t)t * nHeads + h) * headDim + d] = acc * inv;
    }
}

// ---- decode: one block per (KV head, key split), every query head of the group at once ----
//
// attention_split_f32 runs one block per (query head, row, split) and reads each key row with
// per-thread strided loads, so a KV head's keys are read once per query head of its group and
// the loads are uncoalesced. Here block (kvh, s) serves all G = nHeads/nKV query heads of KV
// head kvh for all T rows (Q = G·T ≤ 16 query vectors, one warp each): it copies tiles of 32
// keys and 32 values into shared memory with coalesced float4 loads (keys padded to 129 floats
// a row so lane j reading key j is conflict-free), then warp q scores its query against the
// tile's keys (lane = key), runs the online softmax with warp reductions and accumulates
// 4 output dims per lane. Partials go to the same layout as attention_split_f32's; the last
// block of each KV head to finish merges them (a per-KV-head arrival counter, left at zero), so
// one launch does what the split and combine kernels do in two. head_dim 128, S ≤ 64 (checked
// on the host).
#define AD_D 128
#define AD_KEYS 32
#define AD_MAXQ 16

// attention_decode_f32: grid (nKV, S), block 32·Q threads, dynamic shared memory
// 4·(Q·AD_D + AD_KEYS·(AD_D+1) + AD_KEYS·AD_D) bytes. Split s covers keys [s·chunk, (s+1)·chunk).
extern "C" __global__ void __launch_bounds__(32 * AD_MAXQ)
attention_decode_f32(float* out, float* part, int* counters, const float* q, const float* k, const float* v, int pos0,
                     int T, int nHeads, int nKV, float scale, int chunk) {
    extern __shared__ float sh[];
    pdl_wait();
    pdl_trigger();
    const int G = nHeads / nKV, Q = G * T;
    float* qs = sh;                          // [Q][AD_D]
    float* ks = qs + Q * AD_D;               // [AD_KEYS][AD_D + 1]
    float* vs = ks + AD_KEYS * (AD_D + 1);   // [AD_KEYS][AD_D]
    const int kvh = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nth = blockDim.x;
    const int t = warp / G, h = kvh * G + warp % G;  // this warp's query row and head
    const size_t qld = (size_t)nHeads * AD_D, kvld = (size_t)nKV * AD_D;
    for (int i = threadIdx.x; i < Q * AD_D / 4; i += nth) {
        const int qi = i / (AD_D / 4), c = i % (AD_D / 4);
        const int qt = qi / G, qh = kvh * G + qi % G;
        reinterpret_cast<float4*>(qs)[i] = reinterpret_cast<const float4*>(q + (size_t)qt * qld + (size_t)qh * AD_D)[c];
    }
    const int jb = s * chunk, je = min(jb + chunk, pos0 + T);  // keys any row of the block may see
    const int last = pos0 + t;                                 // this warp's row sees keys ≤ last
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    float m = -INFINITY, l = 0.f;
    for (int j0 = jb; j0 < je; j0 += AD_KEYS) {
        const int n = min(AD_KEYS, je - j0);
        __syncthreads();  // the previous tile is consumed (and, first time, qs is written)
        for (int i = threadIdx.x; i < AD_KEYS * AD_D / 4; i += nth) {
            const int r = i / (AD_D / 4), c = i % (AD_D / 4);
            float4 kv4 = make_float4(0.f, 0.f, 0.f, 0.f), vv4 = kv4;
            if (r < n) {
                const size_t off = (size_t)(j0 + r) * kvld + (size_t)kvh * AD_D;
                kv4 = reinterpret_cast<const float4*>(k + off)[c];
                vv4 = reinterpret_cast<const float4*>(v + off)[c];
            }
            float* kr = ks + r * (AD_D + 1) + 4 * c;
            kr[0] = kv4.x, kr[1] = kv4.y, kr[2] = kv4.z, kr[3] = kv4.w;
            reinterpret_cast<float4*>(vs)[i] = vv4;
        }
        __syncthreads();
        const int j = j0 + lane;
        float sc = -INFINITY;
        if (lane < n && j <= last) {
            const float* qv = qs + warp * AD_D;
            const float* kr = ks + lane * (AD_D + 1);
            float dot = 0.f;
#pragma unroll 16
            for (int d = 0; d < AD_D; d++) dot = fmaf(qv[d], kr[d], dot);
            sc = dot * scale;
        }
        const float mnew = fmaxf(m, warp_max(sc));
        if (mnew == -INFINITY) continue;  // no key of this tile is visible to this row
        const float p = sc == -INFINITY ? 0.f : expf(sc - mnew);
        const float corr = expf(m - mnew);  // 0 while m = -inf
        l = l * corr + warp_sum(p);
        acc.x *= corr, acc.y *= corr, acc.z *= corr, acc.w *= corr;
        for (int jj = 0; jj < n; jj++) {
            const float pj = __shfl_sync(0xffffffffu, p, jj);
            const float4 vv = reinterpret_cast<const float4*>(vs + jj * AD_D)[lane];
            acc.x = fmaf(pj, vv.x, acc.x), acc.y = fmaf(pj, vv.y, acc.y);
            acc.z = fmaf(pj, vv.z, acc.z), acc.w = fmaf(pj, vv.w, acc.w);
        }
        m = mnew;
    }
    float* p = part + (((size_t)t * nHeads + h) * S + s) * (AD_D + 2);
    // (hd + 2)-float records are only 8-byte aligned: scalar stores.
    p[4 * lane] = acc.x, p[4 * lane + 1] = acc.y, p[4 * lane + 2] = acc.z, p[4 * lane + 3] = acc.w;
    if (lane == 0) {
        p[AD_D] = m;
        p[AD_D + 1] = l;
    }

    // The last block of KV head kvh to finish merges the S partials of its query vectors (what
    // attention_combine_f32 does, without a second launch). Partials are read with ld.global.cg:
    // other blocks wrote them through L2, and this SM's L1 may hold stale lines.
    __shared__ int merger;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        merger = atomicAdd(&counters[kvh], 1) == S - 1;
        if (merger) counters[kvh] = 0;  // ready for the next launch
    }
    __syncthreads();
    if (!merger) return;
    __threadfence();
    const float* pp = part + ((size_t)t * nHeads + h) * S * (AD_D + 2);
    float ms0 = lane < S ? __ldcg(pp + (size_t)lane * (AD_D + 2) + AD_D) : -INFINITY;
    float ms1 = lane + 32 < S ? __ldcg(pp + (size_t)(lane + 32) * (AD_D + 2) + AD_D) : -INFINITY;
    const float M = warp_max(fmaxf(ms0, ms1));
    // weights e^(m_s - M) of splits lane and lane+32 (0 for an empty range)
    const float w0 = ms0 == -INFINITY ? 0.f : expf(ms0 - M), w1 = ms1 == -INFINITY ? 0.f : expf(ms1 - M);
    float L = 0.f;
    if (lane < S) L = w0 * __ldcg(pp + (size_t)lane * (AD_D + 2) + AD_D + 1);
    if (lane + 32 < S) L = fmaf(w1, __ldcg(pp + (size_t)(lane + 32) * (AD_D + 2) + AD_D + 1), L);
    L = warp_sum(L);
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int sp = 0; sp < S; sp++) {
        const float w = __shfl_sync(0xffffffffu, sp < 32 ? w0 : w1, sp & 31);
        const float* rec = pp + (size_t)sp * (AD_D + 2) + 4 * lane;
        const float2 a = __ldcg(reinterpret_cast<const float2*>(rec)), b = __ldcg(reinterpret_cast<const float2*>(rec + 2));
        o.x = fmaf(w, a.x, o.x), o.y = fmaf(w, a.y, o.y), o.z = fmaf(w, b.x, o.z), o.w = fmaf(w, b.y, o.w);
    }
    const float inv = 1.f / L;
    float* orow = out + (size_t)t * nHeads * AD_D + (size_t)h * AD_D + 4 * lane;
    reinterpret_cast<float4*>(orow)[0] = make_float4(o.x * inv, o.y * inv, o.z * inv, o.w * inv);
}
