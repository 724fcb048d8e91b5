// Batched decode (backend.Batched): B sequences advanced by one token each in one launch per op.
// Row r of a [B, width] activation is sequence r's new token at position pos.v[r]; the batch KV
// cache of a layer is [B·capacity, width] with sequence r in rows [r·capacity, (r+1)·capacity).
//
// The per-row positions (or destination rows) travel in a kernel parameter, a BatchInts struct
// passed by value, rather than in device memory: a step needs no host-to-device copy (which
// would serialise with the kernel stream) and the values are in the constant bank every block
// reads. One launch takes BATCH_MAX rows; the host splits larger batches. Numerics follow the
// single-sequence kernels (norm.cu, fused.cu, attention.cu) operation for operation: the pieces
// they share live in attention_common.cuh and common.cuh (rope_pair).
#include "attention_common.cuh"

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
        const size_t o = (size_t)t * cols + (size_t)h * headDim + i;
        rope_pair(x[o], x[o + half], pos.v[t], invf[i], out[o], out[o + half]);
    }
}

// scatter_rows_f32: block t copies row t of src [gridDim.x, cols] to row rows.v[t] of dst;
// scatter_rows_kb rounds the values to a bf16 dst (a bf16 KV cache: attention_common.cuh).
template <typename KV>
__device__ __forceinline__ void scatter_rows(KV* dst, const float* src, int cols, const BatchInts& rows) {
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x;
    const float* s = src + (size_t)t * cols;
    KV* d = dst + (size_t)rows.v[t] * cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) kv_put(d + j, s[j]);
}
extern "C" __global__ void scatter_rows_f32(float* dst, const float* src, int cols, const __grid_constant__ BatchInts rows) {
    scatter_rows(dst, src, cols, rows);
}
extern "C" __global__ void scatter_rows_kb(uint16_t* dst, const float* src, int cols,
                                           const __grid_constant__ BatchInts rows) {
    scatter_rows(dst, src, cols, rows);
}

// qk_norm_rope_cache_at: qk_norm_rope_cache (fused.cu) with row t at position pos.v[t] and its
// key and value written to cache row t·capacity + pos.v[t]. grid (rows, nHeads + nKV), blockDim
// as rmsnorm_f32 for n = headDim (the same reduction order), headDim ≤ 512.
// qk_norm_rope_cache_at_kb writes a bf16 cache.
template <typename KV>
__device__ __forceinline__ void qk_norm_rope_cache_rows(float* qr, float* kr, const float* q, const float* k,
                                                        const float* v, const float* qn, const float* kn, KV* kcache,
                                                        KV* vcache, const float* invf, int nHeads, int nKV, int headDim,
                                                        int capacity, float eps, const BatchInts& pos) {
    __shared__ double red[32];
    __shared__ float y[512];
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x, p = pos.v[t];
    qk_norm_rope_row(qr, kr, q, k, v, qn, kn, kcache, vcache, invf, nHeads, nKV, headDim, eps, t, blockIdx.y, p,
                     (size_t)t * capacity + p, red, y);
}
#define QKC_AT_ENTRY(NAME, KV)                                                                                   \
    extern "C" __global__ void NAME(float* qr, float* kr, const float* q, const float* k, const float* v,             \
                                    const float* qn, const float* kn, KV* kcache, KV* vcache, const float* invf,      \
                                    int nHeads, int nKV, int headDim, int capacity, float eps,                       \
                                    const __grid_constant__ BatchInts pos) {                                         \
        qk_norm_rope_cache_rows(qr, kr, q, k, v, qn, kn, kcache, vcache, invf, nHeads, nKV, headDim, capacity, eps,  \
                                pos);                                                                              \
    }
QKC_AT_ENTRY(qk_norm_rope_cache_at, float)
QKC_AT_ENTRY(qk_norm_rope_cache_at_kb, uint16_t)

// ---- attention, any head_dim ≤ 512: split over keys, then combine (as attention.cu) ----

