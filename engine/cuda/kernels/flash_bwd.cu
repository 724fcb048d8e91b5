// Flash attention backward on tensor cores (training, causal, pos0 = 0): dq, dk, dv of
// out = softmax(q·kᵀ·scale)·v without a [T × T] matrix, FlashAttention-2 style, in two kernels
// so that every sum runs in a fixed order (no atomics: results are deterministic):
//
//   flash_bwd_dkdv  block = (64-key block j, KV head): for every query head of the group and
//                   every 32-row query block i at or below the diagonal it recomputes
//                   Sᵀ = K_j·Q_iᵀ and dPᵀ = V_j·dO_iᵀ (warp w: keys 16w..16w+15), forms
//                   Pᵀ = exp(Sᵀ·scale − lse) and dSᵀ = Pᵀ∘(dPᵀ − D), and accumulates
//                   dV_j += Pᵀ·dO_i and dK_j += dSᵀ·Q_i in registers;
//   flash_bwd_dq    block = (64-row query block i, query head): for every key block j at or
//                   below the diagonal it recomputes S, P, dP, dS and accumulates dQ_i += dS·K_j.
//
// lse (natural log, per head and row) comes from the forward kernel run again with only that
// output; D = Σ_d dout∘out per head and row from flash_bwd_prep. q, k, v and dout are read as
// bf16 copies; products accumulate in fp32 (mma.sync m16n8k16); the accumulator layout of one
// product is the A-operand layout of the next, so P and dS stay in registers. Shared tiles use
// the swizzle of flash_common.cuh.
#include "flash_common.cuh"

#define FB_QROWS 32  // query rows per block-iteration of flash_bwd_dkdv

// flash_bwd_prep: D[(z·nHeads + h)·T + t] = Σ_d dout[r, h·128 + d]·out[r, h·128 + d] for
// row r = z·T + t of `seqs` sequences of T rows; one warp per (r, h), grid
// ceil(seqs·T·nHeads/4) blocks of 128 threads.
extern "C" __global__ void __launch_bounds__(128)
flash_bwd_prep(float* __restrict__ D, const float* __restrict__ dout, const float* __restrict__ out, int T, int nHeads,
               int seqs) {
    const long long p = (long long)blockIdx.x * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (p >= (long long)seqs * T * nHeads) return;
    const long long r = p / nHeads;
    const int h = (int)(p % nHeads), z = (int)(r / T), t = (int)(r % T);
    const size_t off = (size_t)r * nHeads * FA_D + (size_t)h * FA_D;
    const float4 a = reinterpret_cast<const float4*>(dout + off)[lane];
    const float4 b = reinterpret_cast<const float4*>(out + off)[lane];
    const float s = warp_sum(a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w);
    if (lane == 0) D[((size_t)z * nHeads + h) * T + t] = s;
}

// FB_SEQ moves flash_bwd_dq's pointers to sequence blockIdx.z of a batch stored one sequence
// after another (rows z·T..(z+1)·T; lse and D per sequence [nHeads, T]); flash_bwd_dkdv, which
// has no registers to spare, offsets them where it forms addresses.
#define FB_SEQ(T, nHeads, qld, kvld)                         \
    do {                                                      \
        const size_t z_ = blockIdx.z;                         \
        qb += z_ * (T) * (qld);                               \
        dob += z_ * (T) * (qld);                              \
        kb += z_ * (T) * (kvld);                              \
        vb += z_ * (T) * (kvld);                              \
        lse += z_ * (nHeads) * (T);                           \
        Dd += z_ * (nHeads) * (T);                            \
    } while (0)

