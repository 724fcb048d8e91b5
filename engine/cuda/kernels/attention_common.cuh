// Attention pieces shared by the single-sequence kernels (attention.cu, fused.cu) and the batched
// decode kernels (batch.cu), so that both compute the same thing the same way: the online-softmax
// walk over keys of the split kernels, the merge of split partials, the decode kernel's tile
// walk and last-block merge, and the per-head q/k RMSNorm + RoPE + KV-cache write.
#pragma once
#include "common.cuh"

// ---- KV cache element types ----
// A KV cache holds float32 keys and values, or bf16 ones (uint16_t bits, rounded to nearest
// even when written: half the bytes a decode step reads, the layout of shared/reference/
// qwen3.md). Every kernel that reads or writes a cache is a template over its element type KV
// (float or uint16_t) and goes through these accessors, so both caches run the same arithmetic
// on the same float values (a bf16 element widens exactly).
__device__ __forceinline__ float kv_at(const float* p) { return *p; }
__device__ __forceinline__ float kv_at(const uint16_t* p) { return bf16_to_f32(*p); }
// kv_ld4 loads elements [4c, 4c+4) of the row at p (a float4, or 8 bytes of bf16).
__device__ __forceinline__ float4 kv_ld4(const float* p, int c) { return __ldg(reinterpret_cast<const float4*>(p) + c); }
__device__ __forceinline__ float4 kv_ld4(const uint16_t* p, int c) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(p) + c);
    return make_float4(bf16_lo(u.x), bf16_hi(u.x), bf16_lo(u.y), bf16_hi(u.y));
}
// kv_ld4c is kv_ld4 through the coherent path (ld.global, not ld.global.nc): for rows this launch
// may have written itself (attention_decode_nr writes the token's key and value, then reads them
// after a block barrier; the non-coherent path promises nothing for data written during the
// launch).
__device__ __forceinline__ float4 kv_ld4c(const float* p, int c) { return reinterpret_cast<const float4*>(p)[c]; }
__device__ __forceinline__ float4 kv_ld4c(const uint16_t* p, int c) {
    const uint2 u = reinterpret_cast<const uint2*>(p)[c];
    return make_float4(bf16_lo(u.x), bf16_hi(u.x), bf16_lo(u.y), bf16_hi(u.y));
}
__device__ __forceinline__ void kv_put(float* p, float v) { *p = v; }
__device__ __forceinline__ void kv_put(uint16_t* p, float v) { *p = (uint16_t)f32_bf16_bits(v); }

#define ATT_THREADS 128
#define ATT_MAXD 4  // output dims per thread: head_dim <= ATT_THREADS * ATT_MAXD = 512
#define ATT_MAXS 64

// attend runs the online softmax of query qs (in shared memory) over keys [jbeg, jend) of one
// KV head, leaving the unnormalised output in acc (dims tid + i*ATT_THREADS), the running
// max in m and the sum of exponentials in l. ps is shared scratch of ATT_THREADS floats.
template <typename KV>
__device__ __forceinline__ void attend(const float* qs, const KV* kbase, const KV* vbase, size_t kvStride,
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
            const KV* kr = kbase + (size_t)j * kvStride;
            float dot = 0.f;
            for (int d = 0; d < headDim; d++) dot = fmaf(qs[d], kv_at(kr + d), dot);
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
                const KV* vc = vbase + (size_t)j0 * kvStride + d;
                for (int jj = 0; jj < cnt; jj++) a = fmaf(ps[jj], kv_at(vc + (size_t)jj * kvStride), a);
                acc[i] = a;
            }
        }
        m = mnew;
        __syncthreads();  // everyone is done with ps before the next chunk overwrites it
    }
}

