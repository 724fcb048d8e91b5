// Shared device helpers of the AdamW kernels (train.cu: fp32 and int8 moments; optim4.cu:
// 4-bit moments): the per-call scalars and engine/optim's rounding — its srBits hash, bf16
// round to nearest even, and stochastic rounding to bf16 — so that both kernels round masters
// exactly as engine/optim does.
#pragma once
#include <stdint.h>

// AdamParams are the per-call scalars, computed on the host in float32 exactly as optim does
// (omb1 = 1−β1 in float32, bc = float32(1 − β^step), decay = float32(lr·wd) or 0).
struct AdamParams {
    float lr, b1, b2, omb1, omb2, bc1, bc2, eps, decay, gscale;
};

// sr_bits is engine/optim's srBits: splitmix64 of (seed, step, param, index), 16 bits.
__device__ __forceinline__ uint32_t sr_bits(uint64_t seed, uint64_t step, uint64_t param, uint64_t idx) {
    uint64_t z = seed ^ step * 0x9e3779b97f4a7c15ULL ^ param * 0xbf58476d1ce4e5b9ULL ^ idx * 0x94d049bb133111ebULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (uint32_t)(z ^ (z >> 31)) & 0xffffu;
}

// bf16_rne is engine/tensor's F32ToBF16: round to nearest even, NaN kept quiet.
__device__ __forceinline__ uint16_t bf16_rne(float f) {
    uint32_t b = __float_as_uint(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

// stochastic_bf16 is engine/optim's stochasticBF16.
__device__ __forceinline__ uint16_t stochastic_bf16(float x, uint32_t r) {
    uint32_t b = __float_as_uint(x);
    if ((b & 0x7fffffffu) >= 0x7f800000u) return bf16_rne(x);
    return (uint16_t)((b + r) >> 16);
}

// ADAMW_SLOW() marks a rare branch (a shortcut's fallback). It is empty, except in a build with
// -DADAMW_COUNT, where it is a PMTRIG instruction that lets a SASS walk follow the common path
// when counting the instructions per element (NOTES.md, "AdamW vectorized"); such a build may
// also fix the kernels' sr argument with -DADAMW_COUNT_SR=0 or 1 (and optim4.cu's matrix with
// -DADAMW_COUNT_MATRIX).
#ifdef ADAMW_COUNT
#define ADAMW_SLOW() asm volatile("pmevent 1;")
#else
#define ADAMW_SLOW()
#endif
#ifdef ADAMW_COUNT_SR
#define ADAMW_COUNT_FIX_SR(sr) (sr) = ADAMW_COUNT_SR
#else
#define ADAMW_COUNT_FIX_SR(sr) (void)0
#endif
#ifdef ADAMW_COUNT_MATRIX
#define ADAMW_COUNT_FIX_MATRIX(matrix) (matrix) = ADAMW_COUNT_MATRIX
#else
#define ADAMW_COUNT_FIX_MATRIX(matrix) (void)0
#endif

// ---------------------------------------------------------------------------------------------
// Exact shortcuts of the vectorized kernels (train.cu adamw_*, optim4.cu adamw_*_4bit). Each is
// bit-identical to the operation it replaces on the inputs it accepts; callers test the inputs
// (cheaply, a whole lane's elements at once) and fall back to the plain operation otherwise.

// div_const is __fdiv_rn(a, b) for a divisor fixed per call (or per lane), from yb =
// __frcp_rn(b) = RN(1/b): a multiply and four FMAs instead of a reciprocal approximation, five
// FMAs, the FCHK test and its branch per element. Requires b and 1/b normal, a = ±0 or |a| ≥
// 2^-100 (DivcLow), and a normal quotient |a/b| ≥ 2^-126 — given here by b ∈ [2^-60, 2^7]
// (divc_divisor_ok: bc1, bc2, 127), or in optim4.cu by an absmax b ∈ [2^-36, 2^60] with
// |a| ≥ b·2^-64. Then the result is __fdiv_rn(a, b) bit for bit, or a NaN where a is ±Inf or
// NaN or the quotient overflows (never a wrong finite value or infinity). Checked on the CPU
// for every float a against 24 divisors (bias corrections, 127, significands near 2^24) and
// 4·10^8 random pairs.
// Proof (p = 24, z = a/b in binade [2^e, 2^(e+1)), B = b's integer significand < 2^24):
//   δ = b·yb − 1 satisfies |δ| ≤ B·2^-48 < 2^-24 (yb is within half an ulp of 1/b).
//   q0 = RN(a·yb) is within 2^-23|z| of z; r0 = RN(b·q0 − a) (relative error ≤ 2^-24, or exact);
//   q0 − r0·yb = z − (q0 − z)(θ + δ + θδ), so q1 = RN(q0 − r0·yb) is RN of a value within
//   2^-45|z| of z: q1 is one of the two floats around z (faithful).
//   For a faithful q1, r1 = b·q1 − a is exact: it is a multiple of ulp(b)·ulp(q1) ≥ 2^(eb+e−46)
//   and smaller than B times that (eb + e ≥ ea − 1 ≥ −101 keeps that grid ≥ 2^-149).
//   q2 = RN(q1 − r1·yb) = RN(z + (z − q1)·δ). z is never a midpoint between floats, and its
//   distance d to any midpoint M is at least 2^(e−24)/B (a − b·M is a non-zero multiple of
//   2^(eb+e−47)); the perturbation is at most (2^(e−24) + d)·|δ| ≤ (2^(e−24) + d)·B·2^-48,
//   which is smaller than d because B² < 2^48. So no midpoint lies between z and the value
//   rounded, and q2 = RN(z). Signs of zero: a = ±0 gives r = +0 and q2 = a, as __fdiv_rn does.
//   Specials: an infinite q0 or q1 (a = ±Inf, or overflow) makes the next residual infinite and
//   the FMA after it Inf − Inf = NaN; a NaN stays NaN.
__device__ __forceinline__ bool divc_divisor_ok(float b) { return b >= 0x1p-60f && b <= 0x1p7f; }

__device__ __forceinline__ float div_const(float a, float b, float yb) {
    float q = __fmul_rn(a, yb);
    float r = __fmaf_rn(b, q, -a);
    q = __fmaf_rn(-r, yb, q);
    r = __fmaf_rn(b, q, -a);
    return __fmaf_rn(-r, yb, q);
}

// DivcLow accumulates div_const's (and sqrt_fast's) lower bound over a lane's elements: the
// smallest 2·bits − 2 (the sign shifted out; ±0 wraps to the top and never counts). ok() holds
// when every element added is ±0 or at least 2^-100 in magnitude (Inf and NaN pass).
#define DIVC_LO 0x0D800000u  // 2^-100
struct DivcLow {
    uint32_t lo = 0xffffffffu;
    __device__ __forceinline__ void add(float a) { lo = min(lo, 2u * __float_as_uint(a) - 2u); }
    __device__ __forceinline__ bool ok() const { return lo >= 2u * DIVC_LO - 2u; }
};

// divc_ok is the whole test of div_const's dividend for one value (a lane's scalars): ±0 or
// 2^-100 ≤ |a| ≤ 2^60, where a result that must be exact cannot be checked afterwards.
__device__ __forceinline__ bool divc_ok(float a) {
    const uint32_t t = __float_as_uint(a) & 0x7fffffffu;
    return t == 0u || t - DIVC_LO <= 0x5D800000u - DIVC_LO;
}

// sqrt_fast is __fsqrt_rn(x) for x = +0 or 2^-101 ≤ x ≤ FLT_MAX: the instruction sequence ptxas
// itself emits for sqrt.rn.f32 on sm_90 inside that range (MUFU.RSQ, then s = x·r, h = r/2 and
// one FMA correction s + (x − s²)·h), without its range test and branch; the reciprocal square
// root is capped at 2^100 so that x = +0 gives +0 (the cap is above 1/√x for every x ≥ 2^-101,
// so it changes nothing else). x is never negative here (v or v/bc2); +Inf and NaN give NaN.
// Callers check the lower bound (DivcLow).
__device__ __forceinline__ float sqrt_fast(float x) {
    float r;
    asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    r = fminf(r, 0x1p100f);
    const float s = __fmul_rn(x, r), h = __fmul_rn(r, 0.5f);
    return __fmaf_rn(__fmaf_rn(-s, s, x), h, s);
}

// sqrt_rn is __fsqrt_rn with the fast sequence where it applies (a lane's scalars).
__device__ __forceinline__ float sqrt_rn(float x) {
    const uint32_t b = __float_as_uint(x);
    if (b == 0u || b - 0x0D000000u <= 0x727fffffu) return sqrt_fast(x);
    ADAMW_SLOW();
    return __fsqrt_rn(x);
}

// byte_f32 returns byte k of u as an exact float through the bits 2^23 + byte, less off:
// off = 2^23 gives the byte, 2^23 − 1 the byte + 1, 2^23 + 128 a byte biased by 128 (an int8
// code XOR 0x80) as its signed value. One PRMT and one FADD instead of an I2F conversion.
// magic is 0x4B000000 in a register that ptxas cannot fold (from byte_magic), or it puts the
// constant in the PRMT's immediate slot and materializes every selector in a register.
__device__ __forceinline__ float byte_f32(uint32_t u, int k, float off, uint32_t magic) {
    return __fsub_rn(__uint_as_float(__byte_perm(u, magic, 0x7650u | (uint32_t)k)), off);
}

// byte_magic returns 0x4B000000 computed from n (an element count, below 2^63) at run time.
__device__ __forceinline__ uint32_t byte_magic(size_t n) { return 0x4B000000u | (uint32_t)(n >> 63); }

// pack4 packs the low bytes of four words into one word (three PRMTs).
__device__ __forceinline__ uint32_t pack4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    return __byte_perm(__byte_perm(a, b, 0x0040u), __byte_perm(c, d, 0x0040u), 0x5410u);
}

// m_code_i8 is the int8 code of m under inv = 127/absmax: roundf(m·inv) clamped to ±127, as the
// scalar kernel computes it, in its low byte. |y| + 0.5 rounded toward zero has the floor of
// |y| + 0.5 (no integer lies between it and the exact sum); adding 2^23 toward zero leaves that
// floor in the low bits of the float, clamped by an unsigned min (which also maps ±Inf and any
// NaN, whose bits are above, to 127 as fminf does); the sign of y is applied in two's
// complement.
__device__ __forceinline__ uint32_t m_code_i8(float m, float inv) {
    const float y = __fmul_rn(m, inv);
    const float t = __fadd_rz(__fadd_rz(fabsf(y), 0.5f), 8388608.f);
    const uint32_t k = min(__float_as_uint(t), 0x4B00007Fu);
    return y < 0.f ? 0u - k : k;  // not for a NaN y, which roundf and the clamps make +127
}

// v_code_u8 is sqrt_code_u8 (train.cu) without its double-precision branch: the code of v,
// given sv = √v and inv = 256/√absmax, in the low byte, and in near whether the caller must
// recompute it there. u = RN(y + 1024.5) for y = sv·inv holds y + 0.5 on a 2^-13 grid: n =
// floor(u) − 1024 in bits 13..22, the fraction in bits 0..12. Unless the fraction is 0 or 8191,
// y + 0.5 lies at least 2^-14 from an integer — beyond the ≤ 2^-15·(1 + 2^-20) distance between
// y and optim's double product for y ≤ 256.5 — so floor(y + 0.5) = n is optim's rounding and
// the code is n − 1 clamped to [0, 255] (n ≤ 256). NaN and ±Inf read as near. About 1 element
// in 4096 is near.
__device__ __forceinline__ uint32_t v_code_u8(float sv, float inv, bool& near) {
    const uint32_t u = __float_as_uint(__fadd_rn(__fmul_rn(sv, inv), 1024.5f));
    near = ((u + 1u) & 0x1FFEu) == 0u;
    return max((u >> 13) - 1u, 0x22400u);
}

// sr_key2 hoists the per-call part of srBits: with key = seed ^ step·C1 ^ param·C2, srBits(…,
// idx) = fin(key ^ idx·C3) and the first finalizer step (z ^ z>>30) is linear in z over XOR,
// so it is x ^ x>>30 ^ k2 for x = idx·C3 and k2 = key ^ key>>30.
__device__ __forceinline__ uint64_t sr_key2(uint64_t seed, uint64_t step, uint64_t param) {
    const uint64_t key = seed ^ step * 0x9e3779b97f4a7c15ULL ^ param * 0xbf58476d1ce4e5b9ULL;
    return key ^ (key >> 30);
}

// sr_bits_hoisted is sr_bits(seed, step, param, idx) for x = idx·0x94d049bb133111eb and
// k2 = sr_key2(seed, step, param).
__device__ __forceinline__ uint32_t sr_bits_hoisted(uint64_t x, uint64_t k2) {
    uint64_t z = (x ^ (x >> 30) ^ k2) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (uint32_t)(z ^ (z >> 31)) & 0xffffu;
}

// load8 reads w[i0 … i0+7] as floats (one 16-byte vector for bf16, two for f32).
template <bool BF16>
__device__ __forceinline__ void load8(const void* w, size_t i0, float (&wv)[8]) {
    if (BF16) {
        const uint4 u = *reinterpret_cast<const uint4*>(reinterpret_cast<const uint16_t*>(w) + i0);
        const uint32_t uw[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            wv[2 * j] = bf16_lo(uw[j]);
            wv[2 * j + 1] = bf16_hi(uw[j]);
        }
    } else {
        const float4 a = reinterpret_cast<const float4*>(w)[i0 / 4], b = reinterpret_cast<const float4*>(w)[i0 / 4 + 1];
        wv[0] = a.x, wv[1] = a.y, wv[2] = a.z, wv[3] = a.w, wv[4] = b.x, wv[5] = b.y, wv[6] = b.z, wv[7] = b.w;
    }
}

// adamw_w8 finishes the 8 master weights of a lane (elements i0…i0+7) from their new moments and
// stores them: with fast, the shortcuts (div_const, sqrt_fast) in three passes — the shortcut
// divisions and roots, then the true divisions (whose slow-path calls make ptxas reload every
// constant-bank operand used between them), then w; a shortcut that meets ±Inf, NaN or an
// overflow yields NaN, never a wrong number, so a NaN-free w (the rounding tests below reject
// NaN) was computed exactly; otherwise the lane redoes w with the plain operations. wv holds the
// old weights on entry. Shared by the int8/fp32 (train.cu) and 4-bit (optim4.cu) lane kernels.
template <bool BF16>
__device__ __forceinline__ void adamw_w8(void* __restrict__ w, float (&wv)[8], const float (&mv)[8],
                                         const float (&vv)[8], const AdamParams& p, bool fast, float ybc1,
                                         float ybc2, int sr, uint64_t k2, size_t i0) {
    if (fast) {
        float q[8], den[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
            den[e] = __fadd_rn(sqrt_fast(div_const(vv[e], p.bc2, ybc2)), p.eps);
            q[e] = div_const(mv[e], p.bc1, ybc1);
        }
#pragma unroll
        for (int e = 0; e < 8; e++) q[e] = __fdiv_rn(q[e], den[e]);
#pragma unroll
        for (int e = 0; e < 8; e++) wv[e] = __fsub_rn(__fsub_rn(wv[e], __fmul_rn(p.decay, wv[e])), __fmul_rn(p.lr, q[e]));
    }
    // Rounding tests: cvt.rn.bf16x2 is IEEE round to nearest even — bf16_rne's rounding — for
    // normal floats and ±Inf; zeros, subnormals and NaN (whose bits bf16_rne keeps) take bf16_rne.
    // Stochastic rounding adds the draw to the bits of any finite w. f32 masters only need NaN.
    bool ok = fast;
#pragma unroll
    for (int e = 0; e < 8; e++) {
        if (!BF16) ok &= wv[e] == wv[e];
        else if (sr) ok &= fabsf(wv[e]) < INFINITY;
        else ok &= fabsf(wv[e]) >= 0x1p-126f;
    }
    uint32_t hw[4];
    if (ok) {
        if (BF16 && sr) {
            // srBits(seed, step, param, i0+e) from the hoisted key: idx·C3 advances by C3.
            const uint64_t x0 = (uint64_t)i0 * 0x94d049bb133111ebULL;
            uint32_t t[8];
#pragma unroll
            for (int e = 0; e < 8; e++) t[e] = __float_as_uint(wv[e]) + sr_bits_hoisted(x0 + (uint64_t)e * 0x94d049bb133111ebULL, k2);
#pragma unroll
            for (int j = 0; j < 4; j++) hw[j] = __byte_perm(t[2 * j], t[2 * j + 1], 0x7632u);
        } else if (BF16) {
#pragma unroll
            for (int j = 0; j < 4; j++) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(hw[j]) : "f"(wv[2 * j + 1]), "f"(wv[2 * j]));
        }
    } else {
        ADAMW_SLOW();
        load8<BF16>(w, i0, wv);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const float den = __fadd_rn(__fsqrt_rn(__fdiv_rn(vv[e], p.bc2)), p.eps);
            const float upd = __fdiv_rn(__fdiv_rn(mv[e], p.bc1), den);
            wv[e] = __fsub_rn(__fsub_rn(wv[e], __fmul_rn(p.decay, wv[e])), __fmul_rn(p.lr, upd));
        }
        if (BF16) {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint16_t h[2];
#pragma unroll
                for (int k = 0; k < 2; k++)
                    h[k] = sr ? stochastic_bf16(wv[2 * j + k], sr_bits_hoisted((uint64_t)(i0 + 2 * j + k) * 0x94d049bb133111ebULL, k2))
                              : bf16_rne(wv[2 * j + k]);
                hw[j] = (uint32_t)h[0] | (uint32_t)h[1] << 16;
            }
        }
    }
    if (BF16) {
        *reinterpret_cast<uint4*>(reinterpret_cast<uint16_t*>(w) + i0) = make_uint4(hw[0], hw[1], hw[2], hw[3]);
    } else {
        reinterpret_cast<float4*>(w)[i0 / 4] = make_float4(wv[0], wv[1], wv[2], wv[3]);
        reinterpret_cast<float4*>(w)[i0 / 4 + 1] = make_float4(wv[4], wv[5], wv[6], wv[7]);
    }
}
