// Batched decode (backend.Batched): B sequences advanced by one token each in one launch per op.
// Row r of a [B, width] activation is sequence r's new token at position pos.v[r]; the batch KV
// cache of a layer is [B·capacity, width] with sequence r in rows [r·capacity, (r+1)·capacity).
//
// The per-row positions (or destination rows) travel in a kernel parameter, a BatchInts struct
// passed by value, rather than in device memory: a step needs no host-to-device copy (which
// would serialise with the kernel stream) and the values are in the constant bank every block
// reads. One launch takes BATCH_MAX rows; the host splits larger batches. Numerics follow the
// single-sequence kernels (norm.cu, fused.cu, attention.cu) operation for operation.
#include "common.cuh"

#define BATCH_MAX 32
struct BatchInts {
    int v[BATCH_MAX];
};

// rope_at_f32: rope_f32 (norm.cu) with row t at position pos.v[t]: pairs (i, i+headDim/2) of
// every head of x [rows, cols] rotated by pos·invf[i]; one thread per pair. out may be x.
extern "C" __global__ void rope_at_f32(float* out, const float* x, const float* invf, int rows, int cols, int headDim,
                                       const __grid_constant__ BatchInts pos) {
    pdl_wait();
    pdl_trigger();
    const int half = headDim / 2;
    const size_t pairsPerRow = (size_t)cols / 2, total = (size_t)rows * pairsPerRow;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        const int t = (int)(idx / pairsPerRow), r = (int)(idx % pairsPerRow);
        const int h = r / half, i = r % half;
        const float ang = __fmul_rn((float)pos.v[t], invf[i]);
        double s, c;
        sincos((double)ang, &s, &c);
        const float cs = (float)c, sn = (float)s;
        const size_t o = (size_t)t * cols + (size_t)h * headDim + i;
        const float x1 = x[o], x2 = x[o + half];
        out[o] = __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn));
        out[o + half] = __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
    }
}

// scatter_rows_f32: block t copies row t of src [gridDim.x, cols] to row rows.v[t] of dst.
extern "C" __global__ void scatter_rows_f32(float* dst, const float* src, int cols, const __grid_constant__ BatchInts rows) {
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x;
    const float* s = src + (size_t)t * cols;
    float* d = dst + (size_t)rows.v[t] * cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) d[j] = s[j];
}

// qk_norm_rope_cache_at: qk_norm_rope_cache (fused.cu) with row t at position pos.v[t] and its
// key and value written to cache row t·capacity + pos.v[t]. grid (rows, nHeads + nKV), blockDim
// as rmsnorm_f32 for n = headDim (the same reduction order), headDim ≤ 512.
extern "C" __global__ void qk_norm_rope_cache_at(float* qr, float* kr, const float* q, const float* k, const float* v,
                                                 const float* qn, const float* kn, float* kcache, float* vcache,
                                                 const float* invf, int nHeads, int nKV, int headDim, int capacity,
                                                 float eps, const __grid_constant__ BatchInts pos) {
    __shared__ double red[32];
    __shared__ float y[512];
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x, h = blockIdx.y, p = pos.v[t];
    const bool isQ = h < nHeads;
    const int hh = isQ ? h : h - nHeads;
    const int width = (isQ ? nHeads : nKV) * headDim;
    const float* src = (isQ ? q : k) + (size_t)t * width + (size_t)hh * headDim;
    const float* w = isQ ? qn : kn;
    double ss = 0.0;
    for (int j = threadIdx.x; j < headDim; j += blockDim.x) {
        double d = (double)src[j];
        ss = fma(d, d, ss);
    }
    ss = block_sum_d(ss, red);
    const float inv = (float)(1.0 / sqrt(ss / (double)headDim + (double)eps));
    for (int j = threadIdx.x; j < headDim; j += blockDim.x) y[j] = __fmul_rn(w[j], __fmul_rn(src[j], inv));
    __syncthreads();
    const int half = headDim / 2;
    const size_t crow = (size_t)t * capacity + p;
    float* dst = (isQ ? qr : kr) + (size_t)t * width + (size_t)hh * headDim;
    float* cdst = isQ ? nullptr : kcache + crow * width + (size_t)hh * headDim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float ang = __fmul_rn((float)p, invf[i]);
        double s, c;
        sincos((double)ang, &s, &c);
        const float cs = (float)c, sn = (float)s;
        const float x1 = y[i], x2 = y[i + half];
        const float o1 = __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn));
        const float o2 = __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
        dst[i] = o1;
        dst[i + half] = o2;
        if (!isQ) {
            cdst[i] = o1;
            cdst[i + half] = o2;
        }
    }
    if (!isQ) {
        const float* vs = v + (size_t)t * width + (size_t)hh * headDim;
        float* vd = vcache + crow * width + (size_t)hh * headDim;
        for (int j = threadIdx.x; j < headDim; j += blockDim.x) vd[j] = vs[j];
    }
}