// attn_combine merges the S partial results of one (head, row) — records p[s·(hd+2) …] of hd
// unnormalised outputs, then m, then l — into out[0..hd): out = Σ_s e^(m_s−M) acc_s / Σ_s
// e^(m_s−M) l_s with M = max_s m_s, summed in the order s = 0, 1, …. Block ATT_THREADS, S ≤
// ATT_MAXS; ws, ls shared [ATT_MAXS], red shared [32]. The maxima, sums and weights are gathered
// in shared memory in parallel first, and the weighted sum over s is unrolled so its loads are in
// flight together (a loop waiting on each load cost ~12 µs at S = 17).
__device__ __forceinline__ void attn_combine(float* out, const float* p, int headDim, int S, float* ws, float* ls,
                                             float* red) {
    const int tid = threadIdx.x;
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
        out[d] = acc * inv;
    }
}

// ---- decode: one block per (KV head, key split), every query of the group at once ----
//
// A decode block serves all query vectors of one KV head (one warp each, ≤ AD_MAXQ): it copies
// tiles of AD_KEYS keys and values into shared memory with coalesced float4 loads (keys padded to
// AD_D+1 floats a row so lane j reading key j is conflict-free), then each warp scores its query
// against the tile (lane = key), runs the online softmax with warp reductions and accumulates 4
// output dims per lane. head_dim AD_D = 128.
#define AD_D 128
#define AD_KEYS 32
#define AD_MAXQ 16

