// AdamW with 4-bit moments: engine/optim's Bit4 format on resident weights, launched from
// optim4.go. The arithmetic is engine/optim's (and engine/cpu's, which calls optim's code), so
// the codes match the CPU backend's:
//
//   m: sign + companded magnitude level k (value (k/7)² of the block absmax), blocks of 128
//      elements with a float32 absmax, rounded stochastically between the two neighbouring
//      levels with optim's Bit4Draw = SRDraw(Bit4Key(seed, step, param), index) / 2^16;
//   v: zero-free logarithmic code k (value norm·2^(k−15)) with norm = min(row max, column max)
//      of the NEW v for a matrix (the rank-1 normaliser), or the block's max of v for a one-row
//      parameter. Element i of either array is nibble i&1 (low first) of byte i>>1.
//
// A matrix's normaliser needs every element's new v before any v can be encoded, hence two
// passes (one for a one-row parameter):
//
//   adamw4_vmax (matrices): v' = β2·v + (1−β2)·g² from the old codes under the old maxima and
//     the scaled gradient; only the row and column maxima of v' are kept, through atomicMax on
//     the float's bits (exact and order-free for non-negative floats, so deterministic, unlike
//     a floating-point atomic sum). Reads the gradient (4 B) and the v codes (0.5 B) per
//     element, ~8 FLOPs; the old maxima ([rows + cols] floats) stay in L2. Block = 256 columns ×
//     rowsPer rows: each lane keeps the maxima of its 8 consecutive columns in registers, each
//     warp takes every 8th row and reduces it over the lane's 8 columns and then its 32 lanes,
//     the block merges its 8 warps in shared memory (one global atomic per row and per column
//     per block).
//   adamw_{f32,bf16}_4bit: lane l owns 8 consecutive elements (one 32-bit word of each code
//     array), a warp 256 per iteration, so each half warp is one block of 128. Decode w, m, v;
//     m = β1·m + (1−β1)·g, v = β2·v + (1−β2)·g², w = w − decay·w − lrc·m/(√v·rbc2 + ε) (optim's
//     Update, format 2: lrc = lr/bc1, rbc2 = 1/√bc2);
//     re-encode m under the block's new absmax (a half-warp max) and v under the new maxima (or
//     the block's max of v for one row). Per element it reads and writes the master (bf16 2+2 B,
//     f32 4+4 B), reads the gradient (4 B), reads and writes the m and v codes (4 × 0.5 B) and
//     m's absmax (8 B per 128): 10.06 B with a bf16 master, 14.06 B with f32; ~30 FLOPs, an fp32
//     square root and 32-bit hashes (optim's SRDraw: m's rounding, and bf16's when stochastic).
//
// Instruction budget (session 5; SASS of the common path, thread instructions per element):
// the first version — one warp per block of 128, 4 elements a lane, byte accesses, a 32-bit
// division per row crossing — executed ~304 (bf16, matrix; 332 with stochastic rounding) in
// the update and ~85 in adamw4_vmax. Now ~153 (175) and ~21: the shortcuts of train.cu's int8
// kernel (div_const, sqrt_fast, cvt.rn.bf16x2, the hoisted srBits; adamw.cuh), |m|/absmax by
// div_const from one reciprocal a lane, m's level search in a shared bucket table
// (M4_BUCKETS), the v code from the quotient's bits with one add, the column maxima as two
// 16-byte loads, and (row, column) advanced per iteration instead of divided. What remains is
// mostly arithmetic: the two hashes (~20 and ~4 an element), the v code's true division (~11)
// and a square root (format 2 removed the two FMA division sequences by bc1 and bc2, and the
// update's division is adamw.cuh's div_pos). Parameters whose pointers are not aligned, and the
// last n mod 256 elements, take the first version's code (adamw4_blocks).
//
// A bf16 matrix thus moves 14.56 B per parameter in all (the int8 kernel 12.25): the gradient
// is read twice. 4-bit moments save memory, not bandwidth. A bf16 gradient (backend.
// GradientFormat) is read by the _gb kernels (adamw4_vmax_gb, adamw_{f32,bf16}_4bit_gb) as 2 B an
// element and widened exactly (adamw.cuh grad8, grad_at): 10.56 B in all (the int8 kernel 10.25),
// every result the float32 gradient's of the widened values.
//
// Exactness: every float operation is rounded separately (__fmul_rn, __fadd_rn, __fdiv_rn; no
// contraction into fused multiply-adds), as Go computes on amd64. Two replacements of optim's
// double-precision calls are exact: float32(√float64(x)) equals the correctly rounded float32
// square root __fsqrt_rn(x) (double rounding is innocuous for the square root when the wider
// format has at least 2p+2 bits), and 15 + round(log2(r)) for the float32 ratio r = v/norm is
// computed from r's exponent and whether its significand reaches √2 — an integer comparison
// that gives the same code as Go's math.Log2 and math.Round for every float32 r (checked
// exhaustively over [2^-18, 1]; below that both give code 0).
#include "common.cuh"
#include "adamw.cuh"

