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

// f32_to_bf16: grid-stride over groups of 8 elements (two float4 loads issued before the
// 16-byte store) where both pointers are 16-byte aligned (the caller's buffers are device
// allocations, or row views of [rows, 8k] tensors); the tail (n % 8 elements) one by one. A
// step of the training layer converts ~13 GB of operands this way (session 5, run 7: 5.7 ms a
// layer, ~2.3 TB/s with one float4 per thread and iteration); two loads in flight per thread
// double the bytes an SM has outstanding.
extern "C" __global__ void __launch_bounds__(256)
f32_to_bf16(uint16_t* __restrict__ out, const float* __restrict__ in, long long n) {
    const long long groups = n / 8;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < groups; i += stride) {
        const float4* p = reinterpret_cast<const float4*>(in) + 2 * i;
        float4 a = __ldg(p), b = __ldg(p + 1);
        uint4 r;
        r.x = f32_bf16_bits(a.x) | (f32_bf16_bits(a.y) << 16);
        r.y = f32_bf16_bits(a.z) | (f32_bf16_bits(a.w) << 16);
        r.z = f32_bf16_bits(b.x) | (f32_bf16_bits(b.y) << 16);
        r.w = f32_bf16_bits(b.z) | (f32_bf16_bits(b.w) << 16);
        reinterpret_cast<uint4*>(out)[i] = r;
    }
    for (long long i = groups * 8 + (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
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

// f32_to_bf16_hilo: n floats x → 2n bf16, hi = bf16(x) in out[0, n) and lo = bf16(x − hi) in
// out[n, 2n) (x − hi is exact; hi + lo is x to within 2^-17 of |x|). gemm_hilo.go multiplies both
// halves by a bf16 weight in one cuBLASLt product and adds the two results (add_halves_f32):
// the few-row lm_head with x at ~16 significant bits instead of bf16's 8.
extern "C" __global__ void __launch_bounds__(256)
f32_to_bf16_hilo(uint16_t* __restrict__ out, const float* __restrict__ in, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x = in[i];
        const uint32_t h = f32_bf16_bits(x);
        out[i] = (uint16_t)h;
        out[n + i] = (uint16_t)f32_bf16_bits(__fsub_rn(x, __uint_as_float(h << 16)));
    }
}

// add_halves_f32: out[i] = d[i] + d[n + i] for i < n (the hi and lo products of
// f32_to_bf16_hilo's halves).
extern "C" __global__ void __launch_bounds__(256)
add_halves_f32(float* __restrict__ out, const float* __restrict__ d, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = __fadd_rn(d[i], d[n + i]);
}