// dec_attend walks keys [jb, je) of one KV head — row j of kseq/vseq at j·kvld, the head's
// column already added — for the warp's query qv (shared memory), keys > last masked. ks and vs
// are the block's shared tiles ([AD_KEYS][AD_D+1] and [AD_KEYS][AD_D]); every thread of the block
// calls it (it synchronises the block per tile). Leaves the unnormalised output (dims 4·lane …)
// in acc, the running max in m (-inf when no key was visible) and the sum of exponentials in l.
#define DEC_BATCH 8  // float4 pairs a thread loads before storing them (dec_attend)
template <typename KV>
__device__ __forceinline__ void dec_attend(const float* qv, const KV* kseq, const KV* vseq, size_t kvld, int jb,
                                           int je, int last, float scale, float* ks, float* vs, float4& acc, float& m,
                                           float& l) {
    const int lane = threadIdx.x & 31, nth = blockDim.x;
    acc = make_float4(0.f, 0.f, 0.f, 0.f);
    m = -INFINITY;
    l = 0.f;
    for (int j0 = jb; j0 < je; j0 += AD_KEYS) {
        const int n = min(AD_KEYS, je - j0);
        __syncthreads();  // the previous tile is consumed (and, first time, the queries are written)
        // The tile's loads go out DEC_BATCH per thread at a time before any is stored: a
        // load-store loop left one round trip per float4 pair in flight (SASS), eight round
        // trips a tile for 128 threads. A bf16 cache is loaded 8 elements (16 bytes) a load,
        // so that a thread has as many bytes in flight as with float32 (with 8-byte loads the
        // kernel ran at half the float32 one's bandwidth: 32768 keys 131 µs against 103).
        if constexpr (sizeof(KV) == 2) {
            for (int i0 = threadIdx.x; i0 < AD_KEYS * AD_D / 8; i0 += DEC_BATCH * nth) {
                uint4 kr8[DEC_BATCH], vr8[DEC_BATCH];
#pragma unroll
                for (int b = 0; b < DEC_BATCH; b++) {
                    const int i = i0 + b * nth, r = i / (AD_D / 8), c = i % (AD_D / 8);
                    kr8[b] = vr8[b] = make_uint4(0u, 0u, 0u, 0u);
                    if (i < AD_KEYS * AD_D / 8 && r < n) {
                        const size_t off = (size_t)(j0 + r) * kvld;
                        kr8[b] = __ldg(reinterpret_cast<const uint4*>(kseq + off) + c);
                        vr8[b] = __ldg(reinterpret_cast<const uint4*>(vseq + off) + c);
                    }
                }
#pragma unroll
                for (int b = 0; b < DEC_BATCH; b++) {
                    const int i = i0 + b * nth, r = i / (AD_D / 8), c = i % (AD_D / 8);
                    if (i >= AD_KEYS * AD_D / 8) break;
                    float* kr = ks + r * (AD_D + 1) + 8 * c;
                    const uint4 k8 = kr8[b], v8 = vr8[b];
                    kr[0] = bf16_lo(k8.x), kr[1] = bf16_hi(k8.x), kr[2] = bf16_lo(k8.y), kr[3] = bf16_hi(k8.y);
                    kr[4] = bf16_lo(k8.z), kr[5] = bf16_hi(k8.z), kr[6] = bf16_lo(k8.w), kr[7] = bf16_hi(k8.w);
                    float4* vr = reinterpret_cast<float4*>(vs + r * AD_D + 8 * c);
                    vr[0] = make_float4(bf16_lo(v8.x), bf16_hi(v8.x), bf16_lo(v8.y), bf16_hi(v8.y));
                    vr[1] = make_float4(bf16_lo(v8.z), bf16_hi(v8.z), bf16_lo(v8.w), bf16_hi(v8.w));
                }
            }
        } else {
            for (int i0 = threadIdx.x; i0 < AD_KEYS * AD_D / 4; i0 += DEC_BATCH * nth) {
                float4 kv4[DEC_BATCH], vv4[DEC_BATCH];
#pragma unroll
                for (int b = 0; b < DEC_BATCH; b++) {
                    const int i = i0 + b * nth, r = i / (AD_D / 4), c = i % (AD_D / 4);
                    kv4[b] = vv4[b] = make_float4(0.f, 0.f, 0.f, 0.f);
                    if (i < AD_KEYS * AD_D / 4 && r < n) {
                        const size_t off = (size_t)(j0 + r) * kvld;
                        kv4[b] = kv_ld4(kseq + off, c);
                        vv4[b] = kv_ld4(vseq + off, c);
                    }
                }
#pragma unroll
                for (int b = 0; b < DEC_BATCH; b++) {
                    const int i = i0 + b * nth, r = i / (AD_D / 4), c = i % (AD_D / 4);
                    if (i >= AD_KEYS * AD_D / 4) break;
                    float* kr = ks + r * (AD_D + 1) + 4 * c;
                    kr[0] = kv4[b].x, kr[1] = kv4[b].y, kr[2] = kv4[b].z, kr[3] = kv4[b].w;
                    reinterpret_cast<float4*>(vs)[i] = vv4[b];
                }
            }
        }
        __syncthreads();
        const int j = j0 + lane;
        float sc = -INFINITY;
        if (lane < n && j <= last) {
            const float* kr = ks + lane * (AD_D + 1);
            // Four interleaved sums: one chain of 128 dependent FMAs was ~0.3 µs a tile.
            float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
#pragma unroll 8
            for (int d = 0; d < AD_D; d += 4) {
                d0 = fmaf(qv[d], kr[d], d0);
                d1 = fmaf(qv[d + 1], kr[d + 1], d1);
                d2 = fmaf(qv[d + 2], kr[d + 2], d2);
                d3 = fmaf(qv[d + 3], kr[d + 3], d3);
            }
            sc = ((d0 + d1) + (d2 + d3)) * scale;
        }
        const float mnew = fmaxf(m, warp_max(sc));
        if (mnew == -INFINITY) continue;  // no key of this tile is visible to this query
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
}

// dec_finish writes the warp's partial (acc, m, l) as split s of the S records at pp (AD_D+2
// floats each: outputs, m, l; nothing for a warp that is not live), then the last block of the
// launch to arrive at *counter (left at zero for the next launch) merges each of its live warps'
// S records in split order into orow[0..AD_D).
// Every thread of the block calls it. Partials are read with ld.global.cg: other blocks wrote
// them through L2, and this SM's L1 may hold stale lines.
#ifndef DF_BATCH
#define DF_BATCH 16
#endif
__device__ __forceinline__ void dec_finish(float* pp, int s, int S, int* counter, float* orow, float4 acc, float m,
                                           float l, bool live = true) {
    const int lane = threadIdx.x & 31;
    float* p = pp + (size_t)s * (AD_D + 2);
    // (hd + 2)-float records are only 8-byte aligned: scalar stores.
    if (live) {
        p[4 * lane] = acc.x, p[4 * lane + 1] = acc.y, p[4 * lane + 2] = acc.z, p[4 * lane + 3] = acc.w;
        if (lane == 0) {
            p[AD_D] = m;
            p[AD_D + 1] = l;
        }
    }
    __shared__ int merger;
    gpu_fence();
    __syncthreads();
    if (threadIdx.x == 0) {
        merger = atomicAdd(counter, 1) == S - 1;
        if (merger) *counter = 0;  // ready for the next launch
    }
    __syncthreads();
    if (!merger || !live) return;
    gpu_fence();
    // Every load that does not depend on another goes out first: (m, l) of splits lane and
    // lane + 32 (adjacent floats of a record: one 8-byte load each) and the first DF_BATCH
    // records; the maxima, weights and sums follow, then the rest of the records DF_BATCH at a
    // time. The merge is on the critical path of the launch's last block: for S ≤ DF_BATCH this
    // is one L2 round trip where the maxima, then the sums, then the records took three. Same
    // sums, same order (s = 0, 1, …) as before.
    const float2 ml0 = lane < S ? __ldcg(reinterpret_cast<const float2*>(pp + (size_t)lane * (AD_D + 2) + AD_D))
                                : make_float2(-INFINITY, 0.f);
    const float2 ml1 = lane + 32 < S
                           ? __ldcg(reinterpret_cast<const float2*>(pp + (size_t)(lane + 32) * (AD_D + 2) + AD_D))
                           : make_float2(-INFINITY, 0.f);
    float2 a[DF_BATCH], b[DF_BATCH];
    auto load = [&](int s0) {
#pragma unroll
        for (int i = 0; i < DF_BATCH; i++)
            if (s0 + i < S) {
                const float* rec = pp + (size_t)(s0 + i) * (AD_D + 2) + 4 * lane;
                a[i] = __ldcg(reinterpret_cast<const float2*>(rec)), b[i] = __ldcg(reinterpret_cast<const float2*>(rec + 2));
            }
    };
    load(0);
    const float ms0 = ml0.x, ms1 = ml1.x;
    const float M = warp_max(fmaxf(ms0, ms1));
    // weights e^(m_s - M) of splits lane and lane+32 (0 for an empty range)
    const float w0 = ms0 == -INFINITY ? 0.f : expf(ms0 - M), w1 = ms1 == -INFINITY ? 0.f : expf(ms1 - M);
    float L = 0.f;
    if (lane < S) L = w0 * ml0.y;
    if (lane + 32 < S) L = fmaf(w1, ml1.y, L);
    L = warp_sum(L);
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s0 = 0; s0 < S; s0 += DF_BATCH) {
        if (s0 > 0) load(s0);
#pragma unroll
        for (int i = 0; i < DF_BATCH; i++)
            if (s0 + i < S) {
                const int sp = s0 + i;
                const float w = __shfl_sync(0xffffffffu, sp < 32 ? w0 : w1, sp & 31);
                o.x = fmaf(w, a[i].x, o.x), o.y = fmaf(w, a[i].y, o.y), o.z = fmaf(w, b[i].x, o.z), o.w = fmaf(w, b[i].y, o.w);
            }
    }
    const float inv = 1.f / L;
    reinterpret_cast<float4*>(orow + 4 * lane)[0] = make_float4(o.x * inv, o.y * inv, o.z * inv, o.w * inv);
}