// SQRT2_FRAC is the 23 fraction bits of the smallest float32 significand above √2
// (ceil(√2·2^23) − 2^23): a significand reaches √2 exactly when its fraction bits reach it.
#define SQRT2_FRAC 0x3504F4u

// v4_decode is optim's DecodeBit4V: norm·2^(c−15) (an exact power-of-two product), 0 when the
// normaliser is 0 (a state never written).
__device__ __forceinline__ float v4_decode(uint32_t c, float norm) {
    return norm == 0.f ? 0.f : __fmul_rn(norm, __uint_as_float((112u + c) << 23));
}

// v4_encode is optim's EncodeBit4V: 15 + round(log2(v/norm)) clamped to 0…15, 0 when v or norm
// is not positive (see the file comment for why the exponent test equals Go's log2).
__device__ __forceinline__ uint32_t v4_encode(float v, float norm) {
    if (!(norm > 0.f) || !(v > 0.f)) return 0;
    uint32_t b = __float_as_uint(__fdiv_rn(v, norm));
    int k = 15 + (int)(b >> 23) - 127 + ((b & 0x7FFFFFu) >= SQRT2_FRAC ? 1 : 0);
    return (uint32_t)max(0, min(15, k));
}

// next_v is optim's Coeffs.NextV: β2·v + ((1−β2)·g)·g for the scaled gradient g.
__device__ __forceinline__ float next_v(float v, float g, float b2, float omb2) {
    return __fadd_rn(__fmul_rn(b2, v), __fmul_rn(__fmul_rn(omb2, g), g));
}

// nib reads the 4-bit code of element i.
__device__ __forceinline__ uint32_t nib(const uint8_t* a, size_t i) { return (a[i >> 1] >> ((i & 1) * 4)) & 15u; }

// ---------------------------------------------------------------------------------------------
// Pass 1 (matrices): the row and column maxima of the new v. rowNew and colNew are zeroed by
// the host first. grid = (ceil(cols/256), ceil(rows/rowsPer)), 256 threads; rowsPer is 64, or
// more when the rows would need more than 65535 row blocks (rows past the first
// VMAX_ROWS_SMEM of a block then go straight to global atomics). Each lane takes 8 consecutive
// columns of a row (vector loads), so a row's maximum is 7 FMNMX in the lane and one warp
// reduction per 256 elements (the first version: one column a thread, a warp reduction per 32).

#define VMAX_ROWS_SMEM 1024