// flash_bwd_dkdv: grid (ceil(T/64), nKV, sequences), 128 threads, dynamic shared memory
// 2·64·128·2 + 2·32·128·2 + 2·32·4 bytes (K_j, V_j, Q_i, dO_i tiles; lse and D of the rows).
// dk, dv: [T, nKV·128] float32, written.
extern "C" __global__ void __launch_bounds__(128)
flash_bwd_dkdv(float* __restrict__ dk, float* __restrict__ dv, const __nv_bfloat16* __restrict__ qb,
               const __nv_bfloat16* __restrict__ kb, const __nv_bfloat16* __restrict__ vb,
               const __nv_bfloat16* __restrict__ dob, const float* __restrict__ lse, const float* __restrict__ Dd, int T,
               int nHeads, int nKV, float scaleLog2, float scale) {
    extern __shared__ __align__(128) unsigned char fb_sh[];
    __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(fb_sh);
    __nv_bfloat16* vs = ks + 64 * FA_D;
    __nv_bfloat16* qs = vs + 64 * FA_D;
    __nv_bfloat16* dos = qs + FB_QROWS * FA_D;
    float* lse_s = reinterpret_cast<float*>(dos + FB_QROWS * FA_D);
    float* d_s = lse_s + FB_QROWS;
    const uint32_t ksb = smem_u32(ks), vsb = smem_u32(vs), qsb = smem_u32(qs), dosb = smem_u32(dos);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int jb = gridDim.x - 1 - blockIdx.x, kvh = blockIdx.y;  // early key blocks see the most queries
    const int n0 = jb * 64, G = nHeads / nKV;
    const size_t qld = (size_t)nHeads * FA_D, kvld = (size_t)nKV * FA_D;
    // Sequence blockIdx.z of a batch: its rows start at z·T. The loop's pointers (q, dO, lse, D)
    // are offset where they are formed from the parameters, and dk, dv at the stores: pointers
    // moved once up here would live in registers the kernel (255) does not have to spare.
    const size_t zrow = (size_t)blockIdx.z * T;
    fa_load_rows<64, 128>(ksb, kb + zrow * kvld + (size_t)kvh * FA_D, kvld, n0, T);
    fa_load_rows<64, 128>(vsb, vb + zrow * kvld + (size_t)kvh * FA_D, kvld, n0, T);
    fa_commit();

    float dva[FA_D / 8][4], dka[FA_D / 8][4];
#pragma unroll
    for (int j = 0; j < FA_D / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) dva[j][e] = dka[j][e] = 0.f;
    const int keyA = n0 + warp * 16 + g, keyB = keyA + 8;  // this thread's two key rows
    const float log2e = 1.4426950408889634f;

    for (int hh = 0; hh < G; hh++) {
        const int h = kvh * G + hh;
        for (int i0 = n0 / FB_QROWS * FB_QROWS; i0 < T; i0 += FB_QROWS) {
            __syncthreads();  // everyone is done with the previous Q/dO tiles
            const size_t zq = (size_t)blockIdx.z * T * qld + (size_t)h * FA_D;
            fa_load_rows<FB_QROWS, 128>(qsb, qb + zq, qld, i0, T);
            fa_load_rows<FB_QROWS, 128>(dosb, dob + zq, qld, i0, T);
            fa_commit();
            if (threadIdx.x < FB_QROWS) {
                const int r = i0 + threadIdx.x;
                const size_t zh = ((size_t)blockIdx.z * nHeads + h) * T;
                lse_s[threadIdx.x] = r < T ? lse[zh + r] * log2e : INFINITY;  // P = 0 past T
                d_s[threadIdx.x] = r < T ? Dd[zh + r] : 0.f;
            }
            fa_wait<0>();
            __syncthreads();

            // Sᵀ (this warp's 16 keys × 32 queries) and dPᵀ, over head_dim in 8 steps of 16.
            float st[FB_QROWS / 8][4], dpt[FB_QROWS / 8][4];
#pragma unroll
            for (int j = 0; j < FB_QROWS / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[j][e] = dpt[j][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < FA_D / 16; kk++) {
                uint32_t ka0, ka1, ka2, ka3, va0, va1, va2, va3;
                ldsm_x4(ksb + swz(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), ka0, ka1, ka2, ka3);
                ldsm_x4(vsb + swz(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), va0, va1, va2, va3);
#pragma unroll
                for (int jp = 0; jp < FB_QROWS / 16; jp++) {
                    const int row = jp * 16 + (lane & 7) + ((lane >> 4) << 3);
                    const int chunk = kk * 2 + ((lane >> 3) & 1);
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4(qsb + swz(row, chunk), b0, b1, b2, b3);
                    mma_bf16(st[2 * jp], ka0, ka1, ka2, ka3, b0, b1);
                    mma_bf16(st[2 * jp + 1], ka0, ka1, ka2, ka3, b2, b3);
                    ldsm_x4(dosb + swz(row, chunk), b0, b1, b2, b3);
                    mma_bf16(dpt[2 * jp], va0, va1, va2, va3, b0, b1);
                    mma_bf16(dpt[2 * jp + 1], va0, va1, va2, va3, b2, b3);
                }
            }
            // Pᵀ and dSᵀ in place (st ← P, dpt ← dS); masked: query < key, or past T.
#pragma unroll
            for (int j = 0; j < FB_QROWS / 8; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int ql = j * 8 + 2 * tq + (e & 1), qrow = i0 + ql;
                    const int key = e < 2 ? keyA : keyB;
                    const float p = qrow >= key ? exp2f(st[j][e] * scaleLog2 - lse_s[ql]) : 0.f;
                    st[j][e] = p;
                    dpt[j][e] = p * (dpt[j][e] - d_s[ql]);
                }
            }
            // dV += Pᵀ·dO_i and dK += dSᵀ·Q_i: k = the 32 queries in 2 steps, n = head dims.
#pragma unroll
            for (int kk = 0; kk < FB_QROWS / 16; kk++) {
                const uint32_t pa0 = pack_bf16(st[2 * kk][0], st[2 * kk][1]), pa1 = pack_bf16(st[2 * kk][2], st[2 * kk][3]);
                const uint32_t pa2 = pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]);
                const uint32_t pa3 = pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3]);
                const uint32_t sa0 = pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]), sa1 = pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]);
                const uint32_t sa2 = pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
                const uint32_t sa3 = pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
                for (int dp = 0; dp < FA_D / 16; dp++) {
                    const int row = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                    const int chunk = dp * 2 + (lane >> 4);
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(dosb + swz(row, chunk), b0, b1, b2, b3);
                    mma_bf16(dva[2 * dp], pa0, pa1, pa2, pa3, b0, b1);
                    mma_bf16(dva[2 * dp + 1], pa0, pa1, pa2, pa3, b2, b3);
                    ldsm_x4_t(qsb + swz(row, chunk), b0, b1, b2, b3);
                    mma_bf16(dka[2 * dp], sa0, sa1, sa2, sa3, b0, b1);
                    mma_bf16(dka[2 * dp + 1], sa0, sa1, sa2, sa3, b2, b3);
                }
            }
        }
    }
    // Rows keyA and keyB of dk (× scale: S = q·k·scale) and dv.
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int key = r ? keyB : keyA;
        if (key >= T) continue;
        const size_t row = (size_t)blockIdx.z * T + key;
        float* dkr = dk + row * kvld + (size_t)kvh * FA_D;
        float* dvr = dv + row * kvld + (size_t)kvh * FA_D;