// ---- decode attention without shared-memory tiles (DR_: "registers") ----
//
// Why: dec_attend stages each 32-key tile through shared memory and then has every query's warp
// read the whole tile back (lane = key: 128 scalar loads of the padded key row, then a float4 of
// each value row), ~140 warp instructions a key for four query heads. ncu of
// attention_decode_f32 at context 8192 (session 8, run 1): L1/shared pipe 74 % busy, issue
// slots 25 %, 116 registers and 35 KB of shared memory an SM block (4 blocks, 16 warps), DRAM 29 %
// — it reads the f32 cache at ~1.4 TB/s. Here a warp serves all Q query vectors of its KV head
// at once and reads keys and values straight into registers: lane l holds dims [4l, 4l+4) of
// every query and of each key/value row it loads, so each 512-byte row is one coalesced float4
// load a lane and is used by all Q queries from registers. A group of DR_KEYS keys gives 8·Q
// partial dot products a lane; one butterfly (each level sends half of the remaining sums to
// the partner lane and keeps the other half: 31 shuffles for 32 sums, not 5 a sum) leaves lane l
// the full score of query (l / (32/P)) >> 3, key (l / (32/P)) & 7, P = 8·Q. The online softmax
// then runs per query over its lane group, and the weights are broadcast for P·V. ~65 warp
// instructions a key, no shared memory or block barrier in the walk.
//
// The block's DR_WARPS warps take the split's key groups round-robin; their states are merged
// in warp order through shared memory (fixed: deterministic), then warp q writes query q's
// record with dec_finish. Q ∈ {1, 2, 4} (P ≤ 32, one score a lane); other group sizes take
// dec_attend.
#define DR_KEYS 8
#define DR_WARPS 4

