// Shared device helpers of the AdamW kernels (train.cu: fp32 and int8 moments; optim4.cu:
// 4-bit moments): the per-call scalars and engine/optim's arithmetic — its update of the
// master weights, its SRDraw hash, bf16 round to nearest even, and stochastic
// rounding to bf16 — so that every kernel updates and rounds masters exactly as engine/optim.
#pragma once
#include <stdint.h>

// AdamParams are the per-call scalars, optim.Coeffs.Scalars() (computed on the host by optim:
// omb = 1−β in float32, lrc = lr/(1 − β1^step), rbc2 = 1/√(1 − β2^step), decay = lr·wd or 0),
// and the gradient's scale.
struct AdamParams {
    float lrc, b1, b2, omb1, omb2, rbc2, eps, decay, gscale;
};

// sr_mix is the hash of engine/optim's SRDraw: for h = j·0x9e3779b1 + key (32-bit), the 32
// bits whose low half is element 2j's draw and high half element 2j+1's.
__device__ __forceinline__ uint32_t sr_mix(uint32_t h) {
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    return h ^ (h >> 16);
}

// sr_draw is engine/optim's SRDraw(key, idx): the masters' stochastic rounding.
__device__ __forceinline__ uint32_t sr_draw(uint32_t key, size_t idx) {
    const uint32_t h = sr_mix((uint32_t)(idx >> 1) * 0x9e3779b1u + key);
    return idx & 1 ? h >> 16 : h & 0xffffu;
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
// 2^-100 (DivcLow), and a normal quotient |a/b| ≥ 2^-126 — given in optim4.cu by an absmax
// b ∈ [2^-36, 2^60] with |a| ≥ b·2^-64. Then the result is __fdiv_rn(a, b) bit for bit, or a NaN where a is ±Inf or
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
    // ok_at: every element added is ±0 or at least the float whose bits are bound in magnitude.
    __device__ __forceinline__ bool ok_at(uint32_t bound) const { return lo >= 2u * bound - 2u; }
};

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

// sqrt_nz is sqrt_fast for 2^-101 ≤ x ≤ FLT_MAX, where the cap changes nothing (1/√x ≤ 2^50.5).
__device__ __forceinline__ float sqrt_nz(float x) {
    float r;
    asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
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

// INT8_ROUND is 1.5·2^23: for |y| < 2^22, the float RN(y + INT8_ROUND) holds y rounded to an
// integer (half to even) as 0x4B400000 + round(y) in its bits — engine/optim's int8 codes
// (format 2) are read from such sums.
#define INT8_ROUND 12582912.f
#define INT8_BITS 0x4B400000u

// m_code is optim's int8 m code of m under inv = 127/absmax (0 for a zero absmax), in the low
// byte: |m·inv| ≤ 127.00003, so the sum's low byte is the code in two's complement.
__device__ __forceinline__ uint32_t m_code(float m, float inv) {
    return __float_as_uint(__fadd_rn(__fmul_rn(m, inv), INT8_ROUND));
}

// v_code is optim's int8 √v code of sv = √v under inv = 256/max√v (0 for a zero maximum), in the
// low byte: round(sv·inv) − 1 from the sum with 1.5·2^23 − 1, clamped to 0…255. The clamp
// costs one float max, not two integer ones: y = RN(sv·inv) is at most 256 (sv ≤ max√v, inv ≤
// (256/max√v)(1 + 2^-24)), so only the low end can leave the range, and every y < 1 clamps to
// code 0 — which is y = 1's code, so y is raised to 1 first. max.NaN keeps a NaN (only an
// overflowed v gives one), whose sum is the canonical NaN 0x7FFFFFFF: low byte 255, optim's
// clamp of a NaN.
__device__ __forceinline__ uint32_t v_code(float sv, float inv) {
    float y = __fmul_rn(sv, inv);
    asm("max.NaN.f32 %0, %0, 0f3F800000;" : "+f"(y));
    return __float_as_uint(__fadd_rn(y, INT8_ROUND - 1.f));
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

// div_nz is div_pos for a ≠ 0 (2^-60 ≤ |a| ≤ 2^60): the quotient, at least 2^-120 in magnitude,
// is correctly rounded and so already carries a's sign (div_pos's sequence without its sign fix).
__device__ __forceinline__ float div_nz(float a, float b) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(b));
    y = __fmaf_rn(y, __fmaf_rn(-b, y, 1.f), y);
    const float q0 = __fmul_rn(a, y);
    return __fmaf_rn(__fmaf_rn(-b, q0, a), y, q0);
}

