// Shared device helpers of the qwengo CUDA kernels: number formats (bf16, E2M1, E4M3) and block
// reductions. Included by every kernels/*.cu file; compiled to PTX by ../gen_ptx.sh.
#pragma once
#include <stdint.h>
#include <cuda_fp16.h>

// bf16 → float32 is exact: the bf16 bits are the float's upper half.
__device__ __forceinline__ float bf16_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ float bf16_to_f32(uint16_t h) { return __uint_as_float(((uint32_t)h) << 16); }
// f32_bf16_bits rounds a float to bf16 bits (nearest even; a NaN stays a quiet NaN), as
// engine/tensor.F32ToBF16.
__device__ __forceinline__ uint32_t f32_bf16_bits(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

// e2m1_value decodes a 4-bit E2M1 code (bit 3 sign, bits 0-2 the magnitude index of
// 0, 0.5, 1, 1.5, 2, 3, 4, 6) by building the float32's bits: exact, no table.
__device__ __forceinline__ float e2m1_value(uint32_t c) {
    uint32_t m = c & 7u;
    uint32_t bits = m >= 2u ? ((((m >> 1) + 126u) << 23) | ((m & 1u) << 22)) : (m ? 0x3F000000u : 0u);
    return __uint_as_float(bits | ((c & 8u) << 28));
}

// e4m3_to_f32 decodes a float8_e4m3fn byte (sign, 4 exponent bits with bias 7, 3 mantissa bits,
// subnormals). The NaN codes 0x7F/0xFF are rejected on the host before upload.
__device__ __forceinline__ float e4m3_to_f32(uint32_t s) {
    uint32_t e = (s >> 3) & 15u, m = s & 7u;
    float v = e ? __uint_as_float(((e + 120u) << 23) | (m << 20)) : (float)m * 0.001953125f;
    return (s & 0x80u) ? -v : v;
}

// e2m1x2_half: two E2M1 codes of one 32-bit word of packed NVFP4 (nibble k of each 16-bit half)
// as a half2 whose value is the E2M1 value times 2^-14: the magnitude bits go to half bits
// [11:9] (exponent low bits and the top mantissa bit), the sign to bit 15. The caller folds the
// 2^14 into the block scale. Exact.
__device__ __forceinline__ float2 half2_bits_to_float2(uint32_t u) {
    __half2 h = *reinterpret_cast<__half2*>(&u);
    return __half22float2(h);
}

// dot8 multiplies the eight E2M1 codes of a packed word (elements 0..7, element 2j in the low
// nibble of byte j) by x[0..3] (a) and x[4..7] (b), returning the sum times 2^-14.
__device__ __forceinline__ float dot8(uint32_t w, float4 a, float4 b) {
    float s = 0.f;
    float2 v;
    v = half2_bits_to_float2(((w << 9) & 0x0E000E00u) | ((w << 12) & 0x80008000u));
    s = fmaf(v.x, a.x, s);
    s = fmaf(v.y, b.x, s);
    v = half2_bits_to_float2(((w << 5) & 0x0E000E00u) | ((w << 8) & 0x80008000u));
    s = fmaf(v.x, a.y, s);
    s = fmaf(v.y, b.y, s);
    v = half2_bits_to_float2(((w << 1) & 0x0E000E00u) | ((w << 4) & 0x80008000u));
    s = fmaf(v.x, a.z, s);
    s = fmaf(v.y, b.z, s);
    v = half2_bits_to_float2(((w >> 3) & 0x0E000E00u) | (w & 0x80008000u));
    s = fmaf(v.x, a.w, s);
    s = fmaf(v.y, b.w, s);
    return s;
}

// Programmatic dependent launch (sm_90). pdl_trigger lets the next kernel on the stream, if it
// was launched with programmatic serialization, start now (its blocks then wait in pdl_wait
// until this grid has finished and its writes are visible); for any other launch both are
// no-ops. The decode kernels launched that way (gemv.go launchDep) call pdl_wait before they
// touch memory and pdl_trigger right after, so each launch overlaps the tail of the one
// before; the GEMVs request their weights in between.
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// gpu_fence orders a block's earlier writes before its later arrival count (writer side) and an
// observed count before reading the others' writes (last-arriver side) at GPU scope: the PTX
// memory model's fence + strong-atomic synchronisation. __threadfence() is fence.sc.gpu
// (MEMBAR.SC.GPU), stronger than these merges need and slower.
__device__ __forceinline__ void gpu_fence() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// block_sum returns the sum of v over the block (blockDim.x a multiple of 32, at most 1024) to
// every thread; red is shared scratch of 32 floats. Safe to call repeatedly.
__device__ __forceinline__ float block_sum(float v, float* red) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.f;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) s += red[i];
    return s;
}

__device__ __forceinline__ double block_sum_d(double v, double* red) {
    v = warp_sum_d(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = 0.0;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) s += red[i];
    return s;
}

// One warp's RMSNorm statistics for a group of n = 32·k ≤ 256 elements, bit for bit those of a
// block of n threads running block_sum_d (rmsnorm_f32's order; norm_warp.cu says why they agree):
// lane l holds elements l + 32·i, i < k.
#define NW_MAX 8 // elements a lane: n ≤ 256

// warp_groups_sum is block_sum_d over a block of nper warps, computed by one warp whose lane l
// holds warp i's lane-l value in v[i].
__device__ __forceinline__ double warp_groups_sum(const double* v, int nper) {
    double s = 0.0;
#pragma unroll
    for (int i = 0; i < NW_MAX; i++)
        if (i < nper) s += warp_sum_d(v[i]);
    return s;
}

// warp_rms_inv loads the lane's elements of group base into xv and returns 1/√(mean x² + eps).
__device__ __forceinline__ float warp_rms_inv(const float* x, size_t base, int n, float eps, float* xv) {
    const int lane = threadIdx.x & 31, nper = n >> 5;
    double v[NW_MAX];
#pragma unroll
    for (int i = 0; i < NW_MAX; i++)
        if (i < nper) xv[i] = x[base + lane + 32 * i];
#pragma unroll
    for (int i = 0; i < NW_MAX; i++) v[i] = i < nper ? fma((double)xv[i], (double)xv[i], 0.0) : 0.0;
    const double ss = warp_groups_sum(v, nper);
    return (float)(1.0 / sqrt(ss / (double)n + (double)eps));
}

__device__ __forceinline__ float block_max(float v, float* red) {
    v = warp_max(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = red[0];
    for (int i = 1; i < (int)(blockDim.x >> 5); i++) m = fmaxf(m, red[i]);
    return m;
}

// rope_pair rotates the pair (x1, x2) by angle pos·invf (NeoX rotate-half), with the angle and
// its sine and cosine rounded as engine/cpu does (float32 angle, float64 sincos).
// rope_cs and rope_apply are its two halves (decode_layers.cu computes the cosines and sines of
// a position once for all layers).
__device__ __forceinline__ void rope_cs(int pos, float invf, float& cs, float& sn) {
    const float ang = __fmul_rn((float)pos, invf);
    double s, c;
    sincos((double)ang, &s, &c);
    cs = (float)c, sn = (float)s;
}
__device__ __forceinline__ void rope_apply(float x1, float x2, float cs, float sn, float& o1, float& o2) {
    o1 = __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn));
    o2 = __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
}
__device__ __forceinline__ void rope_pair(float x1, float x2, int pos, float invf, float& o1, float& o2) {
    float cs, sn;
    rope_cs(pos, invf, cs, sn);
    rope_apply(x1, x2, cs, sn, o1, o2);
}