// dr_fold is one level of dr_butterfly: N sums still held a lane, exchanged with lane ^ O.
template <int N, int O, int P>
__device__ __forceinline__ void dr_fold(float (&v)[P], int lane) {
    if constexpr (O >= 1) {
        if constexpr (N > 1) {
            const bool up = lane & O;  // keep the upper half, send the lower
#pragma unroll
            for (int a = 0; a < N / 2; a++) {
                const float keep = up ? v[a + N / 2] : v[a], send = up ? v[a] : v[a + N / 2];
                v[a] = keep + __shfl_xor_sync(0xffffffffu, send, O);
            }
            dr_fold<N / 2, O / 2>(v, lane);
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
            dr_fold<1, O / 2>(v, lane);
        }
    }
}

// dr_butterfly sums v[0..P) over the warp's 32 lanes, returning in each lane the total of index
// (lane >> (5 − log2 P)) — every index's sum is held by 32/P lanes, identical bit for bit.
template <int P>
__device__ __forceinline__ float dr_butterfly(float (&v)[P]) {
    dr_fold<P, 16>(v, threadIdx.x & 31);
    return v[0];
}

// dr_attend walks the key groups j0 = jb + DR_KEYS·(warp + DR_WARPS·i) < je of one KV head (row j
// of kseq/vseq at j·kvld, the head's column already added) for queries q[0..Q) (dims 4·lane …);
// query h sees keys ≤ last0 + h / G. Leaves each query's unnormalised output (dims 4·lane …) in
// acc[h], its running max in m[h] (-inf when no key was visible) and its sum of exponentials in
// l[h], the same in every lane.
// COHERENT loads the rows with kv_ld4c (rows written earlier in the same launch), else kv_ld4.
template <int Q, typename KV, bool COHERENT = false>
__device__ __forceinline__ void dr_attend(const float4 (&q)[Q], const KV* kseq, const KV* vseq, size_t kvld, int jb,
                                          int je, int last0, int G, float scale, float4 (&acc)[Q], float (&m)[Q],
                                          float (&l)[Q]) {
    auto ld = [](const KV* p, int c) { return COHERENT ? kv_ld4c(p, c) : kv_ld4(p, c); };
    constexpr int P = DR_KEYS * Q, SPAN = 32 / P;  // SPAN lanes hold each score
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int p = lane / SPAN, myh = p / DR_KEYS, myi = p % DR_KEYS;  // this lane's score
    const int mylast = last0 + myh / G;
#pragma unroll
    for (int h = 0; h < Q; h++) acc[h] = make_float4(0.f, 0.f, 0.f, 0.f), m[h] = -INFINITY, l[h] = 0.f;
    float mm = -INFINITY;  // m[myh]
    // group scores keys j0 … j0 + DR_KEYS − 1 (kk, vv: this lane's dims of each) and folds them
    // into the running state.
    auto group = [&](int j0, const float4 (&kk)[DR_KEYS], const float4 (&vv)[DR_KEYS]) {
        float part[P];
#pragma unroll
        for (int h = 0; h < Q; h++)
#pragma unroll
            for (int i = 0; i < DR_KEYS; i++)
                part[h * DR_KEYS + i] =
                    fmaf(q[h].w, kk[i].w, fmaf(q[h].z, kk[i].z, fmaf(q[h].y, kk[i].y, q[h].x * kk[i].x)));
        const int j = j0 + myi;
        const float sum = dr_butterfly<P>(part);
        const float sc = (j < je && j <= mylast) ? sum * scale : -INFINITY;
        // The query's max and sum over its DR_KEYS scores: lanes differing in p's low bits.
        float gm = sc;
#pragma unroll
        for (int o = SPAN; o < SPAN * DR_KEYS; o <<= 1) gm = fmaxf(gm, __shfl_xor_sync(0xffffffffu, gm, o));
        const float mnew = fmaxf(mm, gm);
        const float e = sc == -INFINITY ? 0.f : expf(sc - mnew);
        float gs = e;
#pragma unroll
        for (int o = SPAN; o < SPAN * DR_KEYS; o <<= 1) gs += __shfl_xor_sync(0xffffffffu, gs, o);
        mm = mnew;
#pragma unroll
        for (int h = 0; h < Q; h++) {
            const int rep = h * DR_KEYS * SPAN;  // a lane holding query h's first score
            const float mh = __shfl_sync(0xffffffffu, mnew, rep), sh = __shfl_sync(0xffffffffu, gs, rep);
            // 0 while m[h] = -inf; 1 while no key was visible to query h (its weights are 0)
            const float corr = mh == -INFINITY ? 1.f : expf(m[h] - mh);
            l[h] = fmaf(l[h], corr, sh);
            float4 a = acc[h];
            a.x *= corr, a.y *= corr, a.z *= corr, a.w *= corr;
#pragma unroll
            for (int i = 0; i < DR_KEYS; i++) {
                const float w = __shfl_sync(0xffffffffu, e, rep + i * SPAN);
                a.x = fmaf(w, vv[i].x, a.x), a.y = fmaf(w, vv[i].y, a.y);
                a.z = fmaf(w, vv[i].z, a.z), a.w = fmaf(w, vv[i].w, a.w);
            }
            acc[h] = a;
            m[h] = mh;
        }
    };
    // In a group that ends past je, keys past it load row je − 1 again (no branch around each
    // load); their scores are masked, so their weights are 0.
    for (int j0 = jb + DR_KEYS * warp; j0 < je; j0 += DR_KEYS * DR_WARPS) {
        float4 kk[DR_KEYS], vv[DR_KEYS];
        const KV* kr = kseq + (size_t)j0 * kvld;
        const KV* vr = vseq + (size_t)j0 * kvld;
        if (j0 + DR_KEYS <= je) {
#pragma unroll
            for (int i = 0; i < DR_KEYS; i++) kk[i] = ld(kr + i * kvld, lane), vv[i] = ld(vr + i * kvld, lane);
        } else {
#pragma unroll
            for (int i = 0; i < DR_KEYS; i++) {
                const size_t off = (size_t)min(i, je - 1 - j0) * kvld;
                kk[i] = ld(kr + off, lane), vv[i] = ld(vr + off, lane);
            }
        }
        group(j0, kk, vv);
    }
}