// div_pos is __fdiv_rn(a, b) for b ∈ [2^-60, 2^60] and a = ±0 or 2^-60 ≤ |a| ≤ 2^60 (callers
// check): the sequence ptxas emits for div.rn.f32 when its FCHK test passes — a reciprocal
// approximation, one Newton step, the quotient and one residual correction (exact by
// Markstein's theorem while nothing underflows or overflows, which the ranges ensure: the
// quotient is in [2^-120, 2^120]) — without the FCHK and the slow-path call. The call made
// ptxas reload every constant-bank operand after each of the eight divisions of a lane
// (session 10: 45 ULDC an iteration). The sign of a is put on the result: b > 0, and for a = −0
// the sequence would give +0.
__device__ __forceinline__ float div_pos(float a, float b) {
    const float q = div_nz(a, b);
    return __uint_as_float((__float_as_uint(q) & 0x7fffffffu) | (__float_as_uint(a) & 0x80000000u));
}

// DIV_LO is 2^-60, div_pos's lower bound on |a| (DivcLow::ok_at).
#define DIV_LO 0x21800000u

// div_uniform is the per-call part of the test for div_pos on AdamW's denominators
// sv·rbc2 + eps: with eps ∈ [2^-60, 2^50] and rbc2 ≤ 2^16, every v ≤ 2^80 gives a denominator in
// [2^-60, 2^57].
__device__ __forceinline__ bool div_uniform(const AdamParams& p) {
    return p.eps >= 0x1p-60f && p.eps <= 0x1p50f && p.rbc2 <= 0x1p16f;
}

// div_lane is the whole test for a lane: the per-call part, every m ±0 or in [2^-60, 2^60]
// (lom: their DivcLow; am: their largest magnitude) and every v ≤ 2^80 (vmax).
__device__ __forceinline__ bool div_lane(bool uniform, const DivcLow& lom, float am, float vmax) {
    return uniform && lom.ok_at(DIV_LO) && am <= 0x1p60f && vmax <= 0x1p80f;
}

// adamw_q8 is the update's quotient m / (sv·rbc2 + eps) of a lane's eight elements.
__device__ __forceinline__ void adamw_q8(const float (&mv)[8], const float (&sv)[8], const AdamParams& p, bool fastdiv,
                                         float (&q)[8]) {
    if (fastdiv) {
#pragma unroll
        for (int e = 0; e < 8; e++) q[e] = div_pos(mv[e], __fadd_rn(__fmul_rn(sv[e], p.rbc2), p.eps));
    } else {
        ADAMW_SLOW();
#pragma unroll
        for (int e = 0; e < 8; e++) q[e] = __fdiv_rn(mv[e], __fadd_rn(__fmul_rn(sv[e], p.rbc2), p.eps));
    }
}