#pragma unroll
        for (int j = 0; j < FA_D / 8; j++) {
            *reinterpret_cast<float2*>(dkr + j * 8 + 2 * tq) = make_float2(dka[j][2 * r] * scale, dka[j][2 * r + 1] * scale);
            *reinterpret_cast<float2*>(dvr + j * 8 + 2 * tq) = make_float2(dva[j][2 * r], dva[j][2 * r + 1]);
        }
    }
}

// flash_bwd_dq: grid (ceil(T/64), nHeads, sequences), 128 threads, static shared 32 KB (K_j and V_j).
// dq: [T, nHeads·128] float32, written.
extern "C" __global__ void __launch_bounds__(128)
flash_bwd_dq(float* __restrict__ dq, const __nv_bfloat16* __restrict__ qb, const __nv_bfloat16* __restrict__ kb,
             const __nv_bfloat16* __restrict__ vb, const __nv_bfloat16* __restrict__ dob, const float* __restrict__ lse,
             const float* __restrict__ Dd, int T, int nHeads, int nKV, float scaleLog2, float scale) {
    __shared__ __align__(128) __nv_bfloat16 ks[64 * FA_D];
    __shared__ __align__(128) __nv_bfloat16 vs[64 * FA_D];
    const uint32_t ksb = smem_u32(ks), vsb = smem_u32(vs);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int mb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y;  // late query blocks see the most keys
    const int kvh = h / (nHeads / nKV);
    const size_t qld = (size_t)nHeads * FA_D, kvld = (size_t)nKV * FA_D;
    FB_SEQ(T, nHeads, qld, kvld);
    dq += (size_t)blockIdx.z * T * qld;
    const int m0 = mb * 64, r0 = m0 + warp * 16;
    const int rowA = r0 + g, rowB = r0 + g + 8;
    const int nkeys = min(T, m0 + 64);
    const float log2e = 1.4426950408889634f;

    fa_load_rows<64, 128>(ksb, kb + (size_t)kvh * FA_D, kvld, 0, nkeys);
    fa_load_rows<64, 128>(vsb, vb + (size_t)kvh * FA_D, kvld, 0, nkeys);
    fa_commit();

    // Q and dO fragments of this warp's 16 rows (A operands), straight from global memory.
    uint32_t qa[FA_D / 16][4], oa[FA_D / 16][4];
    {
        const __nv_bfloat16* qra = qb + (size_t)min(rowA, T - 1) * qld + (size_t)h * FA_D;
        const __nv_bfloat16* qrb = qb + (size_t)min(rowB, T - 1) * qld + (size_t)h * FA_D;
        const __nv_bfloat16* ora = dob + (size_t)min(rowA, T - 1) * qld + (size_t)h * FA_D;
        const __nv_bfloat16* orb = dob + (size_t)min(rowB, T - 1) * qld + (size_t)h * FA_D;
#pragma unroll
        for (int kk = 0; kk < FA_D / 16; kk++) {
            const int c = kk * 16 + 2 * tq;
            qa[kk][0] = *reinterpret_cast<const uint32_t*>(qra + c);
            qa[kk][1] = *reinterpret_cast<const uint32_t*>(qrb + c);
            qa[kk][2] = *reinterpret_cast<const uint32_t*>(qra + c + 8);
            qa[kk][3] = *reinterpret_cast<const uint32_t*>(qrb + c + 8);
            oa[kk][0] = *reinterpret_cast<const uint32_t*>(ora + c);
            oa[kk][1] = *reinterpret_cast<const uint32_t*>(orb + c);
            oa[kk][2] = *reinterpret_cast<const uint32_t*>(ora + c + 8);
            oa[kk][3] = *reinterpret_cast<const uint32_t*>(orb + c + 8);
        }
    }
    const float lseA = rowA < T ? lse[(size_t)h * T + rowA] * log2e : INFINITY;
    const float lseB = rowB < T ? lse[(size_t)h * T + rowB] * log2e : INFINITY;
    const float dA = rowA < T ? Dd[(size_t)h * T + rowA] : 0.f, dB = rowB < T ? Dd[(size_t)h * T + rowB] : 0.f;

    float dqa[FA_D / 8][4];
#pragma unroll
    for (int j = 0; j < FA_D / 8; j++) dqa[j][0] = dqa[j][1] = dqa[j][2] = dqa[j][3] = 0.f;
    const int ntiles = (nkeys + 63) / 64;
    for (int it = 0; it < ntiles; it++) {
        const int n0 = it * 64;
        fa_wait<0>();
        __syncthreads();
        float s[8][4], dp[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = dp[j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < FA_D / 16; kk++) {
#pragma unroll
            for (int jp = 0; jp < 4; jp++) {
                const int key = jp * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int chunk = kk * 2 + ((lane >> 3) & 1);
                uint32_t b0, b1, b2, b3;
                ldsm_x4(ksb + swz(key, chunk), b0, b1, b2, b3);
                mma_bf16(s[2 * jp], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b0, b1);
                mma_bf16(s[2 * jp + 1], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b2, b3);
                ldsm_x4(vsb + swz(key, chunk), b0, b1, b2, b3);
                mma_bf16(dp[2 * jp], oa[kk][0], oa[kk][1], oa[kk][2], oa[kk][3], b0, b1);
                mma_bf16(dp[2 * jp + 1], oa[kk][0], oa[kk][1], oa[kk][2], oa[kk][3], b2, b3);
            }
        }
        // P and dS in place (s ← dS): keys past the row masked.
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = n0 + j * 8 + 2 * tq + (e & 1);
                const int row = e < 2 ? rowA : rowB;
                const float p = key <= row ? exp2f(s[j][e] * scaleLog2 - (e < 2 ? lseA : lseB)) : 0.f;
                s[j][e] = p * (dp[j][e] - (e < 2 ? dA : dB));
            }
        }
        // dQ += dS·K_j: k = the 64 keys in 4 steps, n = head dims (K_j read transposed).
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const uint32_t a0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]), a1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            const uint32_t a2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            const uint32_t a3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            fa_mma_tile_t(dqa, a0, a1, a2, a3, ksb, kk, lane);
        }
        __syncthreads();  // every warp is done with K_j and V_j
        if (it + 1 < ntiles) {
            fa_load_rows<64, 128>(ksb, kb + (size_t)kvh * FA_D, kvld, n0 + 64, nkeys);
            fa_load_rows<64, 128>(vsb, vb + (size_t)kvh * FA_D, kvld, n0 + 64, nkeys);
        }
        fa_commit();
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = r ? rowB : rowA;
        if (row >= T) continue;
        float* dqr = dq + (size_t)row * qld + (size_t)h * FA_D;
#pragma unroll
        for (int j = 0; j < FA_D / 8; j++)
            *reinterpret_cast<float2*>(dqr + j * 8 + 2 * tq) = make_float2(dqa[j][2 * r] * scale, dqa[j][2 * r + 1] * scale);
    }
}