// dr_merge combines the DR_WARPS warps' states in warp order through red (shared, DR_WARPS·Q
// records of DR_REC floats: outputs, m, l, padded to 16 bytes for the float4 stores): warp w < Q
// returns query w's merged (acc, m, l); every thread calls it.
#define DR_REC (AD_D + 4)
template <int Q>
__device__ __forceinline__ void dr_merge(float* red, const float4 (&acc)[Q], const float (&m)[Q], const float (&l)[Q],
                                         float4& oacc, float& om, float& ol) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int h = 0; h < Q; h++) {
        float* r = red + (size_t)(warp * Q + h) * DR_REC;
        reinterpret_cast<float4*>(r)[lane] = acc[h];
        if (lane == 0) r[AD_D] = m[h], r[AD_D + 1] = l[h];
    }
    __syncthreads();
    oacc = make_float4(0.f, 0.f, 0.f, 0.f), om = -INFINITY, ol = 0.f;
    if (warp >= Q) return;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < DR_WARPS; w++) M = fmaxf(M, red[(size_t)(w * Q + warp) * DR_REC + AD_D]);
    if (M == -INFINITY) return;  // no key of the split was visible to this query
#pragma unroll
    for (int w = 0; w < DR_WARPS; w++) {
        const float* r = red + (size_t)(w * Q + warp) * DR_REC;
        const float c = expf(r[AD_D] - M);  // 0 for a warp that saw no key
        const float4 a = reinterpret_cast<const float4*>(r)[lane];
        oacc.x = fmaf(a.x, c, oacc.x), oacc.y = fmaf(a.y, c, oacc.y);
        oacc.z = fmaf(a.z, c, oacc.z), oacc.w = fmaf(a.w, c, oacc.w);
        ol = fmaf(r[AD_D + 1], c, ol);
    }
    om = M;
}