// adamw_wq8 finishes the 8 master weights of a lane (elements i0…i0+7) from the quotients
// q = m / (sv·rbc2 + eps) — optim's Update: w − decay·w − lrc·q, each operation rounded on
// its own — and stores them: bf16 by cvt.rn.bf16x2 when all eight are normal (IEEE round to
// nearest even is bf16_rne's rounding there), or stochastically with optim's SRDraw when all
// are finite; otherwise element by element with bf16_rne / stochastic_bf16. wv holds the old
// weights on entry. Shared by the int8/fp32 (train.cu) and 4-bit (optim4.cu) lane kernels.
template <bool BF16>
__device__ __forceinline__ void adamw_wq8(void* __restrict__ w, float (&wv)[8], const float (&q)[8],
                                          const AdamParams& p, int sr, uint32_t key, size_t i0) {
#pragma unroll
    for (int e = 0; e < 8; e++) wv[e] = __fsub_rn(__fsub_rn(wv[e], __fmul_rn(p.decay, wv[e])), __fmul_rn(p.lrc, q[e]));
    if (!BF16) {
        reinterpret_cast<float4*>(w)[i0 / 4] = make_float4(wv[0], wv[1], wv[2], wv[3]);
        reinterpret_cast<float4*>(w)[i0 / 4 + 1] = make_float4(wv[4], wv[5], wv[6], wv[7]);
        return;
    }
    bool ok = true;
#pragma unroll
    for (int e = 0; e < 8; e++) ok &= sr ? fabsf(wv[e]) < INFINITY : fabsf(wv[e]) >= 0x1p-126f;
    uint32_t hw[4];
    if (ok && sr) {
        // SRDraw(key, i0 + e): elements 2j and 2j+1 take the low and high halves of one hash of
        // j, whose input j·φ + key advances by φ (i0 is a multiple of 8).
        const uint32_t h0 = (uint32_t)(i0 >> 1) * 0x9e3779b1u + key;
        uint32_t t[8];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t h = sr_mix(h0 + (uint32_t)j * 0x9e3779b1u);
            t[2 * j] = __float_as_uint(wv[2 * j]) + (h & 0xffffu);
            t[2 * j + 1] = __float_as_uint(wv[2 * j + 1]) + (h >> 16);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) hw[j] = __byte_perm(t[2 * j], t[2 * j + 1], 0x7632u);
    } else if (ok) {
#pragma unroll
        for (int j = 0; j < 4; j++) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(hw[j]) : "f"(wv[2 * j + 1]), "f"(wv[2 * j]));
    } else {
        ADAMW_SLOW();
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint16_t h[2];
#pragma unroll
            for (int k = 0; k < 2; k++)
                h[k] = sr ? stochastic_bf16(wv[2 * j + k], sr_draw(key, i0 + 2 * j + k)) : bf16_rne(wv[2 * j + k]);
            hw[j] = (uint32_t)h[0] | (uint32_t)h[1] << 16;
        }
    }
    *reinterpret_cast<uint4*>(reinterpret_cast<uint16_t*>(w) + i0) = make_uint4(hw[0], hw[1], hw[2], hw[3]);
}

// adamw_w8 is adamw_wq8 from the new m and sv = √v (fastdiv: every m and denominator is in
// div_pos's range, the caller's test).
template <bool BF16>
__device__ __forceinline__ void adamw_w8(void* __restrict__ w, float (&wv)[8], const float (&mv)[8],
                                         const float (&sv)[8], const AdamParams& p, bool fastdiv, int sr, uint32_t key,
                                         size_t i0) {
    float q[8];
    adamw_q8(mv, sv, p, fastdiv, q);
    adamw_wq8<BF16>(w, wv, q, p, sr, key, i0);
}

// sqrt8 is __fsqrt_rn of a lane's eight v (each +0 or more): sqrt_fast when every one is +0 or
// in [2^-100, FLT_MAX] (lo: their DivcLow; vmax: their maximum, which fmaxf takes ignoring NaN —
// v is never NaN), else the plain root.
__device__ __forceinline__ void sqrt8(const float (&vv)[8], const DivcLow& lo, float vmax, float (&sv)[8]) {
    if (lo.ok() && vmax < INFINITY) {
#pragma unroll
        for (int e = 0; e < 8; e++) sv[e] = sqrt_fast(vv[e]);
    } else {
        ADAMW_SLOW();
#pragma unroll
        for (int e = 0; e < 8; e++) sv[e] = __fsqrt_rn(vv[e]);
    }
}

// Gradients. Every AdamW kernel has two forms: a float32 gradient, and (GB, the entry points
// with suffix _gb) a bf16 parameter gradient (backend.GradientFormat: 2 bytes an element, bf16
// bits), which is widened exactly (bits << 16) on load — the rest of the kernel is the float32
// form's, so the update is the float32 gradient's update of the widened values bit for bit.
// The gradient is 4 bytes of the 12.25 an element the int8 step moves; bf16 makes it 2 (10.25).

// grad_at returns element i of the gradient (a plain load: the scalar kernels').
template <bool GB>
__device__ __forceinline__ float grad_at(const void* __restrict__ grad, size_t i) {
    if (GB) return bf16_to_f32(reinterpret_cast<const uint16_t*>(grad)[i]);
    return reinterpret_cast<const float*>(grad)[i];
}