template <bool GB>
__device__ __forceinline__ void adamw4_vmax_body(float* __restrict__ rowNew, float* __restrict__ colNew,
                                                 const void* __restrict__ grad, const uint8_t* __restrict__ v4,
                                                 const float* __restrict__ rowOld, const float* __restrict__ colOld,
                                                 float b2, float omb2, float gscale, int rows, int cols, int rowsPer) {
    __shared__ unsigned rmax[VMAX_ROWS_SMEM];
    __shared__ unsigned cmaxs[256];
    // Lane l of every warp owns the block's columns 8l…8l+7; warp w takes rows r0+w, r0+w+8, ….
    const int lane = threadIdx.x & 31, c0 = blockIdx.x * 256 + lane * 8;
    const int r0 = blockIdx.y * rowsPer, r1 = min(rows, r0 + rowsPer);
    for (int t = threadIdx.x; t < r1 - r0 && t < VMAX_ROWS_SMEM; t += blockDim.x) rmax[t] = 0u;
    cmaxs[threadIdx.x] = 0u;
    __syncthreads();
    // Vectors (the gradient's 8 elements — 32 bytes of floats or 16 of bf16 — and the 8 nibbles
    // of v in one word) when every row starts at a multiple of 8 elements and the arrays are
    // aligned (the gradient 16-byte in either type).
    const bool vec = cols % 8 == 0 && (((uintptr_t)grad & 15u) | ((uintptr_t)v4 & 3u)) == 0;
    float co[8], cmax[8];
#pragma unroll
    for (int e = 0; e < 8; e++) {
        co[e] = c0 + e < cols ? colOld[c0 + e] : 0.f;
        cmax[e] = 0.f;
    }
    for (int r = r0 + (threadIdx.x >> 5); r < r1; r += 8) {
        const float ro = rowOld[r];
        const size_t i = (size_t)r * (size_t)cols + (size_t)c0;
        float vn[8];
        if (vec && c0 < cols) {
            float gv[8];
            grad8<GB>(grad, i, gv);
            const uint32_t vw = *reinterpret_cast<const uint32_t*>(v4 + (i >> 1));
#pragma unroll
            for (int e = 0; e < 8; e++)
                vn[e] = next_v(v4_decode((vw >> (4 * e)) & 15u, fminf(ro, co[e])), __fmul_rn(gv[e], gscale), b2, omb2);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) {
                vn[e] = 0.f;
                if (c0 + e < cols)
                    vn[e] = next_v(v4_decode(nib(v4, i + e), fminf(ro, co[e])), __fmul_rn(grad_at<GB>(grad, i + e), gscale),
                                   b2, omb2);
            }
        }
        float m = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            cmax[e] = fmaxf(cmax[e], vn[e]);
            m = fmaxf(m, vn[e]);
        }
        m = warp_max(m);
        if (lane == 0 && m > 0.f) {
            if (r - r0 < VMAX_ROWS_SMEM) atomicMax(&rmax[r - r0], __float_as_uint(m));
            else atomicMax(reinterpret_cast<unsigned*>(&rowNew[r]), __float_as_uint(m));
        }
    }
#pragma unroll
    for (int e = 0; e < 8; e++)
        if (cmax[e] > 0.f) atomicMax(&cmaxs[lane * 8 + e], __float_as_uint(cmax[e]));
    __syncthreads();
    for (int t = threadIdx.x; t < r1 - r0 && t < VMAX_ROWS_SMEM; t += blockDim.x)
        if (rmax[t]) atomicMax(reinterpret_cast<unsigned*>(&rowNew[r0 + t]), rmax[t]);
    const int c = blockIdx.x * 256 + threadIdx.x;
    if (c < cols && cmaxs[threadIdx.x]) atomicMax(reinterpret_cast<unsigned*>(&colNew[c]), cmaxs[threadIdx.x]);
}

// adamw4_vmax reads a float32 gradient, adamw4_vmax_gb a bf16 one (adamw.cuh grad8).
#define ADAMW4_VMAX_ENTRY(name, GB)                                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
    name(float* rowNew, float* colNew, const void* grad, const uint8_t* v4, const float* rowOld,                \
         const float* colOld, float b2, float omb2, float gscale, int rows, int cols, int rowsPer) {            \
        adamw4_vmax_body<GB>(rowNew, colNew, grad, v4, rowOld, colOld, b2, omb2, gscale, rows, cols, rowsPer);  \
    }
ADAMW4_VMAX_ENTRY(adamw4_vmax, false)
ADAMW4_VMAX_ENTRY(adamw4_vmax_gb, true)

// ---------------------------------------------------------------------------------------------
// Pass 2: the update and the encoding. norm points at the old normaliser: [rows] row maxima
// then [cols] column maxima for a matrix (matrix = 1, newNorm the new ones in the same
// layout), or one float per block of 128 for one row (matrix = 0, rewritten in place).