// attention_batch_split_f32: block (h, r, s) runs query head h of row r over keys
// [s·chunk, (s+1)·chunk) ∩ [0, pos.v[r]] of sequence r (cache rows r·capacity + j) and writes
// its unnormalised output, max and sum to part[((r·nHeads + h)·S + s)·(hd+2) …] (hd values,
// then m, then l); S = gridDim.z. Block ATT_THREADS, dynamic shared memory (hd + ATT_THREADS)
// floats.
// (_kb: a bf16 cache, as every kernel below.)
template <typename KV>
__device__ __forceinline__ void attention_batch_split(float* part, const float* q, const KV* k, const KV* v, int nHeads,
                                                      int nKV, int headDim, int capacity, float scale, int chunk,
                                                      const BatchInts& pos) {
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
    for (int d = tid; d < headDim; d += ATT_THREADS) qs[d] = qrow[d];
    __syncthreads();
    const size_t seq = (size_t)r * capacity * kvStride + (size_t)kvh * headDim;
    const int jbeg = s * chunk, jend = min(jbeg + chunk, pos.v[r] + 1);
    float acc[ATT_MAXD], m, l;
    attend(qs, k + seq, v + seq, kvStride, jbeg, jend, headDim, scale, ps, red, acc, m, l);
    float* p = part + (((size_t)r * nHeads + h) * S + s) * (headDim + 2);
#pragma unroll
    for (int i = 0; i < ATT_MAXD; i++) {
        const int d = tid + i * ATT_THREADS;
        if (d < headDim) p[d] = acc[i];
    }
    if (tid == 0) {
        p[headDim] = m;
        p[headDim + 1] = l;
    }
}
#define BS_ENTRY(NAME, KV)                                                                                       \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                                      \
        NAME(float* part, const float* q, const KV* k, const KV* v, int nHeads, int nKV, int headDim, int capacity,  \
             float scale, int chunk, const __grid_constant__ BatchInts pos) {                                      \
        attention_batch_split(part, q, k, v, nHeads, nKV, headDim, capacity, scale, chunk, pos);                   \
    }
BS_ENTRY(attention_batch_split_f32, float)
BS_ENTRY(attention_batch_split_f32_kb, uint16_t)

// attention_batch_combine_f32 merges the S partials of each (head h, row r): grid (nHeads, rows),
// block ATT_THREADS, S ≤ ATT_MAXS. out = Σ_s e^(m_s−M) acc_s / Σ_s e^(m_s−M) l_s, M = max_s m_s,
// summed in the order s = 0, 1, … (attention_combine_f32's arithmetic).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention_batch_combine_f32(float* out, const float* part, int nHeads, int headDim, int S) {
    __shared__ float ws[ATT_MAXS], ls[ATT_MAXS];
    __shared__ float red[32];
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, r = blockIdx.y;
    attn_combine(out + ((size_t)r * nHeads + h) * headDim, part + ((size_t)r * nHeads + h) * S * (headDim + 2), headDim,
                 S, ws, ls, red);
}

// ---- attention, head_dim 128: one block per (KV head, key split, sequence) ----
//
// attention_decode_f32 (attention.cu) for B sequences of one query row each, on the same shared
// tile walk and merge (attention_common.cuh: dec_attend, dec_finish): block (kvh, s, r)
// serves the G = nHeads/nKV query heads of KV head kvh of row r (one warp each, G ≤ 16), so each
// key of the sequence is read once for the whole group. It stages tiles of 32 keys and values
// in shared memory with coalesced float4 loads (keys padded to 129 floats a row so lane j
// reading key j is conflict-free), scores each warp's query against the tile (lane = key), runs
// the online softmax with warp reductions and accumulates 4 output dims per lane. Partials go to
// attention_batch_split_f32's layout; the last block of each (row, KV head) to finish merges
// them (an arrival counter per (row, KV head), left at zero), so one launch does the split and
// the combine.
#define BD_MAXG 16