// grad8 reads grad[i0 … i0+7] through the read-only cache: two 16-byte vectors of floats, or
// one 16-byte vector of 8 bf16 widened by a shift (even elements) and a mask (odd ones). Both
// need the gradient's pointer 16-byte aligned (i0 is a multiple of 8).
template <bool GB>
__device__ __forceinline__ void grad8(const void* __restrict__ grad, size_t i0, float (&gv)[8]) {
    if (GB) {
        const uint4 u = __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const uint16_t*>(grad) + i0));
        const uint32_t uw[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            gv[2 * j] = bf16_lo(uw[j]);
            gv[2 * j + 1] = bf16_hi(uw[j]);
        }
    } else {
        const float4* g4 = reinterpret_cast<const float4*>(reinterpret_cast<const float*>(grad) + i0);
        const float4 g0 = __ldg(g4), g1 = __ldg(g4 + 1);
        gv[0] = g0.x, gv[1] = g0.y, gv[2] = g0.z, gv[3] = g0.w, gv[4] = g1.x, gv[5] = g1.y, gv[6] = g1.z, gv[7] = g1.w;
    }
}

// adamw_step8 is a lane's update of elements i0…i0+7 once their old w (wv), m (mv) and v (vv)
// are decoded: optim's moments from grad[i0…i0+7] (grad8: float32, or bf16 when GB; 16-byte
// aligned), √v (sv), and the master weights updated and stored (adamw_w8). mv and vv hold the
// new moments on return, am and av the lane's largest |m| and v, lom and lov their DivcLow.
// divu is the call's div_uniform.
template <bool BF16, bool GB>
__device__ __forceinline__ void adamw_step8(void* __restrict__ w, const void* __restrict__ grad, float (&wv)[8],
                                            float (&mv)[8], float (&vv)[8], float (&sv)[8], const AdamParams& p,
                                            bool divu, int sr, uint32_t key, size_t i0, float& am, float& av,
                                            DivcLow& lom, DivcLow& lov) {
    // m (lom): ±0 or ≥ 2^-60 for div_pos; v (lov): +0 or ≥ 2^-100 for sqrt_fast
    am = 0.f, av = 0.f;
    float gv[8];
    grad8<GB>(grad, i0, gv);
#pragma unroll
    for (int e = 0; e < 8; e++) {
        const float g = __fmul_rn(gv[e], p.gscale);
        mv[e] = __fadd_rn(__fmul_rn(p.b1, mv[e]), __fmul_rn(p.omb1, g));
        vv[e] = __fadd_rn(__fmul_rn(p.b2, vv[e]), __fmul_rn(__fmul_rn(p.omb2, g), g));
        lom.add(mv[e]);
        lov.add(vv[e]);
        am = fmaxf(am, fabsf(mv[e]));
        av = fmaxf(av, vv[e]);
    }
    sqrt8(vv, lov, av, sv);
    adamw_w8<BF16>(w, wv, mv, sv, p, div_lane(divu, lom, am, av), sr, key, i0);
}