// adamw4_blocks is the scalar kernel: one warp per block of 128 from block blk0 on, lane l
// owning elements 4l…4l+3, every operation the plain one. It handles the tail past the
// vectorized part, and whole parameters whose pointers are not aligned for vectors. lv is m's
// level table (lv[8] = 2 pads lv[k+1]).
template <bool BF16, bool GB>
__device__ __forceinline__ void adamw4_blocks(void* __restrict__ w, const void* __restrict__ grad, uint8_t* __restrict__ m4,
                                              uint8_t* __restrict__ v4, float* __restrict__ msc, float* __restrict__ norm,
                                              const float* __restrict__ newNorm, const AdamParams& p, int sr, uint32_t key,
                                              uint32_t mkey, size_t n, size_t rows, uint32_t cols, int matrix, const float* lv,
                                              size_t blk0) {
    const int lane = threadIdx.x & 31;
    const size_t warps = (size_t)gridDim.x * (blockDim.x >> 5);
    const float* colOld = norm + rows;
    const float* colNew = newNorm + rows;
    for (size_t blk = blk0 + (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); blk * 128 < n; blk += warps) {
        const size_t base = blk * 128, i0 = base + 4 * lane;
        // Row and column of element i0: one 64-bit division per warp, then a carry per lane.
        size_t rb = 0;
        uint32_t cb = 0;
        if (matrix) {
            if (lane == 0) {
                rb = base / cols;
                cb = (uint32_t)(base - rb * cols);
            }
            rb = __shfl_sync(0xffffffffu, (unsigned long long)rb, 0);
            cb = __shfl_sync(0xffffffffu, cb, 0);
        }
        size_t rr[4];
        uint32_t cc[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            uint32_t t = cb + 4 * lane + e;
            rr[e] = rb;
            cc[e] = t;
            if (matrix && t >= cols) {
                rr[e] += t / cols;
                cc[e] = t % cols;
            }
        }
        const size_t byte0 = i0 >> 1;
        uint32_t mbits = 0, vbits = 0;
#pragma unroll
        for (int k = 0; k < 2; k++) {
            if (2 * (byte0 + k) < n) {
                mbits |= (uint32_t)m4[byte0 + k] << (8 * k);
                vbits |= (uint32_t)v4[byte0 + k] << (8 * k);
            }
        }
        const float mscale = msc[blk];
        const float vnormOld = matrix ? 0.f : norm[blk];
        float mo[4], vo[4], wo[4];
        bool ok[4];
        float am = 0.f, vmax = 0.f;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const size_t i = i0 + e;
            ok[e] = i < n;
            mo[e] = vo[e] = wo[e] = 0.f;
            if (!ok[e]) continue;
            float wv = BF16 ? bf16_to_f32(reinterpret_cast<const uint16_t*>(w)[i]) : reinterpret_cast<const float*>(w)[i];
            uint32_t mc = (mbits >> (4 * e)) & 15u, vc = (vbits >> (4 * e)) & 15u;
            float m = __fmul_rn(lv[mc & 7u], mscale);
            if (mc & 8u) m = -m;
            float v = v4_decode(vc, matrix ? fminf(norm[rr[e]], colOld[cc[e]]) : vnormOld);
            float g = __fmul_rn(grad_at<GB>(grad, i), p.gscale);
            m = __fadd_rn(__fmul_rn(p.b1, m), __fmul_rn(p.omb1, g));
            v = next_v(v, g, p.b2, p.omb2);
            const float upd = __fdiv_rn(m, __fadd_rn(__fmul_rn(__fsqrt_rn(v), p.rbc2), p.eps));
            wv = __fsub_rn(__fsub_rn(wv, __fmul_rn(p.decay, wv)), __fmul_rn(p.lrc, upd));
            mo[e] = m;
            vo[e] = v;
            wo[e] = wv;
            am = fmaxf(am, fabsf(m));
            vmax = fmaxf(vmax, v);
        }
        am = warp_max(am);
        if (!matrix) vmax = warp_max(vmax);
        uint32_t mout = 0, vout = 0;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if (!ok[e]) continue;
            const size_t i = i0 + e;
            if (BF16) {
                reinterpret_cast<uint16_t*>(w)[i] = sr ? stochastic_bf16(wo[e], sr_draw(key, i)) : bf16_rne(wo[e]);
            } else {
                reinterpret_cast<float*>(w)[i] = wo[e];
            }
            uint32_t code = 0;
            if (am != 0.f) {
                float a = fminf(__fdiv_rn(fabsf(mo[e]), am), 1.f);
                int k = 0;
#pragma unroll
                for (int q = 1; q < 8; q++) k += lv[q] <= a ? 1 : 0;
                if (k < 7) {
                    float lo = lv[k], hi = lv[k + 1];
                    float u = __fmul_rn((float)sr_draw(mkey, i), 1.f / 65536.f);
                    if (__fmul_rn(u, __fsub_rn(hi, lo)) < __fsub_rn(a, lo)) k++;
                }
                code = (uint32_t)k;
                if (mo[e] < 0.f && k != 0) code |= 8u;
            }
            mout |= code << (4 * e);
            vout |= v4_encode(vo[e], matrix ? fminf(newNorm[rr[e]], colNew[cc[e]]) : vmax) << (4 * e);
        }
