// Causal grouped-query attention over a KV cache. One block per (head, query row) walks its
// keys in chunks of ATT_THREADS with an online softmax (scores of a chunk in shared memory, the
// running max and sum rescaled per chunk), so any context length runs in fixed shared memory.
// When there are too few (head, row) pairs to fill the GPU (decode), the keys are also split
// across blocks (attention_split_f32) and the partial results merged (attention_combine_f32).
#include "attention_common.cuh"


// attention_f32: out[t, h*hd:(h+1)*hd] = softmax(q_t·k_jᵀ * scale) · v_j over keys j <= pos0+t
// (bottom-right causal mask), query head h reading KV head h / (nHeads/nKV). q and out are
// [T, nHeads*hd], k and v [>= pos0+T, nKV*hd]. grid (nHeads, T), block ATT_THREADS, dynamic
// shared memory (hd + ATT_THREADS) floats.
// Every kernel here has two entry points: the name for a float32 KV cache and name_kb for a bf16
// one (attention_common.cuh: KV element types); the bodies are templates over the element type.
template <typename KV>
__device__ __forceinline__ void attention_rows(float* out, const float* q, const KV* k, const KV* v, int pos0,
                                               int nHeads, int nKV, int headDim, float scale) {
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
#define ATT_ENTRY(NAME, KV)                                                                                      \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                                      \
        NAME(float* out, const float* q, const KV* k, const KV* v, int pos0, int nHeads, int nKV, int headDim,       \
             float scale) {                                                                                        \
        attention_rows(out, q, k, v, pos0, nHeads, nKV, headDim, scale);                                           \
    }
ATT_ENTRY(attention_f32, float)
ATT_ENTRY(attention_f32_kb, uint16_t)

// attention_split_f32: as attention_f32, but block (h, t, s) covers only keys
// [s*chunk, (s+1)*chunk) of row t's range and writes its unnormalised output, max and sum to
// part[((t*nHeads + h)*S + s)*(hd+2) ...] (hd values, then m, then l); S = gridDim.z. An empty
// range writes m = -inf, l = 0.
template <typename KV>
__device__ __forceinline__ void attention_split(float* part, const float* q, const KV* k, const KV* v, int pos0,
                                                int nHeads, int nKV, int headDim, float scale, int chunk) {
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
#define ATT_SPLIT_ENTRY(NAME, KV)                                                                                \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                                      \
        NAME(float* part, const float* q, const KV* k, const KV* v, int pos0, int nHeads, int nKV, int headDim,      \
             float scale, int chunk) {                                                                             \
        attention_split(part, q, k, v, pos0, nHeads, nKV, headDim, scale, chunk);                                  \
    }
ATT_SPLIT_ENTRY(attention_split_f32, float)
ATT_SPLIT_ENTRY(attention_split_f32_kb, uint16_t)

// attention_combine_f32 merges the S partial results of each (head h, row t): grid (nHeads, T),
// block ATT_THREADS, S ≤ ATT_MAXS. out = Σ_s e^(m_s-M) acc_s / Σ_s e^(m_s-M) l_s with M = max_s m_s.
// The S maxima, sums and weights are gathered in shared memory in parallel first, and the
// weighted sum over s is unrolled so its loads are in flight together (a loop waiting on each
// load cost ~12 µs at S = 17); the order of the sums is s = 0, 1, … as before.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention_combine_f32(float* out, const float* part, int nHeads, int headDim, int S) {
    __shared__ float ws[ATT_MAXS], ls[ATT_MAXS];
    __shared__ float red[32];
    const int h = blockIdx.x, t = blockIdx.y;
    attn_combine(out + ((size_t)t * nHeads + h) * headDim, part + ((size_t)t * nHeads + h) * S * (headDim + 2), headDim,
                 S, ws, ls, red);
}

// ---- decode: one block per (KV head, key split), every query head of the group at once ----
// (the tile walk and the merge are attention_common.cuh's dec_attend and dec_finish, shared with
// the batched decode kernel in batch.cu)
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

// attention_decode_f32: grid (nKV, S), block 32·Q threads, dynamic shared memory
// 4·(Q·AD_D + AD_KEYS·(AD_D+1) + AD_KEYS·AD_D) bytes. Split s covers keys [s·chunk, (s+1)·chunk).
// pre (the register walk's L2 prefetch, rows a block: attention_decode_r) is ignored here.
template <typename KV>
__device__ __forceinline__ void attention_decode_tiles(float* out, float* part, int* counters, const float* q,
                                                       const KV* k, const KV* v, int pos0, int T, int nHeads, int nKV,
                                                       float scale, int chunk) {
    extern __shared__ float sh[];
    pdl_wait();
    pdl_trigger();
    const int G = nHeads / nKV, Q = G * T;
    float* qs = sh;                          // [Q][AD_D]
    float* ks = qs + Q * AD_D;               // [AD_KEYS][AD_D + 1]
    float* vs = ks + AD_KEYS * (AD_D + 1);   // [AD_KEYS][AD_D]
    const int kvh = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int warp = threadIdx.x >> 5, nth = blockDim.x;
    const int t = warp / G, h = kvh * G + warp % G;  // this warp's query row and head
    const size_t qld = (size_t)nHeads * AD_D, kvld = (size_t)nKV * AD_D;
    for (int i = threadIdx.x; i < Q * AD_D / 4; i += nth) {
        const int qi = i / (AD_D / 4), c = i % (AD_D / 4);
        const int qt = qi / G, qh = kvh * G + qi % G;
        reinterpret_cast<float4*>(qs)[i] = reinterpret_cast<const float4*>(q + (size_t)qt * qld + (size_t)qh * AD_D)[c];
    }
    const int jb = s * chunk, je = min(jb + chunk, pos0 + T);  // keys any row of the block may see
    float4 acc;
    float m, l;
    // This warp's row sees keys ≤ pos0 + t.
    dec_attend(qs + warp * AD_D, k + (size_t)kvh * AD_D, v + (size_t)kvh * AD_D, kvld, jb, je, pos0 + t, scale, ks, vs,
               acc, m, l);
    dec_finish(part + ((size_t)t * nHeads + h) * S * (AD_D + 2), s, S, &counters[kvh],
               out + (size_t)t * nHeads * AD_D + (size_t)h * AD_D, acc, m, l);
}
#define AD_ENTRY(NAME, KV)                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * AD_MAXQ)                                                     \
        NAME(float* out, float* part, int* counters, const float* q, const KV* k, const KV* v, int pos0, int T,      \
             int nHeads, int nKV, float scale, int chunk, int pre) {                                               \
        attention_decode_tiles(out, part, counters, q, k, v, pos0, T, nHeads, nKV, scale, chunk);                  \
    }
AD_ENTRY(attention_decode_f32, float)
AD_ENTRY(attention_decode_f32_kb, uint16_t)

// attention_decode_r{Q}: attention_decode_f32 for Q = G·T ∈ {1, 2, 4} query vectors a KV head with
// the register walk (attention_common.cuh: dr_attend): grid (nKV, S), block 32·DR_WARPS threads,
// no dynamic shared memory; the same splits, partial records and last-block merge.
template <int Q, typename KV>
__device__ __forceinline__ void attention_decode_r(float* out, float* part, int* counters, const float* q, const KV* k,
                                                   const KV* v, int pos0, int nHeads, int nKV, float scale, int chunk,
                                                   int pre) {
    __shared__ __align__(16) float red[DR_WARPS * Q * DR_REC];
    if (pre > 0) {
        // The block's cached rows before pos0 do not depend on the kernel before this one (it
        // writes the step's own rows, pos0 and after): ask L2 for the first pre of them while it
        // runs, so that the walk's first loads after pdl_wait are L2 hits
        // (QWENGO_CUDA_DECODE_ATTN_PREFETCH=pre).
        constexpr int LPR = AD_D * (int)sizeof(KV) / 128;  // 128-byte lines a row
        const int jb = blockIdx.y * chunk, n = max(0, min(jb + min(chunk, pre), pos0) - jb) * LPR;
        const size_t kvld = (size_t)nKV * AD_D;
        for (int i = threadIdx.x; i < 2 * n; i += blockDim.x) {
            const int r = (i % n) / LPR, c = i % LPR;
            const KV* line = (i < n ? k : v) + (size_t)(jb + r) * kvld + (size_t)blockIdx.x * AD_D + c * (128 / (int)sizeof(KV));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(line));
        }
    }
    pdl_wait();
    pdl_trigger();
    const int G = nHeads / nKV;
    const int kvh = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t qld = (size_t)nHeads * AD_D, kvld = (size_t)nKV * AD_D;
    float4 qv[Q];
#pragma unroll
    for (int h = 0; h < Q; h++)  // query h: row h / G, head kvh·G + h % G
        qv[h] = reinterpret_cast<const float4*>(q + (size_t)(h / G) * qld + (size_t)(kvh * G + h % G) * AD_D)[lane];
    const int jb = s * chunk, je = min(jb + chunk, pos0 + Q / G);  // keys any row of the block may see
    float4 acc[Q];
    float m[Q], l[Q];
    dr_attend<Q, KV>(qv, k + (size_t)kvh * AD_D, v + (size_t)kvh * AD_D, kvld, jb, je, pos0, G, scale, acc, m, l);
    float4 oacc;
    float om, ol;
    dr_merge<Q>(red, acc, m, l, oacc, om, ol);
    const int hq = min(warp, Q - 1), t = hq / G, h = kvh * G + hq % G;  // warp's query (warps ≥ Q: not live)
    dec_finish(part + ((size_t)t * nHeads + h) * S * (AD_D + 2), s, S, &counters[kvh],
               out + (size_t)t * nHeads * AD_D + (size_t)h * AD_D, oacc, om, ol, warp < Q);
}
#define AD_R_ENTRY(Q, NAME, KV)                                                                                   \
    extern "C" __global__ void __launch_bounds__(32 * DR_WARPS)                                                    \
        NAME(float* out, float* part, int* counters, const float* q, const KV* k, const KV* v, int pos0, int T,      \
             int nHeads, int nKV, float scale, int chunk, int pre) {                                               \
        attention_decode_r<Q, KV>(out, part, counters, q, k, v, pos0, nHeads, nKV, scale, chunk, pre);             \
    }
