// Flash attention forward on tensor cores (prefill): the same causal grouped-query attention as
// attention_f32 (attention.cu), computed FlashAttention-2 style with mma.sync m16n8k16 (bf16
// operands, fp32 accumulation) instead of one fp32 thread block per (head, query row).
//
// Block = 4 warps = FA_M (64) query rows of one head; warp w owns rows 16w..16w+15. The block
// walks the keys in tiles of FA_N (64): S = Q·Kᵀ (fp32 accumulators, in log2 units because Q is
// pre-scaled by scale·log2 e), the online softmax per row (running max and sum, rescaling the
// output accumulators), then O += P·V with P rounded to bf16 in registers (the accumulator
// layout of m16n8 is the A-operand layout of m16k16, so P never touches shared memory). Only
// key tiles at or below the diagonal are visited; the bottom-right mask (key j ≤ pos0 + t) is
// applied inside the diagonal tiles.
//
// K and V come as bf16 copies (the caller converts rows [0, pos0+T) once per call) so tiles
// are copied with cp.async straight into shared memory: K tile j+1 is in flight while P·V of
// tile j runs, V tile j while S of tile j runs. Shared rows are 256 bytes (head_dim 128); the
// 16-byte chunk c of row r is stored at chunk c ^ (r & 7), so the 8 row addresses of every
// ldmatrix hit 8 different bank groups.
//
// Precision: Q, K, V and P are rounded to bf16 (relative 2^-9), products and sums are fp32; the
// result is within bf16 bounds of attention_f32 (tests: flash_test.go).
#include "flash_common.cuh"