// attention_batch_decode_f32: grid (nKV, S, rows), block 32·G threads, dynamic shared memory
// 4·(G·AD_D + AD_KEYS·(AD_D+1) + AD_KEYS·AD_D) bytes. Split s covers keys [s·chunk, (s+1)·chunk).
template <typename KV>
__device__ __forceinline__ void attention_batch_decode_tiles(float* out, float* part, int* counters, const float* q,
                                                             const KV* k, const KV* v, int nHeads, int nKV, int capacity,
                                                             float scale, int chunk, const BatchInts& pos) {
    extern __shared__ float sh[];
    pdl_wait();
    pdl_trigger();
    const int G = nHeads / nKV;
    float* qs = sh;                         // [G][AD_D]
    float* ks = qs + G * AD_D;              // [AD_KEYS][AD_D + 1]
    float* vs = ks + AD_KEYS * (AD_D + 1);  // [AD_KEYS][AD_D]
    const int kvh = blockIdx.x, s = blockIdx.y, S = gridDim.y, r = blockIdx.z;
    const int warp = threadIdx.x >> 5, nth = blockDim.x;
    const int h = kvh * G + warp;  // this warp's query head
    const size_t qld = (size_t)nHeads * AD_D, kvld = (size_t)nKV * AD_D;
    // The group's G query heads are contiguous in row r of q.
    const float4* qg = reinterpret_cast<const float4*>(q + (size_t)r * qld + (size_t)kvh * G * AD_D);
    for (int i = threadIdx.x; i < G * AD_D / 4; i += nth) reinterpret_cast<float4*>(qs)[i] = qg[i];
    const size_t seq = (size_t)r * capacity * kvld + (size_t)kvh * AD_D;
    const int jb = s * chunk, je = min(jb + chunk, pos.v[r] + 1);  // every key here is visible
    float4 acc;
    float m, l;
    dec_attend(qs + warp * AD_D, k + seq, v + seq, kvld, jb, je, je - 1, scale, ks, vs, acc, m, l);
    dec_finish(part + ((size_t)r * nHeads + h) * S * (AD_D + 2), s, S, counters + (size_t)r * nKV + kvh,
               out + (size_t)r * nHeads * AD_D + (size_t)h * AD_D, acc, m, l);
}
#define BD_ENTRY(NAME, KV)                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * BD_MAXG)                                                     \
        NAME(float* out, float* part, int* counters, const float* q, const KV* k, const KV* v, int nHeads, int nKV,  \
             int capacity, float scale, int chunk, const __grid_constant__ BatchInts pos) {                        \
        attention_batch_decode_tiles(out, part, counters, q, k, v, nHeads, nKV, capacity, scale, chunk, pos);      \
    }
BD_ENTRY(attention_batch_decode_f32, float)
BD_ENTRY(attention_batch_decode_f32_kb, uint16_t)

// attention_batch_decode_r{G}: attention_batch_decode_f32 for G ∈ {1, 2, 4} query heads a KV head
// with the register walk (attention_common.cuh: dr_attend): grid (nKV, S, rows), block
// 32·DR_WARPS threads, no dynamic shared memory; the same splits, records and merge.
template <int G, typename KV>
__device__ __forceinline__ void attention_batch_decode_r(float* out, float* part, int* counters, const float* q,
                                                         const KV* k, const KV* v, int nHeads, int nKV, int capacity,
                                                         float scale, int chunk, const BatchInts& pos) {
    __shared__ __align__(16) float red[DR_WARPS * G * DR_REC];
    pdl_wait();
    pdl_trigger();
    const int kvh = blockIdx.x, s = blockIdx.y, S = gridDim.y, r = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t qld = (size_t)nHeads * AD_D, kvld = (size_t)nKV * AD_D;
    float4 qv[G];
#pragma unroll
    for (int h = 0; h < G; h++) qv[h] = reinterpret_cast<const float4*>(q + (size_t)r * qld + (size_t)(kvh * G + h) * AD_D)[lane];
    const size_t seq = (size_t)r * capacity * kvld + (size_t)kvh * AD_D;
    const int jb = s * chunk, je = min(jb + chunk, pos.v[r] + 1);  // every key here is visible
    float4 acc[G];
    float m[G], l[G];
    dr_attend<G, KV>(qv, k + seq, v + seq, kvld, jb, je, je - 1, G, scale, acc, m, l);
    float4 oacc;
    float om, ol;
    dr_merge<G>(red, acc, m, l, oacc, om, ol);
    const int h = kvh * G + min(warp, G - 1);
    dec_finish(part + ((size_t)r * nHeads + h) * S * (AD_D + 2), s, S, counters + (size_t)r * nKV + kvh,
               out + (size_t)r * nHeads * AD_D + (size_t)h * AD_D, oacc, om, ol, warp < G);
}
#define BD_R_ENTRY(G, NAME, KV)                                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * DR_WARPS)                                                    \
        NAME(float* out, float* part, int* counters, const float* q, const KV* k, const KV* v, int nHeads, int nKV,  \
             int capacity, float scale, int chunk, const __grid_constant__ BatchInts pos) {                        \
        attention_batch_decode_r<G, KV>(out, part, counters, q, k, v, nHeads, nKV, capacity, scale, chunk, pos);   \
    }
BD_R_ENTRY(1, attention_batch_decode_r1, float)
BD_R_ENTRY(2, attention_batch_decode_r2, float)
BD_R_ENTRY(4, attention_batch_decode_r4, float)
BD_R_ENTRY(1, attention_batch_decode_r1_kb, uint16_t)
BD_R_ENTRY(2, attention_batch_decode_r2_kb, uint16_t)
BD_R_ENTRY(4, attention_batch_decode_r4_kb, uint16_t)