#pragma unroll
        for (int k = 0; k < 2; k++) {
            if (2 * (byte0 + k) < n) {
                m4[byte0 + k] = (uint8_t)(mout >> (8 * k));
                v4[byte0 + k] = (uint8_t)(vout >> (8 * k));
            }
        }
        if (lane == 0) {
            msc[blk] = am;
            if (!matrix) norm[blk] = vmax;
        }
    }
}

// M4_BUCKETS: m's level search through a table. a = min(|m|/absmax, 1) ∈ [0, 1] falls in bucket
// j = floor(64·a) (64·a is exact; j ≤ 64), and no bucket holds more than one level (the levels
// (k/7)² are at least 0.0204 apart, a bucket 1/64 = 0.0156 wide). Entry j holds k_j, the number
// of levels 1…7 at most j/64, and lv[k_j], lv[k_j+1], lv[k_j+2]: the level count of a is
// k_j + (a ≥ lv[k_j+1]), and the two levels around a follow from the same test — one 16-byte
// shared load and a compare instead of seven compares and two table loads.
#define M4_BUCKETS 65

// m's levels (k/7)² as optim computes them, float32(k·k)/49, and lv[8] = 2 (a pad for lv[k+1]);
// the bucket table. Filled by every block before its first update.
static __shared__ float m4_lv[9];
static __shared__ uint4 m4_tab[M4_BUCKETS];

// MatPos is a lane's position in a matrix: row r and column t of its first element (t < cols).
struct MatPos {
    uint32_t r, t;
};

// norms8 returns min(row[r_e], col[c_e]) for the lane's 8 elements (the v normaliser of
// engine/optim's rank-1 format): two 16-byte column loads when the 8 columns are in one row and
// the columns are 16-byte aligned (cvec), else a walk across row ends.
__device__ __forceinline__ void norms8(const float* __restrict__ row, const float* __restrict__ col, uint32_t cols,
                                       bool cvec, MatPos q, float (&nr)[8]) {
    if (cvec && q.t + 8 <= cols) {
        const float rv = row[q.r];
        const float4 a = *reinterpret_cast<const float4*>(col + q.t), b = *reinterpret_cast<const float4*>(col + q.t + 4);
        nr[0] = fminf(rv, a.x), nr[1] = fminf(rv, a.y), nr[2] = fminf(rv, a.z), nr[3] = fminf(rv, a.w);
        nr[4] = fminf(rv, b.x), nr[5] = fminf(rv, b.y), nr[6] = fminf(rv, b.z), nr[7] = fminf(rv, b.w);
    } else {
        ADAMW_SLOW();
        uint32_t r = q.r, c = q.t;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            nr[e] = fminf(row[r], col[c]);
            if (++c == cols) {
                c = 0;
                r++;
            }
        }
    }
}

