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
