// AdamW with 4-bit moments: engine/optim's Bit4 format on resident weights, launched from
// optim4.go. The arithmetic is engine/optim's (and engine/cpu's, which calls optim's code), so
// the codes match the CPU backend's:
//
//   m: sign + companded magnitude level k (value (k/7)² of the block absmax), blocks of 128
//      elements with a float32 absmax, rounded stochastically between the two neighbouring
//      levels with optim's Bit4Draw = srBits(seed ^ 1<<40, step, param, index) / 2^16;
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
//     rowsPer rows: each thread keeps its column's maximum in a register (one global atomic per
//     column per block), each warp reduces a row over its 32 columns with shuffles, the block
//     merges its 8 warps in shared memory (one global atomic per row per block): about 0.02
//     global atomics per element.
//   adamw_{f32,bf16}_4bit: one warp per block of 128 elements, lane l owns elements 4l…4l+3
//     (two bytes of each code array). Decode w, m, v; m = β1·m + (1−β1)·g,
//     v = β2·v + (1−β2)·g², w = w − decay·w − lr·(m/bc1)/(√(v/bc2) + ε); re-encode m under the
//     block's new absmax (a warp max) and v under the new maxima (or the block's max of v for
//     one row). Per element it reads and writes the master (bf16 2+2 B, f32 4+4 B), reads the
//     gradient (4 B), reads and writes the m and v codes (4 × 0.5 B) and m's absmax (8 B per
//     128): 10.06 B with a bf16 master, 14.06 B with f32; ~30 FLOPs, an fp32 square root and one
//     or two 64-bit hashes (m's rounding; bf16's when stochastic).
//
// A bf16 matrix thus moves 14.56 B per parameter in all (the int8 kernel 12.25): the gradient
// is read twice. 4-bit moments save memory, not bandwidth.
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
// VMAX_ROWS_SMEM of a block then go straight to global atomics).

#define VMAX_ROWS_SMEM 1024

extern "C" __global__ void __launch_bounds__(256)
adamw4_vmax(float* __restrict__ rowNew, float* __restrict__ colNew, const float* __restrict__ grad,
            const uint8_t* __restrict__ v4, const float* __restrict__ rowOld, const float* __restrict__ colOld,
            float b2, float omb2, float gscale, int rows, int cols, int rowsPer) {
    __shared__ unsigned rmax[VMAX_ROWS_SMEM];
    const int c = blockIdx.x * 256 + threadIdx.x;
    const int r0 = blockIdx.y * rowsPer, r1 = min(rows, r0 + rowsPer);
    const bool okc = c < cols;
    for (int t = threadIdx.x; t < r1 - r0 && t < VMAX_ROWS_SMEM; t += blockDim.x) rmax[t] = 0u;
    __syncthreads();
    const float co = okc ? colOld[c] : 0.f;
    float cmax = 0.f;
#pragma unroll 4
    for (int r = r0; r < r1; r++) {
        float vn = 0.f;
        if (okc) {
            size_t i = (size_t)r * (size_t)cols + (size_t)c;
            float g = __fmul_rn(grad[i], gscale);
            float v = v4_decode(nib(v4, i), fminf(rowOld[r], co));
            vn = next_v(v, g, b2, omb2);
            cmax = fmaxf(cmax, vn);
        }
        float m = warp_max(vn);
        if ((threadIdx.x & 31) == 0 && m > 0.f) {
            if (r - r0 < VMAX_ROWS_SMEM) atomicMax(&rmax[r - r0], __float_as_uint(m));
            else atomicMax(reinterpret_cast<unsigned*>(&rowNew[r]), __float_as_uint(m));
        }
    }
    if (okc && cmax > 0.f) atomicMax(reinterpret_cast<unsigned*>(&colNew[c]), __float_as_uint(cmax));
    __syncthreads();
    for (int t = threadIdx.x; t < r1 - r0 && t < VMAX_ROWS_SMEM; t += blockDim.x)
        if (rmax[t]) atomicMax(reinterpret_cast<unsigned*>(&rowNew[r0 + t]), rmax[t]);
}

// ---------------------------------------------------------------------------------------------
// Pass 2: the update and the encoding. norm points at the old normaliser: [rows] row maxima
// then [cols] column maxima for a matrix (matrix = 1, newNorm the new ones in the same
// layout), or one float per block of 128 for one row (matrix = 0, rewritten in place).

template <bool BF16>
__device__ __forceinline__ void adamw4(void* __restrict__ w, const float* __restrict__ grad, uint8_t* __restrict__ m4,
                                       uint8_t* __restrict__ v4, float* __restrict__ msc, float* __restrict__ norm,
                                       const float* __restrict__ newNorm, AdamParams p, int sr, uint64_t seed,
                                       uint64_t step, uint64_t param, size_t n, size_t rows, uint32_t cols, int matrix) {
    __shared__ float lv[9]; // m's levels (k/7)² as optim computes them: float32(k·k)/49
    if (threadIdx.x < 9) lv[threadIdx.x] = threadIdx.x < 8 ? __fdiv_rn((float)(threadIdx.x * threadIdx.x), 49.f) : 2.f;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const size_t warps = (size_t)gridDim.x * (blockDim.x >> 5);
    const float* colOld = norm + rows;
    const float* colNew = newNorm + rows;
    const uint64_t mseed = seed ^ (1ULL << 40);
    for (size_t blk = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); blk * 128 < n; blk += warps) {
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
            float g = __fmul_rn(grad[i], p.gscale);
            m = __fadd_rn(__fmul_rn(p.b1, m), __fmul_rn(p.omb1, g));
            v = next_v(v, g, p.b2, p.omb2);
            float den = __fadd_rn(__fsqrt_rn(__fdiv_rn(v, p.bc2)), p.eps);
            float upd = __fdiv_rn(__fdiv_rn(m, p.bc1), den);
            wv = __fsub_rn(__fsub_rn(wv, __fmul_rn(p.decay, wv)), __fmul_rn(p.lr, upd));
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
                reinterpret_cast<uint16_t*>(w)[i] = sr ? stochastic_bf16(wo[e], sr_bits(seed, step, param, (uint64_t)i)) : bf16_rne(wo[e]);
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
                    float u = __fmul_rn((float)sr_bits(mseed, step, param, (uint64_t)i), 1.f / 65536.f);
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

#define ADAMW4_ENTRY(name, BF16)                                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                           \
    name(void* w, const float* grad, uint8_t* m4, uint8_t* v4, float* msc, float* norm, const float* newNorm,    \
         float lr, float b1, float b2, float omb1, float omb2, float bc1, float bc2, float eps, float decay,      \
         float gscale, int sr, uint64_t seed, uint64_t step, uint64_t param, size_t n, size_t rows,              \
         unsigned cols, int matrix) {                                                                           \
        AdamParams p = {lr, b1, b2, omb1, omb2, bc1, bc2, eps, decay, gscale};                                  \
        adamw4<BF16>(w, grad, m4, v4, msc, norm, newNorm, p, sr, seed, step, param, n, rows, cols, matrix);     \
    }
ADAMW4_ENTRY(adamw_f32_4bit, false)
ADAMW4_ENTRY(adamw_bf16_4bit, true)