// adamw4_lane8 updates elements i0 … i0+7 (i0 a multiple of 8, all < n): the 8 nibbles of m
// and of v in one 32-bit word each, w and the gradient as vectors; the 16 lanes of i0's block of
// 128 call it together. Shortcuts and fallbacks as train.cu's adamw_lane8 (see there and
// adamw.cuh): every result is adamw4_blocks' bit for bit.
template <bool BF16, bool GB>
__device__ __forceinline__ void adamw4_lane8(void* __restrict__ w, const void* __restrict__ grad, uint8_t* __restrict__ m4,
                                             uint8_t* __restrict__ v4, float* __restrict__ msc, float* __restrict__ norm,
                                             const float* __restrict__ newNorm, const AdamParams& p, bool divu, int sr,
                                             uint32_t key, uint32_t mkey, size_t rows, uint32_t cols, int matrix, bool cvec, MatPos pos,
                                             size_t i0) {
    const size_t blk = i0 >> 7;
    float wv[8], mv[8], vv[8];
    load8<BF16>(w, i0, wv);
    const uint32_t mw = *reinterpret_cast<const uint32_t*>(m4 + (i0 >> 1));
    const uint32_t vw = *reinterpret_cast<const uint32_t*>(v4 + (i0 >> 1));
    {
        const float mscale = msc[blk];
        float nold[8];
        if (matrix) {
            norms8(norm, norm + rows, cols, cvec, pos, nold);
        } else {
            const float vn = norm[blk];
#pragma unroll
            for (int e = 0; e < 8; e++) nold[e] = vn;
        }
#pragma unroll
        for (int e = 0; e < 8; e++) {
            // m = ±lv[c & 7]·scale (the sign bit of the nibble moved to the float's);
            // v = norm·2^(c−15), an exact power-of-two product (±0 for a zero normaliser, which
            // the update turns into the same v as v4_decode's +0).
            const uint32_t mc = mw >> (4 * e), vc = (vw >> (4 * e)) & 15u;
            mv[e] = __uint_as_float(__float_as_uint(__fmul_rn(m4_lv[mc & 7u], mscale)) ^ ((mc & 8u) << 28));
            vv[e] = __fmul_rn(nold[e], __uint_as_float((112u + vc) << 23));
        }
    }
    DivcLow lom, lov;
    float vl;  // the lane's max of v
    {
        float sv[8], ml;
        adamw_step8<BF16, GB>(w, grad, wv, mv, vv, sv, p, divu, sr, key, i0, ml, vl, lom, lov);
    }
    // The block's absmax of m (and max of v for one row) over its 16 lanes, from 0 as
    // adamw4_blocks (fmaxf ignores NaN in any order).
    float am = 0.f, vmax = 0.f;
#pragma unroll
    for (int e = 0; e < 8; e++) am = fmaxf(am, fabsf(mv[e]));
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, o));
    if (!matrix) {
#pragma unroll
        for (int e = 0; e < 8; e++) vmax = fmaxf(vmax, vv[e]);
#pragma unroll
        for (int o = 1; o < 16; o <<= 1) vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, o));
    }
    // m: a = min(|m|/am, 1), its two levels from the bucket table, and the stochastic step
    // between them with Bit4Draw (the k < 7 test of adamw4_blocks is implied: at k = 7, a − lo
    // ≤ 0 ≤ u·(hi − lo)). |m|/am by div_const when am ∈ [2^-36, 2^60] and every non-zero |m| is
    // at least am·2^-64 (quotients in [2^-64, 1]: div_const's proof applies).
    uint32_t mout = 0;
    if (am != 0.f) {
        float a[8];
        uint32_t neg = 0;  // bit e: m_e < 0 (a float compare: not −0, not NaN)
#pragma unroll
        for (int e = 0; e < 8; e++) neg |= (mv[e] < 0.f ? 1u : 0u) << e;
        if (am >= 0x1p-36f && am <= 0x1p60f && lom.lo >= 2u * __float_as_uint(__fmul_rn(am, 0x1p-64f)) - 2u) {
            const float yam = __frcp_rn(am);
#pragma unroll
            for (int e = 0; e < 8; e++) a[e] = fminf(div_const(fabsf(mv[e]), am, yam), 1.f);
        } else {
            ADAMW_SLOW();
#pragma unroll
            for (int e = 0; e < 8; e++) a[e] = fminf(__fdiv_rn(fabsf(mv[e]), am), 1.f);
        }
        // Bit4Draw(i0 + e): elements 2j and 2j+1 take the halves of one hash of j (SRDraw).
        uint32_t draws[4];
        const uint32_t h0 = (uint32_t)(i0 >> 1) * 0x9e3779b1u + mkey;
#pragma unroll
        for (int j = 0; j < 4; j++) draws[j] = sr_mix(h0 + (uint32_t)j * 0x9e3779b1u);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const uint4 tb = m4_tab[__float_as_uint(__fmaf_rz(a[e], 64.f, 8388608.f)) - 0x4B000000u];
            const bool up = a[e] >= __uint_as_float(tb.z);
            uint32_t k = tb.x + (up ? 1u : 0u);
            const float lo = __uint_as_float(up ? tb.z : tb.y), hi = __uint_as_float(up ? tb.w : tb.z);
            // u = draw·2^-16, exactly, from the bits of 1 + draw·2^-16.
            const uint32_t d = e & 1 ? draws[e >> 1] >> 16 : draws[e >> 1] & 0xffffu;
            const float u = __fsub_rn(__uint_as_float(0x3F800000u | d << 7), 1.f);
            if (__fmul_rn(u, __fsub_rn(hi, lo)) < __fsub_rn(a[e], lo)) k++;
            if ((neg >> e & 1u) && k != 0) k |= 8u;
            mout |= k << (4 * e);
        }
    }
    // v: 15 + round(log2(v/norm)) from the quotient's bits — adding 2^23 − SQRT2_FRAC carries
    // into the exponent exactly when the fraction reaches √2's — clamped to 0…15; 0 unless v and
    // the normaliser are positive (v4_encode). The sign bit is cleared first: it is set only on
    // a NaN quotient, which v4_encode clamps to 15 like a positive NaN. The quotient is div_pos
    // where every v is +0 or in [2^-60, 2^60] and every normaliser in [2^-60, 2^60] (normalisers
    // are maxima of v: never below the v they normalise, never negative).
    uint32_t vout = 0;
    {
        float nnew[8];
        if (matrix) {
            norms8(newNorm, newNorm + rows, cols, cvec, pos, nnew);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) nnew[e] = vmax;
        }
        float nlo = nnew[0], nhi = nnew[0];