// qk_norm_rope_row is one block of the fused q/k RMSNorm + RoPE + cache write: head h (< nHeads: a
// query head of q with weight qn, else key head h − nHeads of k with weight kn) of token row t,
// normalised (fp64 statistics, rmsnorm_f32's reduction order for blockDim) and rotated to position
// pos into qr or kr; for key heads also written, with the head of v, to row crow of the caches.
// red, y: shared [32] doubles and [headDim ≤ 512] floats.
template <typename KV>
__device__ __forceinline__ void qk_norm_rope_row(float* qr, float* kr, const float* q, const float* k, const float* v,
                                                 const float* qn, const float* kn, KV* kcache, KV* vcache,
                                                 const float* invf, int nHeads, int nKV, int headDim, float eps, int t,
                                                 int h, int pos, size_t crow, double* red, float* y) {
    const bool isQ = h < nHeads;
    const int hh = isQ ? h : h - nHeads;
    const int width = (isQ ? nHeads : nKV) * headDim;
    const float* src = (isQ ? q : k) + (size_t)t * width + (size_t)hh * headDim;
    const float* w = isQ ? qn : kn;
    double ss = 0.0;
    for (int j = threadIdx.x; j < headDim; j += blockDim.x) {
        const double d = (double)src[j];
        ss = fma(d, d, ss);
    }
    ss = block_sum_d(ss, red);
    const float inv = (float)(1.0 / sqrt(ss / (double)headDim + (double)eps));
    for (int j = threadIdx.x; j < headDim; j += blockDim.x) y[j] = __fmul_rn(w[j], __fmul_rn(src[j], inv));
    __syncthreads();
    const int half = headDim / 2;
    float* dst = (isQ ? qr : kr) + (size_t)t * width + (size_t)hh * headDim;
    KV* cdst = isQ ? nullptr : kcache + crow * width + (size_t)hh * headDim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float o1, o2;
        rope_pair(y[i], y[i + half], pos, invf[i], o1, o2);
        dst[i] = o1;
        dst[i + half] = o2;
        if (!isQ) {
            kv_put(cdst + i, o1);
            kv_put(cdst + i + half, o2);
        }
    }
    if (!isQ) {
        const float* vs = v + (size_t)t * width + (size_t)hh * headDim;
        KV* vd = vcache + crow * width + (size_t)hh * headDim;
        for (int j = threadIdx.x; j < headDim; j += blockDim.x) kv_put(vd + j, vs[j]);
    }
}