// adamw_update8g is adamw_update8 from the gradient's eight values gv (already widened).
template <bool BF16>
__device__ __forceinline__ void adamw_update8g(void* __restrict__ w, const float (&gv)[8], float (&wv)[8],
                                               float (&mv)[8], float (&vv)[8], float (&sv)[8], const AdamParams& p,
                                               bool divu, int sr, uint32_t key, size_t i0, float& am, float& av) {
    am = 0.f, av = 0.f;
    float mn = INFINITY, vn = INFINITY;
#pragma unroll
    for (int e = 0; e < 8; e++) {
        const float g = __fmul_rn(gv[e], p.gscale);
        mv[e] = __fadd_rn(__fmul_rn(p.b1, mv[e]), __fmul_rn(p.omb1, g));
        vv[e] = __fadd_rn(__fmul_rn(p.b2, vv[e]), __fmul_rn(__fmul_rn(p.omb2, g), g));
        am = fmaxf(am, fabsf(mv[e]));
        mn = fminf(mn, fabsf(mv[e]));
        av = fmaxf(av, vv[e]);
        vn = fminf(vn, vv[e]);
    }
    float q[8];
    if (divu && mn >= 0x1p-60f && am <= 0x1p60f && vn >= 0x1p-100f && av <= 0x1p80f) {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            sv[e] = sqrt_nz(vv[e]);
            q[e] = div_nz(mv[e], __fadd_rn(__fmul_rn(sv[e], p.rbc2), p.eps));
        }
    } else if (am == 0.f && av == 0.f) {
#pragma unroll
        for (int e = 0; e < 8; e++) sv[e] = vv[e], q[e] = mv[e];
    } else {
        ADAMW_SLOW();
        DivcLow lom, lov;
#pragma unroll
        for (int e = 0; e < 8; e++) lom.add(mv[e]), lov.add(vv[e]);
        sqrt8(vv, lov, av, sv);
        adamw_q8(mv, sv, p, div_lane(divu, lom, am, av), q);
    }
    adamw_wq8<BF16>(w, wv, q, p, sr, key, i0);
}

// adamw_update8 is adamw_step8 for the int8 and fp32 kernels (train.cu), which need no DivcLow of
// m afterwards: a lane's ranges come from four float min/max (|m|, v), one instruction an
// element each, instead of the two integer ones each DivcLow::add takes. Fast when every m and
// v is non-zero and in range (mn ≥ 2^-60, am ≤ 2^60, vn ≥ 2^-100, av ≤ 2^80, divu): then no
// zero needs the root's cap (sqrt_nz) or the quotient's sign fix (div_nz). A lane whose m and v
// are all zero (a parameter's rows that no token touched) takes √v = v and q = m, which is what
// the root and the division give there (±0 / eps = ±0). Any other lane takes adamw_step8's
// checked path. Each result is the plain operations' bit for bit, as before.
template <bool BF16, bool GB>
__device__ __forceinline__ void adamw_update8(void* __restrict__ w, const void* __restrict__ grad, float (&wv)[8],
                                              float (&mv)[8], float (&vv)[8], float (&sv)[8], const AdamParams& p,
                                              bool divu, int sr, uint32_t key, size_t i0, float& am, float& av) {
    float gv[8];
    grad8<GB>(grad, i0, gv);
    adamw_update8g<BF16>(w, gv, wv, mv, vv, sv, p, divu, sr, key, i0, am, av);
}

// Vec8 holds eight consecutive elements as loaded, before widening: one 16-byte vector of bf16
// (B16) or two of float32, so that a lane can issue all its loads before it computes (a
// widened copy would take twice the registers for bf16).
template <bool B16>
struct Vec8 {
    uint4 u[B16 ? 1 : 2];
    __device__ __forceinline__ void load(const void* p, size_t i0) {
        const uint4* q = reinterpret_cast<const uint4*>(reinterpret_cast<const char*>(p) + i0 * (B16 ? 2 : 4));
#pragma unroll
        for (int k = 0; k < (B16 ? 1 : 2); k++) u[k] = q[k];
    }
    __device__ __forceinline__ void ldg(const void* p, size_t i0) {
        const uint4* q = reinterpret_cast<const uint4*>(reinterpret_cast<const char*>(p) + i0 * (B16 ? 2 : 4));
#pragma unroll
        for (int k = 0; k < (B16 ? 1 : 2); k++) u[k] = __ldg(q + k);
    }
    __device__ __forceinline__ void widen(float (&f)[8]) const {
        if constexpr (B16) {
            const uint32_t uw[4] = {u[0].x, u[0].y, u[0].z, u[0].w};
#pragma unroll
            for (int j = 0; j < 4; j++) f[2 * j] = bf16_lo(uw[j]), f[2 * j + 1] = bf16_hi(uw[j]);
        } else {
#pragma unroll
            for (int k = 0; k < 2; k++) {
                f[4 * k] = __uint_as_float(u[k].x), f[4 * k + 1] = __uint_as_float(u[k].y);
                f[4 * k + 2] = __uint_as_float(u[k].z), f[4 * k + 3] = __uint_as_float(u[k].w);
            }
        }
    }
};