#pragma unroll
        for (int e = 1; e < 8; e++) {
            nlo = fminf(nlo, nnew[e]);
            nhi = fmaxf(nhi, nnew[e]);
        }
        float q[8];
        if (lov.ok_at(DIV_LO) && vl <= 0x1p60f && nlo >= 0x1p-60f && nhi <= 0x1p60f) {
#pragma unroll
            for (int e = 0; e < 8; e++) q[e] = div_pos(vv[e], nnew[e]);
        } else {
            ADAMW_SLOW();
#pragma unroll
            for (int e = 0; e < 8; e++) q[e] = __fdiv_rn(vv[e], nnew[e]);
        }
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const uint32_t b = __float_as_uint(q[e]) & 0x7fffffffu;
            const int k = (int)((b + (0x800000u - SQRT2_FRAC)) >> 23) - 112;
            const uint32_t c = (nnew[e] > 0.f && vv[e] > 0.f) ? (uint32_t)max(0, min(15, k)) : 0u;
            vout |= c << (4 * e);
        }
    }
    *reinterpret_cast<uint32_t*>(m4 + (i0 >> 1)) = mout;
    *reinterpret_cast<uint32_t*>(v4 + (i0 >> 1)) = vout;
    if ((threadIdx.x & 15) == 0) {
        msc[blk] = am;
        if (!matrix) norm[blk] = vmax;
    }
}