// flash_attn_fwd: out[t, h·D:(h+1)·D] = softmax(q_t·k_jᵀ·scale)·v_j over keys j ≤ pos0+t, as
// attention_f32. q, out: [T, nHeads·D] float32 (out may be null: only lse wanted); kb, vb:
// [≥ pos0+T, nKV·D] bf16. lse, when not null, receives log(Σ_j e^(s_j)) per (head, row) at lse[h·T + t] (natural log, s = q·k·scale)
// for a backward pass. grid (ceil(T/FA_M), nHeads, sequences), block FA_WARPS·32, static shared
// 32 KB. grid.z > 1 runs that many independent sequences stored one after another: sequence z
// has q, out rows [z·T, (z+1)·T), keys and values rows [z·(pos0+T), (z+1)·(pos0+T)) and
// lse[(z·nHeads + h)·T + t] (training batches: pos0 = 0).
extern "C" __global__ void __launch_bounds__(FA_WARPS * 32)
flash_attn_fwd(float* __restrict__ out, float* __restrict__ lse, const float* __restrict__ q,
               const __nv_bfloat16* __restrict__ kb, const __nv_bfloat16* __restrict__ vb, int T, int pos0, int nHeads,
               int nKV, float scaleLog2) {
    __shared__ __align__(128) __nv_bfloat16 ks[FA_N * FA_D];
    __shared__ __align__(128) __nv_bfloat16 vs[FA_N * FA_D];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    // Heavy (late) query blocks first: the causal triangle gives them the most key tiles.
    const int mb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y;
    const int kvh = h / (nHeads / nKV);
    const size_t qld = (size_t)nHeads * FA_D, kvld = (size_t)nKV * FA_D;
    {
        const size_t z = blockIdx.z;
        q += z * T * qld;
        if (out != nullptr) out += z * T * qld;
        if (lse != nullptr) lse += z * nHeads * T;
        kb += z * (pos0 + T) * kvld;
        vb += z * (pos0 + T) * kvld;
    }
    const int m0 = mb * FA_M, r0 = m0 + warp * 16;  // this warp's first query row
    const int nkeys = pos0 + min(T, m0 + FA_M);      // keys the block's last row sees
    const int ntiles = (nkeys + FA_N - 1) / FA_N;
    const __nv_bfloat16* kh = kb + (size_t)kvh * FA_D;
    const __nv_bfloat16* vh = vb + (size_t)kvh * FA_D;
    const uint32_t ksb = smem_u32(ks), vsb = smem_u32(vs);

    fa_load_tile(ksb, kh, kvld, 0, nkeys);
    fa_commit();

    // Q fragments for the whole head_dim, straight from global memory (rows g and g+8 of the
    // warp, columns 2tq, 2tq+1 and 2tq+8, 2tq+9 of each 16-wide k step), pre-scaled, in bf16.
    uint32_t qa[FA_D / 16][4];
    {
        const int ra = r0 + g, rb = r0 + g + 8;
        const float* qra = q + (size_t)min(ra, T - 1) * qld + (size_t)h * FA_D;
        const float* qrb = q + (size_t)min(rb, T - 1) * qld + (size_t)h * FA_D;
        const float sa = ra < T ? scaleLog2 : 0.f, sb = rb < T ? scaleLog2 : 0.f;
#pragma unroll
        for (int kk = 0; kk < FA_D / 16; kk++) {
            const int c = kk * 16 + 2 * tq;
            float2 a0 = *reinterpret_cast<const float2*>(qra + c), a2 = *reinterpret_cast<const float2*>(qra + c + 8);
            float2 a1 = *reinterpret_cast<const float2*>(qrb + c), a3 = *reinterpret_cast<const float2*>(qrb + c + 8);
            qa[kk][0] = pack_bf16(a0.x * sa, a0.y * sa);
            qa[kk][1] = pack_bf16(a1.x * sb, a1.y * sb);
            qa[kk][2] = pack_bf16(a2.x * sa, a2.y * sa);
            qa[kk][3] = pack_bf16(a3.x * sb, a3.y * sb);
        }
    }

    float o[FA_D / 8][4];
#pragma unroll
    for (int j = 0; j < FA_D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f};
    // Last key each of this thread's two rows may see (bottom-right causal mask).
    const int lastA = pos0 + r0 + g, lastB = pos0 + r0 + g + 8;

    for (int it = 0; it < ntiles; it++) {
        const int n0 = it * FA_N;
        fa_wait<0>();
        __syncthreads();  // K tile it is visible to all; everyone is done with V of tile it-1
        fa_load_tile(vsb, vh, kvld, n0, nkeys);
        fa_commit();

        // S = Q·Kᵀ for this warp's 16 rows × 64 keys: 8 n-tiles of 8 keys.
        float s[FA_N / 8][4];
#pragma unroll
        for (int j = 0; j < FA_N / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < FA_D / 16; kk++) fa_mma_tile<FA_N>(s, qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], ksb, kk, lane);
        // Mask keys past each row's last key (only tiles reaching past the warp's first row).
        if (n0 + FA_N - 1 > pos0 + r0) {
#pragma unroll
            for (int j = 0; j < FA_N / 8; j++) {
                const int key = n0 + j * 8 + 2 * tq;
                if (key > lastA) s[j][0] = -INFINITY;
                if (key + 1 > lastA) s[j][1] = -INFINITY;
                if (key > lastB) s[j][2] = -INFINITY;
                if (key + 1 > lastB) s[j][3] = -INFINITY;
            }
        }
        // Online softmax per row (the 4 threads of a quad share a row).
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < FA_N / 8; j++) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mnew = fmaxf(mrow[r], mx);
            // A row with no key yet (mnew = -inf: rows past T, or all keys masked) keeps 0s.
            const float base = mnew == -INFINITY ? 0.f : mnew;
            corr[r] = exp2f(mrow[r] - base);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < FA_N / 8; j++) {
                s[j][2 * r] = exp2f(s[j][2 * r] - base);
                s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - base);
                sum += s[j][2 * r] + s[j][2 * r + 1];
            }
            lrow[r] = lrow[r] * corr[r] + sum;  // quad-partial; summed across the quad at the end
            mrow[r] = mnew;
        }
#pragma unroll
        for (int j = 0; j < FA_D / 8; j++) {
            o[j][0] *= corr[0];
            o[j][1] *= corr[0];
            o[j][2] *= corr[1];
            o[j][3] *= corr[1];
        }

        fa_wait<0>();
        __syncthreads();  // V tile visible; every warp is done reading K tile it
        if (it + 1 < ntiles) fa_load_tile(ksb, kh, kvld, n0 + FA_N, nkeys);
        fa_commit();

        // O += P·V: k = keys (16 per step), n = head dims (8 per tile).
#pragma unroll
        for (int kk = 0; kk < FA_N / 16; kk++) {
            const uint32_t a0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            const uint32_t a1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            const uint32_t a2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            const uint32_t a3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            fa_mma_tile_t(o, a0, a1, a2, a3, vsb, kk, lane);
        }
    }

    // Normalise and write rows g and g+8 of the warp.
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = lrow[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int row = r0 + g + 8 * r;
        if (row >= T) continue;
        const float inv = l > 0.f ? 1.f / l : 0.f;
        if (out != nullptr) {
            float* orow = out + (size_t)row * qld + (size_t)h * FA_D;
#pragma unroll
            for (int j = 0; j < FA_D / 8; j++)
                *reinterpret_cast<float2*>(orow + j * 8 + 2 * tq) = make_float2(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
        }
        if (lse != nullptr && tq == 0) lse[(size_t)h * T + row] = (mrow[r] + log2f(l)) * 0.69314718055994531f;
    }
}