// ---- attention, any head_dim ≤ 512: split over keys, then combine (as attention.cu) ----

#define BA_THREADS 128
#define BA_MAXD 4   // output dims per thread: head_dim ≤ BA_THREADS·BA_MAXD
#define BA_MAXS 64  // key splits

// batch_attend is attention.cu's attend: the online softmax of query qs (shared memory) over
// keys [jbeg, jend) of one KV head, leaving the unnormalised output in acc (dims
// tid + i·BA_THREADS), the running max in m and the sum of exponentials in l. An empty range
// leaves acc 0, m -inf and l 0. ps is shared scratch of BA_THREADS floats.
__device__ __forceinline__ void batch_attend(const float* qs, const float* kbase, const float* vbase, size_t kvStride,
                                             int jbeg, int jend, int headDim, float scale, float* ps, float* red,
                                             float (&acc)[BA_MAXD], float& m, float& l) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < BA_MAXD; i++) acc[i] = 0.f;
    m = -INFINITY;
    l = 0.f;
    for (int j0 = jbeg; j0 < jend; j0 += BA_THREADS) {
        const int j = j0 + tid;
        float s = -INFINITY;
        if (j < jend) {
            const float* kr = kbase + (size_t)j * kvStride;
            float dot = 0.f;
            for (int d = 0; d < headDim; d++) dot = fmaf(qs[d], kr[d], dot);
            s = dot * scale;
        }
        const float mnew = fmaxf(m, block_max(s, red));  // finite: key j0 < jend is in every chunk
        const float p = j < jend ? expf(s - mnew) : 0.f;
        ps[tid] = p;
        const float corr = expf(m - mnew);  // 0 on the first chunk (m = -inf)
        l = l * corr + block_sum(p, red);   // block_sum's barriers also publish ps
        const int cnt = min(BA_THREADS, jend - j0);
#pragma unroll
        for (int i = 0; i < BA_MAXD; i++) {
            const int d = tid + i * BA_THREADS;
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

// attention_batch_split_f32: block (h, r, s) runs query head h of row r over keys
// [s·chunk, (s+1)·chunk) ∩ [0, pos.v[r]] of sequence r (cache rows r·capacity + j) and writes
// its unnormalised output, max and sum to part[((r·nHeads + h)·S + s)·(hd+2) …] (hd values,
// then m, then l); S = gridDim.z. Block BA_THREADS, dynamic shared memory (hd + BA_THREADS)
// floats.
extern "C" __global__ void __launch_bounds__(BA_THREADS)
attention_batch_split_f32(float* part, const float* q, const float* k, const float* v, int nHeads, int nKV, int headDim,
                          int capacity, float scale, int chunk, const __grid_constant__ BatchInts pos) {
    extern __shared__ float sh[];
    float* qs = sh;
    float* ps = sh + headDim;
    __shared__ float red[32];
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, r = blockIdx.y, s = blockIdx.z, S = gridDim.z, tid = threadIdx.x;
    const int kvh = h / (nHeads / nKV);
    const size_t qStride = (size_t)nHeads * headDim, kvStride = (size_t)nKV * headDim;
    const float* qrow = q + (size_t)r * qStride + (size_t)h * headDim;
    for (int d = tid; d < headDim; d += BA_THREADS) qs[d] = qrow[d];
    __syncthreads();
    const size_t seq = (size_t)r * capacity * kvStride + (size_t)kvh * headDim;
    const int jbeg = s * chunk, jend = min(jbeg + chunk, pos.v[r] + 1);
    float acc[BA_MAXD], m, l;
    batch_attend(qs, k + seq, v + seq, kvStride, jbeg, jend, headDim, scale, ps, red, acc, m, l);
    float* p = part + (((size_t)r * nHeads + h) * S + s) * (headDim + 2);
#pragma unroll
    for (int i = 0; i < BA_MAXD; i++) {
        const int d = tid + i * BA_THREADS;
        if (d < headDim) p[d] = acc[i];
    }
    if (tid == 0) {
        p[headDim] = m;
        p[headDim + 1] = l;
    }
}

// attention_batch_combine_f32 merges the S partials of each (head h, row r): grid (nHeads, rows),
// block BA_THREADS, S ≤ BA_MAXS. out = Σ_s e^(m_s−M) acc_s / Σ_s e^(m_s−M) l_s, M = max_s m_s,
// summed in the order s = 0, 1, … (attention_combine_f32's arithmetic).
extern "C" __global__ void __launch_bounds__(BA_THREADS)
attention_batch_combine_f32(float* out, const float* part, int nHeads, int headDim, int S) {
    __shared__ float ws[BA_MAXS], ls[BA_MAXS];
    __shared__ float red[32];
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, r = blockIdx.y, tid = threadIdx.x;
    const float* p = part + ((size_t)r * nHeads + h) * S * (headDim + 2);
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
    for (int i = 0; i < BA_MAXD; i++) {
        const int d = tid + i * BA_THREADS;
        if (d >= headDim) break;
        float acc = 0.f;
#pragma unroll 8
        for (int s = 0; s < S; s++) acc = fmaf(ws[s], p[(size_t)s * (headDim + 2) + d], acc);
        out[((size_t)r * nHeads + h) * headDim + d] = acc * inv;
    }
}

// ---- attention, head_dim 128: one block per (KV head, key split, sequence) ----
//
// attention_decode_f32 (attention.cu) for B sequences of one query row each: block (kvh, s, r)
// serves the G = nHeads/nKV query heads of KV head kvh of row r (one warp each, G ≤ 16), so each
// key of the sequence is read once for the whole group. It stages tiles of 32 keys and values
// in shared memory with coalesced float4 loads (keys padded to 129 floats a row so lane j
// reading key j is conflict-free), scores each warp's query against the tile (lane = key), runs
// the online softmax with warp reductions and accumulates 4 output dims per lane. Partials go to
// attention_batch_split_f32's layout; the last block of each (row, KV head) to finish merges
// them (an arrival counter per (row, KV head), left at zero), so one launch does the split and
// the combine.
#define BD_D 128
#define BD_KEYS 32
#define BD_MAXG 16

// attention_batch_decode_f32: grid (nKV, S, rows), block 32·G threads, dynamic shared memory
// 4·(G·BD_D + BD_KEYS·(BD_D+1) + BD_KEYS·BD_D) bytes. Split s covers keys [s·chunk, (s+1)·chunk).
extern "C" __global__ void __launch_bounds__(32 * BD_MAXG)
attention_batch_decode_f32(float* out, float* part, int* counters, const float* q, const float* k, const float* v,
                           int nHeads, int nKV, int capacity, float scale, int chunk, const __grid_constant__ BatchInts pos) {
    extern __shared__ float sh[];
    pdl_wait();
    pdl_trigger();
    const int G = nHeads / nKV;
    float* qs = sh;                         // [G][BD_D]
    float* ks = qs + G * BD_D;              // [BD_KEYS][BD_D + 1]
    float* vs = ks + BD_KEYS * (BD_D + 1);  // [BD_KEYS][BD_D]
    const int kvh = blockIdx.x, s = blockIdx.y, S = gridDim.y, r = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nth = blockDim.x;
    const int h = kvh * G + warp;  // this warp's query head
    const size_t qld = (size_t)nHeads * BD_D, kvld = (size_t)nKV * BD_D;
    // The group's G query heads are contiguous in row r of q.
    const float4* qg = reinterpret_cast<const float4*>(q + (size_t)r * qld + (size_t)kvh * G * BD_D);
    for (int i = threadIdx.x; i < G * BD_D / 4; i += nth) reinterpret_cast<float4*>(qs)[i] = qg[i];
    const size_t seq = (size_t)r * capacity * kvld + (size_t)kvh * BD_D;
    const float* kseq = k + seq;
    const float* vseq = v + seq;
    const int jb = s * chunk, je = min(jb + chunk, pos.v[r] + 1);  // every key here is visible
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    float m = -INFINITY, l = 0.f;
    for (int j0 = jb; j0 < je; j0 += BD_KEYS) {
        const int n = min(BD_KEYS, je - j0);
        __syncthreads();  // the previous tile is consumed (and, first time, qs is written)
        for (int i = threadIdx.x; i < BD_KEYS * BD_D / 4; i += nth) {
            const int kr_ = i / (BD_D / 4), c = i % (BD_D / 4);
            float4 kv4 = make_float4(0.f, 0.f, 0.f, 0.f), vv4 = kv4;
            if (kr_ < n) {
                const size_t off = (size_t)(j0 + kr_) * kvld;
                kv4 = reinterpret_cast<const float4*>(kseq + off)[c];
                vv4 = reinterpret_cast<const float4*>(vseq + off)[c];
            }
            float* kd = ks + kr_ * (BD_D + 1) + 4 * c;
            kd[0] = kv4.x, kd[1] = kv4.y, kd[2] = kv4.z, kd[3] = kv4.w;
            reinterpret_cast<float4*>(vs)[i] = vv4;
        }
        __syncthreads();
        float sc = -INFINITY;
        if (lane < n) {
            const float* qv = qs + warp * BD_D;
            const float* kv = ks + lane * (BD_D + 1);
            float dot = 0.f;
#pragma unroll 16
            for (int d = 0; d < BD_D; d++) dot = fmaf(qv[d], kv[d], dot);
            sc = dot * scale;
        }
        const float mnew = fmaxf(m, warp_max(sc));  // finite: lane 0 holds a key (n ≥ 1)
        const float p = sc == -INFINITY ? 0.f : expf(sc - mnew);
        const float corr = expf(m - mnew);  // 0 while m = -inf
        l = l * corr + warp_sum(p);
        acc.x *= corr, acc.y *= corr, acc.z *= corr, acc.w *= corr;
        for (int jj = 0; jj < n; jj++) {
            const float pj = __shfl_sync(0xffffffffu, p, jj);
            const float4 vv = reinterpret_cast<const float4*>(vs + jj * BD_D)[lane];
            acc.x = fmaf(pj, vv.x, acc.x), acc.y = fmaf(pj, vv.y, acc.y);
            acc.z = fmaf(pj, vv.z, acc.z), acc.w = fmaf(pj, vv.w, acc.w);
        }
        m = mnew;
    }
    float* p = part + (((size_t)r * nHeads + h) * S + s) * (BD_D + 2);
    // (hd + 2)-float records are only 8-byte aligned: scalar stores.
    p[4 * lane] = acc.x, p[4 * lane + 1] = acc.y, p[4 * lane + 2] = acc.z, p[4 * lane + 3] = acc.w;
    if (lane == 0) {
        p[BD_D] = m;
        p[BD_D + 1] = l;
    }

    // The last block of (row r, KV head kvh) to finish merges the S partials of its G query
    // heads. Partials are read with ld.global.cg: other blocks wrote them through L2, and this
    // SM's L1 may hold stale lines.
    __shared__ int merger;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* ctr = counters + (size_t)r * nKV + kvh;
        merger = atomicAdd(ctr, 1) == S - 1;
        if (merger) *ctr = 0;  // ready for the next launch
    }
    __syncthreads();
    if (!merger) return;
    __threadfence();
    const float* pp = part + ((size_t)r * nHeads + h) * S * (BD_D + 2);
    const float ms0 = lane < S ? __ldcg(pp + (size_t)lane * (BD_D + 2) + BD_D) : -INFINITY;
    const float ms1 = lane + 32 < S ? __ldcg(pp + (size_t)(lane + 32) * (BD_D + 2) + BD_D) : -INFINITY;
    const float M = warp_max(fmaxf(ms0, ms1));
    // weights e^(m_s - M) of splits lane and lane+32 (0 for an empty range)
    const float w0 = ms0 == -INFINITY ? 0.f : expf(ms0 - M), w1 = ms1 == -INFINITY ? 0.f : expf(ms1 - M);
    float L = 0.f;
    if (lane < S) L = w0 * __ldcg(pp + (size_t)lane * (BD_D + 2) + BD_D + 1);
    if (lane + 32 < S) L = fmaf(w1, __ldcg(pp + (size_t)(lane + 32) * (BD_D + 2) + BD_D + 1), L);
    L = warp_sum(L);
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int sp = 0; sp < S; sp++) {
        const float w = __shfl_sync(0xffffffffu, sp < 32 ? w0 : w1, sp & 31);
        const float* rec = pp + (size_t)sp * (BD_D + 2) + 4 * lane;
        const float2 a = __ldcg(reinterpret_cast<const float2*>(rec)), b = __ldcg(reinterpret_cast<const float2*>(rec + 2));
        o.x = fmaf(w, a.x, o.x), o.y = fmaf(w, a.y, o.y), o.z = fmaf(w, b.x, o.z), o.w = fmaf(w, b.y, o.w);
    }
    const float inv = 1.f / L;
    float* orow = out + (size_t)r * nHeads * BD_D + (size_t)h * BD_D + 4 * lane;
    reinterpret_cast<float4*>(orow)[0] = make_float4(o.x * inv, o.y * inv, o.z * inv, o.w * inv);
}