template <bool BF16, bool GB>
__device__ __forceinline__ void adamw4(void* __restrict__ w, const void* __restrict__ grad, uint8_t* __restrict__ m4,
                                       uint8_t* __restrict__ v4, float* __restrict__ msc, float* __restrict__ norm,
                                       const float* __restrict__ newNorm, AdamParams p, int sr, uint32_t key, uint32_t mkey,
                                       size_t n, size_t rows, uint32_t cols, int matrix) {
    if (threadIdx.x < 9) m4_lv[threadIdx.x] = threadIdx.x < 8 ? __fdiv_rn((float)(threadIdx.x * threadIdx.x), 49.f) : 2.f;
    __syncthreads();
    if (threadIdx.x < M4_BUCKETS) {
        const float x = (float)threadIdx.x * 0.015625f;
        uint32_t k = 0;
        for (int q = 1; q < 8; q++) k += m4_lv[q] <= x ? 1 : 0;
        m4_tab[threadIdx.x] = make_uint4(k, __float_as_uint(m4_lv[k]), __float_as_uint(m4_lv[k + 1]),
                                         __float_as_uint(k + 2 <= 8 ? m4_lv[k + 2] : 2.f));
    }
    __syncthreads();
    // Vectors need w and grad 16-byte aligned (grad in either type) and the code arrays 4-byte; the matrix columns'
    // maxima are read as vectors when 16-byte aligned with cols a multiple of 4 (then every
    // lane's first column is a multiple of 4).
    const uintptr_t mis = (((uintptr_t)w | (uintptr_t)grad) & 15u) | (((uintptr_t)m4 | (uintptr_t)v4) & 3u);
    const size_t chunks = mis ? 0 : n / 256;
    const bool cvec = cols % 4 == 0 && (((uintptr_t)(norm + rows) | (uintptr_t)(newNorm + rows)) & 15u) == 0;
    const bool divu = div_uniform(p);
    const size_t warps = (size_t)gridDim.x * (blockDim.x >> 5);
    size_t c = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    // The warp's first element c·256 as (row, column), advanced by the grid's stride each
    // iteration (one 64-bit division per thread instead of one per warp iteration).
    uint32_t rb = 0, cb = 0, dr = 0, dc = 0;
    if (matrix && c < chunks) {
        rb = (uint32_t)(c * 256 / cols);
        cb = (uint32_t)(c * 256 - (size_t)rb * cols);
        dr = (uint32_t)(warps * 256 / cols);
        dc = (uint32_t)(warps * 256 - (size_t)dr * cols);
    }
    const uint32_t lane8 = (threadIdx.x & 31) * 8;
    for (; c < chunks; c += warps) {
        MatPos pos = {rb, cb + lane8};
        if (matrix && pos.t >= cols) {
            ADAMW_SLOW();  // past the row's end (~1 iteration in cols/256 for wide rows)
            const uint32_t q = pos.t / cols;
            pos.r += q;
            pos.t -= q * cols;
        }
        adamw4_lane8<BF16, GB>(w, grad, m4, v4, msc, norm, newNorm, p, divu, sr, key, mkey, rows, cols, matrix, cvec, pos,
                           c * 256 + lane8);
        rb += dr;
        cb += dc;
        if (cb >= cols) {
            cb -= cols;
            rb++;
        }
    }
    adamw4_blocks<BF16, GB>(w, grad, m4, v4, msc, norm, newNorm, p, sr, key, mkey, n, rows, cols, matrix, m4_lv, chunks * 2);
}

#define ADAMW4_ENTRY(name, BF16, GB)                                                                            \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
    name(void* w, const void* grad, uint8_t* m4, uint8_t* v4, float* msc, float* norm, const float* newNorm,     \
         float lrc, float b1, float b2, float omb1, float omb2, float rbc2, float eps, float decay,              \
         float gscale, int sr, unsigned key, unsigned mkey, size_t n, size_t rows, unsigned cols, int matrix) {  \
        AdamParams p = {lrc, b1, b2, omb1, omb2, rbc2, eps, decay, gscale};                                     \
        ADAMW_COUNT_FIX_SR(sr);                                                                                 \
        ADAMW_COUNT_FIX_MATRIX(matrix);                                                                         \
        adamw4<BF16, GB>(w, grad, m4, v4, msc, norm, newNorm, p, sr, key, mkey, n, rows, cols, matrix);         \
    }
// adamw_{f32,bf16}_4bit take a float32 gradient, the _gb forms a bf16 one (adamw.cuh grad8).
ADAMW4_ENTRY(adamw_f32_4bit, false, false)
ADAMW4_ENTRY(adamw_bf16_4bit, true, false)
ADAMW4_ENTRY(adamw_f32_4bit_gb, false, true)
ADAMW4_ENTRY(adamw_bf16_4bit_gb, true, true)