AD_R_ENTRY(1, attention_decode_r1, float)
AD_R_ENTRY(2, attention_decode_r2, float)
AD_R_ENTRY(4, attention_decode_r4, float)
AD_R_ENTRY(1, attention_decode_r1_kb, uint16_t)
AD_R_ENTRY(2, attention_decode_r2_kb, uint16_t)
AD_R_ENTRY(4, attention_decode_r4_kb, uint16_t)

// attention_decode_nr{Q}: qk_norm_rope_cache (fused.cu) and attention_decode_r{Q} in one launch for
// one token row at position pos (Q = G query heads a KV head, head_dim 128): the decode step's
// separate q/k norm + RoPE + cache-write kernel, and its boundary, go (session 14).
//
// Every block normalises and rotates the G query heads of its KV head itself (warp w takes heads
// w, w + DR_WARPS, …; the statistics are warp_rms_inv's, bit for bit the 128-thread block's of
// qk_norm_rope_row), the block of split 0 writes them to qr, and the block whose split holds
// pos (the writer) first writes the token's rotated key to kr and to row pos of the K cache and
// its value row to the V cache, before a block barrier; the writer's walk then reads the caches
// through the coherent path (dr_attend<…, true>), so that it sees the row it wrote; the other
// blocks never read row pos and keep the non-coherent loads. Same values, same sums, same order
// as the two kernels: bit for bit their results.
template <int Q, typename KV>
__device__ __forceinline__ void attention_decode_nr(float* out, float* part, int* counters, float* qr, float* kr,
                                                    const float* q, const float* k, const float* v, const float* qn,
                                                    const float* kn, KV* kcache, KV* vcache, const float* invf, int pos,
                                                    int nHeads, int nKV, float scale, int chunk, float eps) {
    __shared__ __align__(16) float red[DR_WARPS * Q * DR_REC];
    __shared__ __align__(16) float qs[Q][AD_D];
    pdl_wait();
    pdl_trigger();
    const int G = nHeads / nKV;
    const int kvh = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int jb = s * chunk, je = min(jb + chunk, pos + 1);
    const bool writer = jb <= pos && pos < jb + chunk;  // this block's split holds the new key
    // RoPE pairs (i, i + 64): lane l rotates pairs l and l + 32, i.e. its elements l + 32·c.
    float cs0, sn0, cs1, sn1;
    rope_cs(pos, invf[lane], cs0, sn0);
    rope_cs(pos, invf[lane + 32], cs1, sn1);
    // normrope normalises the 128-element head at src with weight w and rotates it: y[c] is
    // element lane + 32·c.
    auto normrope = [&](const float* src, const float* w, float (&y)[4]) {
        float xv[4];
        const float inv = warp_rms_inv(src, 0, AD_D, eps, xv);
#pragma unroll
        for (int c = 0; c < 4; c++) y[c] = __fmul_rn(w[lane + 32 * c], __fmul_rn(xv[c], inv));
        float o1, o2;
        rope_apply(y[0], y[2], cs0, sn0, o1, o2);
        y[0] = o1, y[2] = o2;
        rope_apply(y[1], y[3], cs1, sn1, o1, o2);
        y[1] = o1, y[3] = o2;
    };
    if (writer) {
        const size_t off = (size_t)kvh * AD_D, row = (size_t)pos * nKV * AD_D + off;
        if (warp == DR_WARPS - 1) {
            float y[4];
            normrope(k + off, kn, y);
#pragma unroll
            for (int c = 0; c < 4; c++) {
                kr[off + lane + 32 * c] = y[c];
                kv_put(kcache + row + lane + 32 * c, y[c]);
            }
        } else if (warp == DR_WARPS - 2) {
#pragma unroll
            for (int c = 0; c < 4; c++) kv_put(vcache + row + lane + 32 * c, v[off + lane + 32 * c]);
        }
    }
    for (int h = warp; h < Q; h += DR_WARPS) {
        const size_t off = (size_t)(kvh * G + h) * AD_D;
        float y[4];
        normrope(q + off, qn, y);
#pragma unroll
        for (int c = 0; c < 4; c++) {
            qs[h][lane + 32 * c] = y[c];
            if (s == 0) qr[off + lane + 32 * c] = y[c];
        }
    }
    __syncthreads();
    float4 qv[Q];
#pragma unroll
    for (int h = 0; h < Q; h++) qv[h] = reinterpret_cast<const float4*>(qs[h])[lane];
    float4 acc[Q];
    float m[Q], l[Q];
    if (writer)  // reads the row it wrote: the coherent path
        dr_attend<Q, KV, true>(qv, kcache + (size_t)kvh * AD_D, vcache + (size_t)kvh * AD_D, (size_t)nKV * AD_D, jb, je,
                               pos, G, scale, acc, m, l);
    else
        dr_attend<Q, KV, false>(qv, kcache + (size_t)kvh * AD_D, vcache + (size_t)kvh * AD_D, (size_t)nKV * AD_D, jb, je,
                                pos, G, scale, acc, m, l);
    float4 oacc;
    float om, ol;
    dr_merge<Q>(red, acc, m, l, oacc, om, ol);
    const int hq = min(warp, Q - 1), h = kvh * G + hq;  // warp's query (warps ≥ Q: not live)
    dec_finish(part + (size_t)h * S * (AD_D + 2), s, S, &counters[kvh], out + (size_t)h * AD_D, oacc, om, ol, warp < Q);
}
#define AD_NR_ENTRY(Q, NAME, KV)                                                                                   \
    extern "C" __global__ void __launch_bounds__(32 * DR_WARPS)                                                     \
        NAME(float* out, float* part, int* counters, float* qr, float* kr, const float* q, const float* k,           \
             const float* v, const float* qn, const float* kn, KV* kcache, KV* vcache, const float* invf, int pos,     \
             int nHeads, int nKV, float scale, int chunk, float eps) {                                              \
        attention_decode_nr<Q, KV>(out, part, counters, qr, kr, q, k, v, qn, kn, kcache, vcache, invf, pos, nHeads,  \
                                   nKV, scale, chunk, eps);                                                        \
    }
AD_NR_ENTRY(1, attention_decode_nr1, float)
AD_NR_ENTRY(2, attention_decode_nr2, float)
AD_NR_ENTRY(4, attention_decode_nr4, float)
AD_NR_ENTRY(1, attention_decode_nr1_kb, uint16_t)
AD_NR_ENTRY(2, attention_decode_nr2_kb, uint16_t)
AD_NR_ENTRY(4, attention_decode_nr4_kb, uint16_t)
