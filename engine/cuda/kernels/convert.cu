// Conversions feeding the cuBLASLt GEMMs (../gemm.go): tensor-core products take bf16 operands,
// so float32 activations are rounded to bf16 rows and weights stored as NVFP4 or float32 are
// expanded to a bf16 copy (a whole weight, or a block of its rows, in a reusable scratch). bf16
// weights are used as they are.
//
//   f32_to_bf16     n floats → n bf16, round to nearest even (NaN stays a quiet NaN), the same
//                   rounding as engine/tensor.F32ToBF16.
//   nvfp4_to_bf16   rows [N, K] of an NVFP4 weight (packed E2M1 codes [N, K/2], E4M3 block
//                   scales [N, K/16]) → bf16 [N, K] of e2m1 · e4m3. The FP32 tensor scale is NOT
//                   applied: the caller folds it into the GEMM's alpha. Without it every value is
//                   exact in bf16 (an E2M1 value has at most 2 significant bits, an E4M3 scale 4;
//                   their product at most 6 of bf16's 8, and within its exponent range), so the
//                   expanded weight is the stored one, bit for bit.
#include "common.cuh"

// f32_bf16_bits rounds a float to bf16 bits (nearest even), as engine/tensor.F32ToBF16.
__device__ __forceinline__ uint32_t f32_bf16_bits(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

// f32_to_bf16: grid-stride over groups of 4 elements (one float4 in, 8 bytes out) where n is a
// multiple of 4 and both pointers are aligned (the caller's buffers are device allocations);
// the tail (n % 4 elements) one by one.
extern "C" __global__ void __launch_bounds__(256)
f32_to_bf16(uint16_t* __restrict__ out, const float* __restrict__ in, long long n) {
    const long long groups = n / 4;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < groups; i += stride) {
        float4 v = __ldg(reinterpret_cast<const float4*>(in) + i);
        uint2 r;
        r.x = f32_bf16_bits(v.x) | (f32_bf16_bits(v.y) << 16);
        r.y = f32_bf16_bits(v.z) | (f32_bf16_bits(v.w) << 16);
        reinterpret_cast<uint2*>(out)[i] = r;
    }
    for (long long i = groups * 4 + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = (uint16_t)f32_bf16_bits(in[i]);
}

// nvfp4_to_bf16: one thread per 16-element block (8 packed bytes and one scale in, 32 bytes
// out), grid-stride over the rows*K/16 blocks of the rows given (K % 16 == 0). Element 2j of a
// block is the low nibble of packed byte j. The products are exact (see above), so the order of
// rounding does not matter.
extern "C" __global__ void __launch_bounds__(256)
nvfp4_to_bf16(uint16_t* __restrict__ out, const uint8_t* __restrict__ packed, const uint8_t* __restrict__ scales,
              long long blocks) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long u = (long long)blockIdx.x * blockDim.x + threadIdx.x; u < blocks; u += stride) {
        uint2 p = __ldg(reinterpret_cast<const uint2*>(packed) + u);
        float s = e4m3_to_f32(__ldg(scales + u));
        uint32_t words[2] = {p.x, p.y};
        uint32_t o[8];
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t byte = (words[h] >> (8 * j)) & 0xffu;
                float lo = e2m1_value(byte & 15u) * s, hi = e2m1_value(byte >> 4) * s;
                o[h * 4 + j] = f32_bf16_bits(lo) | (f32_bf16_bits(hi) << 16);
            }
        uint4* dst = reinterpret_cast<uint4*>(out) + 2 * u;
        dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
        dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
    }
}
